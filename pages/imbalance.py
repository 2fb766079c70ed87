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
