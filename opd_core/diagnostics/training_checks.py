"""The cheap checks on a run's metrics alone: NaN/inf, gradient spikes, runaway lengths, falling eval, and
the tokenizer pair's alignment coverage. They need no token records, so they run on every run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from opd_core import runs
from opd_core.diagnostics import mismatch
from opd_core.diagnostics.findings import THRESHOLDS, Finding, Thresholds, _finite, _num


def _nonfinite_steps(run_dir: Path, key: str) -> list[int]:
    """Steps whose ``key`` was NaN/inf. The writer stores such a value as null and names it under
    ``nonfinite`` (``run_writer.metrics_record``); a bare null means "not reported" (an SDK run without
    gradients, a re-scoring run) and is no finding."""
    steps = []
    for rec, _ in runs.iter_metric_records(run_dir):
        value = rec.get(key)
        marked = key in (rec.get("nonfinite") or ())
        if marked or (isinstance(value, float) and not math.isfinite(value)):
            steps.append(rec.get("step"))
    return steps


def check_training(run_dir: Path, metrics: pd.DataFrame, config: dict, t: Thresholds = THRESHOLDS) -> list[Finding]:
    """Cheap checks on metrics.jsonl: NaN loss, grad-norm spikes, runaway response length, falling eval."""
    found: list[Finding] = []
    bad = sorted(set(_nonfinite_steps(run_dir, "loss")) | set(_nonfinite_steps(run_dir, "grad_norm")), key=str)
    if bad:
        found.append(Finding(
            mode="training", severity="critical", title=f"loss or grad norm is NaN/inf at {len(bad)} step(s)",
            evidence={"check": "nan_loss", "n_steps": len(bad), "first_steps": bad[:5]},
            fix="a lower learning_rate, max_grad_norm=1.0 and dtype=float32", view="training"))
    if "grad_norm" in metrics and len(metrics) > t.grad_window // 4:
        g = pd.to_numeric(metrics["grad_norm"], errors="coerce")
        median = g.rolling(t.grad_window, min_periods=5).median().shift(1)
        ratio = g / median
        spikes = metrics.loc[ratio >= t.grad_spike_factor, "step"].tolist()
        if spikes:
            found.append(Finding(
                mode="training", severity="warning",
                title=f"grad-norm spikes: {len(spikes)} step(s) over {t.grad_spike_factor:g}x the running median",
                evidence={"check": "grad_norm_spike", "n_spikes": len(spikes), "steps": spikes[:5],
                          "max_ratio": _num(float(ratio.max()))},
                fix="max_grad_norm=1.0 and a lower learning_rate; top_p=0.9 keeps rollouts off the teacher's "
                    "unsupported tail", view="training"))
    trend = mismatch.response_length_trend(metrics)
    stats = trend.attrs
    cap = config.get("max_new_tokens")
    at_cap = _finite(cap) and _finite(stats.get("last_mean")) and stats["last_mean"] >= t.length_cap_share * cap
    grew = _finite(stats.get("ratio")) and stats["ratio"] >= t.length_ratio_warning
    # Pinned at the cap after growing at all is a runaway too: the cap hides how far it would have gone.
    pinned = at_cap and _finite(stats.get("ratio")) and stats["ratio"] >= t.length_cap_min_ratio
    if stats.get("n", 0) >= 8 and (grew or pinned) and stats["slope"] > 0:
        found.append(Finding(
            mode="training", severity="critical" if at_cap else "warning",
            title=(f"response length running away: {stats['first_mean']:.0f} -> {stats['last_mean']:.0f} tokens"
                   + (" (at max_new_tokens)" if at_cap else "")),
            evidence={"check": "length_runaway", "first_mean": _num(stats["first_mean"]),
                      "last_mean": _num(stats["last_mean"]), "ratio": _num(stats["ratio"]),
                      "slope_per_step": _num(stats["slope"]), "max_new_tokens": cap},
            fix="mask_special_tokens=true and mask_after_eos=true (a mismatched EOS teaches the student not to "
                "stop); objective=topk_support gives shorter responses", view="mismatch"))
    if "eval_accuracy" in metrics:
        evals = metrics[["step", "eval_accuracy"]].copy()
        evals["eval_accuracy"] = pd.to_numeric(evals["eval_accuracy"], errors="coerce")
        evals = evals.dropna()
        if len(evals) >= 3:
            acc = evals["eval_accuracy"].to_numpy(dtype=float)
            best = int(np.argmax(acc))
            drop = acc[best] - acc[-1]
            if drop >= t.eval_drop_warning and acc[-1] < acc[0]:
                best_step = int(evals["step"].iloc[best])
                found.append(Finding(
                    mode="training", severity="warning",
                    title=f"eval accuracy falling: {acc[best]:.2f} at step {best_step}, {acc[-1]:.2f} now",
                    evidence={"check": "eval_falling", "first": _num(acc[0]), "best": _num(acc[best]),
                              "best_step": best_step, "last": _num(acc[-1])},
                    fix=f"a lower learning_rate; fork from the checkpoint nearest step {best_step} "
                        "(opd-lab runs fork RUN --step S); objective=topk_support", view="training"))
    return found


def check_tokenizer_pair(metrics: pd.DataFrame, alignment: dict | None, t: Thresholds = THRESHOLDS) -> list[Finding]:
    """Cross-tokenizer coverage (share of student tokens the teacher's tokens do not tile exactly, masked as
    ``unaligned``) and the pair's warnings from alignment.json (a side without a chat template, an EOS
    that is not the end of turn)."""
    found: list[Finding] = []
    if "align_unaligned_share" in metrics:
        shares = {k: pd.to_numeric(metrics[k], errors="coerce").mean() for k in
                  ("align_one_to_one_share", "align_multi_token_share", "align_unaligned_share") if k in metrics}
        unaligned = shares.get("align_unaligned_share")
        if _finite(unaligned) and unaligned >= t.unaligned_warning:
            found.append(Finding(
                mode="mismatch", severity="critical" if unaligned >= t.unaligned_critical else "warning",
                title=(f"{unaligned:.0%} of the student's tokens have no teacher tokens tiling them exactly: "
                       "masked as unaligned, so they teach nothing"),
                evidence={k: _num(v) for k, v in shares.items()},
                fix="a teacher whose tokenizer splits text more like the student's (see opd-lab tokenizers "
                    "compare); objective=sampled_token also learns on multi-token spans",
                view="mismatch"))
    for warning in (alignment or {}).get("warnings") or []:
        found.append(Finding(mode="mismatch", severity="info", title=str(warning), evidence={},
                             fix="a checkpoint with a chat template (an instruct model), or accept the raw "
                                 "prompt format", view="mismatch"))
    return found
