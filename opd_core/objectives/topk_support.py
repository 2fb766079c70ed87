"""Teacher top-K local support matching: a dense, bounded KL on the tokens the teacher supports."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import (
    ObjectiveBatch,
    ObjectiveError,
    ObjectiveOutput,
    TeacherNeeds,
    boolean,
    choice,
    positive_float_or_none,
    positive_int,
    register_objective,
)
from .chunked import chunked_token_loss

SUPPORTS = ("teacher_topk", "teacher_topk_plus_sampled", "student_topk_plus_sampled")
EXTRAS = ("student_support_mass", "teacher_support_mass")


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler's switch at -log 2)."""
    x = x.clamp_max(0.0)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def check_topk_view(batch: ObjectiveBatch, k: int, name: str, *, need_sampled: bool) -> None:
    """Raise ObjectiveError when the batch's teacher top-K view holds fewer than k ids or lacks the sampled
    token's log-prob an objective needs."""
    assert batch.teacher_topk_ids is not None and batch.teacher_topk_logps is not None  # checked by check_batch
    have = batch.teacher_topk_ids.shape[-1]
    if have < k:
        raise ObjectiveError(
            f"{name}: k={k} but teacher_topk_ids holds only {have} ids per token; "
            f"score the teacher with top_k >= {k} or lower k"
        )
    if need_sampled and batch.teacher_sampled_logp is None:
        raise ObjectiveError(
            f"{name} needs teacher_sampled_logp (the teacher's log-prob of the sampled token) with this "
            "support; fill it in the ObjectiveBatch"
        )


def _needs(params: dict[str, Any]) -> TeacherNeeds:
    # a support chosen by the student needs the teacher's log-prob at arbitrary ids: the full logits
    return TeacherNeeds.FULL if params["support"] == "student_topk_plus_sampled" else TeacherNeeds.TOPK


