"""Which process wrote a run's status, and is it still that process: pid, kernel start time and host.

A status file records ``pid``, ``pid_start`` (the kernel's start time of that pid, from ``/proc``) and
``host``. A pid alone is not an identity: pids are recycled, and a run directory copied from a cluster
carries another machine's pid. So a pid is "ours" only when the host is this host *and* the start time
still matches; only then may it be signalled (:func:`may_signal`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

PID_MAX = 1 << 22  # the kernel's ceiling for pid_max on 64-bit Linux


def this_host() -> str:
    return socket.gethostname()


def as_pid(value: Any) -> int | None:
    """``value`` as a pid when it is one (a whole number in the kernel's range), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < PID_MAX:
        return None
    return value


def start_ticks(pid: int) -> int | None:
    """Kernel start time of ``pid`` (Linux), so a recycled pid is not mistaken for our trainer."""
    stat = _stat_fields(pid)
    try:
        return int(stat[19]) if stat else None
    except (IndexError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # Fields after the parenthesised command name, which may itself contain spaces and parentheses.
    return stat[stat.rfind(")") + 2 :].split()


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def identity(pid: int | None = None) -> dict[str, Any]:
    """The fields a status file records about its writer: pid, pid_start, host."""
    pid = pid or os.getpid()
    return {"pid": pid, "pid_start": start_ticks(pid), "host": this_host()}


def elsewhere(status: dict) -> str | None:
    """The other machine's name when the status was written by a process on another host, else None."""
    host = status.get("host")
    return str(host) if isinstance(host, str) and host and host != this_host() else None


def alive(pid: Any, recorded_start: Any = None) -> bool:
    """Whether ``pid`` on this host is still running (not gone, not a zombie, not a recycled pid)."""
    pid = as_pid(pid)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if _state(pid) == "Z":
        return False
    now = start_ticks(pid)
    return not (isinstance(recorded_start, int) and now is not None and now != recorded_start)


def may_signal(status: dict) -> tuple[int | None, str | None]:
    """(pid, None) when the status's writer is provably the live process on this host, else (None, why)."""
    other = elsewhere(status)
    if other:
        return None, f"running elsewhere (host {other}); stop it on that machine"
    pid = as_pid(status.get("pid"))
    if pid is None:
        return None, f"status.json has no usable pid ({status.get('pid')!r})"
    if not status.get("host"):
        return None, "status.json does not record the host, so its pid cannot be trusted"
    recorded = status.get("pid_start")
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        return None, "status.json does not record the process start time, so its pid cannot be trusted"
    if start_ticks(pid) != recorded:
        return None, f"process {pid} is no longer the trainer (it exited and the pid was reused, or it is gone)"
    return pid, None


# ----------------------------------------------------------------------------- one writer per run dir

WRITER_LOCK = ".writer.lock"


class RunBusyError(ValueError):
    """Another live process is writing this run directory (it holds the run's writer lock)."""


class WriterLock:
    """The run's writer lock (``fcntl.flock`` on ``<run_dir>/.writer.lock``), held while training it.

    The kernel drops the lock when the holder exits, however it exits (``kill -9`` included), so a
    crashed trainer never leaves a run locked.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / WRITER_LOCK
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = writer_pid(self.path.parent)
            raise RunBusyError(
                f"run {self.path.parent.name} is being written by another live trainer"
                + (f" (pid {holder})" if holder and holder > 0 else "")
                + f"; stop it first (`opd-lab runs stop {self.path.parent.name}`) or wait for it") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def writer_pid(run_dir: str | Path) -> int | None:
    """The pid holding the run's writer lock (-1 when unreadable), or None when no live process holds it."""
    import fcntl

    path = Path(run_dir) / WRITER_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return (as_pid(int(text)) if text.isdigit() else None) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
