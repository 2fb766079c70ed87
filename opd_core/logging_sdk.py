"""Let any trainer (TRL, verl, a team's own loop) write an OPD Lab run directory, so the dashboard diagnoses it.

A trainer already holds, at each step, the student's and the teacher's log-probs of the tokens it
sampled (and often their top-K, entropies and masks). :class:`OPDLogger` takes those tensors and
writes the run-directory contract (``config.json``, ``status.json``, ``metrics.jsonl``,
``tokens/step_NNNNNN.parquet``), so ``opd-lab report RUN_DIR`` and every dashboard page work on it
unchanged::

    with OPDLogger(runs_dir="runs", name="my-run", config={"objective": "sampled_token"},
                   tokenizer=tok, every=10, max_samples=8) as opd:
        for step in range(steps):
            ...                                    # your rollout, scoring, loss
            if opd.should_log(step):               # one integer test on the steps not logged
                opd.log_step(step, token_ids=ids, mask=mask, student_logp=s_lp, teacher_logp=t_lp)
            opd.log_metrics(step, {"loss": loss.item(), "grad_norm": gn, "lr": lr})

Costs: a disabled logger (``enabled=False``, or any rank but 0 under torch.distributed) returns at
the first line of every call. On a logged step the training thread only slices the first
``max_samples`` responses, copies them to the host (one transfer per tensor) and decodes token ids
it has not seen before; building the Parquet table, the summaries and every disk write happen on one
background thread, which ``close()`` drains. The queue between them is bounded (``max_pending``
logged steps): if the disk falls that far behind, the training thread waits rather than holding
unbounded memory.

Columns that cannot be derived from what the trainer passed get a documented neutral value (see
:data:`NEUTRAL_VALUES`): unknown numbers are null/NaN, unknown top-K lists are empty, never invented.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from opd_core import runs, stats
from opd_core.run_writer import metrics_record, write_alignment
from opd_core.schema import REQUIRED_METRICS  # noqa: F401 - re-exported: the keys every metrics line carries
from opd_core.sdk_writer import (  # noqa: F401 - NEUTRAL_VALUES and token_stats_from_logits are public here
    NEUTRAL_VALUES,
    OPDLoggerError,
    SDKWriter,
    dense_record,
    token_stats_from_logits,
)


def _rank() -> int:
    """This process's rank under torch.distributed (or a launcher's RANK variable); 0 when alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _host(x: Tensor | np.ndarray | Sequence | None, rows: int | None) -> np.ndarray | None:
    """The first ``rows`` rows of a tensor/array on the host (one device-to-host copy of only those rows)."""
    if x is None:
        return None
    if isinstance(x, Tensor):
        x = x[:rows].detach()
        x = x.float() if x.is_floating_point() else x
        return x.cpu().numpy()
    return np.asarray(x)[:rows]


