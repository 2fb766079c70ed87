"""Failure mode 2, unreliable teacher guidance on student prefixes: is the teacher still sure once we drift?

Once the student's prefix leaves the teacher's typical support (an early wrong step), the teacher was
never trained there: its distribution goes flat or confidently wrong. These functions put the teacher's
entropy, top-1 probability and the rank of the sampled token against a drift measure, and against the
same teacher on its own rollouts of the same prompts (teacher-prefix rows: the reference line).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from opd_core.diagnostics.loading import DiagnosticsError, bool_column, float_column, narrow, source_is

COLUMNS: tuple[str, ...] = ("step", "sample", "pos", "masked", "reference_only", "prefix_source", "drift",
                            "tokens_since_off_support", "prefix_wrong", "teacher_entropy",
                            "teacher_top1_prob", "teacher_rank")
MEASURES: tuple[str, ...] = ("drift", "tokens_since_off_support", "prefix_wrong")
STATS: tuple[str, ...] = ("teacher_entropy", "teacher_top1_prob", "teacher_rank")
_OUT_COLUMNS = ["bin", "bin_label", "bin_mid", "prefix_source", "n", *STATS]


def available_measures(tokens: pd.DataFrame) -> list[str]:
    """The drift measures this table can be binned by (the optional columns other trainers may omit)."""
    return [m for m in MEASURES if m in tokens.columns and tokens[m].notna().any()]


def _stat_rows(tokens: pd.DataFrame) -> pd.DataFrame:
    """Rows the teacher was asked about: masked positions (e.g. mismatched specials) are left out."""
    return tokens[~bool_column(tokens, "masked")]


def _bin_since_off_support(values: np.ndarray, bins: int) -> tuple[np.ndarray, list[str], list[float]]:
    """Power-of-two buckets (0, 1, 2-3, 4-7, ...): the teacher's collapse is fast, then levels off."""
    v = np.maximum(np.nan_to_num(values, nan=0.0), 0).astype(np.int64)
    bucket = np.where(v == 0, 0, np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1)
    last = max(bins - 1, 1)
    bucket = np.minimum(bucket, last)
    labels, mids = [], []
    for b in range(last + 1):
        if b == 0:
            labels.append("0")
            mids.append(0.0)
            continue
        lo, hi = 2 ** (b - 1), 2**b - 1
        if b == last:
            labels.append(f">={lo}")
            mids.append(float(lo) * 1.5)
        else:
            labels.append(str(lo) if lo == hi else f"{lo}-{hi}")
            mids.append((lo + hi) / 2.0)
    return bucket, labels, mids


def _bin_quantiles(values: np.ndarray, reference: np.ndarray, bins: int) -> tuple[np.ndarray, list[str], list[float]]:
    """Quantile bins fitted on the student rows, so each bin holds a similar number of drifted tokens."""
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.size, dtype=np.int64), ["all"], [0.0]
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size < 2:
        return np.zeros(values.size, dtype=np.int64), [f"{edges[0]:.3g}"], [float(edges[0])]
    bucket = np.searchsorted(edges[1:-1], np.nan_to_num(values, nan=edges[0]), side="right")
    labels = [f"{lo:.3g} to {hi:.3g}" for lo, hi in zip(edges[:-1], edges[1:])]
    mids = list((edges[:-1] + edges[1:]) / 2.0)
    return bucket.astype(np.int64), labels, [float(m) for m in mids]


def teacher_stats_by_drift(tokens: pd.DataFrame, measure: str = "drift", bins: int = 8) -> pd.DataFrame:
    """Mean teacher entropy, top-1 probability and sampled-token rank per drift bin and prefix source.

    ``measure``: ``drift`` (cumulative log-ratio so far, quantile bins), ``tokens_since_off_support``
    (power-of-two bins) or ``prefix_wrong`` (two bins). Rows with prefix_source ``teacher`` are the
    reference line. A table without the measure's column gives an empty frame (``attrs['missing']``).
    """
    if measure not in MEASURES:
        raise DiagnosticsError(f"unknown drift measure {measure!r}; use one of {list(MEASURES)}")
    if bins < 1:
        raise DiagnosticsError(f"bins must be at least 1, got {bins}")
    if measure not in tokens.columns:
        out = pd.DataFrame(columns=_OUT_COLUMNS)
        out.attrs["missing"] = measure
        return out
    rows = _stat_rows(narrow(tokens, COLUMNS))
    is_teacher = source_is(rows, "teacher")
    if measure == "prefix_wrong":
        bucket = bool_column(rows, "prefix_wrong").astype(np.int64)
        labels, mids = ["prefix ok", "prefix wrong"], [0.0, 1.0]
    elif measure == "tokens_since_off_support":
        bucket, labels, mids = _bin_since_off_support(float_column(rows, measure), bins)
    else:
        values = float_column(rows, measure)
        bucket, labels, mids = _bin_quantiles(values, values[~is_teacher], bins)
    frame = pd.DataFrame({"bin": bucket, "teacher": is_teacher})
    for stat in STATS:
        frame[stat] = float_column(rows, stat)
    grouped = frame.groupby(["bin", "teacher"], sort=True)
    out = grouped[list(STATS)].mean()
    out.insert(0, "n", grouped.size().astype(np.int64))
    out = out.reset_index()
    out["prefix_source"] = np.where(out["teacher"], "teacher", "student")
    out.insert(1, "bin_label", [labels[b] for b in out["bin"]])
    out.insert(2, "bin_mid", [mids[b] for b in out["bin"]])
    out.attrs["measure"] = measure
    return out[_OUT_COLUMNS].reset_index(drop=True)


