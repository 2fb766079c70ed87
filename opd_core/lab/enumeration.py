"""Every sequence of a tiny vocabulary and horizon, with its exact probabilities, in one batched pass."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from opd_core.lab.policy import TabularPolicy, context_ids

MAX_SEQUENCES = 300_000  # 3^10 = 59,049 is the target; beyond this memory, not time, runs out


def check_enumerable(vocab_size: int, horizon: int) -> int:
    """Return V^T, or raise a ValueError saying how to shrink a setting too large to enumerate."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    n = vocab_size**horizon
    if n > MAX_SEQUENCES:
        raise ValueError(
            f"V^T = {vocab_size}^{horizon} = {n:,} sequences is too many to enumerate "
            f"(limit {MAX_SEQUENCES:,}); reduce the vocabulary size or the horizon"
        )
    return n


def enumerate_sequences(vocab_size: int, horizon: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """List all V^T sequences as one [V^T, T] id tensor (row i is i written in base V)."""
    n = check_enumerable(vocab_size, horizon)
    index = torch.arange(n, device=device)
    powers = vocab_size ** torch.arange(horizon - 1, -1, -1, device=device)
    return (index[:, None] // powers) % vocab_size


@dataclass(frozen=True)
class ScoredSequences:
    """Sequences with the per-position log-probabilities both models give them."""

    sequences: torch.Tensor  # [N, T]
    contexts: torch.Tensor  # [N, T] logit-table rows
    student_logp: torch.Tensor  # [N, T] log p_S(y_t | y_<t)
    teacher_logp: torch.Tensor  # [N, T] log p_T(y_t | y_<t)
    student_table: torch.Tensor  # [C, V] the student's next-token log-probs at every context

    @cached_property
    def loss_score(self) -> torch.Tensor:
        """Give d(-log p_S(y_t | c_t)) / d logits[c_t] = p_S(.|c_t) - onehot(y_t): [N, T, V], computed once."""
        probs = self.student_table.exp()[self.contexts]
        return probs - torch.nn.functional.one_hot(self.sequences, probs.shape[-1]).to(probs.dtype)

    @property
    def log_ratio(self) -> torch.Tensor:
        """Give the per-token reward r_t = log p_T - log p_S: [N, T]."""
        return self.teacher_logp - self.student_logp

    @property
    def student_seq_prob(self) -> torch.Tensor:
        """Give p_S(y) for each sequence: [N] (sums to 1 over a full enumeration)."""
        return self.student_logp.sum(dim=1).exp()


def score_sequences(
    student: TabularPolicy, teacher: TabularPolicy, sequences: torch.Tensor
) -> ScoredSequences:
    """Score sequences under both models by gathering from their log-prob tables (no loop over N)."""
    if student.vocab_size != teacher.vocab_size or student.horizon != teacher.horizon:
        raise ValueError("student and teacher must share vocab_size and horizon")
    ctx = context_ids(sequences, student.vocab_size)
    student_table = student.log_probs()
    return ScoredSequences(
        sequences=sequences,
        contexts=ctx,
        student_logp=student_table[ctx, sequences],
        teacher_logp=teacher.log_probs()[ctx, sequences],
        student_table=student_table,
    )


def exact_sequence_kl(
    student: TabularPolicy, teacher: TabularPolicy, sequences: torch.Tensor
) -> torch.Tensor:
    """Compute KL_seq(p_S || p_T) exactly over an enumeration (differentiable in the student's logits)."""
    scored = score_sequences(student, teacher, sequences)
    log_s = scored.student_logp.sum(dim=1)
    log_t = scored.teacher_logp.sum(dim=1)
    return (log_s.exp() * (log_s - log_t)).sum()


def exact_sequence_kl_gradient(
    student: TabularPolicy, teacher: TabularPolicy, sequences: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """Differentiate the exact sequence KL by autograd: (KL value, flattened gradient [P])."""
    logits = student.logits.detach().clone().requires_grad_(True)
    kl = exact_sequence_kl(student.with_logits(logits), teacher, sequences)
    (grad,) = torch.autograd.grad(kl, logits)
    return float(kl.detach()), grad.reshape(-1)
