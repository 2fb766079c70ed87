"""Which training steps may skip the student's [B,T,V] logits, and the objective on those steps.

Why: the loop's reference path makes the student's full logits, a chunked loss that recomputes itself
under autograd in the backward, and the logits' gradient. Two objectives need much less and get exactly
the same loss and gradients (tests/test_fast_paths.py) from the student's final hidden states:

* ``reverse_kl`` / ``forward_kl`` / ``kl_mix``: the LM head fused with the KL chunk by chunk, gradient
  analytic and computed in the forward (``objectives.fused_head``);
* ``topk_support`` renormalised on the teacher's top-K (+ the sampled token): K+1 head rows per token
  (``objectives.support_head``).

Only non-logging steps take a fast path: a logging step's per-token record needs both full
distributions. A fast step's metrics still come from ``stats.step_stats`` (log-ratio, both entropies, both
full-vocabulary KLs, signal shape, masks, EOS, as on every step) without a second pass over V: for
``topk_support`` one pass made before the loss (the student's logits a chunk at a time from the hidden
states, the teacher's log-softmax once, and from it the teacher's top-K the loss trains on); for the KLs
the fused head + KL pass itself, run over every position with zero gradient where nothing is trained. The top-K *set*
metrics (``student_support_mass``, ``not_in_topk_ratio``, ``topk_overlap``, ``overlap_mass_*``,
``teachability``: two top-K over V and set masks per token, a third of a step at V = 32K) are written on
logging steps only, from the full record (the dashboard's support views read the token records of
those steps anyway). Anything the fast paths cannot reproduce bit-for-bit in spirit keeps the reference path:
a head with logit scaling or soft-capping, bf16 autocast or non-float32 student weights, score
temperature, entropy gating.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from opd_core.objectives import ObjectiveOutput, reduce_loss
from opd_core.objectives.fused_head import fused_head_kl, reduction_weights
from opd_core.objectives.support_head import restricts, topk_support_on_head
from opd_core.stats import TokenStats, step_stats
from opd_core.stats.record import StepStatsChunks
from opd_core.student_head import HeadInputs, plain_head

KL_ALPHA = {"reverse_kl": lambda p: 0.0, "forward_kl": lambda p: 1.0, "kl_mix": lambda p: float(p["alpha"])}


@dataclass(frozen=True)
class FastPath:
    """The fast path a run's objective takes on non-logging steps."""

    objective: str
    params: dict[str, Any]

    def run(self, head: HeadInputs, sampled_ids: Tensor, mask: Tensor, *, teacher_logits: Tensor | None = None,
            teacher_topk_ids: Tensor | None = None, teacher_topk_logps: Tensor | None = None,
            teacher_sampled_logp: Tensor | None = None, reduction: str = "token_mean") -> ObjectiveOutput:
        """The objective's output from the student's hidden states (what ``compute_objective`` returns on the
        full logits, but for the extra ``student_support_mass``, which needs the full distribution)."""
        if self.objective == "topk_support":
            assert teacher_topk_ids is not None and teacher_topk_logps is not None
            return topk_support_on_head(head, sampled_ids, mask, teacher_topk_ids, teacher_topk_logps,
                                        teacher_sampled_logp, k=self.params["k"], support=self.params["support"],
                                        clip_log_ratio=self.params.get("clip_log_ratio"))
        assert teacher_logits is not None
        return self._kl(head, sampled_ids, mask, teacher_logits, reduction)

    def _kl(self, head: HeadInputs, sampled_ids: Tensor, mask: Tensor, teacher_logits: Tensor, reduction: str,
            on_chunk: StepStatsChunks | None = None) -> ObjectiveOutput:
        """The fused head + KL; with ``on_chunk`` the pass covers every position (zero gradient where not
        trained) and hands each chunk to it, so the step's statistics come from the same pass."""
        # announce the loop's reduction: a gradient proportional to it (any global count) is used as is
        weights = reduction_weights(lambda x: reduce_loss(x, mask, reduction=reduction), mask)
        rows = mask if on_chunk is None else torch.ones_like(mask)
        loss, _ = fused_head_kl(head.hidden, head.weight, head.bias, teacher_logits, sampled_ids, rows,
                                alpha=KL_ALPHA[self.objective](self.params), reduce_weights=weights,
                                with_stats=False, on_chunk=on_chunk)
        loss = loss.masked_fill(~mask, 0.0)
        return ObjectiveOutput(loss=loss, signal=loss.detach(), extras={}, value=loss.detach())

    def compute(self, sc, support_k: int, reduction: str = "token_mean") -> tuple[ObjectiveOutput, TokenStats]:
        """The loop's objective on a fast-path step (``loop_records.Scored`` with ``head``) and the step's
        every-step record (what ``stats.step_stats`` gives), from one pass over the teacher's logits: for
        ``topk_support`` a pass before the loss yields the metrics and the teacher's top-K the loss trains on;
        for the KLs the fused head + KL pass itself fills the record (``stats.StepStatsChunks``). Either way
        the student's logits are made a chunk at a time, never whole."""
        ids = sc.batch.response_ids
        if self.objective != "topk_support":  # the fused KL pass makes the statistics too
            chunks = StepStatsChunks(ids)
            out = self._kl(sc.head, ids, sc.mask, sc.teacher.logits, reduction, on_chunk=chunks)
            return out, chunks.record(sc.teacher.sampled_logp, aligned=sc.teacher.aligned, signal=out.signal)
        record = step_stats(sc.head, sc.teacher.logits, ids, sc.teacher.sampled_logp, support_k=0,
                            aligned=sc.teacher.aligned, teacher_topk=support_k)
        out = self.run(sc.head, ids, sc.mask, teacher_logits=sc.teacher.logits,
                       teacher_topk_ids=record.teacher_topk_ids, teacher_topk_logps=record.teacher_topk_logps,
                       teacher_sampled_logp=sc.teacher.sampled_logp, reduction=reduction)
        # the record keeps only what the every-step metrics read: not the [B,T,K] top-K lists
        record = replace(record, signal=out.signal.detach().float(), teacher_topk_ids=None, teacher_topk_logps=None)
        return out, record


def plan(cfg, objective: str, params: dict[str, Any], student: torch.nn.Module) -> FastPath | None:
    """The run's fast path, or None when its objective or settings keep the reference path."""
    from opd_core.objectives import validate_params

    if getattr(cfg, "autocast", False) or plain_head(student) is None:
        return None
    if any(p.dtype != torch.float32 for p in student.parameters()):
        return None
    if float(getattr(cfg, "entropy_top_ratio", 1.0)) != 1.0:
        return None
    temperature = getattr(cfg, "score_temperature_value", None)
    if callable(temperature):
        temperature = temperature()
    if temperature not in (None, 1.0):
        return None
    resolved = validate_params(objective, params)
    if objective in KL_ALPHA or (objective == "topk_support" and restricts(resolved)):
        return FastPath(objective, resolved)
    return None
