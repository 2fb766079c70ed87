"""Train the lab's student with sampled batches under each estimator, tracking the exact sequence KL.

Each run starts from the same student and draws its rollouts from its own seeded generator, so
runs differ only by the estimator. Per step: sample ``micro_batches`` x ``micro_batch_size``
sequences from the current student, average each micro-batch's per-sequence gradients, step
with their mean (plain SGD, so the estimator's variance shows in the curve rather than being
normalised away as Adam would), and log the exact KL_seq (by enumeration) and the paper's
variance proxy: the spread of the M micro-batch gradients, sum_m ||g_m - mean||^2 / (M - 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from opd_core.lab.enumeration import enumerate_sequences, exact_sequence_kl
from opd_core.lab.estimators import Estimator, per_sequence_gradients
from opd_core.lab.policy import TabularPolicy
from opd_core.lab.study import LabSetting
from opd_core.lab.threads import single_threaded


@dataclass(frozen=True)
class TrainSetting:
    """How the lab trains: steps, micro-batching (for the variance proxy), SGD learning rate, seed."""

    steps: int = 60
    micro_batches: int = 8
    micro_batch_size: int = 8
    lr: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.micro_batches < 2:
            raise ValueError(
                f"micro_batches must be >= 2 (the variance proxy needs two), got {self.micro_batches}"
            )
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def train_one(
    student: TabularPolicy,
    teacher: TabularPolicy,
    estimator: Estimator,
    train: TrainSetting,
    sequences: torch.Tensor,
) -> pd.DataFrame:
    """Train one student copy with one estimator; one row per step (step 0 = before any update)."""
    generator = torch.Generator().manual_seed(train.seed)
    m, b = train.micro_batches, train.micro_batch_size
    rows = []
    for step in range(train.steps + 1):
        kl = float(exact_sequence_kl(student, teacher, sequences))
        if step == train.steps:
            rows.append(
                {"step": step, "sequence_kl": kl, "variance_proxy": float("nan"), "grad_norm": float("nan")}
            )
            break
        batch = student.sample(m * b, generator)
        micro = per_sequence_gradients(student, teacher, batch, estimator).reshape(m, b, -1).mean(dim=1)
        grad = micro.mean(dim=0)
        proxy = float((micro - grad).pow(2).sum() / (m - 1))
        rows.append(
            {"step": step, "sequence_kl": kl, "variance_proxy": proxy, "grad_norm": float(grad.norm())}
        )
        student = student.with_logits(student.logits - train.lr * grad.reshape(student.logits.shape))
    frame = pd.DataFrame(rows)
    frame.insert(0, "estimator", estimator.label)
    return frame


def default_training_estimators(setting: LabSetting, gamma: float | None = None) -> list[Estimator]:
    """List the runs the Lab page compares: OPD at gamma 0, the chosen gamma and 1, and top-K support."""
    gammas = sorted({0.0, 1.0} | ({gamma} if gamma is not None else set()))
    return [Estimator("sampled_token", gamma=g) for g in gammas] + [
        Estimator("topk_support", k=setting.k, variant="renormalized"),
        Estimator("topk_support", k=setting.k, variant="unnormalized"),
    ]


def train_curves(
    setting: LabSetting, train: TrainSetting, estimators: Sequence[Estimator] | None = None
) -> pd.DataFrame:
    """Train one run per estimator from the same start: columns estimator, step, sequence_kl, variance_proxy, grad_norm."""
    estimators = default_training_estimators(setting) if estimators is None else list(estimators)
    if not estimators:
        raise ValueError("give at least one estimator to train with")
    student, teacher = setting.student(), setting.teacher()
    sequences = enumerate_sequences(setting.vocab_size, setting.horizon, setting.device)
    with single_threaded():
        frames = [train_one(student, teacher, est, train, sequences) for est in estimators]
    return pd.concat(frames, ignore_index=True)
