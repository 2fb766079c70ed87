"""Per-sequence gradient vectors of each OPD estimator, and their exact moments over an enumeration.

Every estimator maps a sequence y to a gradient vector g(y) in parameter space (the flattened
[C, V] student table); the same function serves the exact study (all y, weighted by p_S(y)) and
training (a sampled batch, averaged). All are gradients of the loss being *minimised*, so
E[g] of the gamma = 1 sampled-token estimator equals +grad KL_seq(p_S || p_T).

Sampled-token gradients use the analytic score of a softmax table, d log p(v|c) / d logits[c] =
onehot(v) - p(.|c), scattered into the rows the sequence visits: no autograd call per sequence.
Dense per-prefix objectives (reverse KL, top-K support) get their per-context gradient from one
batched autograd call over the whole table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from opd_core.lab.enumeration import ScoredSequences, score_sequences
from opd_core.lab.policy import TabularPolicy
from opd_core.objectives import discounted_returns  # the engine's own A_t, so both agree by construction

TOPK_VARIANTS = ("renormalized", "unnormalized", "tail_bucket")


@dataclass(frozen=True)
class Estimator:
    """Names one gradient estimator: a sampled-token OPD at some gamma, or a dense per-prefix objective.

    kind: ``sampled_token`` (A_t = sum_k gamma^k r_{t+k} times the sampled token's score),
    ``sequence_reinforce`` (the whole-sequence return times every token's score: REINFORCE
    without the causality trick), ``reverse_kl`` (full-vocabulary KL at each visited prefix) or
    ``topk_support`` (KL over the teacher's top-K tokens at each visited prefix; ``variant``
    ``renormalized`` as in the paper, ``unnormalized`` = the same sum without renormalising,
    ``tail_bucket`` = top-K plus one bucket holding the leftover mass).
    """

    kind: str = "sampled_token"
    gamma: float = 0.0
    k: int | None = None
    variant: str = "renormalized"

    def __post_init__(self) -> None:
        if self.kind not in ROWS:
            raise ValueError(f"unknown estimator kind {self.kind!r}; choose one of {sorted(ROWS)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.kind == "topk_support":
            if self.k is None or self.k < 1:
                raise ValueError("topk_support needs k >= 1 (the size of the teacher's support)")
            if self.variant not in TOPK_VARIANTS:
                raise ValueError(f"unknown top-K variant {self.variant!r}; choose one of {TOPK_VARIANTS}")

    @property
    def label(self) -> str:
        """Give a short human name for tables and legends."""
        if self.kind == "sampled_token":
            return f"sampled-token γ={self.gamma:g}"
        if self.kind == "sequence_reinforce":
            return "sequence REINFORCE (full return)"
        if self.kind == "reverse_kl":
            return "dense reverse KL"
        return f"top-{self.k} support ({self.variant})"


def scatter_rows(contexts: torch.Tensor, rows: torch.Tensor, num_contexts: int) -> torch.Tensor:
    """Add per-position rows [N, T, V] into per-sequence flattened tables [N, C*V] at the visited contexts."""
    n, horizon, vocab = rows.shape
    index = (contexts.unsqueeze(-1) * vocab + torch.arange(vocab, device=rows.device)).reshape(
        n, horizon * vocab
    )
    out = torch.zeros(n, num_contexts * vocab, dtype=rows.dtype, device=rows.device)
    return out.scatter_add_(1, index, rows.reshape(n, horizon * vocab))


def _sampled_token_rows(
    student: TabularPolicy, teacher: TabularPolicy, scored: ScoredSequences, est: Estimator
) -> torch.Tensor:
    rewards = scored.log_ratio
    advantages = discounted_returns(rewards, torch.ones_like(rewards, dtype=torch.bool), est.gamma)
    return advantages.unsqueeze(-1) * scored.loss_score


def _sequence_reinforce_rows(
    student: TabularPolicy, teacher: TabularPolicy, scored: ScoredSequences, est: Estimator
) -> torch.Tensor:
    total = scored.log_ratio.sum(dim=1)
    return total[:, None, None] * scored.loss_score


def reverse_kl_per_context(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Compute KL(p_S || p_T) over the full vocabulary at every context: [C, V] x2 -> [C]."""
    log_s = torch.log_softmax(student_logits, dim=-1)
    log_t = torch.log_softmax(teacher_logits, dim=-1)
    return (log_s.exp() * (log_s - log_t)).sum(dim=-1)


def topk_support_per_context(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int, variant: str = "renormalized"
) -> torch.Tensor:
    """Compute the top-K support-matching loss at every context: [C, V] x2 -> [C].

    The support is the teacher's top-K tokens at that context. ``renormalized`` log-softmaxes both
    models over the K support logits alone (the paper's fix); ``unnormalized`` keeps the
    full-vocabulary probabilities and sums p_S (log p_S - log p_T) over the support only;
    ``tail_bucket`` adds one outcome holding each model's mass outside the support.
    """
    vocab = student_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top-K size k={k} must be between 1 and the vocabulary size {vocab}")
    support = teacher_logits.topk(k, dim=-1).indices
    if variant == "renormalized":
        log_s = torch.log_softmax(student_logits.gather(-1, support), dim=-1)
        log_t = torch.log_softmax(teacher_logits.gather(-1, support), dim=-1)
    else:
        full_s = torch.log_softmax(student_logits, dim=-1)
        full_t = torch.log_softmax(teacher_logits, dim=-1)
        log_s, log_t = full_s.gather(-1, support), full_t.gather(-1, support)
        if variant == "tail_bucket" and k < vocab:
            outside = torch.ones_like(full_s, dtype=torch.bool).scatter_(-1, support, False)
            tail_s = full_s.masked_fill(~outside, float("-inf")).logsumexp(-1, keepdim=True)
            tail_t = full_t.masked_fill(~outside, float("-inf")).logsumexp(-1, keepdim=True)
            log_s, log_t = torch.cat([log_s, tail_s], -1), torch.cat([log_t, tail_t], -1)
        elif variant not in TOPK_VARIANTS:
            raise ValueError(f"unknown top-K variant {variant!r}; choose one of {TOPK_VARIANTS}")
    return (log_s.exp() * (log_s - log_t)).sum(dim=-1)


def per_context_objective(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, est: Estimator
) -> torch.Tensor:
    """Evaluate a dense per-prefix objective at every context: [C]."""
    if est.kind == "reverse_kl":
        return reverse_kl_per_context(student_logits, teacher_logits)
    return topk_support_per_context(student_logits, teacher_logits, est.k or 0, est.variant)


def per_context_gradients(student: TabularPolicy, teacher: TabularPolicy, est: Estimator) -> torch.Tensor:
    """Differentiate a dense per-prefix objective at every context in one autograd call: [C, V]."""
    logits = student.logits.detach().clone().requires_grad_(True)
    loss = per_context_objective(logits, teacher.logits, est).sum()  # rows are independent
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


def _dense_rows(
    student: TabularPolicy, teacher: TabularPolicy, scored: ScoredSequences, est: Estimator
) -> torch.Tensor:
    # prefixes are sampled from the student but not differentiated through (stop-grad on the rollout)
    return per_context_gradients(student, teacher, est)[scored.contexts]


# Each estimator gives, per sequence and position, the gradient row it adds at that position's context.
ROWS: dict[str, Callable[[TabularPolicy, TabularPolicy, ScoredSequences, Estimator], torch.Tensor]] = {
    "sampled_token": _sampled_token_rows,
    "sequence_reinforce": _sequence_reinforce_rows,
    "reverse_kl": _dense_rows,
    "topk_support": _dense_rows,
}


def per_position_rows(
    student: TabularPolicy, teacher: TabularPolicy, scored: ScoredSequences, est: Estimator
) -> torch.Tensor:
    """Give the gradient row each position adds at its context: [N, T, V] (the compact form of g(y))."""
    return ROWS[est.kind](student, teacher, scored, est)


def per_sequence_gradients(
    student: TabularPolicy, teacher: TabularPolicy, sequences: torch.Tensor, est: Estimator
) -> torch.Tensor:
    """Give the estimator's gradient vector for each sequence: [N, T] ids -> [N, P]."""
    scored = score_sequences(student, teacher, sequences)
    rows = per_position_rows(student, teacher, scored, est)
    return scatter_rows(scored.contexts, rows, student.logits.shape[0])


@dataclass(frozen=True)
class Moments:
    """Exact mean gradient and per-sample variance (trace of the covariance) of one estimator."""

    mean: torch.Tensor  # [P]
    variance: float


def exact_moments(grads: torch.Tensor, probs: torch.Tensor) -> Moments:
    """Weight per-sequence gradients [N, P] by their exact probabilities [N]: E[g] and E||g - E g||^2."""
    mean = probs @ grads
    # two-pass form: no cancellation between E||g||^2 and ||E g||^2 when the variance is small
    variance = probs @ (grads - mean).pow(2).sum(dim=1)
    return Moments(mean=mean, variance=float(variance))


def exact_moments_from_rows(
    contexts: torch.Tensor, rows: torch.Tensor, probs: torch.Tensor, num_contexts: int
) -> Moments:
    """Exact moments without building the [N, P] gradient matrix (what makes 3^10 fast).

    A sequence visits one context per position and contexts encode the position, so its rows
    never overlap: ||g(y)||^2 is the sum of its rows' squared norms, and E[g] is one weighted
    scatter-add of all rows into the [C*V] table.
    """
    vocab = rows.shape[-1]
    index = (contexts.unsqueeze(-1) * vocab + torch.arange(vocab, device=rows.device)).reshape(-1)
    weighted = (probs[:, None, None] * rows).reshape(-1)
    mean = torch.zeros(num_contexts * vocab, dtype=rows.dtype, device=rows.device).index_add_(
        0, index, weighted
    )
    second = probs @ rows.pow(2).sum(dim=(1, 2))
    variance = float((second - mean.pow(2).sum()).clamp_min(0.0))
    return Moments(mean=mean, variance=variance)
