"""Cached reads of run directories, keyed on file modification times, so pages stay fast and fresh.

Every function takes a run directory and returns small, ready-to-draw results. The cache key includes
the modification time (and size) of the files read, so a live run's new steps show on the next rerun
while an unchanged run is never read twice. Big token tables are never cached whole: the cached
functions return what diagnostics made of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from opd_core import runs
from opd_core.diagnostics import collapse, drift, imbalance, mismatch
from opd_core.schema import TOKEN_COLUMNS

# Columns each view reads: the analyses' own declarations (opd_core.diagnostics.*.COLUMNS, opd_core.schema),
# plus what the page shows beside them; optional ones missing from a run are ignored by runs.read_tokens.
IMBALANCE_COLUMNS = tuple(dict.fromkeys((*imbalance.COLUMNS, "token_id")))
DRIFT_COLUMNS = tuple(dict.fromkeys((*drift.COLUMNS, *collapse.COLUMNS, "log_ratio", "signal")))
MISMATCH_COLUMNS = tuple(dict.fromkeys((*mismatch.COLUMNS, "token_id")))
INSPECTOR_COLUMNS = tuple(dict.fromkeys((
    *TOKEN_COLUMNS, "is_eos", "teacher_topk_tokens", "student_topk_tokens", "tokens_since_off_support",
    "prefix_wrong", "student_support_mass", "topk_overlap", "teacher_token", "reference_only", "response_text",
    "prompt", "correct", "reward", "format_ok", "teacher_pieces", "token_raw", "aligned", "masked_reason", "teacher_own_topk")))
DEFAULT_STEP_WINDOW = 8
# Entries of the caches that hold one small result per run (metrics, config, health, ...). The Runs page reads
# every run on each rerun, in the same order: with fewer entries than runs, the least-recently-used cache
# evicts each run just before it is needed again, and every rerun recomputes every run's health report.
PER_RUN_ENTRIES = 1024


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a file, (0, 0) when absent: the part of a cache key that notices changes."""
    try:
        st_ = path.stat()
    except OSError:
        return (0, 0)
    return (st_.st_mtime_ns, st_.st_size)


def run_stamp(run_dir: str | Path) -> tuple:
    """A cheap fingerprint of everything a run's pages read (metrics, status, token files, alignment)."""
    d = Path(run_dir)
    return (_stamp(d / runs.METRICS_FILE), _stamp(d / runs.STATUS_FILE), _stamp(d / runs.CONFIG_FILE),
            _stamp(d / runs.TOKENS_DIR), _stamp(d / "alignment.json"))


def _token_stamp(run_dir: str | Path, steps: Sequence[int]) -> tuple:
    return tuple(_stamp(runs.token_file(run_dir, s)) for s in steps)


# ----------------------------------------------------------------------------- plain reads


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _metrics(path: str, stamp: tuple) -> pd.DataFrame:
    return runs.read_metrics(path)


def metrics(run_dir: str | Path) -> pd.DataFrame:
    """All per-step metrics of a run (re-read only when metrics.jsonl changes)."""
    return _metrics(str(run_dir), _stamp(Path(run_dir) / runs.METRICS_FILE))


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _last_metrics(path: str, names: tuple[str, ...], stamp: tuple) -> dict[str, float | None]:
    from app.tables import last_value

    frame = runs.read_metrics(path)
    return {name: last_value(frame, name) for name in names}


def last_metrics(run_dir: str | Path, names: Sequence[str]) -> dict[str, float | None]:
    """The last logged value of each named metric (None when never logged): the Runs table's row reads these
    few numbers, not the whole metrics table, for every run on every rerun."""
    return _last_metrics(str(run_dir), tuple(names), _stamp(Path(run_dir) / runs.METRICS_FILE))


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _config(path: str, stamp: tuple) -> dict:
    config = runs.read_config(path)
    return config if isinstance(config, dict) else {}


def config(run_dir: str | Path) -> dict:
    """The run's config.json as a dict (empty when it is missing or not an object)."""
    return _config(str(run_dir), _stamp(Path(run_dir) / runs.CONFIG_FILE))


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _alignment(path: str, stamp: tuple) -> dict | None:
    from opd_core.diagnostics import mismatch

    return mismatch.load_alignment(path)


