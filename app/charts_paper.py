"""The seed paper's own views as plotly figures: the reward scatter (Fig. 2), the signed gap by position
(Fig. 4), the rescue rate, the position-matched teacher entropy and the overlap masses by position.

Each builder takes the DataFrame a diagnostics function returned and draws it; no statistics here.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from app.charts import HEIGHT, _hline, _hlines, _layout, _require, empty_figure

GROUP_COLOURS = {"teacher rollouts": "#1f77b4", "student (first step)": "#ff7f0e", "student (now)": "#d62728"}
PREFIX_COLOURS = {"teacher": "#1f77b4", "on support": "#2ca02c", "drifted": "#d62728"}
KIND_NAMES = {"teacher_own": "teacher's own prefixes", "on_support": "student, no error yet",
              "before_error": "student, just before the error"}


def reward_scatter_figure(points: pd.DataFrame, share_below: float | None = None) -> go.Figure:
    """Fig. 2: teacher vs student probability of each sampled token; below y = x the reward is negative."""
    _require(points, ["student_prob", "teacher_prob"], "reward_scatter_figure")
    if points.empty:
        return empty_figure("no sampled tokens logged at this step")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="y = x (reward 0)",
                             line={"dash": "dash", "color": "#6b7280"}))
    fig.add_trace(go.Scattergl(x=points["student_prob"], y=points["teacher_prob"], mode="markers", name="tokens",
                               marker={"size": 4, "opacity": 0.45, "color": "#d62728"},
                               hovertemplate="p_S %{x:.3f}<br>p_T %{y:.3f}<extra></extra>"))
    title = "Teacher vs student probability of the sampled token"
    if share_below is not None and math.isfinite(share_below):
        title += f": {share_below:.0%} below y = x (negative reward)"
    return _layout(fig, title, "student probability p_S(y_t)", "teacher probability p_T(y_t)", height=420,
                   xaxis={"range": [0, 1.01]}, yaxis={"range": [0, 1.01]}, hovermode="closest")


def gap_by_position_figure(quantiles: pd.DataFrame) -> go.Figure:
    """Fig. 4: the signed gap log p_T - log p_S per response-position bucket (box = quartiles, whiskers =
    5th-95th percentiles); a lower tail that widens with position is the paper's observation."""
    _require(quantiles, ["pos_bucket", "q05", "q25", "q50", "q75", "q95", "negative_share"],
             "gap_by_position_figure")
    if quantiles.empty:
        return empty_figure("no student-prefix tokens to place by position")
    x = [str(int(b)) for b in quantiles["pos_bucket"]]
    fig = go.Figure()
    fig.add_trace(go.Box(x=x, q1=quantiles["q25"], median=quantiles["q50"], q3=quantiles["q75"],
                         lowerfence=quantiles["q05"], upperfence=quantiles["q95"], name="log p_T − log p_S",
                         marker_color="#d62728", boxpoints=False))
    fig.add_trace(go.Scatter(x=x, y=quantiles["negative_share"], mode="lines+markers", name="share negative",
                             yaxis="y2", line={"color": "#374151"}))
    return _layout(fig, "Signed teacher−student gap by response position", "response position (bucket start)",
                   "log p_T − log p_S (nats)", hovermode="closest", **_hline(0, "dot", "#6b7280"),
                   yaxis2={"overlaying": "y", "side": "right", "range": [0, 1], "tickformat": ".0%",
                           "title": {"text": "share negative"}, "showgrid": False})


