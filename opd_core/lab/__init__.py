"""Exact bias/variance lab: enumerate every sequence of a tiny policy and compute OPD gradient moments exactly.

Why: the paper's claims (token-level OPD is biased against sequence-level reverse KL but has far
lower variance; future-reward coupling, the discount gamma, raises variance) can be checked
exactly, not estimated, when V^T is small. See ``study.run_study`` and ``training.train_curves``.
"""

from opd_core.lab.enumeration import (
    enumerate_sequences,
    exact_sequence_kl,
    exact_sequence_kl_gradient,
    score_sequences,
)
from opd_core.lab.estimators import (
    Estimator,
    Moments,
    exact_moments,
    per_context_gradients,
    per_sequence_gradients,
    reverse_kl_per_context,
    topk_support_per_context,
)
from opd_core.lab.policy import TASKS, TabularPolicy, context_ids, make_student, make_teacher
from opd_core.lab.study import (
    DEFAULT_GAMMAS,
    LabSetting,
    StudyResult,
    bias_variance_vs_gamma,
    estimator_table,
    growth_exponents,
    headline,
    run_study,
    topk_bias,
    variance_vs_horizon,
)
from opd_core.lab.training import TrainSetting, default_training_estimators, train_curves, train_one

__all__ = [
    "DEFAULT_GAMMAS",
    "TASKS",
    "Estimator",
    "LabSetting",
    "Moments",
    "StudyResult",
    "TabularPolicy",
    "TrainSetting",
    "bias_variance_vs_gamma",
    "context_ids",
    "default_training_estimators",
    "enumerate_sequences",
    "estimator_table",
    "exact_moments",
    "exact_sequence_kl",
    "exact_sequence_kl_gradient",
    "growth_exponents",
    "headline",
    "make_student",
    "make_teacher",
    "per_context_gradients",
    "per_sequence_gradients",
    "reverse_kl_per_context",
    "run_study",
    "score_sequences",
    "topk_bias",
    "topk_support_per_context",
    "train_curves",
    "train_one",
    "variance_vs_horizon",
]
