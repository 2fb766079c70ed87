"""Standard OPD: reward the sampled token by the teacher/student log-ratio, a policy-gradient loss."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ObjectiveBatch, ObjectiveOutput, TeacherNeeds, register_objective, unit_interval
from .chunked import chunked_token_loss, compute_dtype, token_logprobs


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """A_t = sum_k gamma^k r_{t+k} m_{t+k} within each row [B,T]; masked tokens add 0 but still count a step.

    The sum never crosses into another row. gamma = 0 gives the token-level reward, gamma = 1 the
    reward-to-go of the whole remaining sequence.
    """
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    if gamma == 0.0:
        return r
    if gamma == 1.0:
        return r.flip(-1).cumsum(-1).flip(-1)
    out = torch.empty_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out


def _neg_advantage_logp(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    logp = x.gather(-1, aux["ids"][:, None])[:, 0] - x.logsumexp(-1)
    return -aux["advantage"].to(x.dtype) * logp, {}


@register_objective("sampled_token", needs=TeacherNeeds.SAMPLED, params={"gamma": unit_interval(0.0)})
def sampled_token(batch: ObjectiveBatch, *, gamma: float, chunk_tokens: int | None = None) -> ObjectiveOutput:
    """Standard OPD: loss_t = -sg(A_t) log p_S(y_t), A_t = sum_k gamma^k (log p_T - log p_S)(y_{t+k}).

    Signal: the advantage A_t. Extras: ``log_ratio`` r_t and ``student_logp`` log p_S(y_t).
    """
    logits, mask = batch.student_logits, batch.mask
    assert batch.teacher_sampled_logp is not None  # checked by compute_objective
    dtype = compute_dtype(logits.dtype)
    student_logp = token_logprobs(logits.detach(), batch.sampled_ids, chunk_tokens)
    log_ratio = torch.where(mask, batch.teacher_sampled_logp.to(dtype) - student_logp, 0.0)
    advantage = discounted_returns(log_ratio, mask, gamma)
    loss, _ = chunked_token_loss(
        _neg_advantage_logp, logits, mask, {"ids": batch.sampled_ids.long(), "advantage": advantage}, chunk_tokens
    )
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    return ObjectiveOutput(
        loss=loss,
        signal=torch.where(mask, advantage, zero),
        extras={"log_ratio": log_ratio, "student_logp": torch.where(mask, student_logp, zero)},
    )