def alignment(run_dir: str | Path) -> dict | None:
    """The run's alignment.json (the tokenizer comparison), or None when absent or damaged."""
    return _alignment(str(run_dir), _stamp(Path(run_dir) / "alignment.json"))


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _token_steps(path: str, stamp: tuple) -> list[int]:
    return runs.token_steps(path)


def token_steps(run_dir: str | Path) -> list[int]:
    """Steps that have per-token records (re-listed only when the tokens folder changes)."""
    return _token_steps(str(run_dir), _stamp(Path(run_dir) / runs.TOKENS_DIR))


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _step_problem(path: str, step: int, stamp: tuple) -> str | None:
    problem = runs.token_step_problem(path, step)
    return None if problem is None else str(problem)


def token_step_problem(run_dir: str | Path, step: int) -> str | None:
    """Why one step's token records cannot be shown (``tokens/step_N.parquet: reason``), or None."""
    return _step_problem(str(run_dir), int(step), _stamp(runs.token_file(run_dir, step)))


def readable_step(run_dir: str | Path, steps: Sequence[int]) -> int:
    """The newest of ``steps`` whose token file can be shown (the newest one when none can): where a page
    that shows one step opens, so a damaged last file does not hide the good ones before it."""
    return next((s for s in reversed(steps) if token_step_problem(run_dir, s) is None), steps[-1])


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _schema(path: str, stamp: tuple) -> list[str]:
    return runs.token_schema_columns(path)


def token_columns(run_dir: str | Path) -> list[str]:
    """Columns present in the run's token records."""
    return _schema(str(run_dir), _stamp(Path(run_dir) / runs.TOKENS_DIR))


@st.cache_data(max_entries=32, show_spinner=False)
def _tokens(path: str, steps: tuple[int, ...], columns: tuple[str, ...], filters: tuple, stamp: tuple) -> pd.DataFrame:
    return runs.read_tokens(path, steps=list(steps), columns=list(columns), filters=list(filters) or None)


def tokens(run_dir: str | Path, steps: Sequence[int], columns: Sequence[str],
           filters: Sequence[tuple[str, str, Any]] = ()) -> pd.DataFrame:
    """Token records of a few steps and columns (use for small reads: one sample, one step)."""
    steps = tuple(int(s) for s in steps)
    return _tokens(str(run_dir), steps, tuple(columns), tuple(filters), _token_stamp(run_dir, steps))


def default_steps(steps: Sequence[int], window: int = DEFAULT_STEP_WINDOW) -> list[int]:
    """The last ``window`` logged steps: what a page analyses until the user widens it."""
    return list(steps)[-window:]


# ----------------------------------------------------------------------------- diagnostics views


@st.cache_data(max_entries=PER_RUN_ENTRIES, show_spinner=False)
def _health(path: str, stamp: tuple) -> Any:
    from opd_core.diagnostics import health

    return health(path)


