"""Live page: watch runs train (progress, ETA, metrics, latest tokens, log tail) and stop, resume or fork them."""

import datetime as dt

import streamlit as st

from app import charts, state, tables, widgets
from app.inert import md
from app.sources import run_sources
from app.token_strip import colourable_columns, token_strip_html
from opd_core import checkpoints, launcher, runs
from opd_core.config import ConfigError

LIVE_STATE = "opd_live_runs"  # run ids to watch (the Launch page adds what it launches)
TAILS_STATE = "_live_tails"
WATCH_WIDGET = "_w_live_runs"
METRIC_CHOSEN = "_live_metric_chosen"  # set only when the user picks a metric; until then follow the default
REFRESH_S = 2.0
STATE_ICONS = {"queued": ":material/schedule:", "running": ":material/play_circle:",
               "finished": ":material/check_circle:", "stopped": ":material/stop_circle:",
               "failed": ":material/error:"}

widgets.header("Live", "Watch runs while they train, next to each other; stop, resume or fork them from a "
                       "checkpoint with one setting changed.")
runs_dir = run_sources()["runs"]
try:
    summaries = {s.run_id: s for s in launcher.list_runs(runs_dir)}  # pumps the queue
except Exception as exc:  # noqa: BLE001 - a damaged runs folder is named, not a traceback
    widgets.problem(str(runs_dir), exc)
    st.stop()
if not summaries:
    st.info(f"No runs in {md(runs_dir)} yet: start one on the Launch page.", icon=":material/info:")
    widgets.link_to("Launch", None, "Open the Launch page")
    st.stop()



def _keep_watch_list() -> None:
    """The user's edit of the watch list is the list from now on (the Launch page appends to it too)."""
    st.session_state[LIVE_STATE] = list(st.session_state[WATCH_WIDGET])


linked = widgets.url_list("watch")  # a shared link's watch list (?watch=a,b), once
if linked is not None:
    st.session_state[LIVE_STATE] = [r for r in linked if r in summaries]
if LIVE_STATE not in st.session_state:  # an emptied list stays empty: never refill a user's choice
    st.session_state[LIVE_STATE] = ([r for r, s in summaries.items() if s.state in runs.ACTIVE_STATES][:4]
                                    or [next(iter(summaries))])
# The list itself is kept whole: a run missing from one listing (being resumed, or its folder copied in
# again) comes back on the next refresh instead of silently leaving the watch list.
watched = [r for r in st.session_state[LIVE_STATE] if r in summaries]
missing = [r for r in st.session_state[LIVE_STATE] if r not in summaries]
st.session_state[WATCH_WIDGET] = watched
# Options are shown as bare run ids: a label that changes with the run's state (stopped -> running) changes
# the option's identity in the browser, which dropped a resumed run from the list.
chosen = st.multiselect("Runs to watch", list(summaries), key=WATCH_WIDGET, on_change=_keep_watch_list,
                        help="Each run's state is on its progress bar below.")
widgets.keep_list_in_url("watch", chosen)
if not chosen:
    if missing:
        st.info(f"Waiting for {', '.join(md(r) for r in missing)} to show in the runs folder…",
                icon=":material/hourglass:")

        @st.fragment(run_every=REFRESH_S)
        def _wait_for_missing() -> None:
            if any(r in {s.run_id for s in launcher.list_runs(runs_dir)} for r in missing):
                st.rerun(scope="app")

        _wait_for_missing()
    else:
        st.info("Pick at least one run above.", icon=":material/info:")
    st.stop()
added = [r for r in chosen if r not in st.session_state.get("_live_prev_chosen", chosen)]
if st.session_state.get("live_focus") not in chosen or added:  # a run just added to the list gets the focus
    st.session_state["live_focus"] = (added or chosen)[-1]
st.session_state["_live_prev_chosen"] = list(chosen)
widgets.url_choice("focus", "live_focus", chosen)
focus = st.selectbox("Controls, tokens and log for", chosen, key="live_focus")
widgets.keep_in_url("focus", focus)


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else str(dt.timedelta(seconds=int(seconds)))


def _tail(run_id: str) -> launcher.MetricsTail:
    tails = st.session_state.setdefault(TAILS_STATE, {})
    path = runs.run_path(runs_dir, run_id)
    if run_id not in tails or tails[run_id].run_dir != path:
        tails[run_id] = launcher.MetricsTail(path)
    tails[run_id].update()  # reads only the lines added since the last refresh
    return tails[run_id]


