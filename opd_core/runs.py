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
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
STATES = ("queued", "running", "finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running")

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
TOKENS_DIR = "tokens"
LOG_FILE = "log.txt"
CHECKPOINTS_DIR = "checkpoints"

# Per-token record columns promised to users and outside tools (never rename; add freely).
TOKEN_COLUMNS: tuple[str, ...] = (
    "step", "sample", "pos", "token_id", "token", "is_special", "masked", "prefix_source",
    "student_logp", "teacher_logp", "log_ratio", "student_entropy", "teacher_entropy",
    "teacher_top1_prob", "teacher_rank", "in_teacher_topk", "in_student_topp",
    "teacher_topk_ids", "teacher_topk_logps", "student_topk_ids", "student_topk_logps",
    "signal", "token_loss", "drift",
)
# Per-step metric names promised likewise (a step may omit the ones it did not measure, e.g. eval).
METRIC_COLUMNS: tuple[str, ...] = (
    "step", "time_s", "loss", "reverse_kl", "forward_kl", "grad_norm", "lr", "tokens",
    "tokens_per_s", "response_len", "signal_gini", "signal_top1pct_share",
    "teacher_entropy_student_prefix", "teacher_entropy_teacher_prefix",
    "special_token_signal_share", "eval_accuracy",
)

_TOKEN_FILE_PATTERN = re.compile(r"^step_(\d{6,})\.parquet$")


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
    return run_id


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
    return p.is_dir() and ((p / CONFIG_FILE).exists() or (p / STATUS_FILE).exists())


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


def _clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_floats(v) for v in obj]
    return obj


def to_json(obj: Any, *, indent: int | None = 2) -> str:
    return json.dumps(_clean_floats(obj), indent=indent, default=_json_default, sort_keys=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (to_json(obj) + "\n").encode())


def read_json(path: str | Path, default: Any = None) -> Any:
    """Read a JSON file; a missing or unreadable file gives ``default`` (atomic writers make that rare)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


# ----------------------------------------------------------------------------- config and status


def write_config(run_dir: str | Path, config: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG_FILE, config)


def read_config(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / CONFIG_FILE, default={}) or {}


def _process_start_ticks(pid: int) -> int | None:
    """Kernel start time of ``pid`` (Linux), so a recycled pid is not mistaken for our trainer."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) comes after the parenthesised command name, which may contain spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def pid_alive(pid: int | None, start_ticks: int | None = None, host: str | None = None) -> bool:
    """Whether the process that wrote a status file is still there (not gone, not a zombie, not recycled)."""
    if not pid or pid <= 0:
        return False
    if host and host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so do not call it dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _process_state(pid) == "Z":
        return False
    return not (start_ticks is not None and _process_start_ticks(pid) not in (None, start_ticks))


def write_status(run_dir: str | Path, **fields: Any) -> dict:
    """Merge ``fields`` into status.json (atomically) and stamp ``updated_at``; returns the new status."""
    path = Path(run_dir) / STATUS_FILE
    status = read_json(path, default={}) or {}
    status.update(fields)
    status["updated_at"] = time.time()
    if "state" in fields and fields["state"] not in STATES:
        raise ValueError(f"state {fields['state']!r} is not one of {STATES}")
    atomic_write_json(path, status)
    return status


def mark_process(run_dir: str | Path, pid: int | None = None) -> dict:
    """Record the current (or given) process as the run's owner, with what identifies it uniquely."""
    pid = pid or os.getpid()
    return write_status(run_dir, pid=pid, pid_start=_process_start_ticks(pid), host=socket.gethostname())


def read_status(run_dir: str | Path) -> dict:
    """status.json, with liveness checked: a ``running`` run whose process is gone reads as ``failed``.

    The returned dict has ``stale: True`` and an ``error`` that says when the process was last seen,
    so the dashboard can tell a crash (``kill -9``, out of memory) from a clean failure.
    """
    run_dir = Path(run_dir)
    status = read_json(run_dir / STATUS_FILE, default=None)
    if status is None:
        status = {"state": "failed" if (run_dir / METRICS_FILE).exists() else "queued",
                  "error": "status.json is missing" if (run_dir / METRICS_FILE).exists() else None}
    status.setdefault("state", "queued")
    status["stale"] = False
    if status["state"] == "running" and not pid_alive(
        status.get("pid"), status.get("pid_start"), status.get("host")
    ):
        seen = status.get("updated_at")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seen)) if seen else "unknown"
        status["state"] = "failed"
        status["stale"] = True
        status["last_seen"] = seen
        status["error"] = status.get("error") or (
            f"trainer process {status.get('pid')} is gone (killed or crashed); last seen {when}. "
            "Everything logged before is intact; resume with `opd-lab runs resume`."
        )
    return status