def _support(
    x: Tensor, aux: dict[str, Tensor], k: int, support: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Support ids [n,S], their validity [n,S] (a duplicated sampled id is invalid) and teacher log-probs."""
    if support == "student_topk_plus_sampled":
        teacher_logp = torch.log_softmax(aux["teacher_logits"].to(x.dtype), -1)
        ids = x.detach().topk(k, dim=-1).indices
    else:
        ids = aux["topk_ids"][:, :k]
    valid = torch.ones_like(ids, dtype=torch.bool)
    if support != "teacher_topk":
        sampled = aux["sampled_ids"][:, None]
        valid = torch.cat([valid, ~(ids == sampled).any(-1, keepdim=True)], -1)
        ids = torch.cat([ids, sampled], -1)
    if support == "student_topk_plus_sampled":
        t_logp = teacher_logp.gather(-1, ids)
    elif support == "teacher_topk_plus_sampled":
        t_logp = torch.cat([aux["topk_logps"][:, :k], aux["teacher_sampled_logp"][:, None]], -1).to(x.dtype)
    else:
        t_logp = aux["topk_logps"][:, :k].to(x.dtype)
    return ids, valid, t_logp


def _support_kl(x: Tensor, aux: dict[str, Tensor], k: int, support: str, renormalize: bool, tail_bucket: bool,
                clip: float | None = None):
    ids, valid, t_logp = _support(x, aux, k, support)
    # invalid slots get a huge finite negative log-prob: probability 0, and no inf - inf = nan in the gradient
    neg = torch.finfo(x.dtype).min
    lse = x.logsumexp(-1, keepdim=True)
    s_logit = x.gather(-1, ids).masked_fill(~valid, neg)
    s_logp = (s_logit - lse).masked_fill(~valid, neg)  # the student's full-vocabulary log-probs
    t_logp = t_logp.masked_fill(~valid, neg)
    extras = {
        "student_support_mass": s_logp.detach().logsumexp(-1).exp(),
        "teacher_support_mass": t_logp.logsumexp(-1).exp(),
    }
    if tail_bucket:
        # exact categories: the support plus one bucket holding each model's leftover mass
        s_tail = x.scatter(-1, ids, neg).logsumexp(-1, keepdim=True) - lse  # no 1 - sum cancellation
        # the teacher's tail only from its top-K log-probs: 1 - sum, in float64, floored at the smallest
        # normal number so that an empty tail (k = |V|) gives 0 * finite, not 0 * inf
        t_tail = log1mexp(t_logp.double().logsumexp(-1, keepdim=True)).to(x.dtype)
        t_tail = t_tail.clamp_min(math.log(torch.finfo(x.dtype).tiny))
        s_logp = torch.cat([s_logp, s_tail.clamp_min(neg)], -1)
        t_logp = torch.cat([t_logp, t_tail], -1)
    elif renormalize:
        s_logp = torch.log_softmax(s_logit, -1)
        t_logp = torch.log_softmax(t_logp, -1)
    p = s_logp.exp()
    diff = s_logp - t_logp
    if clip is not None:
        diff = diff.clamp(-clip, clip)  # the seed's clip_log_ratio: each term's log-ratio in [-c, c]
    return (p * diff).sum(-1), extras


@register_objective(
    "topk_support",
    needs=TeacherNeeds.TOPK,
    needs_fn=_needs,
    params={
        "k": positive_int(32, "Size of the support: the teacher's top-K tokens at each prefix (the paper uses 32)."),
        "renormalize": boolean(True, "Log-softmax each model over the support alone. Off = full-vocabulary "
                                     "probabilities truncated to the support, which collapses training."),
        "support": choice("teacher_topk", SUPPORTS, "The support: the teacher's top-K, plus the sampled token, "
                                                    "or the student's top-K plus the sampled token."),
        "tail_bucket": boolean(False, "Add one category holding each model's leftover mass outside the "
                                      "support (an exact distribution; renormalize then has no effect)."),
        "clip_log_ratio": positive_float_or_none(None, "Clamp each support term's log-ratio "
                                                       "log p~_S - log p~_T to [-c, c] (the seed code's "
                                                       "clip_log_ratio uses 5). None = off."),
    },
)
def topk_support(
    batch: ObjectiveBatch,
    *,
    k: int,
    renormalize: bool,
    support: str,
    tail_bucket: bool,
    clip_log_ratio: float | None,
    chunk_tokens: int | None = None,
) -> ObjectiveOutput:
    """KL(p~_S || p~_T) over the support S_t (the teacher's top-K by default), each model renormalised on S_t.

    Signal: that per-token KL. Extras: ``student_support_mass`` / ``teacher_support_mass``, each model's
    full-vocabulary probability mass inside S_t.
    """
    vocab = batch.student_logits.shape[-1]
    k = min(k, vocab)
    aux = {"sampled_ids": batch.sampled_ids.long()}
    if support == "student_topk_plus_sampled":
        assert batch.teacher_logits is not None  # checked by compute_objective
        aux["teacher_logits"] = batch.teacher_logits.detach()
    else:
        check_topk_view(batch, k, "topk_support", need_sampled=support == "teacher_topk_plus_sampled")
        aux["topk_ids"] = batch.teacher_topk_ids.long()  # type: ignore[union-attr]
        aux["topk_logps"] = batch.teacher_topk_logps.detach()  # type: ignore[union-attr]
        if support == "teacher_topk_plus_sampled":
            aux["teacher_sampled_logp"] = batch.teacher_sampled_logp.detach()  # type: ignore[union-attr]

    def token_fn(x: Tensor, chunk_aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return _support_kl(x, chunk_aux, k, support, renormalize, tail_bucket, clip_log_ratio)

    loss, extras = chunked_token_loss(token_fn, batch.student_logits, batch.mask, aux, chunk_tokens, EXTRAS)
    return ObjectiveOutput(loss=loss, signal=loss.detach(), extras=extras)
