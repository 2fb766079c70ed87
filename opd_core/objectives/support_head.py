"""``topk_support`` (renormalised on the teacher's top-K, optionally + the sampled token) from the student's
hidden states and LM head: K+1 rows of the head per token instead of V, forward and backward.

Why: renormalised on the support, the loss depends on the student's logits at the support ids only (the
full-vocabulary log-normaliser cancels), so the [B,T,V] student logits, their log-softmax and their
gradient are work nobody reads. At K = 32, V = 49K that is ~1,500x less head work on the student side.
The loss and gradients equal ``topk_support``'s on the full logits (tests/test_fast_paths.py).

What this path cannot give: the student's full-vocabulary mass inside the support (the extra
``student_support_mass``), which needs the log-normaliser over all V; ``teacher_support_mass`` is exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from opd_core.student_head import HeadInputs, support_logits

from .base import ObjectiveOutput
from .chunked import compute_dtype
from .topk_support import _support

RESTRICTABLE_SUPPORTS = ("teacher_topk", "teacher_topk_plus_sampled")


def restricts(params: dict[str, Any]) -> bool:
    """Whether ``topk_support`` with these (validated) parameters needs the student's logits on the support only."""
    return bool(params.get("renormalize")) and not params.get("tail_bucket") \
        and params.get("support") in RESTRICTABLE_SUPPORTS


def topk_support_on_head(
    head: HeadInputs,
    sampled_ids: Tensor,
    mask: Tensor,
    teacher_topk_ids: Tensor,
    teacher_topk_logps: Tensor,
    teacher_sampled_logp: Tensor | None,
    *,
    k: int,
    support: str,
    clip_log_ratio: float | None = None,
    chunk_tokens: int = 256,
) -> ObjectiveOutput:
    """Per-token KL(p~_S || p~_T) over the support, each model renormalised on it; loss [B,T] is zero where
    masked and differentiable wrt ``head.hidden``, ``head.weight`` and ``head.bias``."""
    if support not in RESTRICTABLE_SUPPORTS:
        raise ValueError(f"support {support!r} needs the student's full logits; use topk_support")
    B, T, H = head.hidden.shape
    V = head.weight.shape[0]
    k = min(k, V, teacher_topk_ids.shape[-1])
    dt = compute_dtype(head.hidden.dtype)
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    aux = {"sampled_ids": sampled_ids.reshape(-1)[rows].long(),
           "topk_ids": teacher_topk_ids.reshape(B * T, -1)[rows].long(),
           "topk_logps": teacher_topk_logps.reshape(B * T, -1)[rows].detach()}
    if support == "teacher_topk_plus_sampled":
        if teacher_sampled_logp is None:
            raise ValueError("topk_support with teacher_topk_plus_sampled needs teacher_sampled_logp")
        aux["teacher_sampled_logp"] = teacher_sampled_logp.reshape(-1)[rows].detach()
    ids, valid, t_logp = _support(torch.empty(0, dtype=dt), aux, k, support)
    s_logit = support_logits(head.hidden.reshape(B * T, H)[rows], head.weight, head.bias, ids, chunk_tokens)
    # the same arithmetic as topk_support._support_kl with renormalize=True
    neg = torch.finfo(dt).min
    s_logit = s_logit.masked_fill(~valid, neg)
    t_logp = t_logp.to(dt).masked_fill(~valid, neg)
    teacher_mass = t_logp.logsumexp(-1).exp()
    s_logp = torch.log_softmax(s_logit, -1)
    t_logp = torch.log_softmax(t_logp, -1)
    diff = s_logp - t_logp
    if clip_log_ratio is not None:
        diff = diff.clamp(-clip_log_ratio, clip_log_ratio)
    loss_rows = (s_logp.exp() * diff).sum(-1)
    zeros = torch.zeros(B * T, dtype=dt, device=head.hidden.device)
    loss = zeros.index_put((rows,), loss_rows).reshape(B, T)
    extras = {"teacher_support_mass": zeros.index_put((rows,), teacher_mass.detach()).reshape(B, T)}
    return ObjectiveOutput(loss=loss, signal=loss.detach(), extras=extras, value=loss.detach())
