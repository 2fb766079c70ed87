"""The typed records the phases of the training loop pass to each other (``opd_core.train``).

Each phase of a step returns one of these and the next phase takes it as an argument: a
:class:`Rollout` (prompts, responses, who wrote them), a :class:`Scored` batch (both forward passes
and the masks), an :class:`Update` (the objective and the optimizer step), a :class:`Reference` (the
teacher's own rollouts on logging steps) and the :class:`StepResult` that gathers a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from opd_core.objectives import ObjectiveOutput
from opd_core.scoring import SequenceBatch, TeacherScores
from opd_core.stats import TokenStats
from opd_core.student_head import HeadInputs


@dataclass
class Rollout:
    """One step's prompts and responses (student tokens), and who wrote the prefixes."""

    prompts: list[str]
    responses: list[list[int]]
    source: str                  # "student" | "teacher"
    examples: dict               # prompt -> task example (for grading)


@dataclass
class Scored:
    """One batch after both forward passes: everything the objective and the logger read."""

    prompts: list[str]
    responses: list[list[int]]
    batch: SequenceBatch
    student_logits: torch.Tensor | None  # None on a fast-path step (opd_core.fast_paths): ``head`` makes them
    teacher: TeacherScores
    views: list
    mask: torch.Tensor          # tokens that carry supervision
    special: torch.Tensor
    eos: torch.Tensor
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # why the others do not (schema.MASK_REASONS)
    head: HeadInputs | None = None  # the student's final hidden states and LM head (fast-path steps)

    def full_student_logits(self) -> torch.Tensor:
        """The student's logits; on a fast-path step recomputed without grad from the hidden states."""
        if self.student_logits is not None:
            return self.student_logits
        with torch.no_grad():
            return self.head.logits()


@dataclass
class Update:
    """The objective's output and what the optimizer step did with it."""

    out: ObjectiveOutput
    loss: float                 # the objective's value (out.value) reduced over the global batch: the logged loss
    grad_norm: float
    lr: float
    tokens: int
    surrogate_loss: float = float("nan")  # the differentiated out.loss, reduced the same way
    record: TokenStats | None = None  # a fast-path step's every-step statistics, made with the objective


@dataclass
class Reference:
    """The teacher's own rollouts for the step's prompts, scored like the student's (logging steps only)."""

    scored: Scored
    out: ObjectiveOutput
    record: TokenStats
    grades: list
    texts: list[str]


@dataclass
class StepResult:
    """Everything one training step produced, for the metrics, the token records and the progress line."""

    step: int
    rollout: Rollout
    scored: Scored
    update: Update
    timings: dict[str, float]

    def metrics(self) -> dict:
        u = self.update
        return {"step": self.step, "loss": u.loss, "surrogate_loss": u.surrogate_loss, "grad_norm": u.grad_norm,
                "lr": u.lr, "tokens": u.tokens, "prefix_source": self.rollout.source, **self.timings}
