"""Plotly figure builders for the dashboard: each takes DataFrames (already computed by diagnostics) and
returns a figure, so pages only choose data and every chart can be tested without a browser.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

HEIGHT = 340
SOURCE_COLOURS = {"student": "#d62728", "teacher": "#1f77b4"}
KIND_COLOURS = {"format": "#9467bd", "digit": "#2ca02c", "special": "#d62728", "other": "#7f7f7f"}
STAT_TITLES = {"teacher_entropy": "teacher entropy (nats)", "teacher_top1_prob": "teacher top-1 probability",
               "teacher_rank": "teacher rank of the sampled token"}


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {missing}; got {list(df.columns)} (pass the diagnostics output)")


def _white(fig: go.Figure) -> go.Figure:
    """The plotly_white template, set the way plotly sets its default template on every new figure: without
    validating the registered (already valid) template again. ``template="plotly_white"`` re-validates all of
    it, 8 ms a figure: a third of a diagnosis page's server time on a rerun."""
    layout = fig.layout
    validate = layout._validate  # noqa: SLF001 - plotly's own switch (BaseFigure._initialize_layout_template)
    layout._validate = False  # noqa: SLF001
    try:
        layout.template = pio.templates["plotly_white"]
    finally:
        layout._validate = validate  # noqa: SLF001
    return fig


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _relayout(fig: go.Figure, props: dict) -> go.Figure:
    """Set layout properties (nested dicts, no magic underscores) in one assignment, on the white template.
    ``update_layout``/``update_xaxes``/``add_hline`` each go through plotly's batched relayout (deep copies,
    path parsing): 1-4 ms a call and ~10 calls a chart page, a tenth of its server time. The same layout
    merged as a dict and assigned once is the same figure (``to_dict`` equal) in a third of the time."""
    current = copy.deepcopy({k: v for k, v in (fig.layout._props or {}).items() if k != "template"})  # noqa: SLF001
    fig.layout = _merged(current, props)
    return _white(fig)


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = HEIGHT, **layout) -> go.Figure:
    """The dashboard's chart frame (title, axis titles, legend under the plot), plus any other ``layout``
    properties of the chart (nested dicts: ``yaxis={"tickformat": ".0%"}``), set at once."""
    frame = {"title": {"text": title, "x": 0, "font": {"size": 15}}, "height": height,
             "margin": {"l": 10, "r": 10, "t": 45, "b": 10}, "legend": {"orientation": "h", "y": -0.2},
             "xaxis": {"title": {"text": x}}, "yaxis": {"title": {"text": y}}, "hovermode": "x unified"}
    return _relayout(fig, _merged(frame, layout))


def _hline(y: float, dash: str, colour: str, text: str | None = None, bottom_right: bool = False) -> dict:
    """A horizontal line across the plot at ``y`` and its label (top left, or under the line at the right), as
    layout shapes and annotations: what ``fig.add_hline`` adds, without its 3 ms relayout. Several lines:
    ``_hlines``."""
    line = {"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": y, "y1": y,
            "line": {"dash": dash, "color": colour}}
    anchor = {"x": 1, "xanchor": "right", "yanchor": "top"} if bottom_right else {"x": 0, "xanchor": "left",
                                                                                   "yanchor": "bottom"}
    label = [] if text is None else [{"text": text, "showarrow": False, "xref": "x domain", "yref": "y", "y": y,
                                      **anchor}]
    return {"shapes": [line], "annotations": label}


