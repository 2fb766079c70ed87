"""Turn one scored batch into the per-token records of the run-directory contract (one row per token).

Everything here is already computed on the step's tensors; this module only moves it to the host in
one transfer per column and lays it out as a pyarrow table, so logging stays a small share of a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch


@dataclass
class SampleInfo:
    """Per-response facts the table repeats on each of its tokens."""

    prompt: str
    response_text: str
    correct: bool
    format_ok: bool
    first_error_char: int | None
    spans: list[tuple[int, int]]
    token_strings: list[str]
    teacher_strings: list[str]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def drift_measures(student_logp: np.ndarray, teacher_logp: np.ndarray, in_teacher_nucleus: np.ndarray,
                   real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative log-ratio before each token, and tokens since the first token outside the teacher's nucleus.

    Both describe the *prefix* a token was generated from, so each counts only earlier tokens.
    """
    step_ratio = np.where(real, student_logp - teacher_logp, 0.0)
    drift = np.cumsum(step_ratio, axis=1) - step_ratio
    off = real & ~in_teacher_nucleus
    T = off.shape[1]
    first = np.where(off.any(1), off.argmax(1), T)
    pos = np.arange(T)[None, :]
    since = np.where(pos > first[:, None], pos - first[:, None], 0)
    return drift.astype(np.float32), since.astype(np.int64)


def build_table(
    *,
    step: int,
    sample_offset: int,
    prefix_source: str,
    reference_only: bool,
    response_ids: torch.Tensor,
    real: torch.Tensor,
    masked: torch.Tensor,
    special: torch.Tensor,
    eos: torch.Tensor,
    cols: dict[str, torch.Tensor],
    samples: list[SampleInfo],
    rows: list[int] | None = None,
    id_to_string: list[str] | None = None,
) -> pa.Table:
    """The contract's columns for the real tokens of the chosen rows of a batch."""
    rows = list(range(response_ids.shape[0])) if rows is None else rows
    ridx = torch.tensor(rows, dtype=torch.long, device=response_ids.device)
    real_np = _np(real[ridx]).astype(bool)
    sel = {k: _np(v[ridx]) for k, v in cols.items()}
    drift, since = drift_measures(sel["student_logp"], sel["teacher_logp"], sel["in_teacher_nucleus"].astype(bool),
                                  real_np)
    b_idx, t_idx = np.nonzero(real_np)
    out: dict[str, object] = {
        "step": np.full(len(b_idx), step, dtype=np.int64),
        "sample": (np.asarray(rows)[b_idx] + sample_offset).astype(np.int64),
        "pos": t_idx.astype(np.int64),
        "token_id": _np(response_ids[ridx])[b_idx, t_idx].astype(np.int64),
        "token": [samples[b].token_strings[t] for b, t in zip(b_idx, t_idx)],
        "is_special": _np(special[ridx])[b_idx, t_idx].astype(bool),
        "is_eos": _np(eos[ridx])[b_idx, t_idx].astype(bool),
        "masked": _np(masked[ridx])[b_idx, t_idx].astype(bool),
        "prefix_source": np.full(len(b_idx), prefix_source),
        "reference_only": np.full(len(b_idx), reference_only),
    }
    scalar_cols = ("student_logp", "teacher_logp", "log_ratio", "student_entropy", "teacher_entropy",
                   "teacher_top1_prob", "signal", "token_loss", "student_support_mass", "topk_overlap")
    for name in scalar_cols:
        out[name] = sel[name][b_idx, t_idx].astype(np.float32)
    out["teacher_rank"] = sel["teacher_rank"][b_idx, t_idx].astype(np.int64)
    out["in_teacher_topk"] = sel["in_teacher_topk"][b_idx, t_idx].astype(bool)
    out["in_student_topp"] = sel["in_student_topp"][b_idx, t_idx].astype(bool)
    out["in_teacher_nucleus"] = sel["in_teacher_nucleus"][b_idx, t_idx].astype(bool)
    out["aligned"] = sel["aligned"][b_idx, t_idx].astype(bool)
    out["drift"] = drift[b_idx, t_idx]
    out["tokens_since_off_support"] = since[b_idx, t_idx]
    for side in ("teacher", "student"):
        ids = sel[f"{side}_topk_ids"][b_idx, t_idx].astype(np.int64)
        lps = sel[f"{side}_topk_logps"][b_idx, t_idx].astype(np.float32)
        out[f"{side}_topk_ids"] = pa.array(list(ids), type=pa.list_(pa.int64()))
        out[f"{side}_topk_logps"] = pa.array(list(lps), type=pa.list_(pa.float32()))
        if id_to_string is not None:
            out[f"{side}_topk_tokens"] = pa.array([[id_to_string[i] for i in row] for row in ids],
                                                  type=pa.list_(pa.string()))
    info = [samples[b] for b in b_idx]
    out["teacher_token"] = [samples[b].teacher_strings[t] for b, t in zip(b_idx, t_idx)]
    out["prefix_wrong"] = np.array([s.first_error_char is not None and s.spans[t][0] > s.first_error_char
                                    for s, t in zip(info, t_idx)], dtype=bool)
    out["prompt"] = [s.prompt for s in info]
    out["response_text"] = [s.response_text for s in info]
    out["correct"] = np.array([s.correct for s in info], dtype=bool)
    out["format_ok"] = np.array([s.format_ok for s in info], dtype=bool)
    out["reward"] = out["correct"].astype(np.float32)
    out["response_len"] = real_np.sum(1)[b_idx].astype(np.int64)
    return pa.table(out)
