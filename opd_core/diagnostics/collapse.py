"""Support collapse: is the student's probability mass leaving the tokens the teacher supports?

Top-K support matching without the renormalisation collapses: the student's full-vocabulary mass
inside the teacher's top-K falls step after step, and the two top-K sets stop overlapping. These
functions follow both over steps. They read the engine's ``student_support_mass`` and
``topk_overlap`` columns; a trainer that logged only the top-K id/log-prob lists gets estimates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from opd_core.diagnostics.loading import bool_column, float_column, narrow, require_columns, source_is
from opd_core.stats import topk_list_overlap

COLUMNS: tuple[str, ...] = ("step", "prefix_source", "reference_only", "student_support_mass", "topk_overlap")
_LIST_COLUMNS: tuple[str, ...] = ("teacher_topk_ids", "student_topk_ids", "student_topk_logps")
_CHUNK = 65_536


def _stack(column: pd.Series) -> np.ndarray | None:
    """A column of equal-length lists as a 2-D array, or None when lengths differ or values are missing."""
    try:
        return np.stack(column.to_numpy())
    except (ValueError, TypeError):
        return None


def _estimate_from_lists(tokens: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Overlap of the logged top-K id sets and the student's top-K mass that falls in the teacher's top-K
    (``overlap_mass_student``, by ``stats.topk_list_overlap``).

    The mass is a lower bound of ``student_support_mass`` (the student's probability on teacher top-K
    tokens outside its own top-K is not logged); good enough to see a trend.
    """
    nan = np.full(len(tokens), np.nan)
    if not all(c in tokens.columns for c in _LIST_COLUMNS) or len(tokens) == 0:
        return nan, nan
    teacher, student, student_lp = (_stack(tokens[c]) for c in _LIST_COLUMNS)
    if teacher is None or student is None or student_lp is None or student.shape != student_lp.shape:
        return nan, nan
    overlap, mass = np.empty(len(tokens)), np.empty(len(tokens))
    for start in range(0, len(tokens), _CHUNK):
        sl = slice(start, start + _CHUNK)
        o, m, _ = topk_list_overlap(torch.from_numpy(student[sl]), torch.from_numpy(student_lp[sl].astype(np.float32)),
                                    torch.from_numpy(teacher[sl]))
        overlap[sl], mass[sl] = o.numpy(), m.numpy()
    return mass, overlap


def support_by_step(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per step, the mean student mass inside the teacher's top-K and the mean top-K overlap.

    Student-prefix rows only (reference rollouts excluded). ``attrs['estimated']`` is True when the
    numbers come from the top-K lists rather than the engine's own columns.
    """
    require_columns(tokens, ["step"], "support_by_step")
    rows = narrow(tokens, COLUMNS + _LIST_COLUMNS)
    rows = rows[~bool_column(rows, "reference_only") & source_is(rows, "student")]
    mass, overlap = float_column(rows, "student_support_mass"), float_column(rows, "topk_overlap")
    estimated = False
    if not np.isfinite(mass).any() or not np.isfinite(overlap).any():
        est_mass, est_overlap = _estimate_from_lists(rows)
        if not np.isfinite(mass).any() and np.isfinite(est_mass).any():
            mass, estimated = est_mass, True
        if not np.isfinite(overlap).any() and np.isfinite(est_overlap).any():
            overlap, estimated = est_overlap, True
    frame = pd.DataFrame({"step": rows["step"].to_numpy(), "student_support_mass": mass, "topk_overlap": overlap})
    grouped = frame.groupby("step", sort=True)
    out = grouped[["student_support_mass", "topk_overlap"]].mean()
    out["n"] = grouped.size().astype(np.int64)
    out = out.reset_index()
    out.attrs["estimated"] = estimated
    return out


def summary(tokens: pd.DataFrame) -> dict:
    """Support mass and overlap at the first and last logged steps, their minimum and their change."""
    by_step = support_by_step(tokens)
    out: dict = {"n_steps": int(len(by_step)), "estimated": bool(by_step.attrs.get("estimated", False))}
    for col, short in (("student_support_mass", "support_mass"), ("topk_overlap", "overlap")):
        series = by_step[["step", col]].dropna()
        if series.empty:
            out.update({f"{short}_first": float("nan"), f"{short}_last": float("nan"),
                        f"{short}_min": float("nan"), f"{short}_change": float("nan")})
            continue
        first, last = float(series[col].iloc[0]), float(series[col].iloc[-1])
        out.update({f"{short}_first": first, f"{short}_last": last, f"{short}_min": float(series[col].min()),
                    f"{short}_change": last - first})
    if len(by_step):
        out["first_step"], out["last_step"] = int(by_step["step"].iloc[0]), int(by_step["step"].iloc[-1])
    return out
