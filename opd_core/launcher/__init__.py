"""Background runs without a daemon: launch, queue, stop, resume and fork runs from the page or the CLI.

- :mod:`~opd_core.launcher.queue`: the queue of a runs folder, its limit and lock, and :func:`pump`.
- :mod:`~opd_core.launcher.processes`: the detached trainer children (start, exit code, signal).
- :mod:`~opd_core.launcher.commands`: launch / stop / resume / fork / list.
- :mod:`~opd_core.launcher.cli`: `opd-lab runs ...`.

The status files are the only memory, so a restarted dashboard finds its runs again, and a trainer
killed with ``kill -9`` reads as failed with the time it was last seen (:func:`opd_core.runs.read_status`).
Watching a run (progress, metrics tail, log tail) is :mod:`opd_core.run_watch`, re-exported here.
"""

from opd_core.launcher.cli import cli
from opd_core.launcher.commands import (
    fork,
    fork_config,
    launch,
    launch_file,
    list_runs,
    resolve_run,
    resume,
    stop,
)
from opd_core.launcher.processes import ENV_TRAINER_CMD, trainer_command
from opd_core.launcher.queue import (
    ENV_MAX_CONCURRENT,
    LOCK_FILE,
    QUEUE_FILE,
    LauncherError,
    default_max_concurrent,
    enqueue,
    pump,
    queue_limit,
    queue_lock,
    set_queue_limit,
)
from opd_core.run_watch import MetricsTail, Progress, log_tail, progress

_enqueue = enqueue  # the name tests and older callers use

__all__ = [
    "ENV_MAX_CONCURRENT", "ENV_TRAINER_CMD", "LOCK_FILE", "QUEUE_FILE", "LauncherError", "MetricsTail", "Progress",
    "cli", "default_max_concurrent", "enqueue", "fork", "fork_config", "launch", "launch_file", "list_runs",
    "log_tail", "progress", "pump", "queue_limit", "queue_lock", "resolve_run", "resume", "set_queue_limit", "stop",
    "trainer_command",
]
