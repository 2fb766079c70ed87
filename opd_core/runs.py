"""The run directory: the one contract between the engine, other trainers and the dashboard.

Layout (see docs/run_directory.md)::

    runs/<run_id>/
      config.json                  the full resolved config (what reproduces the run)
      status.json                  state, pid, step, total_steps, times, error
      metrics.jsonl                one JSON object per step, appended and flushed line by line
      tokens/step_NNNNNN.parquet   per-token records of the rollouts logged at that step
      log.txt                      the process's output
      checkpoints/                 optional

Writers replace whole files atomically (temporary file + rename) so a reader never sees half a JSON
document or half a Parquet file; the only file written incrementally is ``metrics.jsonl``, and its
reader tolerates a half-written last line. Readers also tolerate a process that died without saying
so: a ``running`` status whose pid is gone is reported as ``failed`` (stale) with the time it was
last seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opd_core import process_identity
from opd_core.schema import METRIC_COLUMNS, REQUIRED_METRICS, TOKEN_COLUMNS  # noqa: F401 - the schema, re-exported

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
STATES = ("queued", "running", "finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
TOKENS_DIR = "tokens"
LOG_FILE = "log.txt"
CHECKPOINTS_DIR = "checkpoints"



class RunDirError(ValueError):
    """A run directory or run id that cannot be used, with a message naming the problem and the fix."""


class RunFileError(ValueError):
    """One file of a run directory is damaged; readers raise it (or record it) so that only that file of
    that run is lost to the reader, and the message names the file and what is wrong with it.

    ``path`` is relative to the run directory (``tokens/step_000020.parquet``); ``reason`` is a short
    phrase (``not a Parquet file (0 bytes)``). ``str(err)`` is ``"<path>: <reason>"``.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# ----------------------------------------------------------------------------- naming and paths


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe directory name; a run id must never be a path."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or run_id in (".", ".."):
        raise RunDirError(
            f"run id {run_id!r} is not allowed: use 1-64 characters from A-Z a-z 0-9 . _ - (no slashes)"
        )
    if run_id.startswith("."):
        # Dot names are the runs folder's own files (the queue's lock and settings): never a run.
        raise RunDirError(f"run id {run_id!r} is not allowed: it may not start with '.'; pick a plain name")
    return run_id


def is_run_name(name: str) -> bool:
    """Whether a folder name in a runs folder can be a run (dot names are the folder's own files)."""
    return bool(RUN_ID_PATTERN.match(name)) and not name.startswith(".")


def run_path(runs_dir: str | Path, run_id: str) -> Path:
    """Resolve ``run_id`` inside ``runs_dir``, refusing anything that would escape it."""
    validate_run_id(run_id)
    base = Path(runs_dir).resolve()
    path = (base / run_id).resolve()
    if path.parent != base:
        raise RunDirError(f"run id {run_id!r} resolves outside {base}; pick a plain name")
    return path


def new_run_id(prefix: str = "run") -> str:
    """A fresh, sortable run id: prefix, UTC time to the second, and a short random suffix."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    prefix = re.sub(r"[^A-Za-z0-9._-]", "-", prefix)[:40] or "run"
    return f"{prefix}-{stamp}-{os.urandom(2).hex()}"


def create_run_dir(runs_dir: str | Path, name: str | None = None, *, prefix: str = "run") -> Path:
    """Create a new, empty run directory atomically; two concurrent callers never share one.

    ``name`` is used as the run id when given (an existing run of that name is an error, never
    overwritten); otherwise a fresh id is made, retrying on the rare collision.
    """
    base = Path(runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    if name is not None:
        path = run_path(base, name)
        try:
            path.mkdir()
        except FileExistsError:
            raise RunDirError(f"a run named {name!r} already exists in {base}; pick another --name") from None
        return path
    for _ in range(100):
        path = run_path(base, new_run_id(prefix))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a fresh run directory in {base}")


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` looks like a run directory (it has a config or a status file)."""
    p = Path(path)
    # lexists: a damaged entry (a dangling or looping symlink) still marks a run, to be read as damaged.
    return p.is_dir() and (os.path.lexists(p / CONFIG_FILE) or os.path.lexists(p / STATUS_FILE))