class OPDLogger:
    """Writes an OPD Lab run directory from inside any trainer: sampled, cheap when off, disk I/O off-thread.

    Args:
        run_dir: the run directory to create (its name must be a valid run id). Or give ``runs_dir``
            (and optionally ``name``) to create a fresh ``runs_dir/<name or sdk-TIME-XXXX>``.
        config: what reproduces the run (written to config.json; the contract's keys are listed in
            docs/integrations.md). ``objective``, ``student``, ``teacher`` and ``top_p`` are read by
            the diagnostics; ``mask_special_tokens`` tells the mismatch check whether masking was on.
        tokenizer: the student's tokenizer: token strings, special/EOS ids and response text come from it.
        teacher_tokenizer: when given, the tokenizer comparison is written as alignment.json (FM3 page).
        every: log token records every ``every`` steps (and at the first step logged).
        max_samples: responses kept per logged step (the first ``max_samples`` rows of the batch).
        enabled: False makes every call return at once and writes nothing.
        top_k: K of the top-K lists :meth:`log_logits` derives.
        nucleus_top_p: the teacher nucleus that defines "off support" for ``tokens_since_off_support``.
        total_steps: the planned number of steps (shown as progress).
        special_ids / eos_ids: override the tokenizer's special and EOS ids.
        max_pending: logged steps that may wait for the writer before the training thread waits.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        runs_dir: str | Path | None = None,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        teacher_tokenizer: Any = None,
        every: int = 10,
        max_samples: int = 8,
        enabled: bool = True,
        top_k: int = 8,
        nucleus_top_p: float = 0.9,
        total_steps: int | None = None,
        special_ids: Sequence[int] | None = None,
        eos_ids: Sequence[int] | None = None,
        max_pending: int = 4,
    ):
        for label, value, low in (("every", every, 1), ("max_samples", max_samples, 1), ("top_k", top_k, 0),
                                  ("max_pending", max_pending, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OPDLoggerError(f"{label} must be an integer >= {low}, got {value!r}")
        if not 0 < nucleus_top_p <= 1:
            raise OPDLoggerError(f"nucleus_top_p must be in (0, 1], got {nucleus_top_p!r}")
        self.every, self.max_samples, self.top_k = every, max_samples, top_k
        self.nucleus_top_p = float(nucleus_top_p)
        self.enabled = bool(enabled) and _rank() == 0
        self.tokenizer = tokenizer
        self.closed = False
        self.run_dir: Path | None = None
        self._last_token_step: int | None = None
        self._last_flushed: int | None = None
        self._pending: tuple[int, dict] | None = None
        self._id_to_string: dict[int, str] = {}
        if not self.enabled:
            return
        self.config = {"trainer": "external", "objective": "unknown", "log_tokens_every": every,
                       "log_max_samples": max_samples, "log_top_k": top_k, "nucleus_top_p": nucleus_top_p,
                       **({"steps": total_steps} if total_steps is not None else {}), **dict(config or {})}
        top_p = self.config.get("top_p", 1.0)
        self.rollout_top_p = 1.0 if top_p is None else float(top_p)
        self._special, self._eos = self._special_ids(tokenizer, special_ids, eos_ids)
        self.run_dir = self._make_dir(run_dir, runs_dir, name)
        self.t0 = time.time()
        runs.write_config(self.run_dir, self.config)
        runs.write_status(self.run_dir, state="running", step=0, total_steps=total_steps or self.config.get("steps"),
                          started_at=self.t0, error=None)
        runs.mark_process(self.run_dir)
        if teacher_tokenizer is not None and tokenizer is not None:
            write_alignment(self.run_dir, tokenizer, teacher_tokenizer)
        self._metrics_writer = runs.MetricsWriter(self.run_dir)
        self._writer = SDKWriter(self, max_pending)
        self._writer.start()
        ref = weakref.ref(self)
        self._atexit = lambda: (ref() is not None and ref()._drain())  # noqa: E731 - flush what was logged
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ setup helpers

    @staticmethod
    def _make_dir(run_dir: str | Path | None, runs_dir: str | Path | None, name: str | None) -> Path:
        if run_dir is not None and (runs_dir is not None or name is not None):
            raise OPDLoggerError("give either run_dir, or runs_dir (and optionally name), not both")
        if run_dir is None:
            return runs.create_run_dir(runs_dir if runs_dir is not None else "runs", name, prefix="sdk")
        path = Path(run_dir)
        runs.validate_run_id(path.name)
        if runs.is_run_dir(path) or (path / runs.METRICS_FILE).exists():
            raise runs.RunDirError(f"{path} already holds a run; give a new run_dir (one logger per run)")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _special_ids(tokenizer: Any, special_ids: Sequence[int] | None,
                     eos_ids: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
        if special_ids is None:
            special_ids = list(getattr(tokenizer, "all_special_ids", None) or [])
        if eos_ids is None:
            eos = getattr(tokenizer, "eos_token_id", None)
            eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return np.asarray(sorted(set(special_ids) | set(eos_ids)), dtype=np.int64), np.asarray(eos_ids, np.int64)

    # ------------------------------------------------------------------ public API

    def should_log(self, step: int) -> bool:
        """Whether :meth:`log_step` at ``step`` would write token records (so callers can skip the work)."""
        if not self.enabled or self.closed or step == self._last_token_step:
            return False
        return self._last_token_step is None or step % self.every == 0

    def log_step(
        self,
        step: int,
        *,
        token_ids: Tensor | np.ndarray,
        mask: Tensor | np.ndarray,
        student_logp: Tensor | np.ndarray,
        teacher_logp: Tensor | np.ndarray,
        loss_mask: Tensor | np.ndarray | None = None,
        student_entropy: Tensor | np.ndarray | None = None,
        teacher_entropy: Tensor | np.ndarray | None = None,
        teacher_topk_ids: Tensor | np.ndarray | None = None,
        teacher_topk_logps: Tensor | np.ndarray | None = None,
        student_topk_ids: Tensor | np.ndarray | None = None,
        student_topk_logps: Tensor | np.ndarray | None = None,
        teacher_rank: Tensor | np.ndarray | None = None,
        student_support_mass: Tensor | np.ndarray | None = None,
        signal: Tensor | np.ndarray | None = None,
        token_loss: Tensor | np.ndarray | None = None,
        prompts: Sequence[str] | None = None,
        prefix_source: str | Sequence[str] = "student",
        reference_only: Sequence[bool] | None = None,
        correct: Sequence[bool] | None = None,
        reward: Sequence[float] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> bool:
        """Log the per-token records of one step's responses (only on steps :meth:`should_log` picks).

        Tensors are [B,T] over *response* tokens (top-K ones [B,T,K]), aligned so that entry t scores
        ``token_ids[:, t]`` given the prompt and the earlier response tokens. ``mask`` marks real
        response tokens (False = padding, prompt); ``loss_mask`` the ones the loss trained on (default:
        all of ``mask``; the others are logged with ``masked=True``). ``signal`` is what each token
        contributes to the update (default: the sampled log-ratio). Only the first ``max_samples``
        rows are kept. ``metrics`` are merged into the step's metrics line. Returns whether tokens were
        queued for writing.
        """
        if not self.enabled:
            return False
        if metrics:
            self.log_metrics(step, metrics)
        if not self.should_log(step):
            return False
        self._check_step(step)
        ids_full = token_ids if isinstance(token_ids, Tensor) else torch.as_tensor(np.asarray(token_ids))
        if ids_full.dim() != 2:
            raise OPDLoggerError(f"token_ids must be [B, T] (one row per response), got shape {tuple(ids_full.shape)}")
        shape = tuple(ids_full.shape)
        named = {"mask": mask, "student_logp": student_logp, "teacher_logp": teacher_logp, "loss_mask": loss_mask,
                 "student_entropy": student_entropy, "teacher_entropy": teacher_entropy,
                 "teacher_rank": teacher_rank, "student_support_mass": student_support_mass,
                 "signal": signal, "token_loss": token_loss, "teacher_topk_ids": teacher_topk_ids,
                 "teacher_topk_logps": teacher_topk_logps, "student_topk_ids": student_topk_ids,
                 "student_topk_logps": student_topk_logps}
        for key, value in named.items():
            if value is not None and tuple(value.shape[:2]) != shape:
                raise OPDLoggerError(f"{key} must have the shape of token_ids {shape}[, K], got {tuple(value.shape)}")
        for side in ("teacher", "student"):
            a, b = named[f"{side}_topk_ids"], named[f"{side}_topk_logps"]
            if (a is None) != (b is None) or (a is not None and tuple(a.shape) != tuple(b.shape)):
                raise OPDLoggerError(f"pass {side}_topk_ids and {side}_topk_logps together, with equal shapes [B, T, K]")
        full_mask = mask if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
        m = min(self.max_samples, shape[0])
        tensors: dict[str, Any] = {k: _host(v, m) for k, v in named.items()}
        tensors["token_ids"] = _host(ids_full, m)
        self._queue(step, tensors, None, int(full_mask.bool().sum()), prompts=prompts, prefix_source=prefix_source,
                    reference_only=reference_only, correct=correct, reward=reward)
        return True

    def _queue(self, step: int, tensors: dict[str, Any], record: stats.TokenStats | None, tokens_in_batch: int, *,
               prompts: Sequence[str] | None, prefix_source: str | Sequence[str], reference_only: Sequence[bool] | None,
               correct: Sequence[bool] | None, reward: Sequence[float] | None) -> None:
        """Hand one logged step (host copies of its first rows) to the writer thread."""
        tensors["mask"] = tensors["mask"].astype(bool)
        m = tensors["token_ids"].shape[0]
        sources = [prefix_source] * m if isinstance(prefix_source, str) else list(prefix_source)[:m]
        bad = sorted({s for s in sources if s not in ("student", "teacher")})
        if bad or len(sources) != m:
            raise OPDLoggerError(f"prefix_source must be 'student' or 'teacher' (or one per response), got {bad or sources}")
        seen = [tensors["token_ids"][tensors["mask"]]]
        for side in ("teacher", "student"):
            topk = tensors.get(f"{side}_topk_ids") if record is None else getattr(record, f"{side}_topk_ids")
            if topk is not None:
                seen.append(np.asarray(topk).reshape(-1))
        payload: dict[str, Any] = dict(
            tensors=tensors, record=record, prefix_source=sources, special_ids=self._special, eos_ids=self._eos,
            nucleus_top_p=self.nucleus_top_p, rollout_top_p=self.rollout_top_p,
            id_to_string=self._strings(np.concatenate(seen)),  # a snapshot: the worker reads it
            prompt=None if prompts is None else [str(x) for x in list(prompts)[:m]],
            response_text=self._responses(tensors["token_ids"], tensors["mask"]),
            reference_only=None if reference_only is None else list(reference_only)[:m],
            correct=None if correct is None else list(correct)[:m],
            reward=None if reward is None else list(reward)[:m],
        )
        self._last_token_step = step
        self._merge(step, {"tokens": tokens_in_batch}, default=True)
        self._put(("tokens", step, payload))

    def log_logits(
        self,
        step: int,
        *,
        token_ids: Tensor,
        mask: Tensor,
        student_logits: Tensor,
        teacher_logits: Tensor,
        loss_mask: Tensor | None = None,
        objective: str | None = None,
        objective_params: Mapping[str, Any] | None = None,
        signal: Tensor | None = None,
        token_loss: Tensor | None = None,
        token_value: Tensor | None = None,
        prompts: Sequence[str] | None = None,
        prefix_source: str | Sequence[str] = "student",
        reference_only: Sequence[bool] | None = None,
        correct: Sequence[bool] | None = None,
        reward: Sequence[float] | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> bool:
        """:meth:`log_step` from both models' [B,T,V] logits (aligned to ``token_ids``), derived on logged steps only.

        Every statistic comes from the same fused pass the built-in loop uses (``stats.dense_token_stats``,
        K = ``top_k``). With ``objective`` (a registered name, e.g. ``"jsd"`` with
        ``objective_params={"beta": 0.5}``) the per-token ``signal``, ``token_loss`` and
        ``token_value`` (its per-token value, whose mean is the loss the engine logs) are that objective's.
        """
        if not self.enabled:
            return False
        if metrics:
            self.log_metrics(step, metrics)
        if not self.should_log(step):
            return False
        self._check_step(step)
        m = min(self.max_samples, token_ids.shape[0])
        s_logits, t_logits, ids = student_logits[:m].detach(), teacher_logits[:m].detach(), token_ids[:m]
        trained = (mask[:m] if loss_mask is None else loss_mask[:m]).bool()
        if objective is not None and signal is None:
            from opd_core.objectives import per_token_loss

            out = per_token_loss(objective, s_logits, t_logits, ids, trained, **dict(objective_params or {}))
            signal, token_loss, token_value = out.signal, out.loss.detach(), out.value.detach()
        record = dense_record(s_logits, t_logits, ids, self.top_k, aligned=torch.ones_like(ids, dtype=torch.bool),
                        rollout_top_p=self.rollout_top_p,
                        nucleus_p=self.nucleus_top_p, signal=None if signal is None else signal[:m],
                        token_loss=None if token_loss is None else token_loss[:m],
                        token_value=None if token_value is None else token_value[:m])
        tensors = {"token_ids": _host(ids, m), "mask": _host(mask, m),
                   "loss_mask": None if loss_mask is None else _host(loss_mask, m)}
        self._queue(step, tensors, record.to("cpu"), int(mask.bool().sum()), prompts=prompts,
                    prefix_source=prefix_source, reference_only=reference_only, correct=correct, reward=reward)
        return True

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Add per-step metrics (loss, grad_norm, lr, ...); several calls for one step merge into one line."""
        if not self.enabled:
            return
        self._check_step(step)
        self._merge(step, dict(metrics))

    def close(self, state: str = "finished", error: str | None = None) -> None:
        """Write what is pending, wait for the writer, and record the final state; raises a writer error."""
        if not self.enabled or self.closed:
            return
        if state not in runs.STATES:
            raise OPDLoggerError(f"state must be one of {runs.STATES}, got {state!r}")
        self._drain()
        self.closed = True
        self._writer.items.put(None)
        self._writer.join()
        self._metrics_writer.close()
        atexit.unregister(self._atexit)
        last = self._last_flushed if self._last_flushed is not None else self._last_token_step
        err = error if error is not None else (repr(self._writer.error) if self._writer.error else None)
        runs.write_status(self.run_dir, state=state, step=last or 0, finished_at=time.time(), error=err)
        if self._writer.error is not None:
            raise OPDLoggerError(f"OPD Lab logger failed to write to {self.run_dir}: {self._writer.error!r}") \
                from self._writer.error

    def __enter__(self) -> OPDLogger:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close("finished")
        elif isinstance(exc, KeyboardInterrupt):
            self.close("stopped")
        else:
            self.close("failed", error=f"{exc_type.__name__}: {exc}")

    # ------------------------------------------------------------------ internals

    def _check_step(self, step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise OPDLoggerError(f"step must be an integer, got {step!r}")
        if self.closed:
            raise OPDLoggerError("this logger is closed; create a new OPDLogger for a new run")
        if self._last_flushed is not None and step <= self._last_flushed:
            raise OPDLoggerError(
                f"step {step} was already written (last written step {self._last_flushed}); steps must not "
                "go backwards within one run; log a resumed run into a new run_dir"
            )

    def _merge(self, step: int, metrics: dict, default: bool = False) -> None:
        """Collect a step's metrics; a new step sends the previous one's line to the writer.

        ``default`` values (what the logger derives itself) never replace what the trainer reported.
        """
        if self._pending is not None and self._pending[0] != step:
            self._flush_pending()
        if self._pending is None:
            self._pending = (step, {"step": int(step), "time_s": round(time.time() - self.t0, 4)})
        for key, value in metrics.items():
            if isinstance(value, Tensor):
                value = value.item() if value.numel() == 1 else value.tolist()
            if default:
                self._pending[1].setdefault(key, value)
            else:
                self._pending[1][key] = value

    def _flush_pending(self) -> None:
        step, record = self._pending
        record = metrics_record(record)
        self._pending = None
        self._last_flushed = step
        self._put(("metrics", step, record))

    def _put(self, item: tuple) -> None:
        self._writer.items.put(item)  # blocks only when max_pending logged steps already wait

    def _drain(self) -> None:
        if self._pending is not None:
            self._flush_pending()
        if self._writer.is_alive():
            self._writer.items.join()

    def _strings(self, ids: np.ndarray) -> dict[int, str]:
        """Token strings of ``ids``; only ids never seen before are decoded (on this thread: see module doc)."""
        if self.tokenizer is None:
            return {}
        wanted = [int(i) for i in np.unique(ids)]
        new = [i for i in wanted if i not in self._id_to_string]
        if new:
            decoded = self.tokenizer.batch_decode([[i] for i in new], skip_special_tokens=False)
            self._id_to_string.update(zip(new, decoded))
        return {i: self._id_to_string[i] for i in wanted}

    def _responses(self, ids: np.ndarray, mask: np.ndarray) -> list[str] | None:
        if self.tokenizer is None:
            return None
        return self.tokenizer.batch_decode([row[m].tolist() for row, m in zip(ids, mask)], skip_special_tokens=False)

