"""Health findings as pictures: the key numbers of a finding's evidence, formatted, and one small chart of
the run data behind it (the Lorenz curve, the teacher against drift, the EOS log-ratios, the metric curve
with the offending steps marked). The JSON stays available on the page for those who want it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from app import charts, state

# Evidence keys worth a tile, with their label and format; shares as percentages, log-ratios in nats.
KEY_NUMBERS: dict[str, tuple[str, str]] = {
    "gini": ("Gini of |signal|", ".2f"), "top1pct_share": ("top 1% carry", ".0%"),
    "top5pct_share": ("top 5% carry", ".0%"), "drifted_share": ("drifted tokens", ".0%"),
    "entropy_ratio": ("entropy, drifted / baseline", ".1f"), "teacher_entropy_drifted": ("teacher entropy, drifted", ".2f"),
    "special_signal_share": ("|signal| on special tokens", ".0%"), "eos_signal_share": ("|signal| on EOS", ".0%"),
    "eos_mean_log_ratio": ("EOS log-ratio (nats)", ".1f"), "support_mass_first": ("support mass, first", ".2f"),
    "support_mass_last": ("support mass, last", ".2f"), "n_steps": ("steps", ",d"), "n_spikes": ("spikes", ",d"),
    "max_ratio": ("largest spike / median", ".1f"), "first_mean": ("length, first", ".0f"),
    "last_mean": ("length, last", ".0f"), "best": ("best eval", ".2f"), "best_step": ("at step", "d"),
    "last": ("eval now", ".2f"),
}
MAX_TILES = 4
def page_title(finding: object) -> str:
    """The dashboard page a finding links to: its failure mode (``view``) through ``navigation.MODE_PAGES``."""
    from app.navigation import MODE_PAGES

    view = getattr(finding, "view", None) or getattr(finding, "mode", "")
    return MODE_PAGES.get(str(view), "Health")


def _format(value: object, spec: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        return format(int(value) if spec.endswith("d") else float(value), spec)
    except (TypeError, ValueError):
        return None


def key_numbers(evidence: dict) -> list[tuple[str, str]]:
    """Up to four (label, formatted value) pairs from a finding's evidence, in the order they matter."""
    out = []
    for key, (label, spec) in KEY_NUMBERS.items():
        if key in (evidence or {}):
            text = _format(evidence[key], spec)
            if text is not None:
                out.append((label, text))
    return out[:MAX_TILES]


def eos_log_ratio_figure(tokens: pd.DataFrame) -> go.Figure:
    """Distribution of log-ratios at EOS against every other token: a mismatched EOS sits far to the left."""
    charts._require(tokens, ["log_ratio"], "eos_log_ratio_figure")  # noqa: SLF001 - shared check
    eos = tokens["is_eos"].astype(bool) if "is_eos" in tokens else pd.Series(False, index=tokens.index)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=tokens.loc[~eos, "log_ratio"], name="other tokens", marker_color="#9ca3af",
                               opacity=0.75, histnorm="probability"))
    fig.add_trace(go.Histogram(x=tokens.loc[eos, "log_ratio"], name="EOS", marker_color="#d62728", opacity=0.85,
                               histnorm="probability"))
    return charts._layout(fig, "Log-ratio at EOS vs every other token",  # noqa: SLF001
                          "teacher − student log-prob (nats)", "share of tokens", height=260, barmode="overlay",
                          yaxis={"tickformat": ".0%"})


def metric_marks_figure(metrics: pd.DataFrame, column: str, marks: list, title: str) -> go.Figure:
    """One metric over steps with the steps a finding names marked (its peak, its spikes)."""
    part = metrics[["step", column]].copy()
    part[column] = pd.to_numeric(part[column], errors="coerce")
    part = part.dropna()
    fig = go.Figure(go.Scatter(x=part["step"], y=part[column], mode="lines+markers", name=column,
                               marker={"size": 4}, line={"color": "#1f77b4"}))
    hit = part[part["step"].isin(marks)]
    if len(hit):
        fig.add_trace(go.Scatter(x=hit["step"], y=hit[column], mode="markers", name="flagged",
                                 marker={"size": 12, "color": "#d62728", "symbol": "circle-open", "line": {"width": 3}}))
    return charts._layout(fig, title, "step", column, height=260)  # noqa: SLF001


def figure(finding: object, run_dir: str | Path) -> tuple[go.Figure | None, str]:
    """The picture of a finding's evidence and the sentence saying how to read it (None: nothing to draw)."""
    mode = getattr(finding, "mode", "")
    ev = getattr(finding, "evidence", {}) or {}
    steps = state.default_steps(state.token_steps(run_dir))
    if mode == "imbalance" and steps:
        view = state.imbalance_view(run_dir, steps)
        return (charts.lorenz_figure(view["lorenz"], view["summary"].get("gini")),
                "The further the curve sags below the diagonal, the fewer tokens carry the update.")
    if mode in ("drift", "collapse") and steps:
        measure = ev.get("measure") if isinstance(ev.get("measure"), str) else "tokens_since_off_support"
        present = set(state.token_columns(run_dir))
        if mode == "drift" and measure in present:
            view = state.drift_view(run_dir, steps, measure)
            return (charts.teacher_vs_drift_figure(view["by_drift"], "teacher_entropy", view["reference"]),
                    "Teacher entropy per drift bin; the dashed line is the teacher on its own rollouts.")
        view = state.drift_view(run_dir, steps, next((m for m in ("drift", "tokens_since_off_support") if m in present),
                                                      "drift"))
        if view["support"] is not None and len(view["support"]):
            return (charts.support_figure(view["support"]),
                    "The student's mass inside the teacher's top-K per step; a fall is support collapse.")
        return None, ""
    if mode == "mismatch" and steps:
        tok = state.tokens(run_dir, steps, ["log_ratio", "is_eos", "reference_only"])
        if "reference_only" in tok:
            tok = tok[~tok["reference_only"].astype(bool)]
        if len(tok):
            return (eos_log_ratio_figure(tok),
                    "Red: the log-ratio at the student's EOS. Far left of the grey mass, the teacher does not read "
                    "the student's EOS as an end.")
        return None, ""
    if mode == "training":
        metrics = state.metrics(run_dir)
        check = ev.get("check")
        if check == "eval_falling" and "eval_accuracy" in metrics:
            return (metric_marks_figure(metrics, "eval_accuracy", [ev.get("best_step")], "Eval accuracy, peak marked"),
                    "The circled point is the best evaluation: fork from the checkpoint nearest it.")
        if check == "grad_norm_spike" and "grad_norm" in metrics:
            return (metric_marks_figure(metrics, "grad_norm", list(ev.get("steps") or []), "Gradient norm, spikes marked"),
                    "Circled steps are over the spike factor times the running median.")
        if check == "length_runaway" and "response_len" in metrics:
            return (metric_marks_figure(metrics, "response_len", [], "Response length per step"),
                    "A steady climb toward max_new_tokens: the student is not learning to stop.")
        if check == "nan_loss" and "loss" in metrics:
            return (metric_marks_figure(metrics, "loss", list(ev.get("first_steps") or []), "Loss, NaN steps marked"),
                    "Gaps in the line are steps whose loss was NaN or infinite.")
    return None, ""
