"""Reusable Streamlit pieces every page shares: the run pickers (kept across pages and in the URL), the
step-window picker, the empty-state notice and a chart with its how-to-read caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import streamlit as st

from app import state
from app.inert import md
from app.navigation import page
from app.sources import RunRef, discover_runs, resolve_run_key, run_sources
from opd_core import runs

RUN_STATE = "opd_run"
RUNS_STATE = "opd_runs"
_RUN_WIDGET = "_w_run"
_RUNS_WIDGET = "_w_runs"
_URL_SEEN = "_opd_url_run"  # the ?run= value last written or adopted, so only a *new* link overrides a choice
# The README's walk-through starts from the baseline; Compare starts from it and the three fixes.
README_RUN = "baseline-sampled-token"
DEFAULT_COMPARE = ("baseline-sampled-token", "masked-sampled-token", "top-p-sampled-token", "topk-support")


def default_run(refs: Sequence[RunRef]) -> RunRef:
    """The run a page opens on: the user's newest run, else the sample the README starts from."""
    own = [r for r in refs if r.source != "samples"]
    if own:
        return own[0]
    return next((r for r in refs if r.run_id == README_RUN), refs[0])


def default_compare(refs: Sequence[RunRef], count: int = 4) -> list[str]:
    """Compare's first selection: the user's newest runs, else the baseline sample and the three fixes."""
    own = [r.key for r in refs if r.source != "samples"]
    if own:
        return own[:count]
    by_id = {r.run_id: r.key for r in refs}
    picked = [by_id[n] for n in DEFAULT_COMPARE if n in by_id]
    return picked or [r.key for r in refs[:count]]


def problem(run: RunRef | str, exc: BaseException) -> None:
    """Say, for one run, which file is damaged and how, instead of a traceback (the rest still shows)."""
    label = run.label if isinstance(run, RunRef) else run
    st.warning(f"**{md(label)}** cannot be read here: {md(describe(exc))}", icon=":material/broken_image:")


def describe(exc: BaseException) -> str:
    """A one-line reason for a damaged run: ``path: reason`` for a RunFileError, the error type otherwise."""
    from opd_core.runs import RunFileError

    if isinstance(exc, RunFileError):
        return str(exc)
    filename = getattr(exc, "filename", None)
    where = f"{filename}: " if filename else ""
    return f"{where}{type(exc).__name__}: {exc}"


def header(title: str, intro: str) -> None:
    """Page title and one sentence saying what the page answers."""
    st.title(title)
    st.caption(intro)


def guarded(run: RunRef, fn, *args, **kwargs):  # noqa: ANN001, ANN201 - any reader
    """Call a reader of ``run``; a damaged file shows as that run's named problem and stops this page only."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any damage in a run dir must not take the page down
        problem(run, exc)
        st.caption("Pick another run above; the other runs are not affected.")
        st.stop()


def runs_or_notice() -> list[RunRef]:
    """All visible runs; when there are none, say where we looked and how to make one, and stop the page."""
    refs = discover_runs()
    if not refs:
        folders = ", ".join(f"`{p}`" for p in run_sources().values())
        st.info(f"No runs found yet (looked in {folders}). Start one with "
                "`opd-lab train baseline` (a shipped example), or point the dashboard at a folder of runs with "
                "`opd-lab --runs-dir PATH`.", icon=":material/info:")
        st.stop()
    return refs


def _adopt_url_run(refs: Sequence[RunRef]) -> None:
    """A `?run=` in the URL (a shared link, a page link) selects that run when it is one of ours."""
    key = st.query_params.get("run")
    if key is None or key == st.session_state.get(_URL_SEEN) or key == st.session_state.get(RUN_STATE):
        return
    st.session_state[_URL_SEEN] = key
    ref = resolve_run_key(key)
    if ref is not None and ref.key in {r.key for r in refs}:
        st.session_state[RUN_STATE] = ref.key
    else:
        st.warning("The run named in the link is not available here; showing another run.", icon=":material/link_off:")


def _remember(widget_key: str, state_key: str) -> None:
    st.session_state[state_key] = st.session_state[widget_key]


def pick_run(refs: Sequence[RunRef], label: str = "Run") -> RunRef:
    """Select one run; the choice follows the user from page to page and is written to the URL."""
    _adopt_url_run(refs)
    by_key = {r.key: r for r in refs}
    current = st.session_state.get(RUN_STATE)
    if current not in by_key:
        current = default_run(refs).key
    st.session_state[RUN_STATE] = current
    st.session_state[_RUN_WIDGET] = current
    choice = st.selectbox(label, list(by_key), key=_RUN_WIDGET, format_func=lambda k: by_key[k].label,
                          on_change=_remember, args=(_RUN_WIDGET, RUN_STATE),
                          help="Sample runs ship with OPD Lab; your runs come from --runs-dir.")
    st.query_params["run"] = choice
    st.session_state[_URL_SEEN] = choice
    show_problems(by_key[choice])
    return by_key[choice]


def show_problems(run: RunRef) -> None:
    """Name the run's damaged files (``path: reason`` each) above what the page can still show of it."""
    try:
        problems = list(getattr(runs.summarize_run(run.path), "problems", None) or [])
    except Exception as exc:  # noqa: BLE001 - an engine that still raises is named the same way
        problems = [describe(exc)]
    if problems:
        shown = "; ".join(md(p) for p in problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6
                                                           else "")
        st.warning(f"**{md(run.label)}** has damaged files, left out of what follows: {shown}",
                   icon=":material/broken_image:")


