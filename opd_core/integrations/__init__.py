"""Bridges that let other trainers write OPD Lab run directories (each imports its trainer library lazily).

* :mod:`opd_core.integrations.trl`: TRL's ``GKDTrainer`` and ``DistillationTrainer``
  (``attach_opd_lab(trainer, runs_dir=...)``; needs the optional extra ``opd-lab[trl]``).

Any other trainer: call :class:`opd_core.logging_sdk.OPDLogger` from its loss (docs/integrations.md).
"""
