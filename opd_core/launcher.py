"""Background runs without a daemon: launch, queue, stop, resume and fork runs from the page or the CLI.

A launched run is written to its run directory as ``queued`` (config.json + status.json with a
``queued_at`` stamp). Every launcher call (and every refresh of the Launch/Live pages) *pumps* the
queue: under a file lock on ``<runs_dir>/.queue.lock`` it starts the oldest queued runs while fewer
than the queue limit are running. Each run is a detached child, ``python -m opd_core train RUN_DIR``
in its own session, so it outlives a page reload or a dashboard restart; the status files are the
only memory, so a restarted dashboard finds its runs again and a trainer killed with ``kill -9`` reads
as failed with the time it was last seen (:func:`opd_core.runs.read_status`).

The queue limit is, in order: the ``max_concurrent`` argument, the ``OPD_LAB_MAX_CONCURRENT``
environment variable, ``<runs_dir>/.queue.json`` (set from the page), then the machine's spare cores.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from opd_core import checkpoints, runs
from opd_core.config import ConfigError, RunConfig, from_dict, load_config, parse_overrides

ENV_MAX_CONCURRENT = "OPD_LAB_MAX_CONCURRENT"
ENV_TRAINER_CMD = "OPD_LAB_TRAINER_CMD"  # test seam / custom launchers: the command a run dir is appended to
LOCK_FILE = ".queue.lock"
QUEUE_FILE = ".queue.json"
LINEAGE_FIELDS = ("parent_run", "fork_step", "init_checkpoint")
_REPO_ROOT = Path(__file__).resolve().parents[1]

# Children this process started, so the queue can reap them and tell an early crash from a clean exit.
_children: dict[Path, subprocess.Popen] = {}


class LauncherError(ValueError):
    """A run operation that cannot be done (unknown run, wrong state, missing checkpoint), with the fix."""


# ----------------------------------------------------------------------------- queue limit and lock


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
    saved = runs.read_json(Path(runs_dir) / QUEUE_FILE, default={}) or {}
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
    with open(base / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- starting children


def trainer_command(run_dir: Path) -> list[str]:
    """The detached child's command line: the engine's trainer on a prepared run directory."""
    custom = os.environ.get(ENV_TRAINER_CMD)
    base = shlex.split(custom) if custom else [sys.executable, "-m", "opd_core", "train", "--no-progress"]
    return [*base, str(run_dir)]


def _child_env(limit: int) -> dict[str, str]:
    env = dict(os.environ)
    # The child imports opd_core from this checkout even when the package is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # Share the cores between the runs allowed at once instead of every run grabbing all of them.
    threads = str(max(1, (os.cpu_count() or 1) // max(1, limit)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_child(run_dir: Path, limit: int) -> int:
    """Start the trainer on ``run_dir`` in its own session, output appended to its log; returns its pid."""
    with open(run_dir / runs.LOG_FILE, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                  f"{shlex.join(trainer_command(run_dir))}\n".encode())
        log.flush()
        proc = subprocess.Popen(trainer_command(run_dir), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                env=_child_env(limit))
    _children[run_dir.resolve()] = proc
    runs.write_status(run_dir, state="running", launched_at=time.time(), error=None, stop_requested_at=None)
    runs.mark_process(run_dir, proc.pid)
    return proc.pid


def _last_log_line(run_dir: Path) -> str | None:
    lines = [ln for ln in log_tail(run_dir, 30).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or [None])[-1]


def _settle(run_dir: Path, status: dict) -> None:
    """Correct the status file of a run whose trainer is gone without saying how it ended."""
    if status.get("state") != "failed" or not status.get("stale"):
        return
    if status.get("stop_requested_at"):
        # Stopped before the trainer had installed its SIGTERM handler (while loading models).
        runs.write_status(run_dir, state="stopped", error=None, finished_at=time.time())
        return
    proc = _children.get(run_dir.resolve())
    code = None
    if proc is not None:
        # The status already says the pid is gone or a zombie, so reaping it returns at once; poll() alone
        # can still answer None for a child caught mid-exit, and then its exit code would never be told.
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=0.5)
    if code is not None and code > 0:  # our child crashed (not killed): say what it printed
        line = _last_log_line(run_dir)
        runs.write_status(run_dir, state="failed", finished_at=time.time(),
                          error=f"trainer exited with code {code}" + (f": {line}" if line else "") +
                                f" (full output in {runs.LOG_FILE})")


def _reap() -> None:
    """Forget children that exited, recording how first: once forgotten, their exit code is lost."""
    for path, proc in list(_children.items()):
        if proc.poll() is not None:
            if path.is_dir():
                _settle(path, runs.read_status(path))
            del _children[path]


def _queued_at(status: dict) -> float | None:
    value = status.get("queued_at")
    return float(value) if isinstance(value, int | float) else None


def pump(runs_dir: str | Path, max_concurrent: int | None = None) -> list[Path]:
    """Start the oldest queued runs while fewer than the limit are running; returns the runs started.

    Safe to call from any number of processes at once (they serialise on the queue lock). Also settles
    runs whose trainer vanished (a stop during start-up reads ``stopped``; an early crash of a child
    of this process reads ``failed`` with its last output line).
    """
    base = Path(runs_dir)
    if not base.is_dir():
        return []
    limit = _check_limit(max_concurrent) if max_concurrent is not None else queue_limit(base)
    started: list[Path] = []
    with queue_lock(base):
        running, queued = 0, []
        for entry in sorted(base.iterdir()):
            if not (entry.is_dir() and runs.RUN_ID_PATTERN.match(entry.name) and runs.is_run_dir(entry)):
                continue
            status = runs.read_status(entry)
            _settle(entry, status)
            if status["state"] == "running":
                running += 1
            elif (status["state"] == "queued" and _queued_at(status) is not None
                  and (entry / runs.CONFIG_FILE).exists()):
                queued.append((_queued_at(status), entry.name, entry))
        for _, _, entry in sorted(queued)[: max(0, limit - running)]:
            _start_child(entry, limit)
            started.append(entry)
        _reap()
    return started


# ----------------------------------------------------------------------------- operations


def _validated(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    return config if isinstance(config, RunConfig) else from_dict(dict(config))


def _enqueue(run_dir: Path, **fields: Any) -> None:
    # No pid until a process takes it: a queued run with a pid is one whose trainer has started.
    runs.write_status(run_dir, state="queued", queued_at=time.time(), error=None, stop_requested_at=None,
                      finished_at=None, pid=None, pid_start=None, host=None, **fields)


def launch(config: RunConfig | Mapping[str, Any], runs_dir: str | Path, name: str | None = None, *,
           prefix: str | None = None, max_concurrent: int | None = None) -> Path:
    """Validate ``config``, write a new run directory as queued and pump the queue; returns the run dir.

    A bad config raises :class:`~opd_core.config.ConfigError` before anything is written.
    """
    cfg = _validated(config)
    run_dir = runs.create_run_dir(runs_dir, name, prefix=prefix or cfg.objective)
    runs.write_config(run_dir, cfg.to_dict())
    _enqueue(run_dir, step=cfg.fork_step or 0, total_steps=cfg.steps, created_at=time.time(),
             parent=cfg.parent_run, fork_step=cfg.fork_step, start_step=cfg.fork_step or 0)
    pump(runs_dir, max_concurrent)
    return run_dir


def launch_file(config_path: str | Path | None, overrides: Sequence[str], runs_dir: str | Path,
                name: str | None = None, *, max_concurrent: int | None = None) -> Path:
    """:func:`launch` for a TOML/JSON config file (or a shipped example name) plus ``key=value`` overrides."""
    return launch(load_config(config_path, list(overrides)), runs_dir, name, max_concurrent=max_concurrent)


def resolve_run(runs_dir: str | Path, run: str | Path) -> Path:
    """A run given as an id in ``runs_dir`` or as a path to its directory."""
    text = str(run)
    if runs.RUN_ID_PATTERN.match(text) and text not in (".", ".."):
        candidate = runs.run_path(runs_dir, text)
        if runs.is_run_dir(candidate):
            return candidate
    path = Path(text).expanduser()
    if runs.is_run_dir(path):
        return path.resolve()
    known = ", ".join(s.run_id for s in runs.list_runs(runs_dir)[:8]) or "none"
    raise LauncherError(f"no run {text!r} in {Path(runs_dir).resolve()} (and it is not a run directory); "
                        f"known runs: {known}. See `opd-lab runs list`.")


def stop(run_dir: str | Path) -> dict:
    """Stop a run: a queued run is taken off the queue; a running trainer gets SIGTERM and finishes its step.

    Returns the status after the request (a running run still reads ``running`` until the trainer has
    checkpointed and written ``stopped``).
    """
    run_dir = Path(run_dir)
    with queue_lock(run_dir.parent):
        status = runs.read_status(run_dir)
        state = status["state"]
        if state == "queued":
            return runs.write_status(run_dir, state="stopped", finished_at=time.time(), error=None)
        if state != "running":
            raise LauncherError(f"run {run_dir.name} is {state}, not running or queued; nothing to stop")
        runs.write_status(run_dir, stop_requested_at=time.time())
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(status["pid"]), signal.SIGTERM)
    return runs.read_status(run_dir)


def resume(run_dir: str | Path, *, max_concurrent: int | None = None) -> Path:
    """Queue a stopped or failed run to continue from its latest checkpoint (from the start if it has none)."""
    run_dir = Path(run_dir)
    with queue_lock(run_dir.parent):
        state = runs.read_status(run_dir)["state"]
        if state not in ("stopped", "failed"):
            hint = ("fork it with more steps: `opd-lab runs fork RUN --set steps=N`" if state == "finished"
                    else "wait for it, or stop it first")
            raise LauncherError(f"run {run_dir.name} is {state}; only stopped or failed runs resume ({hint})")
        saved = checkpoints.list_checkpoints(run_dir)
        cfg = runs.read_config(run_dir)
        _enqueue(run_dir, start_step=saved[-1] if saved else int(cfg.get("fork_step") or 0))
    pump(run_dir.parent, max_concurrent)
    return run_dir


def fork_config(parent_dir: str | Path, step: int | None = None,
                changes: Mapping[str, Any] | Sequence[str] | None = None) -> RunConfig:
    """The config of a fork of ``parent_dir`` at checkpoint ``step`` (default: latest) with ``changes``.

    ``changes`` is a dict of fields or a list of ``key=value`` strings (as ``--set`` takes them).
    """
    parent_dir = Path(parent_dir)
    saved = checkpoints.list_checkpoints(parent_dir)
    if not saved:
        raise LauncherError(f"run {parent_dir.name} has no saved checkpoint to fork from; it saves one every "
                            "`checkpoint_every` steps, at the end and when stopped")
    if step is None:
        step = saved[-1]
    if step not in saved:
        raise LauncherError(f"run {parent_dir.name} has no checkpoint at step {step}; saved steps: "
                            f"{', '.join(map(str, saved))}")
    if changes is None:
        changes = {}
    elif not isinstance(changes, Mapping):
        changes = parse_overrides(list(changes))
    data = {k: v for k, v in runs.read_config(parent_dir).items() if k not in LINEAGE_FIELDS}
    if not data:
        raise LauncherError(f"run {parent_dir.name} has no readable config.json, so it cannot be forked")
    extra = dict(changes)
    if "objective_params" in extra:
        data["objective_params"] = {**(data.get("objective_params") or {}), **extra.pop("objective_params")}
    bad = [k for k in extra if k in LINEAGE_FIELDS]
    if bad:
        raise ConfigError(f"config field '{bad[0]}' is set by fork itself; choose the parent and --step instead")
    data.update(extra)
    data.update(parent_run=parent_dir.name, fork_step=int(step),
                init_checkpoint=str(checkpoints.checkpoint_dir(parent_dir, step).resolve()))
    cfg = from_dict(data)
    if cfg.steps <= step:
        raise ConfigError(f"config field 'steps': {cfg.steps} does not go past the fork step {step}; "
                          f"set steps to more than {step}")
    return cfg


def fork(parent_dir: str | Path, step: int | None = None, changes: Mapping[str, Any] | Sequence[str] | None = None,
         *, runs_dir: str | Path | None = None, name: str | None = None,
         max_concurrent: int | None = None) -> Path:
    """Continue ``parent_dir`` from checkpoint ``step`` into a new queued run with ``changes``; returns it.

    The new run records its parent and fork step; its metrics start at ``step + 1``, so Compare shows
    parent and fork aligned on the step axis.
    """
    parent_dir = Path(parent_dir)
    cfg = fork_config(parent_dir, step, changes)
    target = Path(runs_dir) if runs_dir is not None else parent_dir.parent
    return launch(cfg, target, name, prefix=f"{parent_dir.name[:24]}-fork{cfg.fork_step}",
                  max_concurrent=max_concurrent)


def list_runs(runs_dir: str | Path) -> list[runs.RunSummary]:
    """Every run in ``runs_dir`` with its state, newest first. Side-effect free: it never starts a run.

    The queue is pumped by whoever launches (:func:`launch`, :func:`resume`, :func:`fork`, :func:`pump`)
    and by a trainer's CLI process when its training returns.
    """
    return runs.list_runs(runs_dir)


# ----------------------------------------------------------------------------- watching a run


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


def progress(run_dir: str | Path, metrics: pd.DataFrame | None = None) -> Progress:
    """Progress of a run from its status and (optionally) its metrics: step/total, elapsed and ETA.

    Elapsed is the trainer's own training clock (``time_s``, kept across resumes) when metrics are given;
    the ETA uses the mean of the last logged step times (or of this process's steps so far).
    """
    run_dir = Path(run_dir)
    status = runs.read_status(run_dir)
    total = status.get("total_steps") or runs.read_config(run_dir).get("steps")
    step = int(status.get("step") or 0)
    if metrics is not None and len(metrics) and "step" in metrics:
        step = max(step, int(metrics["step"].max()))
    start = status.get("resumed_at") or status.get("started_at")
    end = status.get("finished_at") if status["state"] not in runs.ACTIVE_STATES else None
    if status["state"] == "failed" and status.get("stale"):
        end = status.get("last_seen")
    elapsed = wall = ((end or time.time()) - start) if start and status["state"] != "queued" else None
    if metrics is not None and "time_s" in getattr(metrics, "columns", ()) and metrics["time_s"].notna().any():
        # The trainer's own clock, which carries on across stops and resumes (wall time since start does not).
        elapsed = max(float(metrics["time_s"].max()), elapsed if status["state"] == "running" and elapsed else 0)
    eta = None
    if status["state"] == "running" and total and elapsed and step > 0:
        first = int(status.get("start_step") or 0)
        if metrics is not None and "step_time_s" in getattr(metrics, "columns", ()):
            recent = metrics["step_time_s"].dropna().tail(20)
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
    except FileNotFoundError:
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
        except FileNotFoundError:
            return 0
        if st.st_ino != self._inode or st.st_size < self.offset:
            self._inode, self.offset, self.records = st.st_ino, 0, {}
        n = 0
        for rec, end in runs.iter_metric_records(self.run_dir, self.offset):
            if isinstance(rec.get("step"), int):
                self.records[rec["step"]] = rec
                n += 1
            self.offset = end
        return n

    def frame(self) -> pd.DataFrame:
        if not self.records:
            return pd.DataFrame(columns=["step"])
        return pd.DataFrame.from_records([self.records[s] for s in sorted(self.records)])


# ----------------------------------------------------------------------------- command line


def _fmt_summary(s: runs.RunSummary) -> str:
    step = f"{s.step or 0}/{s.total_steps or '?'}"
    lineage = f"{s.parent}@{s.fork_step}" if s.parent else "-"
    line = f"{s.run_id:<44} {s.state:<9} {step:>11}  {str(s.objective or '-'):<16} {lineage}"
    return line + (f"\n    {s.error}" if s.error and s.state == "failed" else "")


def cli(args: argparse.Namespace) -> int:
    """`opd-lab runs list|stop|resume|fork|launch`: 0 on success, 2 on bad input (one line on stderr)."""
    runs_dir = Path(getattr(args, "runs_dir", None) or "runs")
    command = args.runs_command
    limit = getattr(args, "max_concurrent", None)  # honoured when the parser offers --max-concurrent
    try:
        if command == "list":
            summaries = list_runs(runs_dir)
            if getattr(args, "json", False):
                print(json.dumps([_summary_dict(s) for s in summaries], indent=2, default=str))
            elif not summaries:
                print(f"no runs in {runs_dir.resolve()}")
            else:
                print(f"{'run':<44} {'state':<9} {'step':>11}  {'objective':<16} parent@step")
                for s in summaries:
                    print(_fmt_summary(s))
            return 0
        if command == "launch":
            run_dir = launch_file(args.config, args.overrides, runs_dir, getattr(args, "name", None),
                                  max_concurrent=limit)
        elif command == "stop":
            status = stop(resolve_run(runs_dir, args.run))
            print(f"{args.run}: {'stopping (SIGTERM sent)' if status['state'] == 'running' else status['state']}")
            return 0
        elif command == "resume":
            run_dir = resume(resolve_run(runs_dir, args.run), max_concurrent=limit)
        elif command == "fork":
            parent = resolve_run(runs_dir, args.run)
            run_dir = fork(parent, args.step, args.overrides, runs_dir=runs_dir, name=getattr(args, "name", None),
                           max_concurrent=limit)
        else:
            raise LauncherError(f"unknown runs action {command!r}; use list, stop, resume, fork or launch")
    except (ConfigError, LauncherError, runs.RunDirError) as exc:
        print(f"opd-lab: error: {exc}", file=sys.stderr)
        return 2
    print(f"{run_dir}  ({runs.read_status(run_dir)['state']})")
    return 0


def _summary_dict(s: runs.RunSummary) -> dict:
    return {"run_id": s.run_id, "path": str(s.path), "state": s.state, "step": s.step,
            "total_steps": s.total_steps, "objective": s.objective, "parent": s.parent,
            "fork_step": s.fork_step, "error": s.error, "stale": s.stale, "updated_at": s.updated_at}