# ----------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def clean_json(obj: Any) -> Any:
    """A value JSON can hold: NaN/inf become null (every reader can parse it), numpy scalars Python numbers,
    tuples lists and dict keys strings. The one JSON cleaning of the project."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # a numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    return obj


_clean_floats = clean_json  # the old private name


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(clean_json(obj), indent=indent, default=_json_default, sort_keys=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read a JSON file; a missing or unreadable file gives ``default`` (atomic writers make that rare)."""
    try:
        return load_json_file(path)
    except (FileNotFoundError, RunFileError):
        return default


def load_json_file(path: str | Path, name: str | None = None) -> Any:
    """A JSON file's value; FileNotFoundError when absent, RunFileError naming the damage otherwise."""
    path = Path(path)
    name = name or path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise RunFileError(name, "a symlink to a missing file") from None
        raise
    except IsADirectoryError:
        raise RunFileError(name, "a directory, not a file") from None
    except OSError as exc:
        raise RunFileError(name, f"cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise RunFileError(name, f"empty ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(name, f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RunFileError(name, f"not valid JSON ({getattr(exc, 'msg', exc)})") from None


def read_json_object(run_dir: str | Path, name: str, problems: list[str] | None = None) -> dict | None:
    """A run file that must hold a JSON object: the dict, or None (absent or damaged: named in ``problems``)."""
    try:
        value = load_json_file(Path(run_dir) / name, name)
    except FileNotFoundError:
        return None
    except RunFileError as exc:
        if problems is not None:
            problems.append(str(exc))
        return None
    if not isinstance(value, dict):
        if problems is not None:
            problems.append(str(RunFileError(name, f"not a JSON object ({type(value).__name__})")))
        return None
    return value


# ----------------------------------------------------------------------------- config and status


def write_config(run_dir: str | Path, config: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG_FILE, config)


def read_config(run_dir: str | Path, problems: list[str] | None = None) -> dict:
    """config.json as a dict; ``{}`` when absent or damaged (the damage is named in ``problems``)."""
    return read_json_object(run_dir, CONFIG_FILE, problems) or {}


def pid_alive(pid: int | None, start_ticks: int | None = None, host: str | None = None) -> bool:
    """Whether the process that wrote a status file is still there (see :mod:`opd_core.process_identity`).

    A process on another host cannot be checked from here, so it counts as alive (and is never signalled).
    """
    if host and host != process_identity.this_host():
        return process_identity.as_pid(pid) is not None
    return process_identity.alive(pid, start_ticks)


_STATUS_WRITE = threading.Lock()


@contextlib.contextmanager
def _status_write_lock(run_dir: Path) -> Iterator[None]:
    """One status.json read-merge-write at a time: two writers that each read, merge and replace the file lose
    one another's fields (the health watch's ``stopped_by`` vanished under the trainer's step update). A lock
    for this process's threads, and an advisory ``flock`` on the run directory itself (no lock file in it) for
    other processes (the dashboard's launcher, a second trainer)."""
    with _STATUS_WRITE:
        try:
            fd = os.open(run_dir, os.O_RDONLY)
        except OSError:  # no such directory yet, or no permission to open it: the thread lock still holds
            yield
            return
        try:
            with contextlib.suppress(OSError, ImportError):
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def write_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge ``fields`` into status.json (atomically, one writer at a time) and stamp ``updated_at``; returns
    the new status."""
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"state {fields['state']!r} is not one of {STATES}")
    path = Path(run_dir) / STATUS_FILE
    with _status_write_lock(Path(run_dir)):
        status = read_json(path, default={})
        status = dict(status) if isinstance(status, dict) else {}  # a damaged status is replaced, not merged
        status.update(fields)
        status["updated_at"] = time.time()
        atomic_write_json(path, status)
    return status


def mark_process(run_dir: str | Path, pid: int | None = None) -> dict:
    """Record the current (or given) process as the run's owner, with what identifies it uniquely."""
    return write_status(run_dir, **process_identity.identity(pid))


def read_status(run_dir: str | Path, problems: list[str] | None = None) -> dict:
    """status.json, with liveness checked: an active run whose process is gone reads as ``failed``.

    The returned dict has ``stale: True`` and an ``error`` that says when the process was last seen,
    so the dashboard can tell a crash (``kill -9``, out of memory) from a clean failure. A run whose
    process was started (a pid is recorded) but was killed before it reported ``running`` reads the same.
    A run written by a process on another host keeps its state and gets ``elsewhere`` (that host's name):
    it cannot be checked or stopped from here. A damaged status.json reads as ``failed``, with the damage
    as the error (and in ``problems``).
    """
    run_dir = Path(run_dir)
    damage: list[str] = []
    status = read_json_object(run_dir, STATUS_FILE, damage)
    if problems is not None:
        problems.extend(damage)
    has_metrics = (run_dir / METRICS_FILE).exists()
    if status is None:
        error = damage[0] if damage else ("status.json is missing" if has_metrics else None)
        status = {"state": "failed" if (damage or has_metrics) else "queued", "error": error}
    status = _clean_status(status, problems)
    status["stale"] = False
    status["elsewhere"] = process_identity.elsewhere(status) if status["state"] in ACTIVE_STATES else None
    active = status["state"] == "running" or (status["state"] == "queued" and status.get("pid") is not None)
    if active and not status["elsewhere"] and not process_identity.alive(status.get("pid"), status.get("pid_start")):
        seen = status.get("updated_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen)) if seen else "unknown"
        before = "" if status["state"] == "running" else " before it reported running"
        status["state"] = "failed"
        status["stale"] = True
        status["last_seen"] = seen
        status["error"] = status.get("error") or (
            f"trainer process {status.get('pid')} is gone{before} (killed or crashed); last seen {when}. "
            "Everything logged before is intact; resume with `opd-lab runs resume`."
        )
    return status


_NUMBER_FIELDS = ("step", "total_steps", "created_at", "updated_at", "started_at", "resumed_at", "finished_at",
                  "queued_at", "launched_at", "stop_requested_at", "fork_step", "start_step", "world_size")


def _clean_status(status: dict, problems: list[str] | None) -> dict:
    """Fields of the types readers expect: a wrong-typed field is dropped (and named), never passed on."""
    status = dict(status)
    bad: list[str] = []
    if status.get("state") not in STATES:
        if "state" in status:
            bad.append(f"state {status['state']!r} is not one of {', '.join(STATES)}")
        status["state"] = "failed" if "state" in status else "queued"
    for key in _NUMBER_FIELDS:
        value = status.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            bad.append(f"{key} {value!r} is not a number")
            status[key] = None
    if "pid" in status and status["pid"] is not None and process_identity.as_pid(status["pid"]) is None:
        bad.append(f"pid {status['pid']!r} is not a process id")
        status["pid"] = None
    if status.get("error") is not None and not isinstance(status["error"], str):
        status["error"] = str(status["error"])
    if bad:
        if problems is not None:
            problems.extend(str(RunFileError(STATUS_FILE, b)) for b in bad)
        if status["state"] == "failed" and not status.get("error"):
            status["error"] = str(RunFileError(STATUS_FILE, bad[0]))
    return status


# Metrics, token files and the run index live in their own modules; ``runs.read_metrics`` etc. keep working.
_METRIC_NAMES = ('MetricsWriter', 'iter_metric_records', 'read_metrics', 'truncate_metrics_after')
_TOKEN_NAMES = ('token_file', 'write_token_records', 'token_steps', 'token_file_problem', 'token_step_problem',
                'token_schema_columns', 'read_tokens')
_INDEX_NAMES = ('RunSummary', 'summarize_run', 'check_run_files', 'list_runs', 'list_run_paths', 'validate_run_dir')


def __getattr__(name: str) -> Any:
    if name in _METRIC_NAMES:
        from opd_core import run_metrics

        return getattr(run_metrics, name)
    if name in _TOKEN_NAMES:
        from opd_core import run_tokens

        return getattr(run_tokens, name)
    if name in _INDEX_NAMES:
        from opd_core import run_index

        return getattr(run_index, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
