"""Failure mode 3, tokenizer and special-token mismatch: giant wrong signals at special tokens and EOS.

When the two tokenizers or chat templates disagree, the teacher is asked about ids it reads as
something else, or gives a tiny probability to the student's EOS (the paper's ``<|im_end|>``: -0.00
under the student, -58.71 under the teacher). These functions measure how much of the signal such
tokens carry, list the largest log-ratios with the strings each side read, read the run's tokenizer
alignment report, and follow the response length (a broken EOS makes lengths run away).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opd_core import runs
from opd_core.diagnostics.imbalance import token_kind
from opd_core.diagnostics.loading import (
    abs_signal,
    bool_column,
    float_column,
    narrow,
    require_columns,
    trained_mask,
    trained_rows,
)
from opd_core.stats import special_token_signal_share

COLUMNS: tuple[str, ...] = ("step", "sample", "pos", "token", "teacher_token", "is_special", "is_eos", "masked",
                            "reference_only", "prefix_source", "student_logp", "teacher_logp", "log_ratio",
                            "signal")
ALIGNMENT_FILE = "alignment.json"


def eos_mask(tokens: pd.DataFrame) -> np.ndarray:
    """Rows at an end-of-sequence position: ``is_eos`` when logged, else a special token ending its response."""
    if "is_eos" in tokens.columns:
        return bool_column(tokens, "is_eos")
    require_columns(tokens, ["step", "sample", "pos"], "eos_mask (no is_eos column)")
    keys = ["step", "sample"] + (["prefix_source"] if "prefix_source" in tokens.columns else [])
    last = tokens.groupby(keys, sort=False)["pos"].transform("max").to_numpy() == tokens["pos"].to_numpy()
    special = (token_kind(tokens).to_numpy() == "special") if "token" in tokens.columns else \
        bool_column(tokens, "is_special")
    return last & special


def _share(tokens: pd.DataFrame, select: np.ndarray) -> float:
    """Share of the trained rows' total |signal| carried by the selected rows (NaN when there is none)."""
    keep = trained_mask(tokens)
    values = abs_signal(tokens)[keep]
    total = values.sum()
    if values.size == 0:
        return float("nan")
    return float(values[select[keep]].sum() / total) if total > 0 else 0.0


def special_signal_share(tokens: pd.DataFrame) -> float:
    """Share of total |signal| carried by special tokens (flagged ``is_special`` or ``is_eos``): large means
    FM3. The metric ``special_token_signal_share`` of the loop and the SDK, on a token table."""
    if len(tokens) == 0:
        return float("nan")
    return _special_share(narrow(tokens, COLUMNS))


def _special_share(tokens: pd.DataFrame) -> float:
    keep = trained_mask(tokens)
    if not keep.any():
        return float("nan")
    return special_token_signal_share(abs_signal(tokens), keep, bool_column(tokens, "is_special"),
                                      bool_column(tokens, "is_eos"))


def eos_signal_share(tokens: pd.DataFrame) -> float:
    """Share of total |signal| carried by the end-of-sequence position alone."""
    if len(tokens) == 0:
        return float("nan")
    tokens = narrow(tokens, COLUMNS)
    return _share(tokens, eos_mask(tokens))


