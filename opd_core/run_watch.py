"""Watching a run while it trains: where it stands (step, elapsed, ETA), its new metric lines, its log tail.

Readers only, beside the run-directory readers they build on; nothing here starts or signals a process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from opd_core import runs


@dataclass(frozen=True)
class Progress:
    """Where a run stands: what the Live view's progress bar and ETA show."""

    state: str
    step: int
    total_steps: int | None
    elapsed_s: float | None
    eta_s: float | None
    error: str | None
    stale: bool

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def progress(run_dir: str | Path, metrics: pd.DataFrame | None = None) -> Progress:
    """Progress of a run from its status and (optionally) its metrics: step/total, elapsed and ETA.

    Elapsed is the trainer's own training clock (``time_s``, kept across resumes) when metrics are given;
    the ETA uses the mean of the last logged step times (or of this process's steps so far).
    """
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir)
    total = _number(status.get("total_steps")) or _number(runs.read_config(run_dir).get("steps"))
    step = int(_number(status.get("step")) or 0)
    if metrics is not None and len(metrics) and "step" in metrics:
        step = max(step, int(pd.to_numeric(metrics["step"], errors="coerce").max()))
    start = _number(status.get("resumed_at")) or _number(status.get("started_at"))
    end = _number(status.get("finished_at")) if status["state"] not in runs.ACTIVE_STATES else None
    if status["state"] == "failed" and status.get("stale"):
        end = _number(status.get("last_seen"))
    elapsed = wall = ((end or time.time()) - start) if start and status["state"] != "queued" else None
    columns = getattr(metrics, "columns", ())
    if metrics is not None and "time_s" in columns:
        clock = pd.to_numeric(metrics["time_s"], errors="coerce")
        if clock.notna().any():
            # The trainer's own clock, which carries on across stops and resumes (wall time since start does not).
            elapsed = max(float(clock.max()), elapsed if status["state"] == "running" and elapsed else 0)
    eta = None
    if status["state"] == "running" and total and elapsed and step > 0:
        first = int(_number(status.get("start_step")) or 0)
        if metrics is not None and "step_time_s" in columns:
            recent = pd.to_numeric(metrics["step_time_s"], errors="coerce").dropna().tail(20)
            per_step = float(recent.mean()) if len(recent) else None
        else:
            per_step = (wall or elapsed) / max(1, step - first)
        eta = per_step * max(0, int(total) - step) if per_step else None
    return Progress(status["state"], step, int(total) if total else None, elapsed, eta, status.get("error"),
                    bool(status.get("stale")))


def log_tail(run_dir: str | Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of the run's log (reading at most ``max_bytes`` from the end)."""
    path = Path(run_dir) / runs.LOG_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:  # absent, a directory, unreadable: no log to show
        return ""
    # tqdm redraws with carriage returns; keep only the last redraw of each line.
    text = "\n".join(ln.rsplit("\r", 1)[-1] for ln in data.decode(errors="replace").splitlines())
    return "\n".join(text.splitlines()[-lines:])


class MetricsTail:
    """Incremental reader of a run's metrics.jsonl: each :meth:`update` reads only the bytes added since.

    A resume rewrites the file (a new inode, possibly shorter); the tail notices and starts over.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.offset = 0
        self._inode: int | None = None
        self.records: dict[int, dict] = {}

    def update(self) -> int:
        """Read what is new; returns how many records were added (or replaced)."""
        path = self.run_dir / runs.METRICS_FILE
        try:
            st = path.stat()
        except OSError:
            return 0
        if st.st_ino != self._inode or st.st_size < self.offset:
            self._inode, self.offset, self.records = st.st_ino, 0, {}
        n = 0
        for rec, end in runs.iter_metric_records(self.run_dir, self.offset):
            self.records[rec["step"]] = rec
            n += 1
            self.offset = end
        return n

    def frame(self) -> pd.DataFrame:
        if not self.records:
            return pd.DataFrame(columns=["step"])
        return pd.DataFrame.from_records([self.records[s] for s in sorted(self.records)])