def live_health_report(run_dir: str | Path, active: bool = True) -> Any:
    """The HealthReport of a run that is training, re-evaluated when new token records land (or every
    ~64 KB of new metrics), not on every 2-second refresh. A run that is not training (``active`` False) has
    the report the other pages cached, not a second one computed under another key."""
    if not active:
        return health_report(run_dir)
    d = Path(run_dir)
    metrics_size = _stamp(d / runs.METRICS_FILE)[1]
    return _health(str(run_dir), (_stamp(d / runs.TOKENS_DIR), metrics_size // 65536, _stamp(d / runs.STATUS_FILE)[1]))


def health_report(run_dir: str | Path) -> Any:
    """The run's HealthReport (opd_core.diagnostics.health), recomputed only when the run changes."""
    return _health(str(run_dir), run_stamp(run_dir))


@st.cache_data(max_entries=32, show_spinner=False)
def _imbalance(path: str, steps: tuple[int, ...], stamp: tuple) -> dict:
    from opd_core.diagnostics import imbalance

    tok = runs.read_tokens(path, steps=list(steps), columns=list(IMBALANCE_COLUMNS))
    trained = tok[~tok["reference_only"].astype(bool)] if "reference_only" in tok else tok
    values = trained["signal"] if "signal" in trained else pd.Series(dtype=float)
    return {
        "summary": imbalance.summary(trained),
        "lorenz": imbalance.lorenz_curve(values.to_numpy()),
        "by_position": imbalance.signal_by_position(trained),
        "by_kind": imbalance.signal_by_kind(trained),
        "negative_share": imbalance.negative_reward_share_by_step(trained),
        "top_tokens": imbalance.top_tokens(trained, n=20),
    }


def imbalance_view(run_dir: str | Path, steps: Sequence[int]) -> dict:
    """Everything the Imbalance page draws, for the chosen steps."""
    steps = tuple(int(s) for s in steps)
    return _imbalance(str(run_dir), steps, _token_stamp(run_dir, steps))


@st.cache_data(max_entries=32, show_spinner=False)
def _top_tokens(path: str, steps: tuple[int, ...], n: int, stamp: tuple) -> pd.DataFrame:
    from opd_core.diagnostics import imbalance

    tok = runs.read_tokens(path, steps=list(steps), columns=list(IMBALANCE_COLUMNS))
    if "reference_only" in tok:
        tok = tok[~tok["reference_only"].astype(bool)]
    return imbalance.top_tokens(tok, n=n)


def top_tokens(run_dir: str | Path, steps: Sequence[int], n: int = 20) -> pd.DataFrame:
    """The tokens carrying the largest |signal| in the chosen steps (the Token inspector's jump list)."""
    steps = tuple(int(s) for s in steps)
    return _top_tokens(str(run_dir), steps, n, _token_stamp(run_dir, steps))


@st.cache_data(max_entries=32, show_spinner=False)
def _drift(path: str, steps: tuple[int, ...], measure: str, bins: int, stamp: tuple) -> dict:
    from opd_core.diagnostics import collapse, drift

    tok = runs.read_tokens(path, steps=list(steps), columns=list(DRIFT_COLUMNS))
    has_support = "student_support_mass" in tok or "topk_overlap" in tok
    return {
        "by_drift": drift.teacher_stats_by_drift(tok, measure=measure, bins=bins),
        "reference": drift.reference_stats(tok),
        "summary": drift.summary(tok),
        "support": collapse.support_by_step(tok) if has_support else None,
        "collapse": collapse.summary(tok) if has_support else None,
    }


def drift_view(run_dir: str | Path, steps: Sequence[int], measure: str, bins: int = 8) -> dict:
    """Everything the Teacher under drift page draws, for the chosen steps and drift measure."""
    steps = tuple(int(s) for s in steps)
    return _drift(str(run_dir), steps, measure, int(bins), _token_stamp(run_dir, steps))


@st.cache_data(max_entries=32, show_spinner=False)
def _mismatch(path: str, steps: tuple[int, ...], stamp: tuple, metrics_stamp: tuple) -> dict:
    from opd_core.diagnostics import imbalance, mismatch

    tok = runs.read_tokens(path, steps=list(steps), columns=list(MISMATCH_COLUMNS))
    if "reference_only" in tok:
        tok = tok[~tok["reference_only"].astype(bool)]
    alignment = mismatch.load_alignment(path)
    return {
        "alignment": alignment,
        "summary": mismatch.summary(tok, alignment),
        "special_share": mismatch.special_signal_share(tok),
        "eos_share": mismatch.eos_signal_share(tok),
        "largest": mismatch.largest_log_ratios(tok, n=20),
        "length_trend": mismatch.response_length_trend(runs.read_metrics(path)),
        "by_kind": imbalance.signal_by_kind(tok),
    }


def mismatch_view(run_dir: str | Path, steps: Sequence[int]) -> dict:
    """Everything the Tokenizer mismatch page draws, for the chosen steps."""
    steps = tuple(int(s) for s in steps)
    return _mismatch(str(run_dir), steps, _token_stamp(run_dir, steps) + (_stamp(Path(run_dir) / "alignment.json"),),
                     _stamp(Path(run_dir) / runs.METRICS_FILE))
