"""Re-score saved rollouts (any trainer's) into a standard run directory: the `opd-lab score` engine.

``score_rollouts(...)`` is the Python API; ``read_rollouts`` the input readers. Names load lazily so
that `opd-lab --help` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Rollout": "inputs", "RolloutInputError": "inputs", "RolloutSet": "inputs", "parse_map": "inputs",
            "read_rollouts": "inputs", "split_items": "inputs", "ScoreResult": "score", "ScoringError": "score", "score_rollouts": "score",
            "prepare_job": "score", "resume_scoring": "score", "is_scoring_run": "score"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"opd_core.rescoring.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
