"""Every per-token statistic of a run, and every per-step metric as a reduction of them: defined here once.

:mod:`opd_core.stats.record` computes the per-token record (:class:`TokenStats`) from logits in one
fused chunked pass, or from a sparse teacher view (top-K lists, sampled log-probs);
:mod:`opd_core.stats.reduce` turns a record into the step's metrics (``step_metrics``, ``gini``,
``top_share``, the special-token signal share). Producers (the loop, the SDK, the TRL bridge,
re-scoring) and the diagnostics import from here.
"""

from opd_core.stats.record import (
    DEFAULT_SUPPORT_K,
    TokenStats,
    default_signal,
    dense_token_stats,
    nucleus_from_topk,
    sparse_token_stats,
    step_stats,
    topk_list_overlap,
)
from opd_core.stats.reduce import (
    STEP_METRICS,
    abs_values,
    gini,
    record_from_columns,
    special_token_signal_share,
    step_metrics,
    top_share,
)

__all__ = [
    "DEFAULT_SUPPORT_K", "STEP_METRICS", "TokenStats", "abs_values", "default_signal", "dense_token_stats", "gini",
    "nucleus_from_topk", "record_from_columns", "special_token_signal_share", "sparse_token_stats", "step_metrics",
    "step_stats", "top_share", "topk_list_overlap",
]
