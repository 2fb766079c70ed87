"""Everything about a run that can be checked before its run directory exists, checked there.

:func:`opd_core.config.from_dict` checks values (types, ranges, finite numbers, the objective's
parameters). This checks what depends on the machine and on other files: the device, the core count,
the model folders (config.json, tokenizer, vocabulary; see :func:`opd_core.models.preflight_model_source`),
the objective's ``k`` against the vocabulary, and the task file. Each problem is one
:class:`~opd_core.config.ConfigError` line naming the field, the value and the fix.
"""

from __future__ import annotations

import os

from opd_core.config import ConfigError, RunConfig


def check_device(device: str) -> None:
    import torch

    if device == "auto":
        return
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"config field 'device': {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cpu":
        return
    if resolved.type != "cuda":
        raise ConfigError(f"config field 'device': {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"config field 'device': {device!r} but this machine has no CUDA GPU; use auto or cpu")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ConfigError(f"config field 'device': {device!r} but this machine has {count} GPU(s) "
                          f"(cuda:0 to cuda:{count - 1}); use one of those or auto")


def preflight(cfg: RunConfig) -> None:
    """Raise ConfigError for the first problem that would make ``cfg`` fail after its run dir exists."""
    from opd_core.models import ModelLoadError, preflight_model_source

    check_device(cfg.device)
    cores = os.cpu_count() or 1
    if cfg.cpu_threads > cores:
        raise ConfigError(f"config field 'cpu_threads': {cfg.cpu_threads} is more than this machine's {cores} "
                          "cores; use 0 (auto) or at most that")
    sources = {}
    for role in ("student", "teacher"):
        try:
            sources[role] = preflight_model_source(getattr(cfg, role), role, trust_remote_code=cfg.trust_remote_code)
        except ModelLoadError as exc:
            raise ConfigError(f"config field '{role}': {exc}") from None
    k = cfg.objective_params.get("k")
    vocab = sources["teacher"].vocab_size
    if isinstance(k, int) and vocab is not None and k > vocab:
        raise ConfigError(f"config field 'objective_params': k={k} is more than the teacher's vocabulary "
                          f"({vocab} tokens); use k <= {vocab}")
    _check_task(cfg)


def _check_task(cfg: RunConfig) -> None:
    from opd_core.tasks import load_task

    try:
        task = load_task(cfg.task)
        task.examples("train", 1, seed=cfg.seed)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config field 'task': {str(exc).strip().splitlines()[0]}") from None
