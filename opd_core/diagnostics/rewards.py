"""The sampled-token reward at one step, as the seed paper's Fig. 2 shows it: teacher against student
probability of each sampled token, and the share below y = x (log p_T < log p_S: a negative reward).

The paper finds most rewards negative at initialisation: the student is surer of its own tokens than the
teacher is, so a sampled-token update mostly pushes the student's own choices down.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from opd_core.diagnostics.loading import bool_column, float_column, narrow, source_is

COLUMNS: tuple[str, ...] = ("step", "masked", "reference_only", "prefix_source", "student_logp", "teacher_logp",
                            "log_ratio", "is_eos", "token")


def _trained_student_rows(tokens: pd.DataFrame, step: int | None) -> pd.DataFrame:
    rows = narrow(tokens, COLUMNS)
    keep = source_is(rows, "student") & ~bool_column(rows, "masked") & ~bool_column(rows, "reference_only")
    rows = rows[keep]
    if step is not None and "step" in rows.columns:
        rows = rows[rows["step"] == step]
    return rows


def negative_reward_share(tokens: pd.DataFrame, step: int | None = None) -> float:
    """Share of unmasked student-prefix tokens whose reward log p_T - log p_S is negative (NaN if none)."""
    gap = float_column(_trained_student_rows(tokens, step), "log_ratio")
    gap = gap[np.isfinite(gap)]
    return float((gap < 0).mean()) if gap.size else float("nan")


def reward_scatter(tokens: pd.DataFrame, step: int | None = None, max_points: int = 4000,
                   seed: int = 0) -> tuple[pd.DataFrame, float]:
    """Points (student_prob, teacher_prob, log_ratio, token) of one step's sampled tokens, subsampled to
    ``max_points`` (seeded), and the share below y = x over all of that step's tokens."""
    rows = _trained_student_rows(tokens, step)
    s = np.exp(float_column(rows, "student_logp"))
    t = np.exp(float_column(rows, "teacher_logp"))
    gap = float_column(rows, "log_ratio")
    ok = np.isfinite(s) & np.isfinite(t) & np.isfinite(gap)
    points = pd.DataFrame({"student_prob": s[ok], "teacher_prob": t[ok], "log_ratio": gap[ok],
                           "token": rows["token"].to_numpy()[ok] if "token" in rows.columns else ""})
    share = float((points["log_ratio"] < 0).mean()) if len(points) else float("nan")
    if len(points) > max_points:
        points = points.sample(n=max_points, random_state=seed).sort_index()
    return points.reset_index(drop=True), share
