"""The offline toy world: an addition task with a grader, tokenizers, tiny trained models and presets."""

from opd_core.toy.presets import PRESETS, resolve_pair
from opd_core.toy.task import AdditionTask, worked_chain

__all__ = ["PRESETS", "AdditionTask", "resolve_pair", "worked_chain"]
