"""Top-K head + sampled tail: an unbiased estimate of the full reverse KL and of its gradient.

The EMA-PG "top-k KL" idea (the seed paper's App. G.3): compute the reverse KL exactly on a support S_t
(the head) and correct for the rest of the vocabulary with the sampled token, only when it falls outside
S_t (the tail). With d(v) = log p_S(v) - log p_T(v) and y_t ~ p_S:

    value_t = sum_{v in S_t} p_S(v) d(v) + 1[y_t not in S_t] d(y_t)               E[value_t] = KL(p_S || p_T)
    grad_t  = grad(head) + 1[y_t not in S_t] (d(y_t) + 1) grad log p_S(y_t)      E[grad_t]  = grad KL

The "+1" is the derivative of d itself (d depends on p_S): sum_{v not in S} grad p_S(v) = -grad P_S(S_t) is
not zero on part of the vocabulary. The published EMA-PG / seed code uses d(y_t) alone; its expected
gradient is grad KL + grad P_S(S_t), which pulls mass out of the support (tests/test_objectives_seed.py
measures both). Probabilities are full-vocabulary ones (no renormalisation on S_t).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import ObjectiveBatch, ObjectiveOutput, TeacherNeeds, choice, positive_int, register_objective
from .chunked import chunked_token_loss
from .topk_support import check_topk_view

SUPPORTS = ("teacher_topk", "student_topk")
EXTRAS = ("student_support_mass", "teacher_support_mass", "sampled_outside_support")


def _needs(params: dict[str, Any]) -> TeacherNeeds:
    # the student's top-K ids are only known at scoring time: the teacher's log-probs there need full logits
    return TeacherNeeds.FULL if params["support"] == "student_topk" else TeacherNeeds.TOPK


def _head_tail(x: Tensor, aux: dict[str, Tensor], k: int, support: str) -> tuple[Tensor, dict[str, Tensor]]:
    floor = torch.finfo(x.dtype).min  # a teacher -inf becomes a huge finite penalty, never inf - inf = nan
    y = aux["sampled_ids"][:, None]
    if support == "student_topk":
        teacher_logp = torch.log_softmax(aux["teacher_logits"].to(x.dtype), -1).clamp_min(floor)
        ids = x.detach().topk(k, dim=-1).indices
        t_logp, t_logp_y = teacher_logp.gather(-1, ids), teacher_logp.gather(-1, y)[:, 0]
    else:
        ids = aux["topk_ids"][:, :k]
        t_logp = aux["topk_logps"][:, :k].to(x.dtype).clamp_min(floor)
        t_logp_y = aux["teacher_sampled_logp"].to(x.dtype).clamp_min(floor)
    lse = x.logsumexp(-1, keepdim=True)
    s_logp = x.gather(-1, ids) - lse
    head = (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    outside = (~(ids == y).any(-1)).to(x.dtype)
    s_logp_y = (x.gather(-1, y) - lse)[:, 0]
    d = (s_logp_y - t_logp_y).detach()
    score = s_logp_y - s_logp_y.detach()  # 0 in value, grad log p_S(y) in gradient
    # value: head + 1[y not in S] d(y), the estimate itself; gradient: grad head + 1[..] (d + 1) grad log p_S(y)
    loss = head + outside * (d + (d + 1.0) * score)
    extras = {
        "student_support_mass": s_logp.detach().exp().sum(-1),
        "teacher_support_mass": t_logp.exp().sum(-1),
        "sampled_outside_support": outside.detach(),
    }
    return loss, extras


@register_objective(
    "topk_head_tail",
    needs=TeacherNeeds.TOPK,
    needs_fn=_needs,
    params={
        "k": positive_int(32, "Size of the head: the K tokens whose reverse-KL terms are summed exactly."),
        "support": choice("teacher_topk", SUPPORTS, "Whose top-K forms the head: the teacher's (needs only its "
                                                    "top-K) or the student's (EMA-PG's; needs full teacher "
                                                    "logits)."),
    },
)
def topk_head_tail(
    batch: ObjectiveBatch, *, k: int, support: str, chunk_tokens: int | None = None
) -> ObjectiveOutput:
    """Exact reverse KL on the top-K head + a REINFORCE term for a sampled token outside it (unbiased).

    Signal and value: the per-token estimate of the full reverse KL (head + 1[y not in S] d(y)). Extras:
    each model's probability mass on S_t and ``sampled_outside_support`` (1 where the tail term fired).
    """
    k = min(k, batch.student_logits.shape[-1])
    aux = {"sampled_ids": batch.sampled_ids.long()}
    if support == "student_topk":
        assert batch.teacher_logits is not None  # checked by compute_objective
        aux["teacher_logits"] = batch.teacher_logits.detach()
    else:
        check_topk_view(batch, k, "topk_head_tail", need_sampled=True)
        aux["topk_ids"] = batch.teacher_topk_ids.long()  # type: ignore[union-attr]
        aux["topk_logps"] = batch.teacher_topk_logps.detach()  # type: ignore[union-attr]
        aux["teacher_sampled_logp"] = batch.teacher_sampled_logp.detach()  # type: ignore[union-attr]

    def token_fn(x: Tensor, chunk_aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return _head_tail(x, chunk_aux, k, support)

    loss, extras = chunked_token_loss(token_fn, batch.student_logits, batch.mask, aux, chunk_tokens, EXTRAS)
    # the loss's value is the estimate itself, so it is also the value and the signal
    return ObjectiveOutput(loss=loss, signal=loss.detach(), extras=extras)
