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


# ----------------------------------------------------------------------------- position-matched views
# Drifted prefixes sit late in a response and the teacher's entropy changes with position on its own, so
# comparing drifted with on-support tokens over all positions confounds drift with position. These views
# compare within absolute-position buckets (the seed's analyze/teacher_entropy.py plots teacher entropy
# against absolute position on the teacher's rollouts, the initial student's and a trained student's).

POSITION_COLUMNS: tuple[str, ...] = ("step", "sample", "pos", "masked", "reference_only", "prefix_source",
                                     "tokens_since_off_support", "prefix_wrong", "teacher_entropy",
                                     "teacher_top1_prob", "log_ratio", "overlap_mass_student",
                                     "overlap_mass_teacher", "teachability")
POSITION_STATS: tuple[str, ...] = ("teacher_entropy", "teacher_top1_prob", "log_ratio")
OVERLAP_STATS: tuple[str, ...] = ("overlap_mass_student", "overlap_mass_teacher", "teachability")
GAP_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def _bucketed(rows: pd.DataFrame, bucket: int) -> np.ndarray:
    if bucket < 1:
        raise DiagnosticsError(f"bucket must be at least 1 token, got {bucket}")
    return (np.nan_to_num(float_column(rows, "pos"), nan=0.0).astype(np.int64) // bucket) * bucket


def rollout_groups(tokens: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The three rollout sets of the seed's plot: the teacher's own rollouts, the student's at the first
    logged step, and the student's at the last logged step ("now"); masked rows left out."""
    rows = _stat_rows(narrow(tokens, POSITION_COLUMNS))
    teacher = source_is(rows, "teacher")
    student = rows[~teacher]
    out = {"teacher rollouts": rows[teacher]}
    if student.empty or "step" not in student.columns:
        return {**out, "student (first step)": student, "student (now)": student}
    first, last = student["step"].min(), student["step"].max()
    out["student (first step)"] = student[student["step"] == first]
    out["student (now)"] = student[student["step"] == last]
    return out


def stats_by_position(tokens: pd.DataFrame, bucket: int = 8) -> pd.DataFrame:
    """Mean teacher entropy, top-1 probability and signed gap log p_T - log p_S per absolute-position
    bucket, for the teacher's rollouts, the first logged student rollouts and the latest ones.

    Columns: group, pos_bucket, n, teacher_entropy, teacher_top1_prob, log_ratio.
    """
    frames = []
    for group, rows in rollout_groups(tokens).items():
        if rows.empty:
            continue
        frame = pd.DataFrame({"pos_bucket": _bucketed(rows, bucket)})
        for stat in POSITION_STATS:
            frame[stat] = float_column(rows, stat)
        g = frame.groupby("pos_bucket", sort=True)
        out = g[list(POSITION_STATS)].mean()
        out.insert(0, "n", g.size().astype(np.int64))
        out = out.reset_index()
        out.insert(0, "group", group)
        frames.append(out)
    if not frames:
        return pd.DataFrame(columns=["group", "pos_bucket", "n", *POSITION_STATS])
    return pd.concat(frames, ignore_index=True)


def gap_quantiles_by_position(tokens: pd.DataFrame, bucket: int = 4) -> pd.DataFrame:
    """The paper's Fig. 4: quantiles of the signed gap log p_T - log p_S on student-prefix tokens per
    response-position bucket, plus the share of negative gaps (lower tails widen with position)."""
    rows = _stat_rows(narrow(tokens, POSITION_COLUMNS))
    rows = rows[~source_is(rows, "teacher")]
    gap = float_column(rows, "log_ratio")
    keep = np.isfinite(gap)
    frame = pd.DataFrame({"pos_bucket": _bucketed(rows, bucket)[keep], "gap": gap[keep]})
    cols = ["pos_bucket", "n", "negative_share", *[f"q{int(q * 100):02d}" for q in GAP_QUANTILES]]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    g = frame.groupby("pos_bucket", sort=True)["gap"]
    out = pd.DataFrame({"n": g.size(), "negative_share": g.apply(lambda v: float((v < 0).mean()))})
    for q in GAP_QUANTILES:
        out[f"q{int(q * 100):02d}"] = g.quantile(q)
    return out.reset_index()[cols]


def _drift_flag(rows: pd.DataFrame) -> np.ndarray:
    """Drifted student rows: off the teacher's nucleus before this token, else past the first error."""
    if "tokens_since_off_support" in rows.columns and rows["tokens_since_off_support"].notna().any():
        return np.nan_to_num(float_column(rows, "tokens_since_off_support"), nan=0.0) > 0
    return bool_column(rows, "prefix_wrong")


def drifted_by_position(tokens: pd.DataFrame, bucket: int = 8, measure: str = "auto") -> pd.DataFrame:
    """Teacher entropy and top-1 on drifted vs on-support student prefixes WITHIN each position bucket,
    with the teacher's own rollouts at the same positions as the reference.

    ``measure``: ``tokens_since_off_support`` (> 0), ``prefix_wrong``, or ``auto`` (the first present).
    Columns: pos_bucket, prefix (drifted | on support | teacher), n, teacher_entropy, teacher_top1_prob.
    """
    rows = _stat_rows(narrow(tokens, POSITION_COLUMNS))
    teacher = source_is(rows, "teacher")
    student = rows[~teacher]
    if measure == "prefix_wrong":
        flag = bool_column(student, "prefix_wrong")
    elif measure in ("tokens_since_off_support", "auto"):
        flag = _drift_flag(student)
    else:
        raise DiagnosticsError(f"unknown drift measure {measure!r}; use tokens_since_off_support, prefix_wrong "
                               "or auto")
    labels = np.concatenate([np.where(flag, "drifted", "on support"), np.full(int(teacher.sum()), "teacher")])
    both = pd.concat([student, rows[teacher]])
    frame = pd.DataFrame({"pos_bucket": _bucketed(both, bucket), "prefix": labels})
    for stat in ("teacher_entropy", "teacher_top1_prob"):
        frame[stat] = float_column(both, stat)
    if frame.empty:
        return pd.DataFrame(columns=["pos_bucket", "prefix", "n", "teacher_entropy", "teacher_top1_prob"])
    g = frame.groupby(["pos_bucket", "prefix"], sort=True)
    out = g[["teacher_entropy", "teacher_top1_prob"]].mean()
    out.insert(0, "n", g.size().astype(np.int64))
    return out.reset_index()


def position_matched_gap(tokens: pd.DataFrame, bucket: int = 8, measure: str = "auto") -> dict:
    """Drifted minus on-support teacher entropy (and top-1 probability), averaged over position buckets
    that hold both, weighted by the drifted tokens in each: the drift effect with position held fixed.

    Keys: entropy_gap, top1_drop (on-support minus drifted), n_drifted, buckets.
    """
    table = drifted_by_position(tokens, bucket, measure)
    wide = table.pivot_table(index="pos_bucket", columns="prefix", values=["teacher_entropy", "teacher_top1_prob",
                                                                          "n"], aggfunc="first")
    out = {"entropy_gap": float("nan"), "top1_drop": float("nan"), "n_drifted": 0, "buckets": 0}
    if wide.empty or ("n", "drifted") not in wide.columns or ("n", "on support") not in wide.columns:
        return out
    wide = wide.dropna(subset=[("n", "drifted"), ("n", "on support")])
    if wide.empty:
        return out
    w = wide[("n", "drifted")].to_numpy(dtype=float)
    ent = (wide[("teacher_entropy", "drifted")] - wide[("teacher_entropy", "on support")]).to_numpy(dtype=float)
    top = (wide[("teacher_top1_prob", "on support")] - wide[("teacher_top1_prob", "drifted")]).to_numpy(dtype=float)
    ok = np.isfinite(ent) & np.isfinite(top)
    if not ok.any():
        return out
    return {"entropy_gap": float(np.average(ent[ok], weights=w[ok])),
            "top1_drop": float(np.average(top[ok], weights=w[ok])),
            "n_drifted": int(w[ok].sum()), "buckets": int(ok.sum())}


def error_onset(tokens: pd.DataFrame) -> dict:
    """The teacher just before and right after the student's first error, in the same response: its top-1
    probability and entropy at the prefix ending before the first wrong token against the prefix ending with
    it (adjacent positions, so position cannot confound it; needs the grader's ``prefix_wrong``).

    Averaged over whole position buckets the drifted-minus-on-support gap washes out (the v2 teacher stays
    sure on most drifted prefixes, and wrong); at the error itself the drop is large and consistent. Keys:
    top1_before, top1_after, top1_drop (before minus after) and its paired standard error top1_drop_se,
    entropy_before, entropy_after, entropy_gap, n (responses with both rows)."""
    out = {"top1_before": float("nan"), "top1_after": float("nan"), "top1_drop": float("nan"),
           "top1_drop_se": float("nan"), "entropy_before": float("nan"), "entropy_after": float("nan"),
           "entropy_gap": float("nan"), "n": 0}
    rows = _stat_rows(narrow(tokens, POSITION_COLUMNS))
    rows = rows[~source_is(rows, "teacher")]
    if rows.empty or "prefix_wrong" not in rows.columns:
        return out
    frame = pd.DataFrame({"step": rows["step"].to_numpy(), "sample": rows["sample"].to_numpy(),
                          "pos": float_column(rows, "pos"), "wrong": bool_column(rows, "prefix_wrong"),
                          "top1": float_column(rows, "teacher_top1_prob"),
                          "entropy": float_column(rows, "teacher_entropy")})
    onset = frame[frame["wrong"]].groupby(["step", "sample"], sort=False)["pos"].min().rename("onset")
    frame = frame.join(onset, on=["step", "sample"])
    after = frame[frame["pos"] == frame["onset"]].set_index(["step", "sample"])
    before = frame[frame["pos"] == frame["onset"] - 1].set_index(["step", "sample"])
    paired = after[["top1", "entropy"]].merge(before[["top1", "entropy"]], left_index=True, right_index=True,
                                              suffixes=("_after", "_before")).dropna()
    if paired.empty:
        return out
    diff = (paired["top1_before"] - paired["top1_after"]).to_numpy()
    n = len(paired)
    return {"top1_before": float(paired["top1_before"].mean()), "top1_after": float(paired["top1_after"].mean()),
            "top1_drop": float(diff.mean()), "top1_drop_se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1
            else float("nan"), "entropy_before": float(paired["entropy_before"].mean()),
            "entropy_after": float(paired["entropy_after"].mean()),
            "entropy_gap": float((paired["entropy_after"] - paired["entropy_before"]).mean()), "n": n}


def overlap_by_position(tokens: pd.DataFrame, bucket: int = 8) -> pd.DataFrame:
    """Mean top-K overlap masses (the student's and the teacher's mass on the shared top-K set) and local
    teachability per position bucket on student prefixes, for the first and latest logged steps.

    Empty (``attrs['missing']``) when the run's token records lack those columns (an older engine)."""
    present = [c for c in OVERLAP_STATS if c in tokens.columns]
    if not present:
        out = pd.DataFrame(columns=["group", "pos_bucket", "n", *OVERLAP_STATS])
        out.attrs["missing"] = list(OVERLAP_STATS)
        return out
    frames = []
    for group, rows in rollout_groups(tokens).items():
        if group == "teacher rollouts" or rows.empty:
            continue
        frame = pd.DataFrame({"pos_bucket": _bucketed(rows, bucket)})
        for stat in present:
            frame[stat] = float_column(rows, stat)
        g = frame.groupby("pos_bucket", sort=True)
        out = g[present].mean()
        out.insert(0, "n", g.size().astype(np.int64))
        out = out.reset_index()
        out.insert(0, "group", group)
        frames.append(out)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["group", "pos_bucket", "n"])
