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
