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


def _support_kl(x: Tensor, aux: dict[str, Tensor], k: int, support: str, renormalize: bool, tail_bucket: bool):
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
    return (p * (s_logp - t_logp)).sum(-1), extras


@register_objective(
    "topk_support",
    needs=TeacherNeeds.TOPK,
    needs_fn=_needs,
    params={
        "k": positive_int(32),
        "renormalize": boolean(True),
        "support": choice("teacher_topk", SUPPORTS),
        "tail_bucket": boolean(False),
    },
)
def topk_support(
    batch: ObjectiveBatch,
    *,
    k: int,
    renormalize: bool,
    support: str,
    tail_bucket: bool,
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
        assert batch.teacher_topk_ids is not None and batch.teacher_topk_logps is not None
        have = batch.teacher_topk_ids.shape[-1]
        if have < k:
            raise ObjectiveError(
                f"topk_support: k={k} but teacher_topk_ids holds only {have} ids per token; "
                f"score the teacher with top_k >= {k} or lower k"
            )
        aux["topk_ids"] = batch.teacher_topk_ids.long()
        aux["topk_logps"] = batch.teacher_topk_logps.detach()
        if support == "teacher_topk_plus_sampled":
            if batch.teacher_sampled_logp is None:
                raise ObjectiveError(
                    "topk_support with support='teacher_topk_plus_sampled' needs teacher_sampled_logp "
                    "(the teacher's log-prob of the sampled token); fill it in the ObjectiveBatch"
                )
            aux["teacher_sampled_logp"] = batch.teacher_sampled_logp.detach()

    def token_fn(x: Tensor, chunk_aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return _support_kl(x, chunk_aux, k, support, renormalize, tail_bucket)

    loss, extras = chunked_token_loss(token_fn, batch.student_logits, batch.mask, aux, chunk_tokens, EXTRAS)
    return ObjectiveOutput(loss=loss, signal=loss.detach(), extras=extras)
