"""Compare page: several runs overlaid on any metric, with a summary table and CSV download."""

import streamlit as st

from app import charts, state, tables, widgets
from app.inert import md, plain_frame

widgets.header("Compare", "Which objective did best? Overlay runs on any metric and read the summary table.")
refs = widgets.runs_or_notice()
chosen = widgets.pick_runs(refs, "Runs to compare")
if not chosen:
    st.info("Pick at least one run above.", icon=":material/info:")
    st.stop()
frames, flags = {}, {}
for r in chosen:  # a damaged run is named and left out; the others are still compared
    try:
        frames[r.label] = state.metrics(r.path)
        flags[r.label] = tables.flags_text(state.health_report(r.path))
    except Exception as exc:  # noqa: BLE001
        widgets.problem(r, exc)
if not frames:
    st.stop()
options = tables.numeric_metrics(frames)
if not options:
    st.info("These runs have no numeric metrics logged yet.", icon=":material/info:")
    st.stop()
c1, c2, c3 = st.columns([2, 1, 1])
default_metric = "eval_accuracy" if "eval_accuracy" in options else options[0]
widgets.url_choice("metric", "cmp_metric", options)
if st.session_state.get("cmp_metric") not in options:
    st.session_state["cmp_metric"] = default_metric
metric = c1.selectbox("Metric", options, key="cmp_metric")
widgets.keep_in_url("metric", metric)
widgets.url_choice("x", "cmp_x", list(tables.X_AXES))
x_label = c2.radio("x axis", list(tables.X_AXES), horizontal=True, key="cmp_x")
widgets.url_choice("smooth", "cmp_smooth", [round(i * 0.05, 2) for i in range(20)])
st.session_state.setdefault("cmp_smooth", 0.0)
smoothing = c3.slider("Smoothing", 0.0, 0.95, step=0.05, key="cmp_smooth",
                      help="Exponential moving average weight (0 = raw values).")
widgets.keep_in_url("x", x_label)
widgets.keep_in_url("smooth", round(smoothing, 2))
long = tables.compare_long(frames, metric, tables.X_AXES[x_label], smoothing)
if long.empty:
    st.info(f"None of the chosen runs logged {md(metric)}.", icon=":material/info:")
else:
    widgets.chart(charts.compare_figure(long, metric, x_label),
                  "One line per run. Use 'tokens seen' to compare runs with different batch sizes fairly; "
                  "smoothing only changes the drawing, never the table below.")

summary = tables.compare_summary(frames, flags)
st.subheader("Summary")
st.dataframe(plain_frame(summary), hide_index=True, width="stretch",
             column_config={"final_eval_accuracy": st.column_config.NumberColumn("final eval acc", format="%.3f"),
                            "best_eval_accuracy": st.column_config.NumberColumn("best eval acc", format="%.3f"),
                            "mean_grad_norm": st.column_config.NumberColumn("mean grad norm", format="%.3g"),
                            "final_response_len": st.column_config.NumberColumn("final resp. len", format="%.1f"),
                            "flags": st.column_config.TextColumn("health flags", width=380)})
st.caption("Final and best eval accuracy over the logged evaluations, mean gradient norm over all steps, the last "
           "response length, and the Health page's warnings (listed in full below).")
for run_label, text in flags.items():
    if text:
        st.markdown(f"**{md(run_label)}**: {md(text, None)}")
d1, d2 = st.columns(2)
d1.download_button("Download summary (CSV)", summary.to_csv(index=False), file_name="opd-lab-compare-summary.csv",
                   mime="text/csv")
d2.download_button(f"Download {metric} curves (CSV)", long.to_csv(index=False),
                   file_name=f"opd-lab-compare-{metric}.csv", mime="text/csv")
