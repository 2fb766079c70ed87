"""Tabular softmax policies small enough that every sequence they can write can be enumerated.

Parameterisation (chosen so that 3^10 sequences stay cheap): the next-token logits depend on the
position t and the previous token only. Context 0 is the first position (no previous token);
context ``1 + (t - 1) * V + prev`` is position t >= 1 after token ``prev``. The policy is one
``[C, V]`` logit table with ``C = 1 + (T - 1) * V``, so a horizon-T table is the first C rows of
any longer one, which lets the same policy be studied at every horizon up to its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64  # exact moments: float64 keeps the gamma = 1 bias at ~1e-15, not ~1e-6

# "Mirror tasks": what the teacher prefers to write after the previous token.
TASKS: dict[str, Callable[[int, int], int]] = {
    "copy": lambda prev, vocab: prev,  # repeat the previous (hence the first) token
    "mirror": lambda prev, vocab: vocab - 1 - prev,  # reflect it in the vocabulary
}


def num_contexts(vocab_size: int, horizon: int) -> int:
    """Count the rows of the logit table, so callers can size parameter vectors."""
    return 1 + (horizon - 1) * vocab_size


def context_ids(sequences: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Map each position of each sequence to the row of the logit table that scores it: [N, T] -> [N, T]."""
    n, horizon = sequences.shape
    ctx = torch.zeros_like(sequences)
    if horizon > 1:
        steps = torch.arange(horizon - 1, device=sequences.device)
        ctx[:, 1:] = 1 + steps * vocab_size + sequences[:, :-1]
    return ctx


@dataclass(frozen=True)
class TabularPolicy:
    """A (position, previous token) softmax policy: the student or the teacher of the lab."""

    logits: torch.Tensor  # [C, V]
    vocab_size: int
    horizon: int

    def __post_init__(self) -> None:
        expected = (num_contexts(self.vocab_size, self.horizon), self.vocab_size)
        if tuple(self.logits.shape) != expected:
            raise ValueError(
                f"logit table has shape {tuple(self.logits.shape)}, expected {expected} for "
                f"V={self.vocab_size}, T={self.horizon}; build it with make_student/make_teacher"
            )

    @property
    def num_params(self) -> int:
        """Give the length of a flattened gradient vector."""
        return self.logits.numel()

    def log_probs(self) -> torch.Tensor:
        """Give next-token log-probabilities for every context: [C, V]."""
        return torch.log_softmax(self.logits, dim=-1)

    def with_logits(self, logits: torch.Tensor) -> TabularPolicy:
        """Return the same policy shape with new parameters (a training step)."""
        return TabularPolicy(logits, self.vocab_size, self.horizon)

    def truncated(self, horizon: int) -> TabularPolicy:
        """Return this policy restricted to the first ``horizon`` positions."""
        if not 1 <= horizon <= self.horizon:
            raise ValueError(f"horizon {horizon} must be between 1 and the policy's own {self.horizon}")
        rows = num_contexts(self.vocab_size, horizon)
        return TabularPolicy(self.logits[:rows], self.vocab_size, horizon)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` sequences by ancestral sampling: [n, T] token ids (generator on the CPU)."""
        probs = self.log_probs().exp().cpu()
        seqs = torch.zeros(n, self.horizon, dtype=torch.long)
        ctx = torch.zeros(n, dtype=torch.long)
        for t in range(self.horizon):
            seqs[:, t] = torch.multinomial(probs[ctx], 1, generator=generator).squeeze(1)
            ctx = 1 + t * self.vocab_size + seqs[:, t]
        return seqs.to(self.logits.device)


def _normal_table(rows: int, cols: int, seed: int) -> np.ndarray:
    # numpy draws sequentially, so a table for a short horizon is the prefix of a longer one
    return np.random.default_rng(seed).standard_normal((rows, cols))


def make_student(
    vocab_size: int, horizon: int, seed: int = 0, init_scale: float = 1.0, device: str | torch.device = "cpu"
) -> TabularPolicy:
    """Build the student: random logits (scale ``init_scale``) so it starts away from the teacher."""
    table = init_scale * _normal_table(num_contexts(vocab_size, horizon), vocab_size, seed)
    return TabularPolicy(torch.tensor(table, dtype=DTYPE, device=device), vocab_size, horizon)


def make_teacher(
    vocab_size: int,
    horizon: int,
    task: str = "copy",
    sharpness: float = 2.0,
    seed: int = 1,
    margin: float = 2.0,
    background: float = 0.5,
    device: str | torch.device = "cpu",
) -> TabularPolicy:
    """Build the teacher of a mirror task: it prefers the task's token after each previous token.

    Logits are ``sharpness * (margin * onehot(target) + background * noise)``; the fixed noise
    breaks ties so the teacher's top-K set is well defined. ``sharpness`` is an inverse
    temperature: 0 gives a uniform teacher, large values a nearly deterministic one.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if sharpness < 0:
        raise ValueError(f"sharpness must be >= 0 (an inverse temperature), got {sharpness}")
    table = background * _normal_table(num_contexts(vocab_size, horizon), vocab_size, seed)
    target = TASKS[task]
    for t in range(1, horizon):
        for prev in range(vocab_size):
            table[1 + (t - 1) * vocab_size + prev, target(prev, vocab_size)] += margin
    return TabularPolicy(torch.tensor(sharpness * table, dtype=DTYPE, device=device), vocab_size, horizon)
