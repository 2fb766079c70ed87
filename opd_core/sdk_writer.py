"""What the SDK logger hands off: the record from logits, and the background writer that builds each logged
step's token table and summaries and does every disk write, off the training thread
(:class:`opd_core.logging_sdk.OPDLogger` feeds it).

Tables and summaries come from the same functions as the built-in loop's: ``stats.sparse_token_stats``
(or the dense record the logger computed from logits), ``run_writer.token_table`` and
``stats.step_metrics``.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from opd_core import runs, stats
from opd_core.run_writer import SampleInfo, TokenRows, token_table

STATUS_INTERVAL_S = 1.0  # status.json is rewritten at most this often on steps without token records

NEUTRAL_VALUES: dict[str, str] = {
    "student_entropy / teacher_entropy": "NaN when not passed (log_logits always derives them)",
    "teacher_top1_prob": "exp(teacher_topk_logps[0]) with teacher top-K, else NaN",
    "teacher_rank": "exact from log_logits; from top-K ids: 1-based position, K+1 when outside the top-K "
                    "(a lower bound); null without teacher top-K",
    "student_support_mass / topk_overlap / overlap masses / teachability / reverse_kl / forward_kl":
        "exact from log_logits; from top-K lists only the overlap and the overlap masses; else left out",
    "in_teacher_topk": "from teacher top-K ids; null without them",
    "in_student_topp": "the sampled token lies in the student's rollout top-p nucleus (config top_p, "
                       "default 1.0 = always True); exact from log_logits, else from student top-K when "
                       "top_p < 1 (True when the top-K cannot tell)",
    "teacher_topk_* / student_topk_*": "empty lists when not passed",
    "signal": "the sampled-token log-ratio (teacher_logp - student_logp) when not passed",
    "token_loss": "-signal * student_logp (the gamma=0 sampled-token loss) when neither signal nor "
                  "token_loss is passed; NaN when only signal is passed",
    "drift": "always derived: cumulative (student_logp - teacher_logp) over earlier tokens of the response",
    "tokens_since_off_support": "only written with teacher top-K (needs the teacher's nucleus)",
    "is_special / is_eos": "from the tokenizer's special ids / EOS (or special_ids / eos_ids); False without",
    "token": "the decoded token with a tokenizer, else the id as text",
    "masked": "False unless loss_mask excludes the token (masked_reason 'loss_mask')",
}


class OPDLoggerError(ValueError):
    """Input the logger cannot use, with a message naming the problem and the fix."""


@torch.no_grad()
def token_stats_from_logits(
    student_logits: Tensor, teacher_logits: Tensor, token_ids: Tensor, top_k: int = 8
) -> dict[str, Tensor]:
    """The keyword arguments of :meth:`OPDLogger.log_step` derived from both models' logits.

    ``student_logits`` / ``teacher_logits`` are [B,T,V], already aligned so that position t predicts
    ``token_ids[:, t]`` (i.e. shifted by one from a causal LM's output). Returns student/teacher
    log-probs, entropies and top-K, the exact teacher rank of the sampled token, and the student's
    probability mass inside the teacher's top-K (all from ``stats.dense_token_stats``).
    """
    rec = dense_record(student_logits, teacher_logits, token_ids, top_k)
    names = ("student_logp", "teacher_logp", "student_entropy", "teacher_entropy", "teacher_topk_ids",
             "teacher_topk_logps", "student_topk_ids", "student_topk_logps", "teacher_rank", "student_support_mass")
    return {name: getattr(rec, name) for name in names}


def dense_record(student_logits: Tensor, teacher_logits: Tensor, token_ids: Tensor, top_k: int, **kw: Any
           ) -> stats.TokenStats:
    if student_logits.shape != teacher_logits.shape:
        raise OPDLoggerError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same [B, T, V] shape; map the teacher to the student's vocabulary first"
        )
    return stats.dense_token_stats(student_logits, teacher_logits, token_ids, support_k=top_k, log_top_k=top_k, **kw)


class SDKWriter(threading.Thread):
    """The one background thread that builds tables, computes summaries and does every disk write."""

    def __init__(self, logger: Any, max_pending: int):
        super().__init__(name="opd-lab-writer", daemon=True)
        self.items: queue.Queue = queue.Queue(maxsize=max_pending)
        self.logger = logger
        self.summaries: dict[int, dict] = {}
        self.error: BaseException | None = None
        self.status_written = 0.0

    def run(self) -> None:
        while True:
            item = self.items.get()
            try:
                if item is None:
                    return
                kind, step, payload = item
                if kind == "tokens":
                    self._write_tokens(step, payload)
                else:
                    self._write_metrics(step, payload)
            except BaseException as exc:  # keep training alive; surface the error on close()
                if self.error is None:
                    self.error = exc
                    warnings.warn(f"OPD Lab logger could not write step {item[1]}: {exc!r}", stacklevel=1)
            finally:
                self.items.task_done()

    def _write_tokens(self, step: int, payload: dict) -> None:
        table, summary = build_table(step, payload)
        runs.write_token_records(self.logger.run_dir, step, table)
        self.summaries[step] = summary

    def _write_metrics(self, step: int, record: dict) -> None:
        summary = self.summaries.pop(step, None)
        for key, value in (summary or {}).items():
            record.setdefault(key, value)
        self.logger._metrics_writer.append(record)
        now = time.time()
        if summary is not None or now - self.status_written >= STATUS_INTERVAL_S:  # status: fsync'd, so rarer
            runs.write_status(self.logger.run_dir, step=step)
            self.status_written = now


def build_table(step: int, p: dict) -> tuple[pa.Table, dict]:
    """The contract's table of one logged step and the step's token summaries (on the writer thread)."""
    t = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in p["tensors"].items()}
    record = p["record"] if p["record"] is not None else stats.sparse_token_stats(
        t["token_ids"], t["student_logp"], t["teacher_logp"], rollout_top_p=p["rollout_top_p"],
        nucleus_p=p["nucleus_top_p"], **{k: t.get(k) for k in _SPARSE_INPUTS})
    ids, real = t["token_ids"].long(), t["mask"].bool()
    trained = real if t.get("loss_mask") is None else real & t["loss_mask"].bool()
    special = torch.isin(ids, torch.from_numpy(p["special_ids"]))
    eos = torch.isin(ids, torch.from_numpy(p["eos_ids"]))
    sources = p["prefix_source"]
    rows = TokenRows(token_ids=ids, real=real, special=special, eos=eos,
                     masks={} if t.get("loss_mask") is None else {"loss_mask": real & ~trained},
                     prefix_source=sources, reference_only=p.get("reference_only") or False,
                     samples=_samples(p, ids.shape[0]), id_to_string=p["id_to_string"],
                     topk_strings=bool(p["id_to_string"]))
    table = token_table(step, record, rows)
    summary = stats.step_metrics(record, trained=trained, real=real, special=special, eos=eos, prefix_source=sources)
    summary["logged_tokens"] = int(trained.sum())
    return table, summary


_SPARSE_INPUTS = ("student_entropy", "teacher_entropy", "teacher_topk_ids", "teacher_topk_logps", "student_topk_ids",
                  "student_topk_logps", "teacher_rank", "student_support_mass", "signal", "token_loss")


def _samples(p: dict, rows: int) -> list[SampleInfo] | None:
    """Per-response facts the trainer passed (prompt, decoded response, correctness, reward)."""
    facts = {name: p.get(name) for name in ("prompt", "response_text", "correct", "reward")}
    if all(v is None for v in facts.values()):
        return None
    return [SampleInfo(**{name: (None if v is None else v[i]) for name, v in facts.items()}) for i in range(rows)]
