"""Shared plumbing of the diagnostics: input checks, which rows carry training signal, which steps to read.

Every analysis takes a per-token DataFrame in the run-directory format (see DESIGN.md) and must cope
with tables from other trainers that lack the optional columns, so the column handling lives here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from opd_core import runs


class DiagnosticsError(ValueError):
    """Input a diagnostic cannot use, with a message naming the problem and the fix."""


def require_columns(tokens: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise a clear error when ``tokens`` lacks a column ``what`` cannot work without."""
    if not isinstance(tokens, pd.DataFrame):
        raise DiagnosticsError(f"{what} needs a pandas DataFrame of token records, got {type(tokens).__name__}")
    missing = [c for c in columns if c not in tokens.columns]
    if missing:
        raise DiagnosticsError(
            f"{what} needs token columns {missing}; read them with "
            f"runs.read_tokens(run_dir, columns=[...]) or log them from your trainer"
        )


def bool_column(tokens: pd.DataFrame, name: str, default: bool = False) -> np.ndarray:
    """A boolean column as a numpy array, ``default`` where the column is absent or null."""
    if name not in tokens.columns:
        return np.full(len(tokens), default, dtype=bool)
    col = tokens[name]
    if col.dtype == bool:
        return col.to_numpy()
    return col.fillna(default).astype(bool).to_numpy()


def float_column(tokens: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 (NaN where absent or null), for vectorised statistics."""
    if name not in tokens.columns:
        return np.full(len(tokens), np.nan)
    return pd.to_numeric(tokens[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def signal_column(tokens: pd.DataFrame) -> str:
    """The column holding each token's training signal: ``signal``, else the sampled log-ratio."""
    for name in ("signal", "log_ratio"):
        if name in tokens.columns:
            return name
    raise DiagnosticsError(
        "token records have neither a 'signal' nor a 'log_ratio' column; log the per-token signal "
        "(the advantage for sampled_token, the divergence value for dense objectives)"
    )


def trained_mask(tokens: pd.DataFrame) -> np.ndarray:
    """Rows that carry training signal: not masked and not teacher-prefix reference rollouts."""
    return ~bool_column(tokens, "masked") & ~bool_column(tokens, "reference_only")


def trained_rows(tokens: pd.DataFrame) -> pd.DataFrame:
    """The rows signal statistics are about (masked tokens and reference-only rollouts excluded)."""
    return tokens[trained_mask(tokens)]


def abs_signal(tokens: pd.DataFrame) -> np.ndarray:
    """|signal| of every row as float64, NaN (no signal logged) replaced by 0."""
    values = np.abs(float_column(tokens, signal_column(tokens)))
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def pick_steps(steps: Sequence[int], max_steps: int | None) -> list[int]:
    """At most ``max_steps`` of ``steps``, evenly spread and always keeping the first and the last.

    Trend checks (collapse, negative-reward share) need both ends of the run; the middle is sampled.
    """
    steps = sorted(steps)
    if max_steps is None or len(steps) <= max_steps:
        return list(steps)
    if max_steps < 1:
        raise DiagnosticsError(f"max_token_steps must be at least 1 or None (all steps), got {max_steps}")
    if max_steps == 1:
        return [steps[-1]]
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, max_steps)).astype(int))
    return [steps[i] for i in idx]


def read_run_tokens(run_dir: str | Path, columns: Sequence[str], max_steps: int | None = None,
                    problems: list[str] | None = None) -> pd.DataFrame:
    """Token records of a run, only ``columns`` (missing ones skipped) and at most ``max_steps`` steps.

    Damaged token files are skipped and named in ``problems`` (see :func:`opd_core.runs.read_tokens`).
    """
    chosen = pick_steps(runs.token_steps(run_dir), max_steps)
    if not chosen:
        return pd.DataFrame(columns=list(columns))
    return runs.read_tokens(run_dir, steps=chosen, columns=list(columns), problems=problems)


def narrow(tokens: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Only the ``columns`` present: row filters on a million-row table then copy a few columns, not all."""
    return tokens[[c for c in columns if c in tokens.columns]]


def source_is(tokens: pd.DataFrame, source: str) -> np.ndarray:
    """Rows whose prefix came from ``source`` ("student" or "teacher"); no column or null means student."""
    if "prefix_source" not in tokens.columns:
        return np.full(len(tokens), source == "student", dtype=bool)
    col = tokens["prefix_source"]
    hit = (col == source).to_numpy(dtype=bool, na_value=False)
    return hit | col.isna().to_numpy() if source == "student" else hit
