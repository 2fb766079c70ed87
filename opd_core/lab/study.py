"""The exact bias/variance study: one setting in, tidy DataFrames out (what the Lab page plots)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from opd_core.lab.enumeration import (
    check_enumerable,
    enumerate_sequences,
    exact_sequence_kl_gradient,
    score_sequences,
)
from opd_core.lab.estimators import Estimator, Moments, exact_moments_from_rows, per_position_rows
from opd_core.lab.policy import TASKS, TabularPolicy, make_student, make_teacher
from opd_core.lab.threads import single_threaded

DEFAULT_GAMMAS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class LabSetting:
    """Everything that fixes one exact study: sizes, task, teacher sharpness, top-K size, seeds.

    vocab_size (V) and horizon (T): V^T sequences are enumerated. task: the teacher's mirror task
    (``copy`` or ``mirror``). sharpness: the teacher's inverse temperature. k: the teacher top-K
    support size for ``topk_support`` (K < V shows truncation bias). gammas: the discount grid.
    init_scale: spread of the student's random initial logits. device: where tensors live.
    """

    vocab_size: int = 4
    horizon: int = 5
    task: str = "copy"
    sharpness: float = 2.0
    k: int = 2
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    student_seed: int = 0
    teacher_seed: int = 1
    init_scale: float = 1.0
    device: str = "cpu"
    topk_variants: tuple[str, ...] = field(default=("renormalized", "unnormalized", "tail_bucket"))

    def __post_init__(self) -> None:
        check_enumerable(self.vocab_size, self.horizon)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {sorted(TASKS)}")
        if not 1 <= self.k <= self.vocab_size:
            raise ValueError(f"k={self.k} must be between 1 and vocab_size={self.vocab_size}")
        if not self.gammas or any(not 0.0 <= g <= 1.0 for g in self.gammas):
            raise ValueError(f"gammas must be a non-empty list of values in [0, 1], got {self.gammas}")
        if self.sharpness < 0:
            raise ValueError(f"sharpness must be >= 0, got {self.sharpness}")

    def student(self) -> TabularPolicy:
        """Build this setting's initial student."""
        return make_student(self.vocab_size, self.horizon, self.student_seed, self.init_scale, self.device)

    def teacher(self) -> TabularPolicy:
        """Build this setting's fixed teacher."""
        return make_teacher(
            self.vocab_size, self.horizon, self.task, self.sharpness, self.teacher_seed, device=self.device
        )


