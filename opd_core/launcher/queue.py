"""The run queue of a runs folder: its limit, its lock, and the pump that starts queued runs.

A launched run is written to its run directory as ``queued`` (config.json + status.json with a
``queued_at`` stamp). :func:`pump`, under a file lock on ``<runs_dir>/.queue.lock``, starts the oldest
queued runs while fewer than the queue limit are running. It is called by whoever launches (launch,
resume, fork) and by a trainer's CLI process when its training returns: never by a reader.

The queue limit is, in order: the ``max_concurrent`` argument, the ``OPD_LAB_MAX_CONCURRENT``
environment variable, ``<runs_dir>/.queue.json`` (set from the page), then the machine's spare cores.
The queue's files start with a dot, which no run id may (see :func:`opd_core.runs.validate_run_id`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opd_core import runs
from opd_core.launcher.processes import settle, start_trainer

ENV_MAX_CONCURRENT = "OPD_LAB_MAX_CONCURRENT"
LOCK_FILE = ".queue.lock"
QUEUE_FILE = ".queue.json"


class LauncherError(ValueError):
    """A run operation that cannot be done (unknown run, wrong state, missing checkpoint), with the fix."""


def default_max_concurrent() -> int:
    """As many runs at once as the machine has cores to spare (one core is left for the dashboard)."""
    return max(1, (os.cpu_count() or 2) - 1)


def queue_limit(runs_dir: str | Path) -> int:
    """How many runs may train at once in ``runs_dir`` (environment, then the saved setting, then cores)."""
    env = os.environ.get(ENV_MAX_CONCURRENT)
    if env:
        try:
            return _check_limit(int(env))
        except ValueError:
            raise LauncherError(f"{ENV_MAX_CONCURRENT}={env!r} is not a whole number >= 1; unset it or "
                                "set e.g. 2") from None
    saved = runs.read_json(Path(runs_dir) / QUEUE_FILE, default={})
    try:
        return _check_limit(int(saved["max_concurrent"]))
    except (KeyError, TypeError, ValueError):
        return default_max_concurrent()


def set_queue_limit(runs_dir: str | Path, max_concurrent: int) -> None:
    """Remember the queue limit for ``runs_dir`` (read by every later pump, from any process)."""
    runs.atomic_write_json(Path(runs_dir) / QUEUE_FILE, {"max_concurrent": _check_limit(max_concurrent)})


def _check_limit(n: int) -> int:
    if int(n) < 1:
        raise LauncherError(f"max_concurrent must be >= 1 (got {n}); use 1 to train one run at a time")
    return int(n)


@contextlib.contextmanager
def queue_lock(runs_dir: str | Path) -> Iterator[None]:
    """Exclusive lock on the runs folder's queue, so concurrent pumps never start a run twice."""
    base = Path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    path = base / LOCK_FILE
    try:
        fh = open(path, "a+")  # noqa: SIM115 - closed below
    except IsADirectoryError:
        raise LauncherError(f"{path} is a folder, but it is the queue's lock file; remove or rename that "
                            "folder") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def enqueue(run_dir: Path, **fields: Any) -> None:
    """Mark ``run_dir`` queued now; no pid until a process takes it (a queued run with a pid has started)."""
    runs.write_status(run_dir, state="queued", queued_at=time.time(), error=None, stop_requested_at=None,
                      finished_at=None, pid=None, pid_start=None, host=None, **fields)


def _queued_at(status: dict) -> float | None:
    value = status.get("queued_at")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def pump(runs_dir: str | Path, max_concurrent: int | None = None) -> list[Path]:
    """Start the oldest queued runs while fewer than the limit are running; returns the runs started.

    Safe to call from any number of processes at once (they serialise on the queue lock). Also settles
    runs whose trainer vanished (a stop during start-up reads ``stopped``; an early crash of a child
    of this process reads ``failed`` with its last output line). Runs training on another host do not
    take a slot here.
    """
    base = Path(runs_dir)
    if not base.is_dir():
        return []
    limit = _check_limit(max_concurrent) if max_concurrent is not None else queue_limit(base)
    started: list[Path] = []
    with queue_lock(base):
        running, queued = 0, []
        for entry in sorted(base.iterdir()):
            try:
                if entry.is_symlink() or not (runs.is_run_name(entry.name) and runs.is_run_dir(entry)):
                    continue
                status = runs.read_status(entry)
                settle(entry, status)
            except OSError:
                continue
            if status["state"] == "running" and not status.get("elsewhere"):
                running += 1
            elif status["state"] == "queued" and status.get("pid") is None and _queued_at(status) is not None \
                    and (entry / runs.CONFIG_FILE).is_file():
                queued.append((_queued_at(status), entry.name, entry))
        for _, _, entry in sorted(queued)[: max(0, limit - running)]:
            start_trainer(entry, limit)
            started.append(entry)
    return started