def pick_runs(refs: Sequence[RunRef], label: str = "Runs", default_count: int = 4) -> list[RunRef]:
    """Select several runs (for Compare); the choice is kept across pages and in the URL (``?runs=a,b``)."""
    by_key = {r.key: r for r in refs}
    linked = url_list("runs")
    if linked is not None:
        st.session_state[RUNS_STATE] = [k for k in linked if k in by_key]
    if RUNS_STATE in st.session_state:  # an empty selection is a choice too: never refill it
        current = [k for k in st.session_state[RUNS_STATE] if k in by_key]
    else:
        current = default_compare(refs, default_count)
    st.session_state[RUNS_STATE] = current
    st.session_state[_RUNS_WIDGET] = current
    chosen = st.multiselect(label, list(by_key), key=_RUNS_WIDGET, format_func=lambda k: by_key[k].label,
                            on_change=_remember, args=(_RUNS_WIDGET, RUNS_STATE))
    keep_list_in_url("runs", chosen)
    return [by_key[k] for k in chosen]


def set_selected_runs(keys: Sequence[str]) -> None:
    """Hand a selection to the Compare page (used by the Runs page)."""
    st.session_state[RUNS_STATE] = list(keys)


def pick_step_window(run: RunRef, steps: Sequence[int], key: str) -> list[int]:
    """Choose which logged steps a page analyses (default: the last few, so big runs stay fast)."""
    if len(steps) <= 1:
        if steps:
            st.caption(f"Analysing the only logged step, {steps[0]}.")
        return list(steps)
    widget = f"{key}:{run.key}"
    link = st.query_params.get("steps")  # "LO-HI" from a shared link: applied once, then the slider rules
    if link and st.session_state.get(f"_url_steps:{key}") != link:
        st.session_state[f"_url_steps:{key}"] = link
        try:
            lo, hi = (int(v) for v in link.split("-", 1))
            if lo in steps and hi in steps and lo <= hi:
                st.session_state[widget] = (lo, hi)
        except ValueError:
            pass
    default = state.default_steps(steps)
    kwargs = {} if widget in st.session_state else {"value": (default[0], default[-1])}
    lo, hi = st.select_slider("Logged steps analysed", options=list(steps), key=widget,
                              help="Token records of these steps are read. Widen to all steps for the whole run "
                                   "(slower on very large runs).", **kwargs)
    st.query_params["steps"] = f"{lo}-{hi}"
    st.session_state[f"_url_steps:{key}"] = f"{lo}-{hi}"
    return [s for s in steps if lo <= s <= hi]


def no_tokens_notice(run: RunRef) -> None:
    """Say that a run has no per-token records (yet) and stop the page."""
    st.info(f"Run {run.label} has no per-token records yet: the trainer writes them every "
            "`log_tokens_every` steps. Metrics are on the Runs and Compare pages.", icon=":material/hourglass:")
    st.stop()


def step_damage_notice(run: RunRef, step: int, where=st) -> bool:
    """Name a damaged token file of the step a page shows (``tokens/step_N.parquet: reason``) and how to go
    on; True when there was one (its records cannot be shown, the other steps' still can)."""
    damage = state.token_step_problem(run.path, step)
    if damage is not None:
        where.error(f"Step {step} of **{md(run.label)}** cannot be shown: {md(damage)}. Pick another step; the "
                    "other steps' records are unaffected (a trainer rewrites this file only if the step is run "
                    "again, e.g. by resuming from an earlier checkpoint).", icon=":material/broken_image:")
    return damage is not None


def stop_if_step_damaged(run: RunRef, step: int, where=st) -> None:
    """``step_damage_notice``, then stop the page there when the step cannot be shown."""
    if step_damage_notice(run, step, where):
        st.stop()


def chart(fig: go.Figure, how_to_read: str, key: str | None = None) -> None:
    """A plotly figure full-width, with a sentence under it saying how to read it."""
    st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False})
    st.caption(how_to_read)


def link_to(title: str, run: RunRef | None = None, label: str | None = None) -> None:
    """A link to another page (by title), carrying the current run in the URL."""
    target = page(title)
    if target is None:
        return
    st.page_link(target, label=label or f"Open {title}", icon=":material/arrow_forward:",
                 query_params={"run": run.key} if run else None)


def fmt(value: object, spec: str = ".3g") -> str:
    """A number for a metric tile ('–' for missing)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v else format(v, spec)


def url_choice(param: str, widget_key: str, options: Sequence[object]) -> None:
    """Let ``?param=`` from a shared link set a choice widget once (before it is drawn); :func:`keep_in_url`
    writes the choice back, so the address bar always reopens the same view. Options that are not strings
    (steps, sample numbers, yes/no) match by their text."""
    value = st.query_params.get(param)
    seen = f"_url_{param}"
    by_text = {str(o): o for o in options}
    if value is not None and value in by_text and st.session_state.get(seen) != value:
        st.session_state[widget_key] = by_text[value]
    st.session_state[seen] = value


def url_list(param: str) -> list[str] | None:
    """A list selection from a shared link (``?param=a,b``; empty = an emptied list), once per new link value;
    None when the URL has no new value. The caller keeps the members it knows."""
    value = st.query_params.get(param)
    seen = f"_url_{param}"
    if value is None or st.session_state.get(seen) == value:
        return None
    st.session_state[seen] = value
    return [v for v in value.split(",") if v]


def keep_list_in_url(param: str, values: Sequence[object]) -> None:
    """Write a list selection into the URL (see :func:`url_list`)."""
    keep_in_url(param, ",".join(str(v) for v in values))


def keep_in_url(param: str, value: object) -> None:
    """Write one of the page's main selections into the URL (see :func:`url_choice`)."""
    st.query_params[param] = str(value)
    st.session_state[f"_url_{param}"] = str(value)