def rescue_figure(by_since_error: pd.DataFrame, summary: dict | None = None) -> go.Figure:
    """Rescue rate against tokens since the student's first error (-1 = just before it), greedy and
    sampled, with the same rate on the teacher's own prefixes and on error-free student prefixes."""
    _require(by_since_error, ["since_error", "n", "rescue_rate_greedy", "rescue_rate_sampled"], "rescue_figure")
    if by_since_error.empty:
        return empty_figure("no student prefix with an error was cut (run `opd-lab rescue RUN_DIR`)")
    x = by_since_error["since_error"].astype(int)
    fig = go.Figure()
    for col, name, dash in (("rescue_rate_greedy", "teacher greedy", "solid"),
                            ("rescue_rate_sampled", "teacher sampled", "dot")):
        fig.add_trace(go.Scatter(x=x, y=by_since_error[col], mode="lines+markers", name=name,
                                 line={"color": "#d62728", "dash": dash}, customdata=by_since_error["n"],
                                 hovertemplate="%{y:.0%} of %{customdata} cuts<extra></extra>"))
    summary = summary or {}
    lines = []
    for key, colour in (("rescue_rate_teacher_own", "#1f77b4"), ("rescue_rate_on_support", "#2ca02c")):
        value = summary.get(key)
        if value is not None and math.isfinite(value):
            label = KIND_NAMES["teacher_own" if "teacher" in key else "on_support"]
            lines.append(_hline(value, "dash", colour, f"{label}: {value:.0%}", bottom_right=True))
    return _layout(fig, "Can the teacher still finish correctly? Rescue rate by distance from the first error",
                   "tokens since the student's first wrong token (−1 = cut just before it)", "rescued",
                   yaxis={"range": [0, 1.05], "tickformat": ".0%"}, **_hlines(*lines))


def position_entropy_figure(by_position: pd.DataFrame, stat: str = "teacher_entropy") -> go.Figure:
    """The seed's teacher_entropy.py plot: a teacher statistic against absolute position on the teacher's
    rollouts, the first logged student rollouts and the latest ones."""
    _require(by_position, ["group", "pos_bucket", stat], "position_entropy_figure")
    if by_position.empty:
        return empty_figure("no token records to place by position")
    fig = go.Figure()
    for group, rows in by_position.groupby("group", sort=False):
        fig.add_trace(go.Scatter(x=rows["pos_bucket"], y=rows[stat], mode="lines+markers", name=str(group),
                                 line={"color": GROUP_COLOURS.get(str(group), "#7f7f7f")}))
    titles = {"teacher_entropy": "teacher entropy (nats)", "teacher_top1_prob": "teacher top-1 probability",
              "log_ratio": "log p_T − log p_S (nats)"}
    return _layout(fig, f"{titles.get(stat, stat)} by absolute position", "response position (bucket start)",
                   titles.get(stat, stat))


def drifted_by_position_figure(table: pd.DataFrame, stat: str = "teacher_entropy") -> go.Figure:
    """Teacher statistic on drifted vs on-support student prefixes within each position bucket, beside the
    teacher's own rollouts at the same positions: drift compared with position held fixed."""
    _require(table, ["pos_bucket", "prefix", "n", stat], "drifted_by_position_figure")
    if table.empty:
        return empty_figure("no token records to compare")
    fig = go.Figure()
    for prefix in ("teacher", "on support", "drifted"):
        rows = table[table["prefix"] == prefix]
        if rows.empty:
            continue
        fig.add_trace(go.Bar(x=rows["pos_bucket"].astype(int).astype(str), y=rows[stat], name=prefix,
                             marker_color=PREFIX_COLOURS[prefix], customdata=rows["n"],
                             hovertemplate="%{y:.3f} (n=%{customdata})<extra>" + prefix + "</extra>"))
    label = "teacher entropy (nats)" if stat == "teacher_entropy" else "teacher top-1 probability"
    return _layout(fig, f"{label}: drifted vs on-support prefixes at the same positions",
                   "response position (bucket start)", label, height=HEIGHT, barmode="group")


def overlap_by_position_figure(table: pd.DataFrame) -> go.Figure:
    """Mass each model puts on the shared top-K set, by position (healthy runs hold ~97-99%), and local
    teachability; first logged step dashed, latest solid."""
    if table.attrs.get("missing") or table.empty:
        return empty_figure("this run's token records have no overlap-mass columns (logged by newer engines)")
    _require(table, ["group", "pos_bucket"], "overlap_by_position_figure")
    fig = go.Figure()
    colours = {"overlap_mass_student": "#d62728", "overlap_mass_teacher": "#1f77b4", "teachability": "#2ca02c"}
    for group, rows in table.groupby("group", sort=False):
        dash = "dash" if "first" in str(group) else "solid"
        for col, colour in colours.items():
            if col in rows.columns and rows[col].notna().any():
                fig.add_trace(go.Scatter(x=rows["pos_bucket"], y=rows[col], mode="lines+markers",
                                         name=f"{col.replace('_', ' ')} — {group}",
                                         line={"color": colour, "dash": dash}))
    return _layout(fig, "Top-K overlap masses and teachability by position", "response position (bucket start)",
                   "mass / teachability")
