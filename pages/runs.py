"""Runs page: every run with status, objective, settings, last metrics and health flags; pick some."""

import pandas as pd
import streamlit as st

from app import charts, state, tables, widgets
from opd_core import runs

widgets.header("Runs", "Every run OPD Lab can see: the shipped samples and yours. Pick one to diagnose, "
                       "or several to compare.")
refs = widgets.runs_or_notice()

rows = []
for ref in refs:
    summary = runs.summarize_run(ref.path)
    rows.append(tables.run_row(ref.key, ref.label, summary, state.metrics(ref.path), state.health_report(ref.path)))
table = pd.DataFrame(rows)
st.dataframe(
    table.drop(columns=["key"]), hide_index=True, width="stretch",
    column_config={
        "loss": st.column_config.NumberColumn(format="%.4g"),
        "eval_accuracy": st.column_config.NumberColumn("eval acc", format="%.3f"),
        "response_len": st.column_config.NumberColumn("resp. len", format="%.1f"),
        "grad_norm": st.column_config.NumberColumn("grad norm", format="%.3g"),
        "signal_gini": st.column_config.NumberColumn("signal Gini", format="%.2f"),
        "flags": st.column_config.TextColumn("health flags", width="large"),
    },
)
st.caption("Status comes from status.json with the trainer's process checked (a run whose process died shows "
           "as failed, stale). Metrics are the last logged values; flags are the Health page's warnings.")

st.subheader("Pick runs")
run = widgets.pick_run(refs, "Diagnose this run")
chosen = st.multiselect("Compare these runs", [r.key for r in refs],
                        default=[k for k in st.session_state.get(widgets.RUNS_STATE, []) if k in
                                 {r.key for r in refs}] or [r.key for r in refs[:4]],
                        format_func={r.key: r.label for r in refs}.get, key="runs_page_compare")
widgets.set_selected_runs(chosen)
cols = st.columns(4)
with cols[0]:
    widgets.link_to("Health", run, "Health report")
with cols[1]:
    widgets.link_to("Token inspector", run, "Read its tokens")
with cols[2]:
    widgets.link_to("Imbalance", run, "Failure-mode pages")
with cols[3]:
    widgets.link_to("Compare", None, f"Compare {len(chosen)} runs")

st.subheader(f"Run {run.label}")
summary = runs.summarize_run(run.path)
status = runs.read_status(run.path)
c = st.columns(4)
c[0].metric("status", summary.state)
c[1].metric("step", f"{summary.step or 0}" + (f" / {summary.total_steps}" if summary.total_steps else ""))
c[2].metric("objective", summary.objective or "–")
c[3].metric("logged token steps", len(state.token_steps(run.path)))
if status.get("error"):
    st.warning(f"This run reports: {status['error']}", icon=":material/report:")
metrics = state.metrics(run.path)
widgets.chart(charts.metrics_overview_figure(metrics, ["loss", "eval_accuracy", "grad_norm", "response_len"]),
              "Each panel is one metric over training steps; eval accuracy is logged every eval_every steps.")
with st.expander("Full configuration"):
    st.json(summary.config)
