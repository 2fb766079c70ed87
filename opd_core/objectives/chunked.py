"""Per-token math over chunks of tokens, so a 150k-word vocabulary never costs a float32 [B,T,V] copy.

Two tools live here:

* :func:`token_logprob_stats` — the engine's scoring helper (no grad): log-prob of given ids, entropy,
  top-K ids and log-probs and the rank of the ids, computed a chunk of tokens at a time.
* :func:`chunked_token_loss` — runs a per-token loss function over chunks of the unmasked tokens inside a
  custom autograd function whose backward *recomputes* each chunk and asks autograd for its gradient.
  The float32 log-softmax of a chunk exists only transiently, in forward and again in backward; the only
  full-size tensors are the model's logits and their gradient, and the gradient is exact (it is
  autograd's own, chunk by chunk).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# A chunk holds at most this many vocabulary entries: 16 MiB per float32 temporary (kept under glibc's
# mmap threshold on CPU, still large kernels on GPU).
CHUNK_ELEMENTS = 1 << 22

TokenLossFn = Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]
"""``fn(student_logits_chunk [n,V] in compute dtype, aux_chunk) -> (loss [n], extras {name: [n]})``."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float32 for half/bfloat16/float32 inputs, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def auto_chunk_tokens(vocab_size: int, chunk_tokens: int | None = None) -> int:
    """The number of tokens per chunk: the caller's choice, or as many as fit in CHUNK_ELEMENTS."""
    if chunk_tokens is None:
        return max(1, CHUNK_ELEMENTS // max(1, vocab_size))
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1 (or None for automatic), got {chunk_tokens!r}")
    return chunk_tokens


@torch.no_grad()
def token_logprob_stats(
    logits: Tensor, ids: Tensor, top_k: int, chunk_tokens: int | None = 1024, *, dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Per-token statistics of one model's next-token distribution, for scoring and for sparse objectives.

    ``logits`` [B,T,V] (any float dtype), ``ids`` [B,T] int64. Returns float32 ``logp`` [B,T] (log-prob
    of ``ids``), ``entropy`` [B,T], ``topk_ids`` [B,T,K] int64 (sorted by probability, descending),
    ``topk_logps`` [B,T,K] and int64 ``rank`` [B,T] (1 = the argmax; 1 + the number of tokens with a
    strictly larger logit). ``K = min(top_k, V)``. Works a chunk of tokens at a time under no_grad.
    ``dtype`` (keyword, default float32) is the dtype of the float outputs; float64 is for exact checks.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if ids.shape != logits.shape[:2]:
        raise ValueError(f"ids must be [B, T] = {tuple(logits.shape[:2])}, got shape {tuple(ids.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    batch, steps, vocab = logits.shape
    check_ids_in_vocab(ids, vocab, "ids")
    k = min(top_k, vocab)
    chunk = auto_chunk_tokens(vocab, chunk_tokens)
    flat = logits.reshape(-1, vocab)
    flat_ids = ids.reshape(-1).long()
    n = flat.shape[0]
    dev = logits.device
    work = torch.promote_types(dtype, torch.float32)
    out = {
        "logp": torch.empty(n, dtype=dtype, device=dev),
        "entropy": torch.empty(n, dtype=dtype, device=dev),
        "topk_ids": torch.empty(n, k, dtype=torch.long, device=dev),
        "topk_logps": torch.empty(n, k, dtype=dtype, device=dev),
        "rank": torch.empty(n, dtype=torch.long, device=dev),
    }
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        x = flat[start:stop].to(work)
        y = flat_ids[start:stop, None]
        # x - logsumexp(x), the same arithmetic as token_logprobs: equal models give an exactly-zero log-ratio
        logp = x - x.logsumexp(-1, keepdim=True)
        out["logp"][start:stop] = logp.gather(-1, y).squeeze(-1)
        out["entropy"][start:stop] = torch.special.entr(logp.exp()).sum(-1)
        top = logp.topk(k, dim=-1)
        out["topk_ids"][start:stop] = top.indices
        out["topk_logps"][start:stop] = top.values
        out["rank"][start:stop] = (x > x.gather(-1, y)).sum(-1) + 1
        del x, logp
    return {
        name: value.reshape(batch, steps, *value.shape[1:]) for name, value in out.items()
    }


@torch.no_grad()
def token_logprobs(logits: Tensor, ids: Tensor, chunk_tokens: int | None = None) -> Tensor:
    """log p(ids) [B,T] from [B,T,V] logits, in the compute dtype, chunk by chunk and without a graph."""
    batch, steps, vocab = logits.shape
    chunk = auto_chunk_tokens(vocab, chunk_tokens)
    flat = logits.reshape(-1, vocab)
    flat_ids = ids.reshape(-1, 1).long()
    work = compute_dtype(logits.dtype)
    out = torch.empty(flat.shape[0], dtype=work, device=logits.device)
    for start in range(0, flat.shape[0], chunk):
        x = flat[start : start + chunk].to(work)
        logp = x - x.logsumexp(-1, keepdim=True)
        out[start : start + chunk] = logp.gather(-1, flat_ids[start : start + chunk])[:, 0]
    return out.reshape(batch, steps)


def check_ids_in_vocab(ids: Tensor, vocab: int, what: str) -> None:
    """Raise a clear ValueError if any id falls outside [0, vocab)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f"{what} must lie in [0, {vocab}) (the vocabulary size); got values in "
            f"[{int(ids.min())}, {int(ids.max())}]. Map padding to a real id and mask it instead."
        )


def _token_chunks(rows: Tensor, chunk: int) -> list[slice | Tensor]:
    """Split the sorted unmasked row indices into chunks; a run of consecutive rows becomes a slice (a view,
    no gather copy), which is the common case of right-padded batches."""
    out: list[slice | Tensor] = []
    listed = rows.tolist()
    for start in range(0, len(listed), chunk):
        first, last = listed[start], listed[min(start + chunk, len(listed)) - 1]
        count = min(chunk, len(listed) - start)
        out.append(slice(first, last + 1) if last - first + 1 == count else rows[start : start + chunk])
    return out


class _ChunkedTokenLoss(torch.autograd.Function):
    """Forward: the per-token loss chunk by chunk, no graph kept. Backward: recompute a chunk, take its grad."""

    @staticmethod
    def forward(ctx, flat_logits, rows, token_fn, aux, chunk, extras_out):  # type: ignore[override]
        n, _ = flat_logits.shape
        dtype = compute_dtype(flat_logits.dtype)
        loss = torch.zeros(n, dtype=dtype, device=flat_logits.device)
        pieces = _token_chunks(rows, chunk)
        for idx in pieces:
            value, extras = token_fn(flat_logits[idx].to(dtype), {k: v[idx] for k, v in aux.items()})
            loss[idx] = value.to(dtype)
            for name, extra in extras.items():
                if name not in extras_out:
                    extras_out[name] = torch.zeros(n, dtype=dtype, device=flat_logits.device)
                extras_out[name][idx] = extra.detach().to(dtype)
        ctx.save_for_backward(flat_logits)
        ctx.token_fn, ctx.aux, ctx.pieces = token_fn, aux, pieces
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[override]
        (flat_logits,) = ctx.saved_tensors
        grad = torch.zeros_like(flat_logits)
        dtype = compute_dtype(flat_logits.dtype)
        for idx in ctx.pieces:
            with torch.enable_grad():
                x = flat_logits[idx].detach().to(dtype).requires_grad_(True)
                value, _ = ctx.token_fn(x, {k: v[idx] for k, v in ctx.aux.items()})
                (g,) = torch.autograd.grad(value, x, grad_loss[idx].to(value.dtype))
            grad[idx] = g.to(grad.dtype)
            del x, value, g
        return grad, None, None, None, None, None


def chunked_token_loss(
    token_fn: TokenLossFn,
    student_logits: Tensor,
    mask: Tensor,
    aux: dict[str, Tensor] | None = None,
    chunk_tokens: int | None = None,
    extra_names: tuple[str, ...] = (),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Apply a per-token loss to every unmasked token of [B,T,V] logits without a full-size float32 copy.

    ``aux`` holds per-token constants ([B,T,...] each, e.g. teacher logits or log-probs) that the loss
    reads for the same tokens. Returns the loss [B,T] (compute dtype, exactly zero where masked,
    differentiable wrt ``student_logits``) and the detached extras [B,T] the function reported (those
    named in ``extra_names`` exist, as zeros, even when every token is masked).
    """
    batch, steps, vocab = student_logits.shape
    chunk = auto_chunk_tokens(vocab, chunk_tokens)
    flat = student_logits.reshape(batch * steps, vocab)
    flat_aux = {k: v.reshape(batch * steps, *v.shape[2:]) for k, v in (aux or {}).items()}
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    extras = {
        name: torch.zeros(batch * steps, dtype=compute_dtype(flat.dtype), device=flat.device)
        for name in extra_names
    }
    loss = _ChunkedTokenLoss.apply(flat, rows, token_fn, flat_aux, chunk, extras)
    return loss.reshape(batch, steps), {k: v.reshape(batch, steps) for k, v in extras.items()}
