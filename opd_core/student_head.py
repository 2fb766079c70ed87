"""The student's final hidden states and LM head, so a loss computes only the logits it needs.

Why: at a real vocabulary the student's LM head (hidden -> V logits, forward and backward) and the [B,T,V]
tensors it makes are the largest cost of a step. ``topk_support`` renormalised on the teacher's top-K (+
the sampled token) needs the student's logits on those K+1 ids only; a full-vocabulary KL can be fused
with the head chunk by chunk (``objectives.fused_head``). Both need the hidden states *before* the head.

``response_hidden`` runs the model's own forward (so every wrapper, hook and position handling stays as
the model defines it) with a pre-hook on the output embedding that records its input and hands the head
an empty slice, so the model computes no logits at all. It returns None, and the caller keeps the
reference path, when the logits are not exactly ``hidden @ W.T + b`` (logit soft-capping or scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from opd_core.objectives.chunked import compute_dtype
from opd_core.scoring import SequenceBatch

# config fields that change logits after the head: a model with any of them set keeps the reference path
_POST_HEAD_FIELDS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scale")


@dataclass
class HeadInputs:
    """What the student's logits are made of: ``logits = hidden @ weight.T + bias`` over the real vocabulary."""

    hidden: Tensor         # [B, T, H] final hidden states at the positions that predict the response
    weight: Tensor         # [V, H] the LM head's rows of the real vocabulary (a view: gradients reach the model)
    bias: Tensor | None    # [V] or None

    def logits(self) -> Tensor:
        """The full logits [B, T, V] (the reference path; what the fast paths avoid)."""
        out = self.hidden @ self.weight.T
        return out + self.bias if self.bias is not None else out

    def frozen(self) -> HeadInputs:
        """A detached copy that an optimizer step cannot change (the head's weight is updated in place), for
        statistics computed after the step."""
        return HeadInputs(self.hidden.detach(), self.weight.detach().clone(),
                          self.bias.detach().clone() if self.bias is not None else None)


def plain_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's LM head when its logits are exactly ``hidden @ W.T + b``; None otherwise."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear):
        return None
    config = getattr(model, "config", None)
    configs = [config, getattr(config, "text_config", None)] if config is not None else []
    for cfg in (c for c in configs if c is not None):
        for field in _POST_HEAD_FIELDS:
            value = getattr(cfg, field, None)
            if value not in (None, 1, 1.0):
                return None
    return head


def response_hidden(model: torch.nn.Module, batch: SequenceBatch, vocab_size: int | None = None) -> HeadInputs | None:
    """The student's final hidden states predicting each response token, and its head (see the module doc).

    The positions are those of ``scoring.response_logits``: position t predicts response token t.
    """
    head = plain_head(model)
    if head is None:
        return None
    T = batch.response_ids.shape[1]
    seen: dict[str, Tensor] = {}

    def capture(_module, args):
        if not args or not isinstance(args[0], Tensor):
            raise RuntimeError("the LM head was called without a hidden-state tensor")
        seen["hidden"] = args[0]
        return (args[0][:, :0],)  # the head computes [B, 0, V]: nothing

    handle = head.register_forward_pre_hook(capture)
    try:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
              logits_to_keep=T + 1, use_cache=False)
    finally:
        handle.remove()
    if "hidden" not in seen:
        return None
    weight, bias = head.weight, head.bias
    if vocab_size is not None and weight.shape[0] > vocab_size:
        weight = weight[:vocab_size]
        bias = bias[:vocab_size] if bias is not None else None
    return HeadInputs(seen["hidden"][:, :T], weight, bias)


class _SupportLogits(torch.autograd.Function):
    """logits[n, s] = hidden[n] . weight[ids[n, s]] (+ bias), a chunk of tokens at a time (no [n, S, H] copy)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, chunk):  # type: ignore[override]
        dt = compute_dtype(hidden.dtype)
        out = torch.empty(ids.shape, dtype=dt, device=hidden.device)
        for a in range(0, ids.shape[0], chunk):
            rows = weight[ids[a:a + chunk]].to(dt)  # [c, S, H]
            out[a:a + chunk] = torch.einsum("ch,csh->cs", hidden[a:a + chunk].to(dt), rows)
        if bias is not None:
            out += bias.to(dt)[ids]
        ctx.save_for_backward(hidden, weight, ids)
        ctx.chunk, ctx.has_bias = chunk, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        hidden, weight, ids = ctx.saved_tensors
        dt = grad.dtype
        gh = torch.empty(hidden.shape, dtype=dt, device=hidden.device) if ctx.needs_input_grad[0] else None
        gw = torch.zeros(weight.shape, dtype=dt, device=weight.device) if ctx.needs_input_grad[1] else None
        H = hidden.shape[-1]
        for a in range(0, ids.shape[0], ctx.chunk):
            g = grad[a:a + ctx.chunk]  # [c, S]
            idx = ids[a:a + ctx.chunk]
            if gh is not None:
                gh[a:a + ctx.chunk] = torch.einsum("cs,csh->ch", g, weight[idx].to(dt))
            if gw is not None:
                gw.index_add_(0, idx.reshape(-1), (g[..., None] * hidden[a:a + ctx.chunk, None, :].to(dt)).reshape(-1, H))
        gb = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = torch.zeros(weight.shape[0], dtype=dt, device=grad.device).index_add_(0, ids.reshape(-1), grad.reshape(-1))
            gb = gb.to(weight.dtype)
        return (gh.to(hidden.dtype) if gh is not None else None, gw.to(weight.dtype) if gw is not None else None,
                gb, None, None)


def support_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, chunk_tokens: int = 256) -> Tensor:
    """The student's logits [n, S] at ``ids`` [n, S] from hidden states [n, H]: S rows of the head per token
    instead of V, differentiable wrt ``hidden``, ``weight`` and ``bias`` (compute dtype)."""
    return _SupportLogits.apply(hidden, weight, bias, ids.long(), chunk_tokens)