# ----------------------------------------------------------------------------- metrics


class MetricsWriter:
    """Appends one JSON line per step and flushes it, so a crash loses at most the line being written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def _repair_tail(self) -> None:
        """Drop a half-written last line left by a killed process, so resumed appends start clean."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)

    def append(self, record: dict) -> None:
        self._fh.write(to_json(record, indent=None) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_metric_records(run_dir: str | Path, start_byte: int = 0) -> Iterator[tuple[dict, int]]:
    """Yield (record, end_byte) for complete lines from ``start_byte``; a partial last line is skipped."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(start_byte)
            pos = start_byte
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                pos += len(raw)
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    yield rec, pos
    except FileNotFoundError:
        return


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """All per-step metrics as a DataFrame sorted by step; a step logged twice keeps its last record.

    A step can appear twice when a run is resumed from a checkpoint older than its last logged step:
    the resumed process re-runs those steps and its records are the ones the run's weights followed.
    """
    records = [rec for rec, _ in iter_metric_records(run_dir)]
    if not records:
        return pd.DataFrame(columns=["step"])
    df = pd.DataFrame.from_records(records)
    if "step" in df:
        df = df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
    return df


def truncate_metrics_after(run_dir: str | Path, step: int) -> None:
    """Keep only metric lines with ``step <= step`` (atomically): resume must not duplicate steps."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [to_json(rec, indent=None) for rec, _ in iter_metric_records(run_dir) if rec.get("step", -1) <= step]
    atomic_write_bytes(path, ("".join(line + "\n" for line in kept)).encode())


# ----------------------------------------------------------------------------- token records


def token_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / TOKENS_DIR / f"step_{int(step):06d}.parquet"


def write_token_records(run_dir: str | Path, step: int, records: pd.DataFrame | pa.Table) -> Path:
    """Write one logged step's per-token records as Parquet, atomically (temp file + rename)."""
    table = records if isinstance(records, pa.Table) else pa.Table.from_pandas(records, preserve_index=False)
    path = token_file(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def token_steps(run_dir: str | Path) -> list[int]:
    """The steps that have per-token records, ascending."""
    tdir = Path(run_dir) / TOKENS_DIR
    if not tdir.is_dir():
        return []
    steps = []
    for entry in tdir.iterdir():
        m = _TOKEN_FILE_PATTERN.match(entry.name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def token_schema_columns(run_dir: str | Path) -> list[str]:
    """Column names present in the run's token files (read from the first file's schema only)."""
    steps = token_steps(run_dir)
    if not steps:
        return []
    return list(pq.read_schema(token_file(run_dir, steps[0])).names)


def read_tokens(
    run_dir: str | Path,
    steps: Iterable[int] | None = None,
    columns: Sequence[str] | None = None,
    filters: list | None = None,
) -> pd.DataFrame:
    """Per-token records of the given steps (all by default), reading only the requested columns.

    Unknown columns are ignored rather than raising, so a page asking for an optional column still
    works on a run written by an older engine or another trainer.
    """
    available = token_steps(run_dir)
    wanted = available if steps is None else [s for s in steps if s in set(available)]
    if not wanted:
        return pd.DataFrame(columns=list(columns) if columns else list(TOKEN_COLUMNS))
    files = [str(token_file(run_dir, s)) for s in wanted]
    cols = None
    if columns is not None:
        present = set(pq.read_schema(files[0]).names)
        cols = [c for c in columns if c in present]
    import pyarrow.dataset as ds

    dataset = ds.dataset(files, format="parquet")
    table = dataset.to_table(columns=cols, filter=_to_expression(filters) if filters else None)
    return table.to_pandas()


def _to_expression(filters: list) -> Any:
    """[(column, op, value), ...] -> a pyarrow dataset expression (AND of all)."""
    import pyarrow.compute as pc

    ops = {"==": lambda f, v: f == v, "!=": lambda f, v: f != v, "<": lambda f, v: f < v,
           "<=": lambda f, v: f <= v, ">": lambda f, v: f > v, ">=": lambda f, v: f >= v,
           "in": lambda f, v: f.isin(list(v))}
    expr = None
    for col, op, value in filters:
        if op not in ops:
            raise ValueError(f"filter operator {op!r} is not supported; use one of {', '.join(ops)}")
        term = ops[op](pc.field(col), value)
        expr = term if expr is None else expr & term
    return expr


# ----------------------------------------------------------------------------- listing and validation


@dataclass
class RunSummary:
    """What the run list shows for one run directory."""

    run_id: str
    path: Path
    state: str
    step: int | None
    total_steps: int | None
    objective: str | None
    student: str | None
    teacher: str | None
    started_at: float | None
    updated_at: float | None
    error: str | None
    parent: str | None = None
    fork_step: int | None = None
    stale: bool = False
    config: dict = field(default_factory=dict)


def summarize_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    config = read_config(run_dir)
    objective = config.get("objective")
    if isinstance(objective, dict):
        objective = objective.get("name")
    return RunSummary(
        run_id=run_dir.name,
        path=run_dir,
        state=status.get("state", "queued"),
        step=status.get("step"),
        total_steps=status.get("total_steps") or config.get("steps"),
        objective=objective,
        student=config.get("student"),
        teacher=config.get("teacher"),
        started_at=status.get("started_at"),
        updated_at=status.get("updated_at"),
        error=status.get("error"),
        parent=status.get("parent") or config.get("parent_run"),
        fork_step=status.get("fork_step") or config.get("fork_step"),
        stale=bool(status.get("stale")),
        config=config,
    )


def list_runs(*runs_dirs: str | Path) -> list[RunSummary]:
    """Every run directory directly under the given folders, newest first; missing folders are skipped."""
    found: dict[Path, RunSummary] = {}
    for base in runs_dirs:
        base = Path(base)
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if entry.is_dir() and RUN_ID_PATTERN.match(entry.name) and is_run_dir(entry):
                found[entry.resolve()] = summarize_run(entry)
    return sorted(found.values(), key=lambda r: (r.started_at or 0, r.run_id), reverse=True)


def validate_run_dir(run_dir: str | Path) -> list[str]:
    """Problems that break the run-directory contract (empty list = valid). Used by tests and the SDK."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    if not RUN_ID_PATTERN.match(run_dir.name):
        problems.append(f"directory name {run_dir.name!r} is not a valid run id")
    config = read_json(run_dir / CONFIG_FILE, default=None)
    if not isinstance(config, dict):
        problems.append("config.json is missing or not a JSON object")
    status = read_json(run_dir / STATUS_FILE, default=None)
    if not isinstance(status, dict):
        problems.append("status.json is missing or not a JSON object")
    else:
        if status.get("state") not in STATES:
            problems.append(f"status.json state {status.get('state')!r} is not one of {STATES}")
        for key in ("step", "total_steps"):
            if key not in status:
                problems.append(f"status.json lacks {key!r}")
    metrics = read_metrics(run_dir)
    if metrics.empty or "step" not in metrics:
        problems.append("metrics.jsonl is missing or has no step records")
    else:
        raw_steps = [rec.get("step") for rec, _ in iter_metric_records(run_dir)]
        if len(raw_steps) != len(set(raw_steps)):
            problems.append("metrics.jsonl has duplicated steps")
        for col in ("step", "time_s", "loss", "grad_norm", "lr", "tokens"):
            if col not in metrics:
                problems.append(f"metrics.jsonl lacks {col!r}")
    steps = token_steps(run_dir)
    if not steps:
        problems.append("tokens/ has no step_NNNNNN.parquet files")
    else:
        names = set(pq.read_schema(token_file(run_dir, steps[0])).names)
        missing = [c for c in TOKEN_COLUMNS if c not in names]
        if missing:
            problems.append(f"token records lack columns {missing}")
    return problems