def _progress_row(run_id: str, frame) -> launcher.Progress:
    p = launcher.progress(runs.run_path(runs_dir, run_id), frame)
    total = p.total_steps or "?"
    text = (f"**{md(run_id)}** · {md(p.state)} · step {p.step} / {total} · elapsed {_duration(p.elapsed_s)}"
            + (f" · ETA {_duration(p.eta_s)}" if p.eta_s is not None else ""))
    st.progress(p.fraction, text=text)
    if p.state == "failed":
        st.error(f"{md(run_id)} failed: {md(p.error or 'no error recorded')}", icon=STATE_ICONS["failed"])
    stopped_by = runs.read_status(runs.run_path(runs_dir, run_id)).get("stopped_by")
    if p.state == "stopped" and isinstance(stopped_by, dict):
        st.warning(f"{md(run_id)} was stopped at step {md(stopped_by.get('step'))} by `stop_on_critical`: "
                   f"{md(stopped_by.get('finding'))}. Fix to try: {md(stopped_by.get('fix'))}; fork it from its "
                   "last checkpoint below.", icon=":material/health_and_safety:")
    return p


def _controls(run_id: str, p: launcher.Progress) -> None:
    run_dir = runs.run_path(runs_dir, run_id)
    c_stop, c_resume, c_fork = st.columns(3)
    if c_stop.button("Stop", key=f"live_stop:{run_id}", icon=":material/stop:",
                     disabled=p.state not in runs.ACTIVE_STATES,
                     help="SIGTERM: the trainer finishes the step, checkpoints and writes `stopped`."):
        launcher.stop(run_dir)
        st.toast(f"Stopping {md(run_id)}: it finishes the current step first.")
    if c_resume.button("Resume", key=f"live_resume:{run_id}", icon=":material/play_arrow:",
                       disabled=p.state not in ("stopped", "failed"), help="Continue from the last checkpoint."):
        launcher.resume(run_dir)
        st.toast(f"Resuming {md(run_id)} from its last checkpoint.")
        st.rerun()  # the whole page, so auto-refresh switches back on
    saved = checkpoints.list_checkpoints(run_dir)
    with c_fork.popover("Fork", icon=":material/call_split:", disabled=not saved):
        step = st.selectbox("From checkpoint step", list(reversed(saved)), key=f"live_fork_step:{run_id}")
        changes = st.text_area("Change settings (key=value, one per line)", key=f"live_fork_set:{run_id}",
                               placeholder="top_p=0.9\nmask_special_tokens=true")
        if st.button("Fork", key=f"live_fork_go:{run_id}", type="primary"):
            try:
                child = launcher.fork(run_dir, step, [ln.strip() for ln in changes.splitlines() if ln.strip()],
                                      runs_dir=runs_dir)
            except (ConfigError, launcher.LauncherError) as exc:
                st.error(md(exc, None), icon=":material/error:")
            else:
                st.session_state[LIVE_STATE] = [*st.session_state.get(LIVE_STATE, []), child.name]
                st.session_state["_live_forked"] = child.name
                st.rerun()


def _latest_tokens(run_id: str) -> None:
    run_dir = runs.run_path(runs_dir, run_id)
    steps = state.token_steps(run_dir)
    if not steps:
        st.caption("No token records yet (written every `log_tokens_every` steps).")
        return
    rows = state.tokens(run_dir, [steps[-1]], state.INSPECTOR_COLUMNS)
    if rows.empty:
        return
    sample = rows["sample"].min()
    rows = rows[rows["sample"] == sample].sort_values("pos")
    colour = next(iter(colourable_columns(rows.columns)), None)
    st.caption(f"Latest logged tokens: step {steps[-1]}, sample {sample}"
               + (f", coloured by {colour}" if colour else ""))
    if colour:
        st.html(token_strip_html(rows, colour, legend=False))


HEALTH_SEEN = "_live_health_seen"  # finding titles already shown per run, so only new ones raise a toast


