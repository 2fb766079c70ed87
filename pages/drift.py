"""Teacher under drift page (failure mode 2): does the teacher stay reliable on the student's prefixes?"""

import streamlit as st

from app import charts, state, widgets

MEASURES = {"tokens_since_off_support": "tokens since leaving the teacher's top-p support",
            "drift": "cumulative log-ratio so far (drift)", "prefix_wrong": "an earlier step is already wrong"}

widgets.header("Teacher under drift", "Failure mode 2 — once the student's prefix drifts off what the teacher "
                                      "knows, the teacher's guidance goes flat or confidently wrong.")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
steps = widgets.guarded(run, state.token_steps, run.path)
if not steps:
    widgets.no_tokens_notice(run)
chosen = widgets.pick_step_window(run, steps, "drift_steps")
present = set(widgets.guarded(run, state.token_columns, run.path))
measures = [m for m in MEASURES if m in present]
if not measures:
    st.info("This run's token records have no drift measure (drift, tokens_since_off_support or prefix_wrong).",
            icon=":material/info:")
    st.stop()
c1, c2, c3 = st.columns([2, 2, 1])
widgets.url_choice("measure", "drift_measure", measures)
widgets.url_choice("stat", "drift_stat", list(charts.STAT_TITLES))
measure = c1.selectbox("Drift measured as", measures, format_func=MEASURES.get, key="drift_measure")
stat = c2.selectbox("Teacher statistic", list(charts.STAT_TITLES), format_func=charts.STAT_TITLES.get,
                    key="drift_stat")
widgets.keep_in_url("measure", measure)
widgets.keep_in_url("stat", stat)
st.session_state.setdefault("drift_bins", 8)
widgets.url_choice("bins", "drift_bins", list(range(2, 13)))
bins = c3.slider("Bins (at most)", 2, 12, key="drift_bins",
                 help="Equal-count bins: where many tokens share a value, neighbouring bins merge, so fewer may be "
                      "drawn. The chart's caption says how many.")
widgets.keep_in_url("bins", bins)
view = widgets.guarded(run, state.drift_view, run.path, chosen, measure, bins)
summary = view["summary"]

c = st.columns(4)
c[0].metric("teacher entropy, drifted", widgets.fmt(summary.get("teacher_entropy_drifted")))
c[1].metric("teacher entropy, on-support", widgets.fmt(summary.get("teacher_entropy_undrifted")))
c[2].metric("teacher entropy, own rollouts", widgets.fmt(summary.get("teacher_entropy_reference")),
            help="Teacher-prefix rollouts, logged as the reference line (not trained on).")
c[3].metric("drifted share of tokens", widgets.fmt(summary.get("drifted_share"), ".0%"))

drawn = view["by_drift"]["bin_label"].nunique() if len(view["by_drift"]) else 0
widgets.chart(charts.teacher_vs_drift_figure(view["by_drift"], stat, view["reference"]),
              f"{drawn} bins drawn (of at most {bins}). Each point is the mean teacher statistic over tokens in that drift bin. If the red line (student "
              "prefixes) climbs in entropy or falls in top-1 probability as drift grows while the dashed line "
              "(teacher on its own rollouts) stays low, the teacher is guessing where the student drifted.")
if not view["reference"].get("n"):
    st.caption("This run logged no teacher-prefix rollouts, so there is no reference line; set lmbda > 0 (or use "
               "OPD Lab's engine, which logs a few as the reference) to see the teacher on its own prefixes.")
if view["support"] is not None and len(view["support"]):
    widgets.chart(charts.support_figure(view["support"]),
                  "The student's probability mass inside the teacher's top-K per step. A fall toward zero is "
                  "support collapse: the student has left the tokens the teacher can vouch for.")
with st.expander("Numbers behind the chart"):
    st.dataframe(view["by_drift"], hide_index=True, width="stretch")

# ----------------------------------------------------------------------------- teacher reliability as correctness
import pandas as pd  # noqa: E402

from app import charts_paper  # noqa: E402
from opd_core import rescue_runs as _rescue  # noqa: E402
from opd_core.diagnostics import drift as _drift  # noqa: E402

st.subheader("Can the teacher still finish correctly? (rescue rate)")
_rescued = _rescue.read_rescue(run.path)
if _rescued is None:
    st.info("No rescue table for this run yet: `opd-lab rescue RUN_DIR` cuts the logged student responses, lets the "
            "teacher continue and grades the result (writes rescue.json).", icon=":material/info:")
else:
    _s = _rescued["summary"]
    c = st.columns(4)
    c[0].metric("rescued, drifted prefixes", widgets.fmt(_s.get("rescue_rate_drifted"), ".0%"))
    c[1].metric(f"…mild drift (≤ {_s.get('mild_max_since_error', 2)} tokens)",
                widgets.fmt(_s.get("rescue_rate_mild"), ".0%"))
    c[2].metric(f"…far drift (≥ {_s.get('far_min_since_error', 16)} tokens)",
                widgets.fmt(_s.get("rescue_rate_far"), ".0%"))
    c[3].metric("…teacher's own prefixes", widgets.fmt(_s.get("rescue_rate_teacher_own"), ".0%"))
    widgets.chart(charts_paper.rescue_figure(pd.DataFrame(_rescued["by_since_error"]), _s),
                  "Each point: of the student prefixes cut that many tokens after its first wrong token, the share "
                  "the teacher continued to a correct answer. A line falling far below the dashed teacher line means "
                  "the teacher cannot be trusted where the student drifted.", key="drift_rescue")
    st.caption(f"Confidently wrong: {widgets.fmt(_s.get('confidently_wrong_share'), '.0%')} of drifted cuts had "
               "teacher top-1 probability ≥ 0.9 and still were not rescued.")

st.subheader("Teacher entropy by absolute position")
_pos_tokens = state.tokens(run.path, steps, list(_drift.POSITION_COLUMNS))
widgets.chart(charts_paper.position_entropy_figure(_drift.stats_by_position(_pos_tokens)),
              "The seed's view: teacher entropy at each response position on its own rollouts (blue), the student's "
              "first logged rollouts (orange) and its latest (red). Red above blue at the same position = the "
              "teacher is less sure on the student's text.", key="drift_pos_entropy")
widgets.chart(charts_paper.drifted_by_position_figure(_drift.drifted_by_position(_pos_tokens)),
              "Within each position bucket: teacher entropy on drifted student prefixes (red) against on-support "
              "ones (green) and its own rollouts (blue). A red bar taller than green at the same position is drift, "
              "not position.", key="drift_matched")
