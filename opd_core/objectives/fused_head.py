"""The student's LM head fused with a full-vocabulary KL, chunk by chunk: [B,T,V] student logits never exist.

Why: at a real vocabulary the student's logits and their gradient are the largest tensors of a step, and
the reference path (``chunked_token_loss``) recomputes each chunk under autograd in the backward. Here a
chunk of final hidden states becomes a chunk of logits (one matmul), the loss and its *analytic* gradient
come from that chunk in one pass, and the gradient goes straight back through the head (two matmuls):

    reverse KL  L = sum_j p_j (log p_j - log q_j)      dL/dx_j = p_j (log p_j - log q_j - L)
    forward KL  L = sum_j q_j (log q_j - log p_j)      dL/dx_j = p_j - q_j

with p the student's softmax, q the teacher's. The same pass yields every step statistic that
``stats.step_stats`` computes (student log-prob of the sampled token, teacher entropy, both KLs, the
student's mass on the teacher's top-K), so a step on this path makes no other pass over the vocabulary.

Gradients are computed in the forward when the caller says how the per-token losses will be reduced
(``reduce_weights``: d scalar / d loss_i, e.g. 1/N on unmasked tokens for a token mean); the backward then
only scales them (the Liger / Cut-Cross-Entropy trick). If the incoming gradient is not proportional to
those weights (another reduction), the backward recomputes each chunk instead: exact either way.
The torch code here is the reference; on CUDA Liger's fused linear JSD could replace it (not wired).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunked import CHUNK_ELEMENTS, compute_dtype

STATS = ("student_logp", "teacher_entropy", "reverse_kl", "forward_kl", "support_mass")


def _chunk_rows(vocab: int, chunk_tokens: int | None) -> int:
    return chunk_tokens if chunk_tokens else max(1, CHUNK_ELEMENTS // max(1, vocab))


def _chunk(h: Tensor, weight: Tensor, bias: Tensor | None, teacher: Tensor, alpha: float, grad: bool = True,
           both: bool = True):
    """Loss, analytic d loss / d logits (None unless ``grad``), and the two log-softmaxes of one chunk."""
    x = h @ weight.T
    if bias is not None:
        x = x + bias
    ls = torch.log_softmax(x, -1)
    # the teacher floored at the most negative finite value, as kl.log_softmax_pair does
    lt = torch.log_softmax(teacher.to(x.dtype), -1).clamp_min_(torch.finfo(x.dtype).min)
    p, q = ls.exp(), lt.exp()
    diff = ls - lt
    rev = (p * diff).sum(-1) if both or alpha < 1.0 else None
    fwd = -(q * diff).sum(-1) if both or alpha > 0.0 else None
    loss = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    g = torch.zeros_like(x) if grad else None
    if alpha > 0.0:  # a zero weight drops its term entirely, as kl_mix does
        loss = loss + alpha * fwd
        if g is not None:
            g += alpha * (p - q)
    if alpha < 1.0:
        loss = loss + (1.0 - alpha) * rev
        if g is not None:
            g += (1.0 - alpha) * p * (diff - rev[:, None])
    return loss, g, ls, lt, p, q, rev, fwd, x


class _FusedHeadKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, rows, ids, support, alpha, weights, chunk, stats_out,  # type: ignore[override]
                on_chunk):
        dt = compute_dtype(hidden.dtype)
        n, _ = hidden.shape
        W = weight.to(dt)
        b = bias.to(dt) if bias is not None else None
        want_grad = weights is not None and ctx.needs_input_grad[0] | ctx.needs_input_grad[1]
        loss = torch.zeros(n, dtype=dt, device=hidden.device)
        gh = torch.zeros(hidden.shape, dtype=dt, device=hidden.device) if want_grad else None
        gw = torch.zeros_like(W) if want_grad else None
        gb = torch.zeros_like(b) if want_grad and b is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for a in range(0, n, chunk):
                h = hidden[a:a + chunk].to(dt)
                value, g, ls, lt, p, q, rev, fwd, x = _chunk(h, W, b, teacher[rows[a:a + chunk]], alpha, want_grad,
                                                             stats_out is not None)
                loss[a:a + chunk] = value
                if on_chunk is not None:
                    on_chunk(rows[a:a + chunk], x, ls, lt, p, q)
                if stats_out is not None:
                    stats_out["student_logp"][a:a + chunk] = ls.gather(-1, ids[a:a + chunk, None]).squeeze(-1)
                    stats_out["teacher_entropy"][a:a + chunk] = torch.special.entr(q).sum(-1)
                    stats_out["reverse_kl"][a:a + chunk] = rev
                    stats_out["forward_kl"][a:a + chunk] = fwd
                    if isinstance(support, Tensor):  # the teacher's top-K ids, already known
                        stats_out["support_mass"][a:a + chunk] = p.gather(-1, support[a:a + chunk]).sum(-1)
                    elif support:
                        top = lt.topk(support, dim=-1).indices
                        stats_out["support_mass"][a:a + chunk] = p.gather(-1, top).sum(-1)
                if want_grad:
                    g = g * weights[a:a + chunk, None].to(dt)
                    gh[a:a + chunk] = g @ W
                    gw.addmm_(g.T, h)
                    if gb is not None:
                        gb += g.sum(0)
                del g, ls, lt, p, q
        ctx.save_for_backward(hidden, weight, bias, teacher, rows, weights)
        ctx.alpha, ctx.chunk, ctx.grads = alpha, chunk, (gh, gw, gb)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[override]
        hidden, weight, bias, teacher, rows, weights = ctx.saved_tensors
        gh, gw, gb = ctx.grads
        scale = _proportional(grad_loss, weights) if gh is not None else None
        if scale is None:  # recompute: the incoming gradient is not the reduction the forward assumed
            dt = compute_dtype(hidden.dtype)
            W = weight.to(dt)
            b = bias.to(dt) if bias is not None else None
            gh = torch.zeros(hidden.shape, dtype=dt, device=hidden.device)
            gw = torch.zeros_like(W)
            gb = torch.zeros_like(b) if b is not None else None
            with torch.autocast(hidden.device.type, enabled=False):
                for a in range(0, hidden.shape[0], ctx.chunk):
                    h = hidden[a:a + ctx.chunk].to(dt)
                    _, g, *_ = _chunk(h, W, b, teacher[rows[a:a + ctx.chunk]], ctx.alpha, both=False)
                    g = g * grad_loss[a:a + ctx.chunk, None].to(dt)
                    gh[a:a + ctx.chunk] = g @ W
                    gw.addmm_(g.T, h)
                    if gb is not None:
                        gb += g.sum(0)
            scale = 1.0
        out_h = (gh * scale).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        out_w = (gw * scale).to(weight.dtype) if ctx.needs_input_grad[1] else None
        out_b = (gb * scale).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return out_h, out_w, out_b, None, None, None, None, None, None, None, None, None


def _proportional(grad: Tensor, weights: Tensor | None) -> Tensor | None:
    """The scalar c with grad == c * weights (to float rounding), or None when there is none."""
    if weights is None or grad.shape != weights.shape:
        return None
    w = weights.to(grad.dtype)
    nz = w != 0
    if not bool(nz.any()):
        return None
    i = int(nz.nonzero()[0, 0])
    c = grad[i] / w[i]
    return c if torch.allclose(grad, c * w, rtol=1e-6, atol=1e-30) else None


def reduction_weights(reduce_fn, like: Tensor) -> Tensor:
    """d reduce_fn(loss) / d loss for a linear reduction ``reduce_fn`` of per-token losses shaped like ``like``."""
    x = torch.zeros(like.shape, dtype=compute_dtype(like.dtype), device=like.device, requires_grad=True)
    (g,) = torch.autograd.grad(reduce_fn(x), x)
    return g


def fused_head_kl(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    teacher_logits: Tensor,
    sampled_ids: Tensor,
    mask: Tensor,
    *,
    alpha: float = 0.0,
    reduce_weights: Tensor | None = None,
    support_k: int = 0,
    support_ids: Tensor | None = None,
    chunk_tokens: int | None = None,
    with_stats: bool = True,
    on_chunk=None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token alpha KL(q||p) + (1 - alpha) KL(p||q) of logits = hidden @ weight.T + bias, without [B,T,V].

    ``hidden`` [B,T,H] (the student's final hidden states), ``weight`` [V,H] (its LM head, cut to the real
    vocabulary), ``teacher_logits`` [B,T,V], ``mask`` [B,T]: the tokens that carry the loss. alpha 0 is
    ``reverse_kl``, 1 ``forward_kl``. Returns the loss [B,T] (zero where masked, differentiable wrt hidden,
    weight and bias) and the step statistics of ``stats.step_stats`` on the same tokens, [B,T] each,
    zero where masked (``support_mass`` only with ``support_k``: the mass on the teacher's top-``support_k``, or
    on ``support_ids`` [B,T,K] when the caller already has them). ``reduce_weights`` [B,T]: d scalar / d loss
    of the reduction the caller will apply (``reduction_weights``), which lets the forward compute the
    gradient once. ``with_stats=False`` skips the statistics (an empty dict is returned).
    ``on_chunk(rows, logits, student log-softmax, teacher log-softmax, p, q)`` is called for every chunk of
    the ``mask`` rows (flat indices into [B*T]), so a caller can read what the pass already holds
    (``stats.StepStatsChunks``: the loop's every-step statistics without a second pass over V).
    """
    B, T, H = hidden.shape
    V = weight.shape[0]
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    flat_h = hidden.reshape(B * T, H)[rows]
    teacher = teacher_logits.reshape(B * T, -1)[:, :V]  # a view: chunks are gathered inside
    ids = sampled_ids.reshape(B * T)[rows].long()
    w = reduce_weights.reshape(B * T)[rows] if reduce_weights is not None else None
    dt = compute_dtype(hidden.dtype)
    n = rows.numel()
    support = support_ids.reshape(B * T, -1)[rows].long() if support_ids is not None else min(support_k, V)
    names = STATS if support_ids is not None or support_k else STATS[:-1]
    stats = {name: torch.zeros(n, dtype=dt, device=hidden.device) for name in names} if with_stats else None
    loss_rows = _FusedHeadKL.apply(flat_h, weight, bias, teacher, rows, ids, support, float(alpha), w,
                                   _chunk_rows(V, chunk_tokens), stats, on_chunk)
    loss = torch.zeros(B * T, dtype=dt, device=hidden.device).index_put((rows,), loss_rows)
    full = {name: torch.zeros(B * T, dtype=dt, device=hidden.device).index_put_((rows,), v).reshape(B, T)
            for name, v in (stats or {}).items()}
    return loss.reshape(B, T), full
