"""Plotly figures for the exact bias/variance lab: each takes a tidy DataFrame from opd_core.lab and returns a figure."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
import plotly.graph_objects as go

_LAYOUT = {"margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "legend": {"orientation": "h", "y": -0.2}}


def _require(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} needs columns {missing} that the DataFrame lacks; build it with the matching opd_core.lab function"
        )
    if frame.empty:
        raise ValueError(f"{what} got an empty DataFrame; run the study before plotting it")


def _mark_gamma(fig: go.Figure, gamma: float | None) -> None:
    if gamma is not None:
        fig.add_vline(x=gamma, line_dash="dot", line_color="gray", annotation_text=f"γ = {gamma:g}")


def bias_vs_gamma_figure(frame: pd.DataFrame, selected_gamma: float | None = None) -> go.Figure:
    """Plot ||E[g_γ] - ∇KL_seq|| against γ: how far each discount's expected update is from the true gradient."""
    _require(frame, ["gamma", "bias"], "bias_vs_gamma_figure")
    frame = frame.sort_values("gamma")
    fig = go.Figure(go.Scatter(x=frame["gamma"], y=frame["bias"], mode="lines+markers", name="bias"))
    fig.update_layout(
        title="Exact bias of sampled-token OPD vs γ",
        xaxis_title="γ (future-reward coupling)",
        yaxis_title="‖E[g_γ] − ∇ KL_seq‖",
        **_LAYOUT,
    )
    _mark_gamma(fig, selected_gamma)
    return fig


def variance_vs_gamma_figure(frame: pd.DataFrame, selected_gamma: float | None = None) -> go.Figure:
    """Plot the exact per-sample gradient variance against γ on a log scale: the price of coupling."""
    _require(frame, ["gamma", "variance"], "variance_vs_gamma_figure")
    frame = frame.sort_values("gamma")
    fig = go.Figure(go.Scatter(x=frame["gamma"], y=frame["variance"], mode="lines+markers", name="variance"))
    fig.update_layout(
        title="Exact gradient variance of sampled-token OPD vs γ",
        xaxis_title="γ (future-reward coupling)",
        yaxis_title="tr Cov[g_γ] (log scale)",
        yaxis_type="log",
        **_LAYOUT,
    )
    _mark_gamma(fig, selected_gamma)
    return fig


def objective_bias_figure(frame: pd.DataFrame) -> go.Figure:
    """Compare each objective's exact bias against ∇KL_seq and against the dense token-level reverse KL."""
    _require(frame, ["estimator", "bias", "bias_vs_token_kl"], "objective_bias_figure")
    fig = go.Figure(
        [
            go.Bar(x=frame["estimator"], y=frame["bias"], name="vs ∇ sequence KL"),
            go.Bar(
                x=frame["estimator"], y=frame["bias_vs_token_kl"], name="vs ∇ dense token-level reverse KL"
            ),
        ]
    )
    fig.update_layout(
        title="Exact bias of each objective's expected gradient",
        barmode="group",
        yaxis_title="‖E[g] − target‖",
        **_LAYOUT,
    )
    return fig


def variance_vs_horizon_figure(frame: pd.DataFrame) -> go.Figure:
    """Plot exact variance against the horizon T (log-log), one line per estimator: how fast each one grows."""
    _require(frame, ["horizon", "estimator", "variance"], "variance_vs_horizon_figure")
    fig = go.Figure()
    for label, group in frame.groupby("estimator", sort=False):
        group = group.sort_values("horizon")
        fig.add_trace(
            go.Scatter(x=group["horizon"], y=group["variance"], mode="lines+markers", name=str(label))
        )
    fig.update_layout(
        title="Exact gradient variance vs horizon",
        xaxis_title="horizon T (log scale)",
        yaxis_title="tr Cov[g] (log scale)",
        xaxis_type="log",
        yaxis_type="log",
        **_LAYOUT,
    )
    return fig


_METRIC_TITLES = {
    "sequence_kl": ("Exact sequence KL during training", "KL_seq(p_S ‖ p_T)"),
    "variance_proxy": (
        "Variance proxy during training (spread of micro-batch gradients)",
        "Σ‖g_m − ḡ‖² / (M−1)",
    ),
    "grad_norm": ("Gradient norm during training", "‖ḡ‖"),
}


def training_curves_figure(frame: pd.DataFrame, metric: str = "sequence_kl", log_y: bool = True) -> go.Figure:
    """Plot one training metric against step, one line per estimator (runs share start and seed)."""
    if metric not in _METRIC_TITLES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(_METRIC_TITLES)}")
    _require(frame, ["estimator", "step", metric], "training_curves_figure")
    title, y_title = _METRIC_TITLES[metric]
    fig = go.Figure()
    for label, group in frame.groupby("estimator", sort=False):
        group = group.dropna(subset=[metric])
        fig.add_trace(go.Scatter(x=group["step"], y=group[metric], mode="lines", name=str(label)))
    fig.update_layout(
        title=title,
        xaxis_title="step",
        yaxis_title=y_title + (" (log scale)" if log_y else ""),
        yaxis_type="log" if log_y else "linear",
        **_LAYOUT,
    )
    return fig
