"""Launch page: start a run (or fork one at a checkpoint) from a form of every config field, then watch it
on the Live page."""

import streamlit as st

from app import config_form, widgets
from app.inert import md
from app.sources import run_sources
from opd_core import checkpoints, launcher, runs
from opd_core.config import ConfigError

LIVE_STATE = "opd_live_runs"  # run ids the Live page watches (shared with pages/live.py)
FORM = "launch"
LAUNCH_BAR_CSS = """<style>
.st-key-launch_bar{position:fixed;bottom:0;right:0;left:auto;width:min(100%, 64rem);z-index:999990;
  background:rgba(255,255,255,0.97);border-top:1px solid #e5e7eb;box-shadow:0 -4px 12px rgba(0,0,0,0.06);
  padding:0.6rem 1.5rem 0.7rem 1.5rem;}
.stMainBlockContainer{padding-bottom:7rem;}
</style>"""

widgets.header("Launch", "Try a fix without leaving the dashboard: start from a preset or an earlier run, change "
                         "a setting, launch, and watch it train next to the baseline.")
runs_dir = run_sources()["runs"]
existing = launcher.list_runs(runs_dir)  # also pumps the queue
by_id = {s.run_id: s for s in existing}
sources = [f"preset:{p}" for p in config_form.presets()] + [f"run:{s.run_id}" for s in existing]


def _label(option: str) -> str:
    kind, name = option.split(":", 1)
    if kind == "preset":
        return f"preset: {name}"
    # No state or step in the label: a label that changes while the run trains changes the option's identity.
    return f"run: {name}"


def _values(option: str) -> dict:
    kind, name = option.split(":", 1)
    return config_form.preset_values(name) if kind == "preset" else config_form.run_values(by_id[name].path)


def _load_source() -> None:
    config_form.load_values(_values(st.session_state["launch_source"]), FORM)


if st.session_state.get("launch_source") not in sources:
    st.session_state["launch_source"] = "preset:baseline" if "preset:baseline" in sources else sources[0]
    _load_source()
c_source, c_start, c_name = st.columns([2, 2, 2])
source = c_source.selectbox("Start from", sources, key="launch_source", format_func=_label, on_change=_load_source,
                            help="A shipped preset, or an existing run's settings (to rerun or fork it).")
fork_step = None
if source.startswith("run:"):
    parent = by_id[source[4:]]
    saved = checkpoints.list_checkpoints(parent.path)
    if saved:
        choice = c_start.selectbox("Begin", [None, *reversed(saved)], key=f"launch_fork:{parent.run_id}",
                                   format_func=lambda s: "from scratch (new run, same settings)" if s is None
                                   else f"fork at checkpoint step {s}",
                                   help="A fork continues the run's weights and optimizer from that checkpoint, so "
                                        "the difference you see is the setting you change and nothing else.")
        fork_step = choice
    else:
        c_start.caption("This run has no checkpoint yet, so it can only be rerun from scratch.")
name = c_name.text_input("Run name (optional)", key="launch_name",
                         help="1-64 characters from A-Z a-z 0-9 . _ -; empty = objective + time.").strip() or None

# The Launch button lives in a bar pinned to the bottom of the window, so it is in reach wherever the form is
# scrolled; it is filled after the form so it launches what the form holds.
st.html(LAUNCH_BAR_CSS)
bar = st.container(key="launch_bar")
values, errors = config_form.config_form(_values(source), FORM)
label = f"Fork at step {fork_step}" if fork_step is not None else "Launch"
with bar:
    c_go, c_state = st.columns([1, 4], vertical_alignment="center")
    go = c_go.button(label, type="primary", disabled=bool(errors), icon=":material/rocket_launch:", key="launch_go")
    c_state.caption(f"{len(errors)} field(s) to fix before launching (marked in the form)." if errors else
                    f"Ready: {md(values.get('objective'))} on {md(values.get('student'))}, "
                    f"{md(values.get('steps'))} steps.")
with bar:
    if go:
        try:
            if fork_step is not None:
                changes = {k: v for k, v in config_form.to_config(values).to_dict().items()
                           if k not in config_form.LINEAGE}
                run_dir = launcher.fork(by_id[source[4:]].path, fork_step, changes, runs_dir=runs_dir, name=name)
            else:
                run_dir = launcher.launch(config_form.to_config(values), runs_dir, name)
        except (ConfigError, launcher.LauncherError, runs.RunDirError) as exc:
            st.error(md(exc, None), icon=":material/error:")
        else:
            watched = [r for r in st.session_state.get(LIVE_STATE, []) if r != run_dir.name]
            st.session_state[LIVE_STATE] = [*watched, run_dir.name]
            st.success(f"Run **{md(run_dir.name)}** is {md(runs.read_status(run_dir).get('state'))}.",
                       icon=":material/check:")
            widgets.link_to("Live", None, "Watch it on the Live page")

st.subheader("Queue")
c_limit, c_info = st.columns([1, 3])
limit = c_limit.number_input("Runs at once", min_value=1, max_value=64, step=1, key="launch_limit",
                             value=launcher.queue_limit(runs_dir),
                             help="Launches beyond this wait as queued and start in order as others end.")
if limit != launcher.queue_limit(runs_dir):
    launcher.set_queue_limit(runs_dir, int(limit))
active = [s for s in runs.list_runs(runs_dir) if s.state in runs.ACTIVE_STATES]  # after any launch above
c_info.caption(f"{sum(s.state == 'running' for s in active)} running, {sum(s.state == 'queued' for s in active)} "
               f"queued in `{runs_dir}`. Runs keep training when this page closes; stop, resume and fork them on "
               "the Live page or with `opd-lab runs`.")
widgets.link_to("Live", None, "Open the Live page")
