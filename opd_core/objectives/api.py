"""The entry points: the engine's ``compute_objective``, the reference ``per_token_loss`` and ``reduce_loss``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import ObjectiveBatch, ObjectiveError, ObjectiveOutput, TeacherNeeds, get_objective
from .chunked import check_ids_in_vocab, compute_dtype, token_logprob_stats


def _check_shape(value: Tensor | None, name: str, shape: tuple[int, ...], need: TeacherNeeds) -> None:
    if value is None:
        raise ObjectiveError(
            f"this objective needs the teacher view {need.value!r} but ObjectiveBatch.{name} is None; "
            "fill it (see token_logprob_stats) or call per_token_loss with full teacher logits"
        )
    if tuple(value.shape[: len(shape)]) != shape or value.dim() != len(shape) + (name.startswith("teacher_topk")):
        raise ObjectiveError(f"ObjectiveBatch.{name} must have shape {shape}[, K], got {tuple(value.shape)}")


def check_batch(batch: ObjectiveBatch, needs: TeacherNeeds) -> None:
    """Raise ObjectiveError naming the first field of ``batch`` that is missing or mis-shaped for ``needs``."""
    logits = batch.student_logits
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        raise ObjectiveError("student_logits must be a float tensor [B, T, V]")
    bt = tuple(logits.shape[:2])
    if tuple(batch.sampled_ids.shape) != bt or batch.sampled_ids.is_floating_point():
        raise ObjectiveError(f"sampled_ids must be an integer tensor {bt}, got {tuple(batch.sampled_ids.shape)}")
    if tuple(batch.mask.shape) != bt or batch.mask.dtype != torch.bool:
        raise ObjectiveError(
            f"mask must be a bool tensor {bt} (True = supervised token), got {batch.mask.dtype} "
            f"{tuple(batch.mask.shape)}; convert with mask.bool()"
        )
    if batch.reward_mask is not None and (
        tuple(batch.reward_mask.shape) != bt or batch.reward_mask.dtype != torch.bool
    ):
        raise ObjectiveError(f"reward_mask must be None or a bool tensor {bt}, got {batch.reward_mask.dtype} "
                             f"{tuple(batch.reward_mask.shape)}")
    check_ids_in_vocab(batch.sampled_ids, logits.shape[-1], "sampled_ids")
    if needs is TeacherNeeds.FULL:
        _check_shape(batch.teacher_logits, "teacher_logits", tuple(logits.shape), needs)
    elif needs is TeacherNeeds.SAMPLED:
        _check_shape(batch.teacher_sampled_logp, "teacher_sampled_logp", bt, needs)
    else:
        _check_shape(batch.teacher_topk_ids, "teacher_topk_ids", bt, needs)
        _check_shape(batch.teacher_topk_logps, "teacher_topk_logps", bt, needs)
        if batch.teacher_topk_ids.shape != batch.teacher_topk_logps.shape:  # type: ignore[union-attr]
            raise ObjectiveError("teacher_topk_ids and teacher_topk_logps must have the same shape [B, T, K]")


def compute_objective(
    name: str, batch: ObjectiveBatch, *, chunk_tokens: int | None = None, **params: Any
) -> ObjectiveOutput:
    """Run one registered objective on a batch (the engine's path).

    Returns per-token ``loss`` (float32, or float64 for float64 logits; zero where masked; differentiable
    wrt ``batch.student_logits``), the detached per-token ``signal``, ``value`` (the divergence estimate,
    never None here) and ``extras``. ``chunk_tokens`` bounds the tokens processed at once (None: automatic,
    ~2^22 vocabulary entries per chunk).
    """
    spec = get_objective(name)
    resolved = spec.validate(params)
    check_batch(batch, spec.needs_for(resolved))
    out = spec.fn(batch, chunk_tokens=chunk_tokens, **resolved)
    dtype = compute_dtype(batch.student_logits.dtype)
    zero = torch.zeros((), dtype=dtype, device=batch.student_logits.device)
    value = out.loss if out.value is None else out.value
    return ObjectiveOutput(
        loss=out.loss.to(dtype),
        signal=torch.where(batch.mask, out.signal.detach().to(dtype), zero),
        extras={k: torch.where(batch.mask, v.detach().to(dtype), zero) for k, v in out.extras.items()},
        value=torch.where(batch.mask, value.detach().to(dtype), zero),
    )


def per_token_loss(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    sampled_ids: Tensor,
    mask: Tensor,
    *,
    chunk_tokens: int | None = None,
    reward_mask: Tensor | None = None,
    **params: Any,
) -> ObjectiveOutput:
    """The reference entry point of every objective: full logits in, per-token ``.loss`` / ``.signal`` out.

    ``student_logits`` and ``teacher_logits`` are [B,T,V] floats, ``sampled_ids`` int64 [B,T], ``mask``
    bool [B,T]. The sparse teacher view the objective needs (top-K ids and log-probs, the sampled
    token's log-prob) is derived here, then :func:`compute_objective` runs. ``reward_mask`` (optional,
    bool [B,T]) is the set of tokens whose log-ratio enters ``sampled_token``'s return (default ``mask``).
    """
    spec = get_objective(name)
    resolved = spec.validate(params)
    needs = spec.needs_for(resolved)
    if not isinstance(teacher_logits, Tensor) or tuple(teacher_logits.shape) != tuple(student_logits.shape):
        got = tuple(teacher_logits.shape) if isinstance(teacher_logits, Tensor) else type(teacher_logits).__name__
        raise ObjectiveError(
            f"teacher_logits must be a tensor of the student's shape {tuple(student_logits.shape)}, got {got}"
        )
    batch = ObjectiveBatch(student_logits=student_logits, sampled_ids=sampled_ids, mask=mask,
                           reward_mask=reward_mask)
    teacher = teacher_logits.detach()
    if needs is TeacherNeeds.FULL:
        batch.teacher_logits = teacher
    else:
        check_ids_in_vocab(sampled_ids, student_logits.shape[-1], "sampled_ids")
        top_k = resolved.get("k", 0) if needs is TeacherNeeds.TOPK else 0
        stats = token_logprob_stats(
            teacher, sampled_ids, top_k, chunk_tokens, dtype=compute_dtype(student_logits.dtype)
        )
        batch.teacher_sampled_logp = stats["logp"]
        if needs is TeacherNeeds.TOPK:
            batch.teacher_topk_ids, batch.teacher_topk_logps = stats["topk_ids"], stats["topk_logps"]
    return compute_objective(name, batch, chunk_tokens=chunk_tokens, **resolved)


LOSS_REDUCTIONS = ("token_mean", "sequence_mean")


def reduce_loss(
    loss: Tensor,
    mask: Tensor,
    num_tokens: int | Tensor | None = None,
    *,
    reduction: str = "token_mean",
    num_sequences: int | Tensor | None = None,
) -> Tensor:
    """The scalar loss from per-token losses [B,T] and the mask of supervised tokens.

    ``reduction="token_mean"`` (default): the sum over unmasked tokens divided by the *global* count of
    unmasked tokens, so every token weighs the same. ``num_tokens`` is that global count when the batch is
    one micro-batch of several (gradient accumulation) or one rank of several (DDP): pass the total over all
    of them. None uses this batch's own count. An empty count divides by 1 (the loss is then 0).

    ``reduction="sequence_mean"``: the mean over sequences of each sequence's own token mean,
    (1/N) sum_b (sum_t m_bt l_bt) / max(1, sum_t m_bt), so every *sequence* weighs the same (the seed code's
    effective reduction: one sequence per micro-batch). A row with no unmasked token adds 0 but still
    counts in N. ``num_sequences`` is the global N over micro-batches / ranks (None: this batch's B).
    The two agree when every row has the same number of unmasked tokens.
    """
    if loss.shape != mask.shape:
        raise ValueError(f"loss {tuple(loss.shape)} and mask {tuple(mask.shape)} must have the same shape")
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {reduction!r}")
    dtype = compute_dtype(loss.dtype)
    masked = torch.where(mask.bool(), loss.to(dtype), torch.zeros((), dtype=dtype, device=loss.device))
    if reduction == "sequence_mean":
        if loss.dim() != 2:
            raise ValueError(f"sequence_mean needs per-token losses [B, T], got shape {tuple(loss.shape)}")
        per_row = masked.sum(-1) / mask.sum(-1).to(dtype).clamp_min(1.0)
        rows = _count(num_sequences, loss.shape[0], "num_sequences", loss.device)
        return per_row.sum() / rows.to(dtype).clamp_min(1.0)
    count = _count(num_tokens, None, "num_tokens", loss.device) if num_tokens is not None else mask.sum()
    return masked.sum() / count.to(dtype).clamp_min(1.0)


def _count(value: int | Tensor | None, default: int | None, name: str, device: torch.device) -> Tensor:
    if value is None:
        return torch.tensor(default, device=device)
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer count, got {value!r}")
    return torch.tensor(int(value), device=device)
