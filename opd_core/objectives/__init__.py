"""The objective library: every OPD loss behind one registry, one input type and one output type.

``per_token_loss(name, student_logits, teacher_logits, sampled_ids, mask, **params)`` is the reference
entry point; ``compute_objective(name, ObjectiveBatch, **params)`` is the engine's path (it takes the
sparse teacher view an objective declares it needs); ``reduce_loss`` turns per-token losses into the
scalar, divided by the global count of unmasked tokens. See docs/objectives.md.
"""

# importing the family modules registers their objectives
from . import head_tail, jsd, kl, sampled_token, topk_support  # noqa: F401
from .api import LOSS_REDUCTIONS, check_batch, compute_objective, per_token_loss, reduce_loss
from .base import (
    ObjectiveBatch,
    ObjectiveError,
    ObjectiveOutput,
    ObjectiveSpec,
    Param,
    TeacherNeeds,
    get_objective,
    list_objectives,
    register_objective,
    validate_params,
)
from .chunked import chunked_token_loss, token_logprob_stats, token_logprobs
from .gating import entropy_gate
from .sampled_token import discounted_returns

__all__ = [
    "LOSS_REDUCTIONS",
    "ObjectiveBatch",
    "ObjectiveError",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "Param",
    "TeacherNeeds",
    "check_batch",
    "chunked_token_loss",
    "compute_objective",
    "discounted_returns",
    "entropy_gate",
    "get_objective",
    "list_objectives",
    "per_token_loss",
    "reduce_loss",
    "register_objective",
    "token_logprob_stats",
    "token_logprobs",
    "validate_params",
]
