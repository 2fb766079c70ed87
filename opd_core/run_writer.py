"""The one builder of run-directory records: per-token Parquet tables and per-step metric lines.

Every producer (the built-in loop, the logger SDK, the TRL bridge through the SDK) turns its
:class:`~opd_core.stats.TokenStats` record and the facts of its rows (:class:`TokenRows`) into a
table with :func:`token_table`, and completes its metric lines with :func:`metrics_record`; the files
themselves are written atomically by :mod:`opd_core.runs`. The schema's names are in
:mod:`opd_core.schema`. Columns a producer cannot know are written as null/NaN (or empty lists) when
the contract promises them, and left out otherwise; nothing is invented.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from opd_core.schema import MASK_REASONS, REQUIRED_METRICS
from opd_core.stats import TokenStats


@dataclass
class SampleInfo:
    """Per-response facts the table repeats on each of its tokens (None = not known to the producer)."""

    prompt: str | None = None
    response_text: str | None = None
    correct: bool | None = None
    format_ok: bool | None = None
    first_error_char: int | None = None
    spans: list[tuple[int, int]] | None = None   # each token's character span in the response text
    token_strings: list[str] | None = None
    teacher_strings: list[str] | None = None
    teacher_pieces: list[list[str]] | None = None  # per token: each teacher token's text (another tokenization)
    token_raw: list[str] | None = None             # per token: the raw vocabulary string (Ġdo, ▁the)
    reward: float | None = None


@dataclass
class TokenRows:
    """What a table needs besides the statistics: ids, which tokens are real, why some are masked, who wrote them.

    All tensors are [B,T] over the rows to log. ``masks`` maps a reason (``schema.MASK_REASONS`` or a
    new name) to the tokens it masks; ``masked`` is their union.
    """

    token_ids: torch.Tensor
    real: torch.Tensor
    special: torch.Tensor
    eos: torch.Tensor
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    prefix_source: Sequence[str] | str = "student"
    reference_only: Sequence[bool] | bool = False
    sample_offset: int = 0
    sample_ids: Sequence[int] | None = None        # the rows' indices in the step's batch (default 0..B-1)
    samples: Sequence[SampleInfo] | None = None
    id_to_string: Callable[[int], str] | Mapping[int, str] | Sequence[str] | None = None
    topk_strings: bool = False                     # also write teacher/student_topk_tokens
    teacher_id_to_string: Callable[[int], str] | Mapping[int, str] | Sequence[str] | None = None  # cross-tokenizer


def masked_reason(masks: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Per token, '' when no mask applies, else the first applying reason (``MASK_REASONS`` order, then others)."""
    order = [r for r in MASK_REASONS if r in masks] + [r for r in masks if r not in MASK_REASONS]
    out = np.full(n, "", dtype=object)
    for reason in reversed(order):
        out[np.asarray(masks[reason], dtype=bool)] = reason
    return out