def _means(rows: pd.DataFrame) -> dict:
    out: dict = {"n": int(len(rows))}
    for stat in STATS:
        values = float_column(rows, stat)
        values = values[np.isfinite(values)]
        out[stat] = float(values.mean()) if values.size else float("nan")
    return out


def reference_stats(tokens: pd.DataFrame) -> dict:
    """Teacher statistics on its own rollouts (teacher-prefix rows): what a reliable teacher looks like.

    Returns n and the means of teacher_entropy, teacher_top1_prob, teacher_rank (NaN with n = 0 when
    the run logged no teacher-prefix rows).
    """
    rows = _stat_rows(narrow(tokens, COLUMNS))
    return _means(rows[source_is(rows, "teacher")])


def drifted_split(tokens: pd.DataFrame) -> tuple[str | None, np.ndarray, np.ndarray]:
    """Which student-prefix rows count as drifted and which as on-support, and by which measure.

    Prefers tokens_since_off_support (> 0), then prefix_wrong, then the cumulative drift (top quartile
    against bottom quartile). Returns (measure or None, drifted mask, undrifted mask) over ``tokens``.
    """
    student = source_is(tokens, "student") & ~bool_column(tokens, "masked")
    measures = available_measures(tokens)
    if "tokens_since_off_support" in measures:
        off = np.nan_to_num(float_column(tokens, "tokens_since_off_support"), nan=0.0) > 0
        return "tokens_since_off_support", student & off, student & ~off
    if "prefix_wrong" in measures:
        wrong = bool_column(tokens, "prefix_wrong")
        return "prefix_wrong", student & wrong, student & ~wrong
    if "drift" in measures:
        values = float_column(tokens, "drift")
        finite = student & np.isfinite(values)
        if finite.sum() >= 4:
            lo, hi = np.quantile(values[finite], [0.25, 0.75])
            if hi > lo:
                return "drift", finite & (values >= hi), finite & (values <= lo)
    empty = np.zeros(len(tokens), dtype=bool)
    return None, empty, empty


def _ratio(a: float, b: float) -> float:
    return float(a / b) if np.isfinite(a) and np.isfinite(b) and b > 0 else float("nan")


def summary(tokens: pd.DataFrame) -> dict:
    """Teacher reliability in a few numbers: drifted vs on-support student prefixes vs the teacher's own.

    Keys: measure, drifted_share, n_drifted, entropy/top1/rank on drifted and undrifted student prefixes
    and on the reference, and the ratios entropy_ratio_drifted_undrifted and
    entropy_ratio_drifted_reference (NaN where a side is missing).
    """
    tokens = narrow(tokens, COLUMNS)
    measure, drifted, undrifted = drifted_split(tokens)
    student = source_is(tokens, "student") & ~bool_column(tokens, "masked")
    d, u, ref = _means(tokens[drifted]), _means(tokens[undrifted]), reference_stats(tokens)
    out: dict = {
        "measure": measure,
        "n_student": int(student.sum()),
        "n_drifted": d["n"],
        "n_undrifted": u["n"],
        "n_reference": ref["n"],
        "drifted_share": d["n"] / int(student.sum()) if student.any() else float("nan"),
    }
    for stat in STATS:
        out[f"{stat}_drifted"] = d[stat]
        out[f"{stat}_undrifted"] = u[stat]
        out[f"{stat}_reference"] = ref[stat]
    out["entropy_ratio_drifted_undrifted"] = _ratio(d["teacher_entropy"], u["teacher_entropy"])
    out["entropy_ratio_drifted_reference"] = _ratio(d["teacher_entropy"], ref["teacher_entropy"])
    out["top1_drop_drifted_reference"] = d["teacher_top1_prob"] - ref["teacher_top1_prob"]
    return out
