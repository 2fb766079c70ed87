"""The generalised Jensen-Shannon divergence (GKD's), interpolating forward and reverse KL through beta."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ObjectiveBatch, ObjectiveOutput, TeacherNeeds, register_objective, unit_interval
from .kl import kl_from_logprobs, log_softmax_pair, run_full_vocab


@register_objective("jsd", needs=TeacherNeeds.FULL, params={"beta": unit_interval(0.5, "Mixture weight: 0 = forward KL, 1 = reverse KL (both exact), in between the generalised JSD.")})
def jsd(batch: ObjectiveBatch, *, beta: float, chunk_tokens: int | None = None) -> ObjectiveOutput:
    """beta KL(p_T || M) + (1 - beta) KL(p_S || M), M = beta p_T + (1 - beta) p_S. Signal: that value.

    beta = 0 is forward KL and beta = 1 reverse KL, special-cased (the formula itself tends to 0 there).
    """

    def token_fn(x: Tensor, aux: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ls, lt = log_softmax_pair(x, aux)
        if beta == 0.0:
            return kl_from_logprobs(lt, ls), {}
        if beta == 1.0:
            return kl_from_logprobs(ls, lt), {}
        mixture = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
        return beta * kl_from_logprobs(lt, mixture) + (1.0 - beta) * kl_from_logprobs(ls, mixture), {}

    return run_full_vocab(token_fn, batch, chunk_tokens)