def drift_measures(student_logp: np.ndarray, teacher_logp: np.ndarray, in_teacher_nucleus: np.ndarray,
                   real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative log-ratio before each token, and tokens since the first token outside the teacher's nucleus.

    Both describe the *prefix* a token was generated from, so each counts only earlier tokens.
    """
    step_ratio = np.where(real, student_logp - teacher_logp, 0.0)
    step_ratio = np.where(np.isfinite(step_ratio), step_ratio, 0.0)  # an unaligned token has no teacher number
    drift = np.cumsum(step_ratio, axis=1) - step_ratio
    off = real & ~in_teacher_nucleus
    T = off.shape[1]
    first = np.where(off.any(1), off.argmax(1), T)
    pos = np.arange(T)[None, :]
    since = np.where(pos > first[:, None], pos - first[:, None], 0)
    return drift.astype(np.float32), since.astype(np.int64)


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


def _lookup(id_to_string: Any) -> Callable[[int], str]:
    if id_to_string is None:
        return str
    if callable(id_to_string):
        return id_to_string
    if isinstance(id_to_string, Mapping):
        return lambda i: id_to_string.get(i, str(i))
    return lambda i: id_to_string[i] if 0 <= i < len(id_to_string) else str(i)


def _per_row(value: Sequence | str | bool, rows: int, dtype: Any) -> np.ndarray:
    if isinstance(value, str | bool):
        return np.full(rows, value, dtype=dtype)
    return np.asarray(list(value), dtype=dtype)


_FLOAT_COLUMNS = ("student_logp", "teacher_logp", "log_ratio", "student_entropy", "teacher_entropy",
                  "teacher_top1_prob", "signal", "token_loss")          # promised: NaN when unknown
_OPTIONAL_FLOATS = ("student_support_mass", "topk_overlap", "overlap_mass_student", "overlap_mass_teacher",
                    "teachability", "reverse_kl", "forward_kl", "token_value")  # written when known


def token_table(step: int, stats: TokenStats, rows: TokenRows) -> pa.Table:
    """The contract's columns for the real tokens of ``rows`` (one Parquet row per token)."""
    real = _np(rows.real).astype(bool)
    B = real.shape[0]
    b, t = np.nonzero(real)
    n = len(b)
    ids = _np(rows.token_ids).astype(np.int64)
    token_ids = ids[b, t]
    masks = {name: _np(m).astype(bool)[b, t] for name, m in rows.masks.items()}
    masked = np.zeros(n, dtype=bool)
    for m in masks.values():
        masked |= m
    sample_ids = np.arange(B) if rows.sample_ids is None else np.asarray(list(rows.sample_ids))
    lookup = _lookup(rows.id_to_string)
    samples = rows.samples
    if samples is not None and all(s.token_strings is not None for s in samples):
        token = [samples[i].token_strings[j] for i, j in zip(b, t)]
    else:
        token = [lookup(int(i)) for i in token_ids]
    out: dict[str, Any] = {
        "step": np.full(n, step, dtype=np.int64),
        "sample": (sample_ids[b] + rows.sample_offset).astype(np.int64),
        "pos": t.astype(np.int64), "token_id": token_ids, "token": token,
        "is_special": _np(rows.special).astype(bool)[b, t], "is_eos": _np(rows.eos).astype(bool)[b, t],
        "masked": masked, "masked_reason": masked_reason(masks, n).astype(str),
        "prefix_source": _per_row(rows.prefix_source, B, object)[b],
        "reference_only": _per_row(rows.reference_only, B, bool)[b],
    }
    host = {name: _np(v) for name, v in vars(stats).items() if isinstance(v, torch.Tensor)}
    for name in _FLOAT_COLUMNS:
        out[name] = host[name][b, t].astype(np.float32) if name in host else np.full(n, np.nan, np.float32)
    for name in _OPTIONAL_FLOATS:
        if name in host:
            out[name] = host[name][b, t].astype(np.float32)
    out["teacher_rank"] = (pa.array(host["teacher_rank"][b, t].astype(np.int64), type=pa.int64())
                           if "teacher_rank" in host else pa.nulls(n, type=pa.int64()))
    out["in_teacher_topk"] = (host["in_teacher_topk"][b, t].astype(bool) if "in_teacher_topk" in host
                              else pa.nulls(n, type=pa.bool_()))
    out["in_student_topp"] = (host["in_student_topp"][b, t].astype(bool) if "in_student_topp" in host
                              else np.ones(n, dtype=bool))
    for name in ("in_teacher_nucleus", "aligned"):
        if name in host:
            out[name] = host[name][b, t].astype(bool)
    nucleus = host.get("in_teacher_nucleus", np.ones(real.shape, dtype=bool)).astype(bool)
    drift, since = drift_measures(host["student_logp"].astype(np.float32), host["teacher_logp"].astype(np.float32),
                                  nucleus, real)
    out["drift"] = drift[b, t]
    if "in_teacher_nucleus" in host:
        out["tokens_since_off_support"] = since[b, t]
    for side in ("teacher", "student"):
        if f"{side}_topk_ids" not in host:
            out[f"{side}_topk_ids"] = pa.array([[]] * n, type=pa.list_(pa.int64()))
            out[f"{side}_topk_logps"] = pa.array([[]] * n, type=pa.list_(pa.float32()))
            continue
        k_ids = host[f"{side}_topk_ids"][b, t].astype(np.int64)
        k = k_ids.shape[-1]
        out[f"{side}_topk_ids"] = pa.FixedSizeListArray.from_arrays(k_ids.ravel(), k).cast(pa.list_(pa.int64()))
        out[f"{side}_topk_logps"] = pa.FixedSizeListArray.from_arrays(
            host[f"{side}_topk_logps"][b, t].astype(np.float32).ravel(), k).cast(pa.list_(pa.float32()))
        if rows.topk_strings and rows.id_to_string is not None:
            uniq, inverse = np.unique(k_ids.ravel(), return_inverse=True)
            strings = np.asarray([lookup(int(i)) for i in uniq], dtype=object)[inverse]
            out[f"{side}_topk_tokens"] = pa.FixedSizeListArray.from_arrays(
                pa.array(list(strings), type=pa.string()), k).cast(pa.list_(pa.string()))
        if side == "teacher" and "aligned" in host:  # no teacher distribution where it is not 1:1: no candidates
            keep = host["aligned"][b, t].astype(bool)
            for name in ("teacher_topk_ids", "teacher_topk_logps", "teacher_topk_tokens"):
                if name in out and not keep.all():
                    out[name] = _keep_lists(out[name], keep)
    if "teacher_own_topk_ids" in host:
        out["teacher_own_topk"] = own_topk_column(host["teacher_own_topk_ids"][b, t],
                                                  host["teacher_own_topk_logps"][b, t],
                                                  _lookup(rows.teacher_id_to_string))
    if samples is not None:
        _sample_columns(out, samples, b, t)
    out["response_len"] = real.sum(1)[b].astype(np.int64)
    return pa.table(out)


OWN_TOPK_TYPE = pa.list_(pa.struct([("id", pa.int64()), ("text", pa.string()), ("logp", pa.float32())]))


def own_topk_column(ids: np.ndarray, logps: np.ndarray, lookup: Callable[[int], str]) -> pa.Array:
    """``teacher_own_topk``: per token a list of {id, text, logp} in the teacher's own vocabulary ([n, K] ids,
    -1 = no entry, dropped; an empty list where the teacher had no position scoring the token)."""
    ids = ids.astype(np.int64)
    keep = ids >= 0
    uniq = np.unique(ids[keep])
    text = dict(zip(uniq.tolist(), (lookup(int(i)) for i in uniq)))
    flat_ids = ids[keep]
    values = pa.StructArray.from_arrays(
        [pa.array(flat_ids, type=pa.int64()), pa.array([text[i] for i in flat_ids.tolist()], type=pa.string()),
         pa.array(logps.astype(np.float32)[keep], type=pa.float32())], names=["id", "text", "logp"])
    offsets = np.concatenate([[0], np.cumsum(keep.sum(1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values).cast(OWN_TOPK_TYPE)


def _keep_lists(lists: pa.Array, keep: np.ndarray) -> pa.Array:
    """The same list column with the rows not kept emptied (an empty list means 'no candidates')."""
    lengths = np.where(keep, np.asarray(lists.value_lengths()), 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = lists.flatten().filter(pa.array(np.repeat(keep, np.asarray(lists.value_lengths()))))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _sample_columns(out: dict, samples: Sequence[SampleInfo], b: np.ndarray, t: np.ndarray) -> None:
    """Per-response facts repeated on each token, for the facts every response of the table knows."""
    info = [samples[i] for i in b]

    def known(name: str) -> bool:
        return all(getattr(s, name) is not None for s in samples)

    if known("teacher_strings"):
        out["teacher_token"] = [samples[i].teacher_strings[j] for i, j in zip(b, t)]
    if known("teacher_pieces"):
        out["teacher_pieces"] = pa.array([samples[i].teacher_pieces[j] for i, j in zip(b, t)],
                                         type=pa.list_(pa.string()))
    if known("token_raw"):
        out["token_raw"] = [samples[i].token_raw[j] for i, j in zip(b, t)]
    if known("spans"):
        out["prefix_wrong"] = np.array([s.first_error_char is not None and s.spans[j][0] > s.first_error_char
                                        for s, j in zip(info, t)], dtype=bool)
    for name in ("prompt", "response_text"):
        if known(name):
            out[name] = [getattr(s, name) for s in info]
    for name, dtype in (("correct", bool), ("format_ok", bool)):
        if known(name):
            out[name] = np.array([getattr(s, name) for s in info], dtype=dtype)
    if known("reward"):
        out["reward"] = np.array([s.reward for s in info], dtype=np.float32)
    elif "correct" in out:
        out["reward"] = out["correct"].astype(np.float32)


def metrics_record(record: Mapping[str, Any]) -> dict:
    """A metrics.jsonl line of a training step: the record with every required key (null when unreported)."""
    out = dict(record)
    for key in REQUIRED_METRICS:
        out.setdefault(key, None)
    return out


def write_alignment(run_dir: Any, student_tokenizer: Any, teacher_tokenizer: Any, pair: Any = None) -> None:
    """alignment.json: the tokenizer comparison of a run's pair (the mismatch page reads it); with the loop's
    ``TokenizerPair`` also which student ids are masked and whether the vocabularies are shared."""
    from opd_core import runs
    from opd_core.alignment import compare_tokenizers

    data = compare_tokenizers(student_tokenizer, teacher_tokenizer).to_dict()
    if pair is not None:
        data["masked_student_ids"] = sorted(pair.masked_ids)
        data["masked_student_tokens"] = [pair.student_strings[i] for i in sorted(pair.masked_ids)]
        data["shared_vocabulary"] = pair.shared
        data["warnings"] = pair.warnings()  # no chat template, EOS vs end of turn (said at launch too)
        data["teacher_end_token"] = pair.teacher.convert_ids_to_tokens(pair.teacher_end_id)
    runs.atomic_write_json(Path(run_dir) / "alignment.json", data)