def _hlines(*lines: dict) -> dict:
    """Several ``_hline`` results as one set of layout shapes and annotations."""
    return {"shapes": [s for line in lines for s in line["shapes"]],
            "annotations": [a for line in lines for a in line["annotations"]]}


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why there is nothing to draw (instead of an empty axis)."""
    return _relayout(go.Figure(), {
        "annotations": [{"text": message, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                         "font": {"size": 14}}],
        "height": 200, "xaxis": {"visible": False}, "yaxis": {"visible": False},
        "margin": {"l": 10, "r": 10, "t": 10, "b": 10}})


def lorenz_figure(lorenz: pd.DataFrame, gini: float | None = None) -> go.Figure:
    """Lorenz curve of |signal| against the line of perfect equality; the gap between them is the Gini."""
    _require(lorenz, ["token_share", "signal_share"], "lorenz_figure")
    fig = go.Figure()
    # The diagonal on the curve's own x grid: filling between two traces with different x points draws
    # the gap as a staircase.
    fig.add_trace(go.Scatter(x=lorenz["token_share"], y=lorenz["token_share"], mode="lines",
                             name="every token equal", line={"dash": "dash", "color": "#9ca3af"}))
    label = "this run" if gini is None or math.isnan(gini) else f"this run (Gini {gini:.2f})"
    fig.add_trace(go.Scatter(x=lorenz["token_share"], y=lorenz["signal_share"], mode="lines", name=label,
                             fill="tonexty", line={"color": "#d62728", "width": 2.5}))
    return _layout(fig, "Who carries the update: Lorenz curve of |signal|",
                   "share of tokens (smallest |signal| first)", "share of total |signal|",
                   xaxis={"tickformat": ".0%", "range": [0, 1]}, yaxis={"tickformat": ".0%", "range": [0, 1]})


def signal_by_position_figure(by_position: pd.DataFrame) -> go.Figure:
    """Share of total |signal| per response-position range (bars) with the mean |signal| on hover."""
    _require(by_position, ["label", "share", "mean_abs_signal"], "signal_by_position_figure")
    fig = go.Figure(go.Bar(x=by_position["label"].astype(str), y=by_position["share"], marker_color="#1f77b4",
                           customdata=by_position[["mean_abs_signal"]].to_numpy(),
                           hovertemplate="positions %{x}<br>share %{y:.1%}<br>mean |signal| %{customdata[0]:.3g}"
                                         "<extra></extra>"))
    return _layout(fig, "Where in the response the signal sits", "token position", "share of total |signal|",
                   xaxis={"type": "category"}, yaxis={"tickformat": ".0%"})


def signal_by_kind_figure(by_kind: pd.DataFrame) -> go.Figure:
    """Share of total |signal| per token kind (format, digit, special, other), with token counts."""
    _require(by_kind, ["kind", "share", "n"], "signal_by_kind_figure")
    total = max(int(by_kind["n"].sum()), 1)
    fig = go.Figure()
    for kind, share in zip(by_kind["kind"], by_kind["share"]):  # one trace per kind: one legend key per colour
        fig.add_trace(go.Bar(x=[kind], y=[share], name=f"{kind}: share of |signal|",
                             marker_color=KIND_COLOURS.get(kind, "#7f7f7f"),
                             hovertemplate="%{x}: %{y:.1%} of |signal|<extra></extra>"))
    fig.add_trace(go.Scatter(x=by_kind["kind"], y=by_kind["n"] / total, name="share of tokens", mode="markers",
                             marker={"symbol": "line-ew-open", "size": 28, "color": "#111827", "line": {"width": 3}},
                             hovertemplate="%{x}: %{y:.1%} of tokens<extra></extra>"))
    # no x title: the bars name their kinds, and the three-row legend would sit on top of it
    return _layout(fig, "Signal by token kind", "", "share", barmode="overlay", yaxis={"tickformat": ".0%"})


def negative_share_figure(negative: pd.DataFrame) -> go.Figure:
    """Per step, the share of sampled-token rewards that are negative, with the 50% line."""
    _require(negative, ["step", "negative_share"], "negative_share_figure")
    fig = go.Figure(go.Scatter(x=negative["step"], y=negative["negative_share"], mode="lines+markers",
                               name="negative rewards", line={"color": "#d62728"}))
    return _layout(fig, "Share of negative token rewards per step", "step", "log-ratio < 0",
                   yaxis={"tickformat": ".0%", "range": [0, 1]}, **_hline(0.5, "dot", "#9ca3af"))


def teacher_vs_drift_figure(by_drift: pd.DataFrame, stat: str = "teacher_entropy",
                            reference: dict | None = None) -> go.Figure:
    """A teacher statistic per drift bin, one line per prefix source, against the teacher on its own rollouts."""
    _require(by_drift, ["bin_label", "bin_mid", "prefix_source", "n", stat], "teacher_vs_drift_figure")
    fig = go.Figure()
    order = by_drift.drop_duplicates("bin_label").sort_values("bin_mid")["bin_label"].astype(str).tolist()
    for source, part in by_drift.groupby("prefix_source", sort=True):
        part = part.sort_values("bin_mid")
        fig.add_trace(go.Scatter(
            x=part["bin_label"].astype(str), y=part[stat], mode="lines+markers", name=f"{source} prefixes",
            line={"color": SOURCE_COLOURS.get(str(source), "#7f7f7f"), "width": 2.5},
            customdata=part[["n"]].to_numpy(), hovertemplate="%{x}: %{y:.3g} (n=%{customdata[0]})<extra></extra>"))
    ref = (reference or {}).get(stat)
    line = {}
    if ref is not None and not (isinstance(ref, float) and math.isnan(ref)):
        line = _hline(float(ref), "dash", SOURCE_COLOURS["teacher"], "teacher on its own rollouts")
    measure = by_drift.attrs.get("measure", "drift")
    return _layout(fig, f"{STAT_TITLES.get(stat, stat).capitalize()} as the prefix drifts",
                   f"{measure} (binned)", STAT_TITLES.get(stat, stat),
                   xaxis={"type": "category", "categoryorder": "array", "categoryarray": order}, **line)


def support_figure(support: pd.DataFrame) -> go.Figure:
    """The student's probability mass inside the teacher's top-K, and the top-K overlap, per step."""
    _require(support, ["step"], "support_figure")
    fig = go.Figure()
    names = {"student_support_mass": "student mass in teacher top-K", "topk_overlap": "top-K overlap"}
    for column, name in names.items():
        if column in support:
            fig.add_trace(go.Scatter(x=support["step"], y=support[column], mode="lines+markers", name=name))
    return _layout(fig, "Is the student staying on the teacher's support?", "step", "mean over tokens",
                   yaxis={"range": [0, 1.02], "tickformat": ".0%"})


def response_length_figure(trend: pd.DataFrame) -> go.Figure:
    """Mean response length per step (runaway lengths are a symptom of an EOS the teacher does not know)."""
    _require(trend, ["step", "response_len"], "response_length_figure")
    fig = go.Figure(go.Scatter(x=trend["step"], y=trend["response_len"], mode="lines+markers",
                               name="response length", line={"color": "#ff7f0e"}))
    slope = trend.attrs.get("slope")
    title = "Response length per step" + (f" (slope {slope:+.2f} tokens/step)" if isinstance(slope, float)
                                          and math.isfinite(slope) else "")
    return _layout(fig, title, "step", "tokens per response")


ALIGNMENT_SHARES = {"align_one_to_one_share": ("aligned 1:1", "#2ca02c"),
                    "align_multi_token_share": ("inside a multi-token span", "#1f77b4"),
                    "align_unaligned_share": ("unaligned (masked, no teacher number)", "#d62728")}


def alignment_coverage_figure(metrics: pd.DataFrame) -> go.Figure:
    """How the student's tokens were matched to the teacher's per step: stacked shares (1:1, span, unaligned)."""
    _require(metrics, ["step", *ALIGNMENT_SHARES], "alignment_coverage_figure")
    rows = metrics.dropna(subset=list(ALIGNMENT_SHARES))
    fig = go.Figure()
    for column, (label, colour) in ALIGNMENT_SHARES.items():
        fig.add_trace(go.Bar(x=rows["step"], y=rows[column], name=label, marker_color=colour))
    return _layout(fig, "Alignment coverage per step", "step", "share of response tokens", barmode="stack",
                   yaxis={"range": [0, 1], "tickformat": ".0%"})


def compare_figure(long: pd.DataFrame, metric: str, x_title: str = "step") -> go.Figure:
    """One line per run of a metric (columns run, x, value), already smoothed by the caller."""
    _require(long, ["run", "x", "value"], "compare_figure")
    fig = go.Figure()
    for run, part in long.groupby("run", sort=False):
        fig.add_trace(go.Scatter(x=part["x"], y=part["value"], mode="lines+markers", marker={"size": 4},
                                 name=str(run)))
    return _layout(fig, f"{metric} by {x_title}", x_title, metric, height=420)


@functools.lru_cache(maxsize=64)
def _one_row_of_plots(titles: tuple[str, ...]) -> dict:
    """The layout ``make_subplots`` makes for one row of plots with these titles (axes, domains, title
    annotations). Building it takes ~40 ms, half the Runs page's server time, and it is the same every time."""
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.06)
    return {k: v for k, v in fig.layout.to_plotly_json().items() if k != "template"}


def metrics_overview_figure(metrics: pd.DataFrame, columns: Sequence[str]) -> go.Figure:
    """Small multiples of a run's main metrics over steps (the Runs page's at-a-glance view)."""
    _require(metrics, ["step"], "metrics_overview_figure")
    present = [c for c in columns if c in metrics and metrics[c].notna().any()]
    if not present:
        return empty_figure("no metrics logged yet")
    traces = []
    for i, column in enumerate(present, start=1):
        part = metrics[["step", column]].dropna()
        axis = "" if i == 1 else str(i)
        traces.append(go.Scatter(x=part["step"], y=part[column], mode="lines+markers", name=column,
                                 marker={"size": 4}, showlegend=False, xaxis=f"x{axis}", yaxis=f"y{axis}"))
    layout = copy.deepcopy(_one_row_of_plots(tuple(present)))
    return _white(go.Figure(data=traces, layout={**layout, "height": 240,
                                                 "margin": {"l": 10, "r": 10, "t": 40, "b": 10}}))
