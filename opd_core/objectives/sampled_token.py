"""Standard OPD: reward the sampled token by the teacher/student log-ratio, a policy-gradient loss."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    ObjectiveBatch,
    ObjectiveError,
    ObjectiveOutput,
    TeacherNeeds,
    choice,
    positive_float_or_none,
    register_objective,
    unit_interval,
)
from .chunked import chunked_token_loss, compute_dtype, token_logprobs

MASK_MODES = ("skip", "reset")


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float, mask_mode: str = "skip") -> Tensor:
    """A_t = sum_k gamma^k r_{t+k} within each row [B,T]; masked positions add no reward.

    ``mask_mode="skip"``: a masked position is a zero-reward step (it still counts in gamma^k), so the
    return runs past it to the end of the row. ``mask_mode="reset"`` (the seed code's): the return stops
    at the next masked position, so A_t sums only the unmasked run that starts at t. The sum never crosses
    into another row. gamma = 0 gives the token-level reward; gamma = 1 with ``skip`` the reward-to-go of
    the whole remaining sequence.
    """
    if mask_mode not in MASK_MODES:
        raise ObjectiveError(f"mask_mode must be one of {', '.join(MASK_MODES)}, got {mask_mode!r}")
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    if gamma == 0.0:
        return r
    if gamma == 1.0 and mask_mode == "skip":
        return r.flip(-1).cumsum(-1).flip(-1)
    keep = mask.to(r.dtype) if mask_mode == "reset" else torch.ones_like(r)
    out = torch.empty_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
        running = running * keep[:, t]  # reset: a masked position cuts the return of everything before it
    return out


def _neg_advantage_logp(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    logp = x.gather(-1, aux["ids"][:, None])[:, 0] - x.logsumexp(-1)
    return -aux["advantage"].to(x.dtype) * logp, {}


@register_objective(
    "sampled_token",
    needs=TeacherNeeds.SAMPLED,
    params={
        "gamma": unit_interval(0.0, "Discount of future rewards in the advantage: 0 = token-level OPD, "
                                    "1 = sequence-level (expected gradient of the sequence reverse KL)."),
        "clip_log_ratio": positive_float_or_none(None, "Clamp each log-ratio r_t to [-c, c] before "
                                                       "discounting (the seed code uses 5). None = off."),
        "mask_mode": choice("skip", MASK_MODES, "At gamma > 0, what a masked token does to the return: "
                                                "`skip` = a zero-reward step, `reset` = the return stops "
                                                "there (the seed code's)."),
    },
)
def sampled_token(
    batch: ObjectiveBatch,
    *,
    gamma: float,
    clip_log_ratio: float | None,
    mask_mode: str,
    chunk_tokens: int | None = None,
) -> ObjectiveOutput:
    """Standard OPD: loss_t = -sg(A_t) log p_S(y_t), A_t = sum_k gamma^k (log p_T - log p_S)(y_{t+k}).

    Signal: the advantage A_t. Value: -r_t (unclipped), whose mean is the Monte-Carlo reverse KL. Extras:
    ``log_ratio`` r_t (unclipped) and ``student_logp`` log p_S(y_t).
    """
    logits, mask = batch.student_logits, batch.mask
    assert batch.teacher_sampled_logp is not None  # checked by compute_objective
    reward_mask = mask if batch.reward_mask is None else batch.reward_mask.bool()
    dtype = compute_dtype(logits.dtype)
    zero = torch.zeros((), dtype=dtype, device=logits.device)
    student_logp = token_logprobs(logits.detach(), batch.sampled_ids, chunk_tokens)
    raw_ratio = batch.teacher_sampled_logp.to(dtype) - student_logp
    log_ratio = torch.where(reward_mask, raw_ratio, zero)
    reward = log_ratio if clip_log_ratio is None else log_ratio.clamp(-clip_log_ratio, clip_log_ratio)
    advantage = discounted_returns(reward, reward_mask, gamma, mask_mode)
    loss, _ = chunked_token_loss(
        _neg_advantage_logp, logits, mask, {"ids": batch.sampled_ids.long(), "advantage": advantage}, chunk_tokens
    )
    return ObjectiveOutput(
        loss=loss,
        signal=torch.where(mask, advantage, zero),
        extras={"log_ratio": torch.where(mask, raw_ratio, zero), "student_logp": torch.where(mask, student_logp, zero)},
        value=torch.where(mask, -raw_ratio, zero),
    )
