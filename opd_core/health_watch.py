"""Stop a training run on its first critical health finding (the config setting ``stop_on_critical``).

Why a watcher beside the trainer rather than a check inside it: the training code never reads the
diagnostics (layers point one way, tests/test_layers.py). ``opd-lab train`` starts this thread next to
the trainer; each time a new token file lands it re-evaluates the health report, and on a critical
finding it records the finding in ``status.json`` and sends this process SIGTERM — the trainer's own
graceful stop, which finishes the step, keeps a checkpoint to fork from and writes ``stopped``.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from opd_core import runs
from opd_core.diagnostics import health


class CriticalFindingWatch(threading.Thread):
    """Polls the run's token files; on the first critical finding, says so in status.json and stops the run."""

    def __init__(self, run_dir: str | Path, interval_s: float = 2.0, pid: int | None = None):
        super().__init__(name="opd-lab-health-watch", daemon=True)
        self.run_dir = Path(run_dir)
        self.interval_s = interval_s
        self.pid = os.getpid() if pid is None else pid
        self.finding: dict | None = None
        self._seen: tuple[int, ...] = ()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            if self.check_once():
                return

    def stop(self) -> None:
        self._done.set()

    def check_once(self) -> bool:
        """Re-evaluate health if new token records landed; True once the run was told to stop."""
        steps = tuple(runs.token_steps(self.run_dir))
        if not steps or steps == self._seen or runs.read_status(self.run_dir).get("state") != "running":
            return False
        self._seen = steps
        try:
            report = health(self.run_dir)
        except Exception:  # a half-written run is read again on the next poll; never take the trainer down
            return False
        critical = [f for f in report.findings if f.severity == "critical"]
        if not critical:
            return False
        first = critical[0]
        self.finding = first.to_dict()
        runs.write_status(self.run_dir, stopped_by={"reason": "stop_on_critical", "step": steps[-1],
                                                     "finding": first.title, "mode": first.mode, "fix": first.fix})
        os.kill(self.pid, signal.SIGTERM)
        return True
