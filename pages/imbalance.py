"""Imbalance page (failure mode 1): how few tokens carry the update, and where they sit."""

import streamlit as st

from app import charts, state, tables, widgets
from app.inert import plain_frame

widgets.header("Imbalance", "Failure mode 1 — imbalanced token-level supervision: in sampled-token OPD the "
                            "log-ratio is near zero on most tokens and huge on a few, so a handful carry the update.")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
steps = widgets.guarded(run, state.token_steps, run.path)
if not steps:
    widgets.no_tokens_notice(run)
chosen = widgets.pick_step_window(run, steps, "imb_steps")
view = widgets.guarded(run, state.imbalance_view, run.path, chosen)
summary = view["summary"]

c = st.columns(4)
c[0].metric("Gini of |signal|", widgets.fmt(summary.get("gini"), ".2f"),
            help="0 = every token carries the same signal; near 1 = a few tokens carry it all.")
c[1].metric("top 1% of tokens carry", widgets.fmt(summary.get("top1pct_share"), ".0%"))
c[2].metric("top 5% of tokens carry", widgets.fmt(summary.get("top5pct_share"), ".0%"))
c[3].metric("tokens analysed", f"{summary.get('n_tokens', 0):,}")

left, right = st.columns(2)
with left:
    widgets.chart(charts.lorenz_figure(view["lorenz"], summary.get("gini")),
                  "The further the red curve sags below the dashed diagonal, the fewer tokens carry the update: "
                  "a point (80%, 10%) means the smallest 80% of tokens carry only 10% of the total |signal|.")
with right:
    widgets.chart(charts.signal_by_kind_figure(view["by_kind"]),
                  "Bars are each kind's share of the total |signal|; black ticks its share of tokens. A bar far "
                  "above its tick (often 'special' = EOS) means that kind gets far more than its share.")
left, right = st.columns(2)
with left:
    widgets.chart(charts.signal_by_position_figure(view["by_position"]),
                  "Share of the total |signal| in each range of response positions: a spike at the end usually "
                  "is the end-of-sequence token; a spike early is the first wrong step.")
with right:
    widgets.chart(charts.negative_share_figure(view["negative_share"]),
                  "Share of sampled tokens whose reward (teacher minus student log-prob) is negative, per step. "
                  "Above the dotted 50% line the teacher mostly pushes the student's own samples down.")

st.subheader("The tokens carrying the most signal")
st.dataframe(plain_frame(tables.visible_tokens(view["top_tokens"])), hide_index=True, width="stretch")
st.caption("The largest |signal| tokens of the analysed steps. Open one in the Token inspector (same step and "
           "sample) to read its context and both models' candidates.")
widgets.link_to("Token inspector", run, "Read these tokens in the Token inspector")

# ----------------------------------------------------------------------------- the paper's Fig. 2 and Fig. 4
from app import charts_paper  # noqa: E402
from opd_core.diagnostics import drift as _drift  # noqa: E402
from opd_core.diagnostics import rewards as _rewards  # noqa: E402

st.subheader("Most rewards negative? Teacher vs student probability of the sampled token")
if st.session_state.get("imb_scatter_step") not in steps:
    st.session_state["imb_scatter_step"] = steps[0]
widgets.url_choice("step", "imb_scatter_step", steps)
_step = st.select_slider("Step", options=steps, key="imb_scatter_step")
widgets.keep_in_url("step", _step)
_tokens = state.tokens(run.path, [_step], list(_rewards.COLUMNS))
_points, _below = _rewards.reward_scatter(_tokens, _step)
widgets.chart(charts_paper.reward_scatter_figure(_points, _below),
              "Each dot is one sampled token. Below the dashed y = x line the teacher gives it less probability than "
              "the student: a negative reward that pushes the student's own choice down (the paper finds most "
              "rewards there at the start).", key="imb_scatter")
_gap_tokens = state.tokens(run.path, chosen, list(_drift.POSITION_COLUMNS))
widgets.chart(charts_paper.gap_by_position_figure(_drift.gap_quantiles_by_position(_gap_tokens)),
              "The signed gap log p_T − log p_S by response position (box = middle half, whiskers = 5th–95th "
              "percentile; line = share negative). A lower tail that widens with position is the paper's Fig. 4.",
              key="imb_gap_position")
widgets.chart(charts_paper.overlap_by_position_figure(_drift.overlap_by_position(_gap_tokens)),
              "Each model's probability mass on the tokens both rank in their top-K, by position (healthy runs hold "
              "97–99%), and local teachability; a fall late in the response is where the two stop sharing support.",
              key="imb_overlap_position")
