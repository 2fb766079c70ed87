"""The failure-mode analyses of OPD runs: pure functions over token records and metrics, and the health report.

One module per concern: ``imbalance`` (FM1, how few tokens carry the signal), ``drift`` (FM2, the teacher
on drifted student prefixes), ``mismatch`` (FM3, tokenizer / special-token mismatch), ``collapse``
(student mass leaving the teacher's top-K) and ``health`` (findings with evidence and fixes). DataFrames
in, DataFrames and small dicts out; nothing here imports Streamlit.
"""

from opd_core.diagnostics import collapse, drift, imbalance, mismatch
from opd_core.diagnostics.health import THRESHOLDS, Finding, HealthReport, Thresholds, format_report, health
from opd_core.diagnostics.loading import DiagnosticsError

__all__ = ["THRESHOLDS", "DiagnosticsError", "Finding", "HealthReport", "Thresholds", "collapse", "drift",
           "format_report", "health", "imbalance", "mismatch"]
