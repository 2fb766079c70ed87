"""The trainer processes the launcher starts: detached children, their exit codes, and stopping them.

A child is ``python -m opd_core train --no-progress RUN_DIR`` in its own session (``posix_spawn`` with
``setsid``), output appended to the run's log, so it outlives a page reload or a dashboard restart.
No table of children is kept: the status file records the pid, and the exit code of a child of this
process is collected with ``waitpid`` on that pid when the queue next looks at the run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

from opd_core import process_identity, runs
from opd_core.rescoring.output import SCORING_FILE
from opd_core.run_watch import log_tail

ENV_TRAINER_CMD = "OPD_LAB_TRAINER_CMD"  # test seam / custom launchers: the command a run dir is appended to
_REPO_ROOT = Path(__file__).resolve().parents[2]


def trainer_command(run_dir: Path) -> list[str]:
    """The detached child's command line: the engine's trainer on a prepared run directory."""
    if (run_dir / SCORING_FILE).is_file():  # a re-scoring job (`opd-lab score`): it continues its own request
        return [sys.executable, "-m", "opd_core", "score", "--no-progress", "--resume", str(run_dir)]
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


def spawn_detached(argv: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Start ``argv`` in a new session with stdin from /dev/null and output appended to ``log_path``."""
    exe = argv[0] if os.sep in argv[0] else (shutil.which(argv[0], path=env.get("PATH")) or argv[0])
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # Python ignores SIGPIPE (and the dashboard may ignore others): give the trainer the defaults back.
    defaults = [s for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM) if s]
    return os.posix_spawn(exe, argv, env, file_actions=actions, setsid=True, setsigdef=defaults)


def start_trainer(run_dir: Path, limit: int) -> int:
    """Start the trainer on ``run_dir``, mark the run running with the child's pid; returns the pid."""
    command = trainer_command(run_dir)
    with open(run_dir / runs.LOG_FILE, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(command)}\n".encode())
    pid = spawn_detached(command, run_dir / runs.LOG_FILE, _child_env(limit))
    runs.write_status(run_dir, state="running", launched_at=time.time(), error=None, stop_requested_at=None)
    runs.mark_process(run_dir, pid)
    return pid


def exit_code(pid: object) -> int | None:
    """Collect the exit code of a child of this process that has exited (None: running, or not ours).

    Negative for a child killed by a signal. Once collected it is gone, so call this only when the
    run's status already says the process is gone.
    """
    pid = process_identity.as_pid(pid)
    if pid is None:
        return None
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def _last_log_line(run_dir: Path) -> str | None:
    """The last error line (else the last line) the latest start of the trainer printed."""
    tail = log_tail(run_dir, 30)
    marker = tail.rfind("\n=== ")
    if marker >= 0:  # only what the latest start printed, not an earlier attempt's output
        _, _, tail = tail[marker + 1:].partition("\n")
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or [None])[-1]


def settle(run_dir: Path, status: dict) -> None:
    """Correct the status file of a run whose trainer is gone without saying how it ended.

    Also reaps a finished child of this process, so no zombie is left behind.
    """
    if status.get("state") != "failed" or not status.get("stale"):
        if status.get("state") not in runs.ACTIVE_STATES and not status.get("elsewhere"):
            exit_code(status.get("pid"))  # reap a child that already said how it ended
        return
    if status.get("stop_requested_at"):
        # Stopped before the trainer had installed its SIGTERM handler (while loading models).
        exit_code(status.get("pid"))
        runs.write_status(run_dir, state="stopped", error=None, finished_at=time.time())
        return
    code = exit_code(status.get("pid"))
    line = _last_log_line(run_dir)
    if code is not None and code > 0:  # our child crashed (not killed): say what it printed
        runs.write_status(run_dir, state="failed", finished_at=time.time(),
                          error=f"trainer exited with code {code}" + (f": {line}" if line else "") +
                                f" (full output in {runs.LOG_FILE})")
    elif code is None and line and not runs.read_json(run_dir / runs.STATUS_FILE, {}).get("error"):
        # Not our child, or its exit code was collected elsewhere: its last words still say why.
        runs.write_status(run_dir, state="failed", finished_at=time.time(),
                          error=f"trainer process {status.get('pid')} is gone; its last output: {line} "
                                f"(full output in {runs.LOG_FILE})")


def signal_trainer(status: dict, signum: int = signal.SIGTERM) -> tuple[bool, str | None]:
    """Send ``signum`` to the run's trainer only when it provably is that process on this host.

    Returns (sent, why not). A pid from another host, a recycled pid, or a status without the
    process's start time is never signalled.
    """
    pid, why = process_identity.may_signal(status)
    if pid is None:
        return False, why
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False, f"process {pid} exited before it could be signalled"
    return True, None
