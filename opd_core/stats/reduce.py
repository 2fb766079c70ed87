"""Per-step metrics as reductions of the per-token record, and the concentration measures behind them.

Every metric a step's line in metrics.jsonl carries from its tokens is computed by :func:`step_metrics`
from a :class:`~opd_core.stats.record.TokenStats` (the loop's every-step pass, the full record of a
logging step, the SDK's record, or a token table via :func:`record_from_columns`); docs/diagnostics.md
defines each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
import torch
from torch import Tensor

from opd_core.schema import STEP_METRICS  # noqa: F401 - the names step_metrics returns, declared with the schema
from opd_core.stats.record import TokenStats


def record_from_columns(columns: dict[str, np.ndarray]) -> TokenStats:
    """A record of one flat row of tokens ([1, N]) from token-table columns, so a producer that has a
    table rather than tensors (re-scoring) reduces it with the same :func:`step_metrics`."""
    known = {f.name for f in fields(TokenStats)}
    out = {}
    for name, values in columns.items():
        if name in known and values is not None:
            arr = np.asarray(values)
            if arr.dtype.kind not in "fbiu":  # a column with nulls (object): not known for every token
                continue
            arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
            out[name] = torch.from_numpy(np.array(arr))[None]  # a copy: table columns are read-only views
    return TokenStats(**out)


def abs_values(values: object) -> np.ndarray:
    """|values| as a flat float64 array, non-finite entries dropped (what concentration is measured on)."""
    arr = np.abs(np.asarray(values, dtype=np.float64).ravel())
    return arr[np.isfinite(arr)]


def gini(values: object) -> float:
    """Gini coefficient of |values|: 0 when every token carries the same signal, (n-1)/n when one carries all.

    NaN for no values; 0 when every value is zero (nothing is concentrated).
    """
    x = np.sort(abs_values(values))
    n = x.size
    if n == 0:
        return float("nan")
    total = x.sum()
    if total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(2.0 * np.dot(ranks, x) / (n * total) - (n + 1.0) / n)


def top_share(values: object, fraction: float) -> float:
    """Share of total |values| carried by the largest ``fraction`` of tokens (at least one token)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    x = abs_values(values)
    total = x.sum()
    if x.size == 0 or total <= 0:
        return float("nan") if x.size == 0 else 0.0
    k = max(1, math.ceil(fraction * x.size - 1e-9))
    top = np.partition(x, x.size - k)[x.size - k:]
    return float(top.sum() / total)


def _tensor(x: Tensor | np.ndarray) -> Tensor:
    """A tensor of ``x``; arrays are copied (a table's columns are often read-only views)."""
    return x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))


def special_token_signal_share(signal: Tensor | np.ndarray, trained: Tensor | np.ndarray,
                               special: Tensor | np.ndarray, eos: Tensor | np.ndarray) -> float:
    """|signal| on trained tokens flagged special OR EOS, over the total trained |signal| (0 when none).

    The one definition (docs/diagnostics.md): the flags are the tokenizer's, never guessed from strings.
    Takes tensors or arrays of one shape (the loop's [B,T], a token table's columns).
    """
    sig = _tensor(signal).detach().abs().double().nan_to_num(0.0, 0.0, 0.0)
    trained = _tensor(trained).bool()
    flagged = _tensor(special).bool() | _tensor(eos).bool()
    total = float(sig[trained].sum())
    return float(sig[trained & flagged].sum()) / total if total > 0 else 0.0


def _means(columns: dict[str, Tensor | None], where: Tensor) -> dict[str, float | None]:
    """Mean over ``where`` of each column's finite values, all in one stacked reduction (one host sync);
    None for a column that is unknown or has nothing to average there."""
    known = {name: v for name, v in columns.items() if v is not None}
    out: dict[str, float | None] = dict.fromkeys(columns)
    if not known:
        return out
    stacked = torch.stack([v.double() for v in known.values()])
    ok = torch.isfinite(stacked) & where
    sums = torch.where(ok, stacked, 0.0).sum((1, 2))
    counts = ok.sum((1, 2))
    for name, total, count in zip(known, sums.tolist(), counts.tolist()):
        out[name] = total / count if count else None
    return out


def step_metrics(stats: TokenStats, *, trained: Tensor, real: Tensor, special: Tensor, eos: Tensor,
                 prefix_source: Sequence[str] | str = "student") -> dict[str, float | None]:
    """The step's metrics as reductions of the per-token record (trained = the unmasked real tokens).

    Teacher entropy is the mean over real tokens where it is known, named by who wrote the prefix
    (``teacher_entropy_student_prefix`` / ``teacher_entropy_teacher_prefix``); every other token mean
    is over trained tokens. ``reverse_kl_sampled`` is the k1 estimate −mean(log_ratio) on the sampled
    tokens. See docs/diagnostics.md for each metric.
    """
    trained, real = trained.bool(), real.bool()
    sig = stats.signal if stats.signal is not None else stats.log_ratio
    abs_sig = sig.detach()[trained].abs().double().cpu().numpy()
    abs_sig = abs_sig[np.isfinite(abs_sig)]
    outside = None if stats.in_teacher_topk is None else (~stats.in_teacher_topk).float()
    if outside is not None and stats.aligned is not None:
        outside = outside.masked_fill(~stats.aligned, float("nan"))
    lr = stats.log_ratio
    means = _means({"reverse_kl": stats.reverse_kl, "forward_kl": stats.forward_kl, "mean_log_ratio": lr,
                    "negative_reward_share": (lr < 0).float().masked_fill(~torch.isfinite(lr), float("nan")),
                    "student_entropy": stats.student_entropy, "student_support_mass": stats.student_support_mass,
                    "not_in_topk_ratio": outside, "topk_overlap": stats.topk_overlap,
                    "overlap_mass_student": stats.overlap_mass_student,
                    "overlap_mass_teacher": stats.overlap_mass_teacher, "teachability": stats.teachability}, trained)
    n_real = int(real.sum())
    out: dict[str, float | None] = {
        **means,
        "reverse_kl_sampled": None if means["mean_log_ratio"] is None else -means["mean_log_ratio"],
        "response_len": float(real.sum(-1).float().mean()) if real.numel() else None,
        "signal_gini": gini(abs_sig) if abs_sig.size else None,
        "signal_top1pct_share": top_share(abs_sig, 0.01) if abs_sig.size else None,
        "special_token_signal_share": special_token_signal_share(sig, trained, special.bool(), eos.bool()),
        "masked_share": float(1 - int(trained.sum()) / max(n_real, 1)),
        "eos_rate": float((eos.bool() & real).any(-1).float().mean()) if real.numel() else None,
    }
    sources = [prefix_source] * real.shape[0] if isinstance(prefix_source, str) else list(prefix_source)
    for source in ("student", "teacher"):
        rows = torch.tensor([s == source for s in sources], dtype=torch.bool, device=real.device)
        if rows.any():
            out[f"teacher_entropy_{source}_prefix"] = _means({"e": stats.teacher_entropy}, real & rows[:, None])["e"]
    return out
