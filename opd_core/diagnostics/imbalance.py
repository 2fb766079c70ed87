"""Failure mode 1, imbalanced token-level supervision: how few tokens carry the update.

Sampled-token OPD gives each token the log-ratio of teacher to student on the sampled token; it is near
zero on most tokens and huge on a few. These functions measure that concentration over |signal| (Lorenz
curve, Gini, top-share), where it sits (position, token kind) and the sign of the rewards per step.
All statistics are over *trained* rows: masked tokens and teacher-prefix reference rollouts excluded.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from opd_core.diagnostics.loading import (
    abs_signal,
    bool_column,
    float_column,
    narrow,
    require_columns,
    signal_column,
    trained_rows,
)
from opd_core.stats import abs_values, gini, top_share  # noqa: F401 - defined once, in the stats module

# Columns these analyses read (pass to runs.read_tokens to load nothing else).
COLUMNS: tuple[str, ...] = ("step", "sample", "pos", "token", "is_special", "is_eos", "masked",
                            "reference_only", "prefix_source", "signal", "log_ratio")
KINDS: tuple[str, ...] = ("format", "digit", "special", "other")

# Strings that are special tokens whatever the tokenizer says: <|im_end|>, </s>, <s>, [INST], [/INST].
_SPECIAL_PATTERN = re.compile(r"^(<\|[^|]*\|>|</?[A-Za-z_][\w.-]*>|\[/?[A-Z_]+\])$")


def lorenz_curve(values: object, points: int = 200) -> pd.DataFrame:
    """Lorenz curve of |values| downsampled to ``points`` rows: share of tokens vs share of |signal|.

    Tokens are sorted from the smallest |signal| up, so the curve starts at (0, 0), ends at (1, 1) and
    sags below the diagonal as the signal concentrates on fewer tokens.
    """
    if points < 2:
        raise ValueError(f"points must be at least 2 (the curve's two ends), got {points}")
    x = np.sort(abs_values(values))
    token_share = np.linspace(0.0, 1.0, points)
    total = x.sum()
    if x.size == 0 or total <= 0:
        return pd.DataFrame({"token_share": token_share, "signal_share": token_share.copy()})
    exact_x = np.arange(x.size + 1, dtype=np.float64) / x.size
    exact_y = np.concatenate([[0.0], np.cumsum(x) / total])
    return pd.DataFrame({"token_share": token_share, "signal_share": np.interp(token_share, exact_x, exact_y)})


def summary(tokens: pd.DataFrame, *, exclude_special: bool = False) -> dict:
    """The headline imbalance numbers of a token table (trained rows only).

    ``exclude_special`` leaves special tokens out, separating imbalance among ordinary tokens from the
    giant special-token signals of a tokenizer mismatch (failure mode 3).
    """
    rows = trained_rows(narrow(tokens, COLUMNS))
    if exclude_special and len(rows):
        rows = rows[token_kind(rows).to_numpy() != "special"]
    signal_name = signal_column(tokens)
    values = abs_signal(rows)
    log_ratio = float_column(rows, "log_ratio")
    valid = np.isfinite(log_ratio)
    return {
        "n_tokens": int(values.size),
        "signal_column": signal_name,
        "gini": gini(values),
        "top1pct_share": top_share(values, 0.01) if values.size else float("nan"),
        "top5pct_share": top_share(values, 0.05) if values.size else float("nan"),
        "mean_abs_signal": float(values.mean()) if values.size else float("nan"),
        "max_abs_signal": float(values.max()) if values.size else float("nan"),
        "negative_share": float((log_ratio[valid] < 0).mean()) if valid.any() else float("nan"),
        "exclude_special": exclude_special,
    }


def signal_by_position(tokens: pd.DataFrame, buckets: int = 10) -> pd.DataFrame:
    """|signal| by position in the response, in ``buckets`` equal-width position ranges.

    Columns: position_bucket (first position of the range), pos_end, label, n, mean_abs_signal, share
    (of the total |signal|). Shows whether the update comes from the start, the middle or the end.
    """
    require_columns(tokens, ["pos"], "signal_by_position")
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    rows = trained_rows(narrow(tokens, COLUMNS))
    columns = ["position_bucket", "pos_end", "label", "n", "mean_abs_signal", "share"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    pos = rows["pos"].to_numpy(dtype=np.int64)
    values = abs_signal(rows)
    width = max(1, math.ceil((int(pos.max()) + 1) / buckets))
    bucket = pos // width
    n = np.bincount(bucket)
    total = np.bincount(bucket, weights=values)
    present = np.flatnonzero(n)
    start = present * width
    end = start + width - 1
    grand = values.sum()
    return pd.DataFrame({
        "position_bucket": start,
        "pos_end": end,
        "label": [f"{s}-{e}" for s, e in zip(start, end)],
        "n": n[present],
        "mean_abs_signal": total[present] / n[present],
        "share": total[present] / grand if grand > 0 else np.zeros(present.size),
    })


def _kind_of_string(text: str) -> str:
    stripped = text.strip()
    if _SPECIAL_PATTERN.match(stripped):
        return "special"
    has_digit = any(c.isdigit() for c in stripped)
    has_alpha = any(c.isalpha() for c in stripped)
    if has_digit and not has_alpha:
        return "digit"
    if not has_digit and not has_alpha:
        return "format"  # punctuation, operators, whitespace, newlines: the answer's scaffolding
    return "other"


def token_kind(tokens: pd.DataFrame) -> pd.Series:
    """Each row's token kind: special (flagged special/EOS or shaped like <|x|>, </s>, [INST]), digit
    (digits with no letters, e.g. "7", "+1"), format (punctuation and whitespace only), or other.

    Classifies each distinct string once, so a million rows cost one factorisation.
    """
    require_columns(tokens, ["token"], "token_kind")
    codes, uniques = pd.factorize(tokens["token"].astype(object).where(tokens["token"].notna(), ""))
    kinds = np.array([_kind_of_string(str(u)) for u in uniques] + ["other"], dtype=object)
    result = kinds[codes]  # code -1 (missing) picks the trailing "other"
    special = bool_column(tokens, "is_special") | bool_column(tokens, "is_eos")
    result = np.where(special, "special", result)
    return pd.Series(result, index=tokens.index, name="kind", dtype=object)


def signal_by_kind(tokens: pd.DataFrame) -> pd.DataFrame:
    """|signal| by token kind (format, digit, special, other): share of the total, mean and count."""
    rows = trained_rows(narrow(tokens, COLUMNS))
    kinds = token_kind(rows).to_numpy() if len(rows) else np.array([], dtype=object)
    values = abs_signal(rows)
    grand = values.sum()
    records = []
    for kind in KINDS:
        sel = kinds == kind
        n = int(sel.sum())
        total = float(values[sel].sum())
        records.append({"kind": kind, "n": n, "share": total / grand if grand > 0 else 0.0,
                        "mean_abs_signal": total / n if n else float("nan")})
    return pd.DataFrame.from_records(records, columns=["kind", "n", "share", "mean_abs_signal"])


def negative_reward_share_by_step(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per step, the share of sampled-token rewards (log-ratios) that are negative, over unmasked rows.

    The paper finds most are negative at the start: the teacher gives the student's samples less
    probability than the student does.
    """
    require_columns(tokens, ["step", "log_ratio"], "negative_reward_share_by_step")
    rows = trained_rows(narrow(tokens, COLUMNS))
    log_ratio = float_column(rows, "log_ratio")
    valid = np.isfinite(log_ratio)
    frame = pd.DataFrame({"step": rows["step"].to_numpy()[valid], "negative": log_ratio[valid] < 0})
    out = frame.groupby("step", sort=True)["negative"].agg(negative_share="mean", n="size").reset_index()
    out["n"] = out["n"].astype(np.int64)
    return out


def top_tokens(tokens: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The ``n`` trained tokens carrying the largest |signal|, largest first, with where they sit."""
    rows = trained_rows(narrow(tokens, COLUMNS))
    values = abs_signal(rows)
    k = min(n, values.size)
    if k <= 0:
        return pd.DataFrame(columns=["step", "sample", "pos", "token", "kind", "signal", "abs_signal"])
    idx = np.argpartition(values, values.size - k)[values.size - k:]
    idx = idx[np.argsort(-values[idx], kind="stable")]
    keep = [c for c in ("step", "sample", "pos", "prefix_source", "token", "signal", "log_ratio")
            if c in rows.columns]
    out = rows.iloc[idx][keep].reset_index(drop=True)
    if "token" in rows.columns:
        out.insert(out.columns.get_loc("token") + 1, "kind", token_kind(rows.iloc[idx]).to_numpy())
    out["abs_signal"] = values[idx]
    return out
