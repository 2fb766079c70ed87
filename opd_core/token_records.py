"""Moved: per-token tables are built by :mod:`opd_core.run_writer` (this name stays for old imports)."""

from opd_core.run_writer import SampleInfo, drift_measures, token_table

__all__ = ["SampleInfo", "drift_measures", "token_table"]
