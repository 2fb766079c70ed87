"""The shipped sample runs: made by the product's own recipes on the toy world, one per comparison.

`opd-lab samples build` retrains each from scratch with the example configs in
``opd_core/examples/`` and writes them into ``sample_runs/`` (replacing each run whole, only once it
finished). Checkpoints are dropped and token logging is kept to a few steps so the set stays small
enough to ship; the health report of each run is what `tests/test_sample_runs.py` checks.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from opd_core import runs
from opd_core.config import load_config

# sample run id -> (example config, overrides). All on toy world v2 (`toy:*-v2`, task toy:addition-v2),
# 200 steps each. Token logging is what keeps the set small enough to ship (~15 MB): the baseline (the
# run the pages open first) logs all 32 responses every 20 steps; the masked run and the forward-KL run
# (tests/corrupt_runs.py copies its steps 1, 20, 40) 16 of them every 20 steps; the other comparisons 16
# every 40 steps; the K / top-p ablations 16 at their first and last steps only. Every run's
# metrics.jsonl still has every step.
_HALF = ["log_samples=16"]  # only the first 16 of a logged step's 32 responses
_EVERY_40_HALF = ["log_tokens_every=40", *_HALF]
_ENDS_ONLY = ["log_tokens_every=1000", *_HALF]
SAMPLES: dict[str, tuple[str, list[str]]] = {
    "baseline-sampled-token": ("v2_baseline", []),
    "masked-sampled-token": ("v2_masked", _HALF),
    "top-p-sampled-token": ("v2_top_p", _EVERY_40_HALF),
    "masked-top-p-sampled-token": ("v2_masked", ["top_p=0.9", *_EVERY_40_HALF]),  # masking under the paper's top-p
    "topk-support": ("v2_topk_support", _EVERY_40_HALF),
    "topk-unnormalized": ("v2_topk_unnormalized", _EVERY_40_HALF),
    "topk-support-unmasked": ("v2_topk_support", ["mask_special_tokens=false", *_EVERY_40_HALF]),
    "matched-sampled-token": ("v2_matched", _EVERY_40_HALF),
    "forward-kl-mixed-prefixes": ("v2_forward_kl_mixed", _HALF),
    "topk-support-k16": ("v2_topk_support", ["k=16", *_ENDS_ONLY]),
    "topk-support-k48": ("v2_topk_support", ["k=48", *_ENDS_ONLY]),
    "topk-support-top-p-1.0": ("v2_topk_support", ["top_p=1.0", *_ENDS_ONLY]),
    "topk-support-top-p-0.8": ("v2_topk_support", ["top_p=0.8", *_ENDS_ONLY]),
}
RESCUE_BUDGET = 160  # cut points per sample run for rescue.json (`opd-lab rescue`)


def default_samples_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "sample_runs"


def build_samples(out_dir: str | Path | None = None, only: list[str] | None = None, log=print) -> list[Path]:
    """Train every sample run (or ``only`` these) and move each finished run into ``out_dir``."""
    from opd_core.rescue_runs import rescue_run
    from opd_core.train_entry import run_in_dir

    out = Path(out_dir) if out_dir else default_samples_dir()
    out.mkdir(parents=True, exist_ok=True)
    names = only or list(SAMPLES)
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        raise ValueError(f"unknown sample run {unknown[0]!r}; choose from {', '.join(SAMPLES)}")
    made = []
    for name in names:
        example, overrides = SAMPLES[name]
        cfg = load_config(example, overrides + ["checkpoint_every=0"])
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            run_dir = Path(tmp) / name
            run_dir.mkdir()
            runs.write_config(run_dir, cfg.to_dict())
            runs.write_status(run_dir, state="queued", step=0, total_steps=cfg.steps, created_at=time.time())
            t0 = time.time()
            state = run_in_dir(run_dir, progress=False)
            if state != "finished":
                raise RuntimeError(f"sample run {name} ended {state}: {runs.read_status(run_dir).get('error')}")
            shutil.rmtree(run_dir / runs.CHECKPOINTS_DIR, ignore_errors=True)
            runs.write_status(run_dir, pid=None, host=None)
            rescue_run(run_dir, budget=RESCUE_BUDGET, every_cut=True)
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            run_dir.rename(target)
            log(f"built {name} in {time.time() - t0:.0f}s -> {target}")
            made.append(target)
    return made


def summary_table(sample_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per sample run: the numbers EXPERIMENTS.md compares against the paper's findings."""
    from opd_core.diagnostics import health, imbalance
    from opd_core.diagnostics.loading import read_run_tokens
    from opd_core.rescue_runs import read_rescue

    base = Path(sample_dir) if sample_dir else default_samples_dir()
    rows = []
    for name in SAMPLES:
        run = base / name
        if not runs.is_run_dir(run):
            continue
        m = runs.read_metrics(run)
        trained = m[m["step"] > 0]
        evals = m[["step", "eval_accuracy"]].dropna()
        first_logged = runs.token_steps(run)[0]
        first = runs.read_tokens(run, steps=[first_logged], columns=["log_ratio", "masked", "reference_only"])
        first = first[~first["reference_only"] & ~first["masked"]]
        report = health(run)
        # the imbalance numbers exactly as the report reads them (its 8 logged steps, special tokens left out)
        concentration = imbalance.summary(read_run_tokens(run, imbalance.COLUMNS, 8), exclude_special=True)
        eval_at = dict(zip(evals["step"], evals["eval_accuracy"], strict=True))
        rescued = (read_rescue(run) or {}).get("summary", {})
        rows.append({
            "run": name,
            "eval_acc_start": float(evals["eval_accuracy"].iloc[0]),
            "eval_acc_best": float(evals["eval_accuracy"].max()),
            "eval_acc_final": float(evals["eval_accuracy"].iloc[-1]),
            "eval_acc_step100": eval_at.get(100),
            "eval_acc_step150": eval_at.get(150),
            "grad_norm_mean": float(trained["grad_norm"].mean()),
            "grad_norm_std": float(trained["grad_norm"].std()),
            "response_len_first20": float(trained["response_len"].head(20).mean()),
            "response_len_last20": float(trained["response_len"].tail(20).mean()),
            "eos_rate_last20": float(trained["eos_rate"].tail(20).mean()),
            "negative_reward_share_step1": float((first["log_ratio"] < 0).mean()),
            "support_mass_first20": float(trained["student_support_mass"].head(20).mean()),
            "support_mass_last20": float(trained["student_support_mass"].tail(20).mean()),
            "support_mass_min": float(trained["student_support_mass"].min()),
            "signal_gini": concentration["gini"],
            "signal_top5pct_share": concentration["top5pct_share"],
            "special_signal_share": float(trained["special_token_signal_share"].mean()),
            "rescue_drifted": rescued.get("rescue_rate_drifted"),
            "rescue_mild": rescued.get("rescue_rate_mild"),
            "rescue_far": rescued.get("rescue_rate_far"),
            "rescue_teacher_own": rescued.get("rescue_rate_teacher_own"),
            "flags": ",".join(sorted({f.mode for f in report.findings})) or "-",
        })
    return pd.DataFrame(rows)
