"""Rescue rates of a finished run: cut its logged rollouts, let the teacher continue, write rescue.json.

`opd-lab rescue RUN_DIR` calls `cli_rescue`. The cut / continue / grade code is `opd_core.rescue`'s, the same
the loop runs on logging steps; this module reads the run's token records back into rollouts, is the one
writer (and reader) of ``rescue.json``, and pools the loop's per-step rescue metrics for runs without it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

# The cut / continue / grade code (opd_core.rescue, and torch and transformers with it: ~3 s of imports) is
# imported where a rescue is computed: the health report and the Drift page only read rescue.json.

RESCUE_FILE = "rescue.json"


def rollouts_from_tokens(tokens: pd.DataFrame) -> list:
    """Rebuild the logged responses (student and the teacher's reference rollouts) from token records."""
    from opd_core.rescue import Rollout

    out = []
    has_top1 = "teacher_top1_prob" in tokens.columns
    has_nuc = "in_teacher_nucleus" in tokens.columns
    for (step, sample), g in tokens.sort_values(["step", "sample", "pos"]).groupby(["step", "sample"], sort=True):
        source = str(g["prefix_source"].iloc[0]) if "prefix_source" in g else "student"
        ids = [int(t) for t in g["token_id"]]
        ended = bool(g["is_eos"].iloc[-1]) if "is_eos" in g else False
        top1 = [float(x) for x in g["teacher_top1_prob"]] if has_top1 else None
        nuc = [bool(x) for x in g["in_teacher_nucleus"]] if has_nuc else None
        out.append(Rollout(int(step), int(sample), str(g["prompt"].iloc[0]), ids, source, ended, top1, nuc))
    return out


def rescue_run(run_dir: str | Path, *, steps: list[int] | None = None, budget: int | None = None,
               seed: int = 0, every_cut: bool = True, write: bool = True) -> dict:
    """Compute the rescue table of a run from its logged rollouts; writes ``rescue.json`` into the run dir."""
    import torch

    from opd_core import runs
    from opd_core.config import from_dict
    from opd_core.models import load_pair
    from opd_core.pairing import TokenizerPair
    from opd_core.rescue import (
        CONFIDENT_TOP1,
        SINCE_ERROR_GRID,
        by_position,
        by_since_error,
        evaluate_cuts,
        example_lookup,
        first_wrong_tokens,
        plan_cuts,
        summarize,
    )
    from opd_core.rollout import Sampling
    from opd_core.tasks import load_task

    run_dir = Path(run_dir)
    cfg = from_dict(runs.read_config(run_dir))
    logged = runs.token_steps(run_dir)
    if not logged:
        raise ValueError(f"{run_dir}: no token records to cut; run with log_tokens_every > 0")
    wanted = logged if steps is None else [s for s in steps if s in set(logged)]
    cols = ["step", "sample", "pos", "token_id", "prompt", "prefix_source", "is_eos", "teacher_top1_prob",
            "in_teacher_nucleus"]
    tokens = runs.read_tokens(run_dir, steps=wanted, columns=cols)
    student, teacher = load_pair(cfg.student, cfg.teacher, device="cpu", dtype="float32")
    teacher.model.eval()
    torch.set_num_threads(1)
    pair = TokenizerPair(student.tokenizer, teacher.tokenizer, mask_special_tokens=cfg.mask_special_tokens,
                         student_model=student.model, teacher_model=teacher.model)
    task = load_task(cfg.task)
    rollouts = rollouts_from_tokens(tokens)
    examples = example_lookup(task, {r.prompt for r in rollouts})
    wrong = first_wrong_tokens(rollouts, pair, task, examples)
    cuts = plan_cuts(rollouts, wrong, budget=budget, seed=seed, every_cut=every_cut)
    sampling = Sampling(cfg.temperature if cfg.temperature > 0 else 1.0, cfg.top_p, cfg.top_k, cfg.max_new_tokens,
                        greedy=cfg.temperature == 0)
    table = evaluate_cuts(cuts, pair, teacher.model, task, examples, sampling,
                          max_new_tokens=cfg.max_new_tokens, seed=seed)
    first = table[table["step"] == min(wanted)] if not table.empty else table
    result = {"steps": wanted, "summary": summarize(table), "summary_first_step": summarize(first),
              "by_since_error": by_since_error(table).to_dict("records"),
              "by_position": by_position(table).to_dict("records"),
              "settings": {"budget": budget, "seed": seed, "every_cut": every_cut, "grid": list(SINCE_ERROR_GRID),
                           "confident_top1": CONFIDENT_TOP1, "max_new_tokens": cfg.max_new_tokens,
                           "sampling": asdict(sampling)},
              "cuts": table.drop(columns=["prefix", "continuation"]).to_dict("records")}
    if write:
        runs.atomic_write_json(run_dir / RESCUE_FILE, result)
    return result


def read_rescue(run_dir: str | Path) -> dict | None:
    """The run's rescue.json, or None when the run has none (or it is unreadable)."""
    from opd_core import runs

    data = runs.read_json(Path(run_dir) / RESCUE_FILE, None)
    return data if isinstance(data, dict) and "summary" in data else None


def summary_from_metrics(metrics: pd.DataFrame) -> dict | None:
    """Rescue rates pooled over the logging steps of metrics.jsonl (cut-weighted), for runs without
    rescue.json; None when the loop logged none."""
    if metrics is None or "rescue_rate_drifted" not in getattr(metrics, "columns", []):
        return None
    rows = metrics.dropna(subset=["rescue_rate_drifted"])
    if rows.empty:
        return None
    w = rows["rescue_drifted_cuts"].astype(float) if "rescue_drifted_cuts" in rows else pd.Series(1.0, rows.index)
    out: dict = {"n_drifted": int(w.sum()) if "rescue_drifted_cuts" in rows else int(len(rows)), "source": "metrics"}
    for key in ("rescue_rate_drifted", "rescue_rate_on_support", "rescue_rate_teacher_own",
                "confidently_wrong_share"):
        if key in rows:
            v = rows[key].astype(float)
            ok = v.notna() & (w > 0)
            out[key] = float(np.average(v[ok], weights=w[ok])) if ok.any() else None
    return out


def format_summary(result: dict) -> str:
    """The rescue table as a few lines for the terminal."""
    s = result["summary"]

    def pct(key: str) -> str:
        v = s.get(key)
        return "n/a" if v is None else f"{v:.0%}"

    lines = [f"{s.get('n_cuts', 0)} cuts over steps {result['steps'][0]}..{result['steps'][-1]}; "
             f"{s.get('n_drifted', 0)} after the student's first error",
             f"rescued (greedy): drifted {pct('rescue_rate_drifted')} (mild {pct('rescue_rate_mild')}, far "
             f"{pct('rescue_rate_far')}), just before the error {pct('rescue_rate_before_error')}, error-free "
             f"student prefixes {pct('rescue_rate_on_support')}, teacher's own {pct('rescue_rate_teacher_own')}",
             f"rescued (sampled): drifted {pct('rescue_rate_drifted_sampled')}, teacher's own "
             f"{pct('rescue_rate_teacher_own_sampled')}",
             f"confidently wrong: {pct('confidently_wrong_share')} of drifted cuts"]
    lines += [f"  {int(r['since_error']):>3} tokens since error: {r['rescue_rate_greedy']:.0%} greedy"
              + (f" [{r['ci_low']:.0%}, {r['ci_high']:.0%}]" if r.get("ci_low") is not None else "")
              + f", {r['rescue_rate_sampled']:.0%} sampled (n={int(r['n'])})" for r in result["by_since_error"]]
    return "\n".join(lines)


def cli_rescue(args) -> int:
    """Entry point of `opd-lab rescue RUN_DIR`: compute, write rescue.json, print the summary."""
    import json

    from opd_core import runs

    if not runs.is_run_dir(args.run_dir):
        raise ValueError(f"{args.run_dir} is not a run directory (no config.json or status.json); "
                         "pass the folder `opd-lab train` printed")
    result = rescue_run(args.run_dir, budget=getattr(args, "budget", None))
    print(json.dumps(result["summary"], indent=2) if getattr(args, "json", False) else format_summary(result))
    return 0
