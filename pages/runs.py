"""Runs page: every run with status, objective, last metrics, health flags and settings; pick some."""

import pandas as pd
import streamlit as st

from app import charts, state, tables, widgets
from app.inert import md, plain, text_table_html
from opd_core import runs

widgets.header("Runs", "Every run OPD Lab can see: the shipped samples and yours. Pick one to diagnose, "
                       "or several to compare.")
refs = widgets.runs_or_notice()

rows = []
for ref in refs:
    try:
        rows.append(tables.run_row(ref.key, ref.label, runs.summarize_run(ref.path),
                                   state.last_metrics(ref.path, tables.LAST_METRICS), state.health_report(ref.path)))
    except Exception as exc:  # noqa: BLE001 - one damaged run is one row that says so, never a blank page
        rows.append(tables.damaged_row(ref.key, ref.label, widgets.describe(exc)))
table = pd.DataFrame(rows).map(lambda v: plain(v) if isinstance(v, str) else v)
# What tells runs apart at a glance, in widths that fit a 1440 px window without scrolling sideways; the
# settings, the health flags in words and the models are in the details view below.
st.dataframe(
    table, hide_index=True, width="stretch",
    column_order=["run", "status", "objective", "progress", "loss", "eval_accuracy", "response_len", "grad_norm",
                  "signal_gini", "health"],
    column_config={
        "run": st.column_config.TextColumn("run", width=222, pinned=True),
        "status": st.column_config.TextColumn("status", width=78),
        "objective": st.column_config.TextColumn("objective", width=112),
        "progress": st.column_config.TextColumn("step", width=72),
        "loss": st.column_config.NumberColumn("loss", format="%.4g", width=62),
        "eval_accuracy": st.column_config.NumberColumn("eval acc", format="%.3f", width=64),
        "response_len": st.column_config.NumberColumn("resp. len", format="%.1f", width=68),
        "grad_norm": st.column_config.NumberColumn("grad norm", format="%.3g", width=74),
        "signal_gini": st.column_config.NumberColumn("Gini", format="%.2f", width=52,
                                                     help="Gini coefficient of |signal| over tokens"),
        "health": st.column_config.TextColumn("health", width=140,
                                              help="Counts of the Health page's critical and warning findings"),
    },
)
st.caption("Status comes from status.json with the trainer's process checked (a run whose process died shows "
           "as failed, stale). Metrics are the last logged values; health counts the Health page's critical "
           "and warning findings (and damaged files). Each run's settings and flags in words are below.")
with st.expander("Settings, health flags and models of every run", icon=":material/tune:"):
    details = table[["run", "settings", "flags", "student", "teacher"]].rename(columns={"flags": "health flags"})
    st.html(text_table_html(details))  # wraps (no sideways scroll) and renders no Markdown from run files

st.subheader("Pick runs")
run = widgets.pick_run(refs, "Diagnose this run")
chosen = widgets.pick_runs(refs, "Compare these runs")  # the Compare page's selection, kept in the URL too
cols = st.columns(4)
with cols[0]:
    widgets.link_to("Health", run, "Health report")
with cols[1]:
    widgets.link_to("Token inspector", run, "Read its tokens")
with cols[2]:
    widgets.link_to("Imbalance", run, "Failure-mode pages")
with cols[3]:
    widgets.link_to("Compare", None, f"Compare {len(chosen)} runs")

st.subheader(f"Run {md(run.label)}")
summary = widgets.guarded(run, runs.summarize_run, run.path)
status = widgets.guarded(run, runs.read_status, run.path)
c = st.columns([1, 1, 2, 1])
c[0].metric("status", md(summary.state))
c[1].metric("step", f"{summary.step or 0}" + (f" / {summary.total_steps}" if summary.total_steps else ""))
c[2].metric("objective", md(summary.objective or "–"))
c[3].metric("logged token steps", len(widgets.guarded(run, state.token_steps, run.path)))
if isinstance(status, dict) and status.get("error"):
    st.warning(f"This run reports: {md(status['error'])}", icon=":material/report:")
metrics = widgets.guarded(run, state.metrics, run.path)
widgets.chart(charts.metrics_overview_figure(metrics, ["loss", "eval_accuracy", "grad_norm", "response_len"]),
              "Each panel is one metric over training steps; eval accuracy is logged every eval_every steps.")
with st.expander("Full configuration"):
    st.json(summary.config if isinstance(summary.config, dict) else {})

with st.expander("Score rollouts saved by another trainer (verl, TRL, JSONL)", icon=":material/playlist_add_check:"):
    # Imports kept inside: this section is the Runs page's one engine action (issue #19).
    from app.sources import run_sources
    from opd_core import launcher, rescoring
    from opd_core.objectives import list_objectives

    K = "score_rollouts:"
    st.caption("Re-score a run that already happened: the rollouts a trainer saved (a file or folder on the machine "
               "running this dashboard) are scored by the teacher and the student checkpoint of each step, into a "
               "run like any other. It runs in the background like a launched training run; docs/integrations.md "
               "section 4 lists the flags that make verl and TRL save them.")
    with st.form("score_rollouts"):
        source = st.text_input("Rollouts file or folder", placeholder="/data/run1/rollouts", key=K + "source")
        c = st.columns(2)
        teacher = c[0].text_input("Teacher (checkpoint folder or toy preset)", "toy:matched", key=K + "teacher")
        student = c[1].text_input("Student (scores the steps without a checkpoint below)", "toy:matched",
                                  key=K + "student")
        student_at = st.text_area("Student checkpoint per step (optional): STEP=FOLDER, one per line",
                                  key=K + "student_at")
        c = st.columns(3)
        objective = c[0].selectbox("Objective (defines the signal)", list_objectives(), key=K + "objective")
        settings = c[1].text_input("Settings (key=value, comma-separated)", placeholder="k=32, top_p=0.9",
                                   key=K + "settings")
        columns = c[2].text_input("Columns, if not recognised", placeholder="prompt=question,response=answer",
                                  key=K + "columns")
        raw = st.checkbox("Prompts are already rendered (no chat template)", key=K + "raw")
        name = st.text_input("Run name (optional)", key=K + "name")
        submitted = st.form_submit_button("Score rollouts", icon=":material/play_arrow:", key=K + "go")
    if submitted:
        runs_dir = run_sources()["runs"]
        try:
            job = rescoring.prepare_job(source.strip(), teacher=teacher.strip(), student=student.strip(),
                                        student_at=rescoring.split_items(student_at), objective=objective,
                                        settings=rescoring.split_items(settings),
                                        column_map=rescoring.parse_map(columns), raw=raw, runs_dir=runs_dir,
                                        name=name.strip() or None)
            launcher.pump(runs_dir)
            st.success(f"Scoring started in the background as run {md(job.name)}; it joins the table above as it "
                       "writes its steps.", icon=":material/check_circle:")
        except ValueError as exc:
            st.error(md(str(exc)), icon=":material/error:")
