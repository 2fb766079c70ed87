"""The full-vocabulary KL divergences: reverse (mode-seeking, OPD's), forward (mass-covering) and their mix."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ObjectiveBatch, ObjectiveOutput, TeacherNeeds, register_objective, unit_interval
from .chunked import TokenLossFn, chunked_token_loss


def kl_from_logprobs(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) over the last dim from (finite) log-probabilities."""
    return (logp.exp() * (logp - logq)).sum(-1)


def log_softmax_pair(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's log-probabilities of one chunk, in the student's compute dtype.

    The teacher's are floored at the dtype's most negative finite value, so a vocabulary entry it masks
    with -inf logits has probability 0 and contributes 0 (not 0 * inf = nan) to any KL.
    """
    teacher = torch.log_softmax(aux["teacher_logits"].to(x.dtype), -1)
    return torch.log_softmax(x, -1), teacher.clamp_min_(torch.finfo(x.dtype).min)


def run_full_vocab(token_fn: TokenLossFn, batch: ObjectiveBatch, chunk_tokens: int | None) -> ObjectiveOutput:
    """Apply a full-vocabulary divergence chunk by chunk; its signal is the per-token divergence itself."""
    assert batch.teacher_logits is not None  # checked by compute_objective
    loss, extras = chunked_token_loss(
        token_fn, batch.student_logits, batch.mask, {"teacher_logits": batch.teacher_logits.detach()}, chunk_tokens
    )
    return ObjectiveOutput(loss=loss, signal=loss.detach(), extras=extras)


def _reverse(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    ls, lt = log_softmax_pair(x, aux)
    return kl_from_logprobs(ls, lt), {}


def _forward(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    ls, lt = log_softmax_pair(x, aux)
    return kl_from_logprobs(lt, ls), {}


@register_objective("reverse_kl", needs=TeacherNeeds.FULL)
def reverse_kl(batch: ObjectiveBatch, *, chunk_tokens: int | None = None) -> ObjectiveOutput:
    """KL(p_S || p_T) over the full vocabulary at each visited prefix. Signal: that KL."""
    return run_full_vocab(_reverse, batch, chunk_tokens)


@register_objective("forward_kl", needs=TeacherNeeds.FULL)
def forward_kl(batch: ObjectiveBatch, *, chunk_tokens: int | None = None) -> ObjectiveOutput:
    """KL(p_T || p_S) over the full vocabulary at each visited prefix. Signal: that KL."""
    return run_full_vocab(_forward, batch, chunk_tokens)


@register_objective("kl_mix", needs=TeacherNeeds.FULL, params={"alpha": unit_interval(0.5, "Weight of the forward KL: alpha KL(p_T||p_S) + (1 - alpha) KL(p_S||p_T).")})
def kl_mix(batch: ObjectiveBatch, *, alpha: float, chunk_tokens: int | None = None) -> ObjectiveOutput:
    """alpha * KL(p_T || p_S) + (1 - alpha) * KL(p_S || p_T). Signal: that mixture."""

    def token_fn(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ls, lt = log_softmax_pair(x, aux)
        # a zero weight drops its term entirely, so alpha = 0 / 1 is exactly reverse / forward KL
        loss = torch.zeros_like(ls[:, 0])
        if alpha > 0.0:
            loss = loss + alpha * kl_from_logprobs(lt, ls)
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * kl_from_logprobs(ls, lt)
        return loss, {}

    return run_full_vocab(token_fn, batch, chunk_tokens)