def _live_health(run_id: str, active: bool) -> None:
    """The focus run's health findings, re-evaluated on its new records; a finding that appears is announced."""
    report = state.live_health_report(runs.run_path(runs_dir, run_id), active)
    findings = [f for f in report.findings if f.severity in ("critical", "warning", "info")]
    order = {"critical": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.severity])
    all_seen = st.session_state.setdefault(HEALTH_SEEN, {})
    looked = run_id in all_seen  # the first look at a run lists its findings; later appearances are news
    seen = all_seen.setdefault(run_id, set())
    for f in (f for f in findings if f.title not in seen and looked):
        st.toast(f"{md(run_id)}: new {f.severity} finding: {md(f.title)}", icon=":material/health_and_safety:")
    seen.update(f.title for f in findings)
    critical = sum(f.severity == "critical" for f in findings)
    label = (f"Health: {critical} critical, {len(findings) - critical} other finding(s)" if findings
             else "Health: no findings so far")
    with st.expander(label, expanded=critical > 0, icon=":material/health_and_safety:"):
        if not findings:
            st.caption("Re-evaluated as new token records are written; findings appear here as they emerge.")
        for f in findings:
            icon = {"critical": ":red[:material/error:]", "warning": ":orange[:material/warning:]"}.get(
                f.severity, ":blue[:material/info:]")
            st.markdown(f"{icon} **{md(f.title)}**  \n**Fix:** {md(f.fix, None)}")
        widgets.link_to("Health", None, "Open the full health report")


def live_view() -> None:
    """Everything that updates while the runs train (re-run every REFRESH_S seconds while any is active)."""
    launcher.pump(runs_dir)
    frames = {}
    active = False
    for run_id in chosen:
        try:
            frame = _tail(run_id).frame()
            p = _progress_row(run_id, frame)
        except Exception as exc:  # noqa: BLE001 - one damaged run is named; the others still update
            widgets.problem(run_id, exc)
            continue
        frames[run_id] = frame
        active = active or p.state in runs.ACTIVE_STATES
    options = tables.numeric_metrics(frames)
    if options:
        default = next((m for m in ("loss", "reverse_kl", "grad_norm") if m in options), options[0])
        link_metric = st.query_params.get("metric")  # a shared link's metric counts as the user's pick, once
        if link_metric in options and st.session_state.get("_url_metric") != link_metric:
            st.session_state[METRIC_CHOSEN] = link_metric
        chosen_metric = st.session_state.get(METRIC_CHOSEN)
        # A run's first line has only time_s: follow the default until the user picks, so the chart moves
        # on to the loss once it is logged instead of sticking on what was there first.
        st.session_state["live_metric"] = chosen_metric if chosen_metric in options else default
        metric = st.selectbox("Metric", options, key="live_metric",
                              on_change=lambda: st.session_state.__setitem__(METRIC_CHOSEN,
                                                                             st.session_state["live_metric"]))
        widgets.keep_in_url("metric", metric)
        long = tables.compare_long(frames, metric, "step", 0.0)
        widgets.chart(charts.compare_figure(long, metric), "One line per run, by step. A fork starts at its fork "
                      "step + 1, so it lines up with its parent.", key="live_chart")
    else:
        st.caption("No metrics logged yet.")
    st.subheader(md(focus))
    try:
        p = launcher.progress(runs.run_path(runs_dir, focus), frames.get(focus))
    except Exception as exc:  # noqa: BLE001
        widgets.problem(focus, exc)
        return
    if p.state == "finished":
        st.success(f"{md(focus)} finished ({p.step} steps).", icon=STATE_ICONS["finished"])
    elif p.state == "stopped":
        st.info(f"{md(focus)} stopped at step {p.step}; Resume continues from its last checkpoint.",
                icon=STATE_ICONS["stopped"])
    try:
        _controls(focus, p)
    except Exception as exc:  # noqa: BLE001 - damaged checkpoints hide the controls, not the page
        widgets.problem(focus, exc)
    if st.session_state.get("_live_forked"):
        st.success(f"Forked into {md(st.session_state['_live_forked'])} (now watched above).", icon=":material/check:")
    try:
        _live_health(focus, p.state in runs.ACTIVE_STATES)
    except Exception as exc:  # noqa: BLE001 - a report that cannot be made is named, the view stays
        widgets.problem(focus, exc)
    try:
        _latest_tokens(focus)
    except Exception as exc:  # noqa: BLE001 - a damaged token file hides the strip, not the controls
        widgets.problem(focus, exc)
    with st.expander("Log tail", expanded=p.state == "failed"):
        try:
            st.code(launcher.log_tail(runs.run_path(runs_dir, focus)) or "(empty)", language=None)
        except Exception as exc:  # noqa: BLE001 - a damaged log.txt is named; the rest of the view stays
            widgets.problem(focus, exc)
    if active != st.session_state.get("_live_active", active):
        st.session_state["_live_active"] = active
        st.rerun(scope="app")  # switch auto-refresh on or off
    st.session_state["_live_active"] = active


any_active = any(summaries[r].state in runs.ACTIVE_STATES for r in chosen)
st.session_state["_live_active"] = any_active
st.fragment(run_every=REFRESH_S if any_active else None)(live_view)()