def largest_log_ratios(tokens: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The ``n`` largest |log-ratios| with the token string each side read, largest first.

    Masked rows are kept (with their ``masked`` flag): seeing what masking hides is the point.
    """
    require_columns(tokens, ["log_ratio"], "largest_log_ratios")
    tokens = narrow(tokens, COLUMNS)
    rows = tokens[~bool_column(tokens, "reference_only")]
    ratio = np.abs(float_column(rows, "log_ratio"))
    ratio = np.where(np.isfinite(ratio), ratio, -1.0)
    k = min(n, int((ratio >= 0).sum()))
    columns = ["token", "teacher_token", "student_logp", "teacher_logp", "log_ratio", "step", "sample", "pos",
               "masked", "is_special"]
    if k <= 0:
        return pd.DataFrame(columns=columns)
    idx = np.argpartition(ratio, ratio.size - k)[ratio.size - k:]
    idx = idx[np.argsort(-ratio[idx], kind="stable")]
    picked = rows.iloc[idx]
    out = pd.DataFrame(index=range(k))
    for col in columns:
        if col in picked.columns:
            out[col] = picked[col].to_numpy()
        elif col == "teacher_token" and "token" in picked.columns:
            out[col] = picked["token"].to_numpy()  # same tokenizer: the teacher read the same string
        elif col in ("masked", "is_special"):
            out[col] = False
        else:
            out[col] = np.nan
    return out


def load_alignment(run_dir: str | Path) -> dict | None:
    """The run's tokenizer comparison report (alignment.json, student = a, teacher = b), or None."""
    report = runs.read_json(Path(run_dir) / ALIGNMENT_FILE, default=None)
    return report if isinstance(report, dict) else None


def _count(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int | float):
        return int(value)
    try:
        return len(value)
    except TypeError:
        return 0


def alignment_problems(alignment: dict | None) -> dict:
    """What an alignment report says is broken: EOS strings that differ and ids read differently.

    Tolerates partial reports; ``eos_maps_to`` (what the other side reads for each EOS) is compared when
    it is a mapping, so a teacher reading the student's EOS id as another string counts as a mismatch.
    """
    if not alignment:
        return {"has_alignment": False, "eos_differs": False, "n_differing_ids": 0}
    eos_a, eos_b = alignment.get("eos_a"), alignment.get("eos_b")
    differs = isinstance(eos_a, str) and isinstance(eos_b, str) and eos_a != eos_b
    maps = alignment.get("eos_maps_to")
    if isinstance(maps, dict) and isinstance(eos_a, str):
        read = maps.get("a", maps.get(eos_a))
        if isinstance(read, dict):
            read = read.get("string") or read.get("token")
        if isinstance(read, str) and read != eos_a:
            differs = True
    return {
        "has_alignment": True,
        "eos_a": eos_a,
        "eos_b": eos_b,
        "eos_maps_to": maps,
        "eos_differs": bool(differs),
        # The report lists only the first few differing ids; the count is its own field.
        "n_differing_ids": _count(alignment.get("n_differing_ids", alignment.get("differing_ids"))),
        "overlap_ratio": alignment.get("overlap_ratio"),
    }


def response_length_trend(metrics: pd.DataFrame) -> pd.DataFrame:
    """Response length per step, with its trend in ``attrs`` (slope per step, first/last quarter means, ratio)."""
    if "response_len" not in metrics.columns or "step" not in metrics.columns:
        out = pd.DataFrame(columns=["step", "response_len"])
        out.attrs.update(length_trend_stats(out))
        return out
    out = pd.DataFrame({"step": pd.to_numeric(metrics["step"], errors="coerce"),
                        "response_len": pd.to_numeric(metrics["response_len"], errors="coerce")})
    out = out.dropna().sort_values("step").reset_index(drop=True)
    out.attrs.update(length_trend_stats(out))
    return out


def length_trend_stats(trend: pd.DataFrame) -> dict:
    """Slope (tokens per step) and first- vs last-quarter mean of a step/response_len table."""
    n = len(trend)
    if n == 0:
        return {"slope": float("nan"), "first_mean": float("nan"), "last_mean": float("nan"),
                "ratio": float("nan"), "n": 0}
    steps = trend["step"].to_numpy(dtype=np.float64)
    lengths = trend["response_len"].to_numpy(dtype=np.float64)
    window = max(1, n // 4)
    first, last = float(lengths[:window].mean()), float(lengths[-window:].mean())
    slope = float(np.polyfit(steps, lengths, 1)[0]) if n >= 2 and np.ptp(steps) > 0 else 0.0
    return {"slope": slope, "first_mean": first, "last_mean": last,
            "ratio": last / first if first > 0 else float("nan"), "n": n}


def summary(tokens: pd.DataFrame, alignment: dict | None = None) -> dict:
    """The mismatch numbers of a run: special/EOS signal shares, EOS log-ratios, masking, alignment."""
    tokens = narrow(tokens, COLUMNS)
    out: dict = {"special_signal_share": float("nan"), "eos_signal_share": float("nan")}
    if len(tokens):
        special_all, eos_all = token_kind(tokens).to_numpy() == "special", eos_mask(tokens)
        out.update(special_signal_share=_special_share(tokens), eos_signal_share=_share(tokens, eos_all))
    not_reference = ~bool_column(tokens, "reference_only")
    rows = tokens[not_reference]
    if len(rows):
        eos, special = eos_all[not_reference], special_all[not_reference]
        masked = bool_column(rows, "masked")
        ratio = float_column(rows, "log_ratio")[eos]
        ratio = ratio[np.isfinite(ratio)]
        out.update({
            "n_eos": int(eos.sum()),
            "eos_mean_log_ratio": float(ratio.mean()) if ratio.size else float("nan"),
            "eos_min_log_ratio": float(ratio.min()) if ratio.size else float("nan"),
            "eos_masked_share": float(masked[eos].mean()) if eos.any() else float("nan"),
            "special_masked_share": float(masked[special].mean()) if special.any() else float("nan"),
        })
    trained = trained_rows(tokens)
    if len(trained) and "log_ratio" in trained.columns:
        top = largest_log_ratios(trained, n=1)
        if len(top):
            out["largest_log_ratio"] = float(top["log_ratio"].iloc[0])
            for col, key in (("token", "largest_log_ratio_token"),
                             ("teacher_token", "largest_log_ratio_teacher_token")):
                if col in top.columns:
                    out[key] = str(top[col].iloc[0])
    out.update(first_step_shares(tokens))
    out.update(alignment_problems(alignment))
    return out


def first_step_shares(tokens: pd.DataFrame) -> dict:
    """Special-token and EOS shares of |signal| on the first logged step, and the EOS's share of the trained
    tokens there (``eos_signal_enrichment`` = signal share over token share: 1 is its fair share).

    A broken EOS undoes its own evidence: the student learns to stop ending its answers (the v2 baseline's
    EOS rows fall from 4.9% of its tokens at step 1 to 0.2% at step 200, responses at ``max_new_tokens``),
    so shares pooled over the run shrink as the damage grows. The first logged step shows the pull."""
    keys = ("special_signal_share_first_step", "eos_signal_share_first_step", "eos_token_share_first_step",
            "eos_signal_enrichment_first_step")
    out: dict = dict.fromkeys(keys, float("nan"))
    if not len(tokens) or "step" not in tokens.columns:
        return out
    first = tokens[tokens["step"].to_numpy() == tokens["step"].min()]
    eos, keep = eos_mask(first), trained_mask(first)
    if not keep.any():
        return out
    eos_signal = _share(first, eos)
    token_share = float(eos[keep].mean())
    out.update(special_signal_share_first_step=_special_share(first), eos_signal_share_first_step=eos_signal,
               eos_token_share_first_step=token_share,
               eos_signal_enrichment_first_step=eos_signal / token_share if token_share > 0 else float("nan"))
    return out


def student_eos_for_teacher(alignment: dict | None) -> tuple[str, str]:
    """How the teacher reads the student's EOS, as (a short verdict, the report's full sentence).

    The alignment report keeps this structured (``eos_maps_to["a_in_b"]``); a page tile needs two words.
    """
    maps = (alignment or {}).get("eos_maps_to")
    side = maps.get("a_in_b") if isinstance(maps, dict) else None
    if not isinstance(side, dict):
        return "–", ""
    verdict = "its EOS too" if side.get("is_eos") else "not its EOS"
    return verdict, str(side.get("summary") or "")