def _compare(mean: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    bias = float(torch.linalg.vector_norm(mean - target))
    target_norm = float(torch.linalg.vector_norm(target))
    mean_norm = float(torch.linalg.vector_norm(mean))
    cosine = float(mean @ target) / (mean_norm * target_norm) if mean_norm and target_norm else float("nan")
    return {
        "bias": bias,
        "relative_bias": bias / target_norm if target_norm else float("nan"),
        "cosine": cosine,
        "mean_grad_norm": mean_norm,
    }


@single_threaded()
def estimator_table(
    student: TabularPolicy,
    teacher: TabularPolicy,
    estimators: Sequence[Estimator],
) -> pd.DataFrame:
    """Exact bias (against grad KL_seq and against the dense token-level reverse KL) and variance.

    One row per estimator. ``bias`` = ||E[g] - grad KL_seq||; ``bias_vs_token_kl`` = distance to
    the expected gradient of the full-vocabulary reverse KL at each visited prefix, which isolates
    what top-K truncation adds on top of dropping the future coupling.
    """
    sequences = enumerate_sequences(student.vocab_size, student.horizon, student.logits.device)
    kl, kl_grad = exact_sequence_kl_gradient(student, teacher, sequences)
    scored = score_sequences(student, teacher, sequences)
    probs = scored.student_seq_prob
    num_contexts = student.logits.shape[0]

    def moments(est: Estimator) -> Moments:
        rows = per_position_rows(student, teacher, scored, est)
        return exact_moments_from_rows(scored.contexts, rows, probs, num_contexts)

    token_kl_grad = moments(Estimator("reverse_kl")).mean
    rows = []
    for est in estimators:
        exact = moments(est)
        is_topk = est.kind == "topk_support"
        row = {
            "estimator": est.label,
            "kind": est.kind,
            "gamma": est.gamma if est.kind == "sampled_token" else None,
            "k": est.k if is_topk else None,
            "variant": est.variant if is_topk else None,
        }
        row |= _compare(exact.mean, kl_grad)
        row["bias_vs_token_kl"] = float(torch.linalg.vector_norm(exact.mean - token_kl_grad))
        row["variance"] = exact.variance
        row["sequence_kl"] = kl
        row["kl_grad_norm"] = float(torch.linalg.vector_norm(kl_grad))
        rows.append(row)
    return pd.DataFrame(rows)


def bias_variance_vs_gamma(setting: LabSetting) -> pd.DataFrame:
    """Exact bias(gamma) and variance(gamma) of the sampled-token estimator over the setting's gamma grid."""
    estimators = [Estimator("sampled_token", gamma=g) for g in setting.gammas]
    return estimator_table(setting.student(), setting.teacher(), estimators)


def topk_estimators(setting: LabSetting) -> list[Estimator]:
    """List the dense objectives the top-K comparison covers: full reverse KL and each top-K variant."""
    return [Estimator("reverse_kl")] + [
        Estimator("topk_support", k=setting.k, variant=v) for v in setting.topk_variants
    ]


def topk_bias(setting: LabSetting) -> pd.DataFrame:
    """Exact bias and variance of the dense objectives (reverse KL, top-K variants) and the two OPD extremes."""
    estimators = topk_estimators(setting) + [
        Estimator("sampled_token", gamma=0.0),
        Estimator("sampled_token", gamma=1.0),
    ]
    return estimator_table(setting.student(), setting.teacher(), estimators)


HORIZON_ESTIMATORS = (
    Estimator("sampled_token", gamma=0.0),
    Estimator("sampled_token", gamma=1.0),
    Estimator("sequence_reinforce"),
)


def variance_vs_horizon(setting: LabSetting, horizons: Sequence[int] | None = None) -> pd.DataFrame:
    """Exact variance of token-level and sequence-level estimators as the horizon grows.

    The same policies are used at every horizon (a horizon-T table is a prefix of the longest
    one), so only T changes along each curve.
    """
    horizons = list(range(1, setting.horizon + 1)) if horizons is None else sorted(set(horizons))
    if not horizons or min(horizons) < 1 or max(horizons) > setting.horizon:
        raise ValueError(f"horizons must lie in [1, {setting.horizon}], got {horizons}")
    student, teacher = setting.student(), setting.teacher()
    rows = []
    for horizon in horizons:
        table = estimator_table(student.truncated(horizon), teacher.truncated(horizon), HORIZON_ESTIMATORS)
        table.insert(0, "horizon", horizon)
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def growth_exponents(frame: pd.DataFrame, tail: int = 3) -> dict[str, float]:
    """Fit variance ~ T^a on the last ``tail`` horizons of each estimator: {label: a} (log-log slope)."""
    out = {}
    for label, group in frame.groupby("estimator", sort=False):
        group = group[(group["horizon"] > 1) & (group["variance"] > 0)].tail(tail)
        if len(group) >= 2:
            slope = np.polyfit(np.log(group["horizon"]), np.log(group["variance"]), 1)[0]
            out[str(label)] = float(slope)
        else:
            out[str(label)] = math.nan
    return out


@dataclass(frozen=True)
class StudyResult:
    """The three exact tables the Lab page plots."""

    by_gamma: pd.DataFrame
    topk: pd.DataFrame
    by_horizon: pd.DataFrame


def run_study(setting: LabSetting) -> StudyResult:
    """Run the whole exact study for one setting."""
    with single_threaded():
        return StudyResult(
            by_gamma=bias_variance_vs_gamma(setting),
            topk=topk_bias(setting),
            by_horizon=variance_vs_horizon(setting),
        )


def headline(result: StudyResult) -> dict[str, float]:
    """Pull the numbers the page quotes under its plots: bias at γ = 0 and 1, variance ratio, growth exponents.

    Keys: ``bias_gamma0``, ``bias_gamma1``, ``relative_bias_gamma0``, ``variance_gamma0``,
    ``variance_gamma1``, ``variance_ratio`` (γ = 1 over γ = 0), and ``exponent:<estimator label>``
    for each curve of the variance-vs-horizon table (nan where the grid lacks γ = 0 or 1).
    """
    by_gamma = result.by_gamma.set_index("gamma")
    out: dict[str, float] = {}
    for gamma, name in ((0.0, "gamma0"), (1.0, "gamma1")):
        present = gamma in by_gamma.index
        out[f"bias_{name}"] = float(by_gamma.at[gamma, "bias"]) if present else math.nan
        out[f"relative_bias_{name}"] = float(by_gamma.at[gamma, "relative_bias"]) if present else math.nan
        out[f"variance_{name}"] = float(by_gamma.at[gamma, "variance"]) if present else math.nan
    out["variance_ratio"] = (
        out["variance_gamma1"] / out["variance_gamma0"] if out["variance_gamma0"] > 0 else math.nan
    )
    for label, slope in growth_exponents(result.by_horizon).items():
        out[f"exponent:{label}"] = slope
    return out
