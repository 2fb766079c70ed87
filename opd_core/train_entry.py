"""Entry points of the training loop: a run directory in, a truthful status out.

:func:`train` (the library call), :func:`run_in_dir` (train a prepared run directory, or resume it) and
:func:`train_from_cli` (`opd-lab train`). They own what happens around the :class:`~opd_core.train.Trainer`:
SIGTERM while the models load, picking the checkpoint to resume from, forgetting the records a killed
process wrote after that checkpoint, and writing ``failed`` with the reason whatever went wrong.
They never start other runs: the queue is pumped by whoever launches, or by the CLI once training returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opd_core import checkpoints, process_identity, runs
from opd_core.config import ConfigError, RunConfig, from_dict, load_config
from opd_core.distributed import DistInfo, broadcast_object, init_from_env, shutdown
from opd_core.preflight import preflight
from opd_core.rollout import NonFiniteSamplingError
from opd_core.train import NonFiniteError, Trainer


class _StopSignal:
    """SIGTERM arrives while loading or mid-step: remember it, and let the loop stop after the step."""

    def __init__(self) -> None:
        self.requested = False
        self.trainer: Trainer | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True
        if self.trainer is not None:
            self.trainer.stop_requested = True


def run_in_dir(run_dir: Path, *, resume: bool = False, progress: bool = True, dist: DistInfo | None = None) -> str:
    """Run (or resume) the run whose config.json is in ``run_dir``; always leaves a truthful status.

    Holds the run's writer lock while it trains: a second trainer on the same run directory (a
    `train --resume` of a live run) raises :class:`~opd_core.process_identity.RunBusyError` before
    it writes anything.
    """
    run_dir = Path(run_dir)
    dist = dist or DistInfo()
    lock = process_identity.WriterLock(run_dir).acquire() if dist.is_main else None
    try:
        return _run_locked(run_dir, resume, progress, dist)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(run_dir: Path, resume: bool, progress: bool, dist: DistInfo) -> str:
    trainer = None
    start = 0
    stop = _StopSignal()
    stop.install()
    try:
        cfg = from_dict(runs.read_config(run_dir))
        trainer = Trainer(cfg, run_dir, dist=dist)
        stop.trainer = trainer
        if stop.requested:  # stopped while the models were loading: nothing trained, nothing lost
            if dist.is_main:
                runs.write_status(run_dir, state="stopped", finished_at=time.time())
            return "stopped"
        start, time_offset = 0, 0.0
        ckpt = checkpoints.latest(run_dir) if resume else None
        if ckpt is None and cfg.init_checkpoint:
            ckpt = Path(cfg.init_checkpoint)
        if ckpt is not None:
            start = checkpoints.load(ckpt, trainer.student.model, trainer.optimizer, trainer.scheduler)
        if dist.is_main:
            # Whatever a killed process logged after the checkpoint is re-done, so forget it first; with no
            # checkpoint the run restarts from nothing, step 0's eval included.
            _drop_records_after(run_dir, start if start > 0 else -1)
            checkpoints.remove_partial(run_dir)
            prev = runs.read_metrics(run_dir)
            if start and "time_s" in prev and len(prev) and prev["time_s"].notna().any():
                time_offset = float(prev["time_s"].dropna().iloc[-1])
        return trainer.run(start_step=start, progress=progress, time_offset=time_offset)
    except Exception as exc:  # the run dir must say why it failed, whatever failed
        if trainer is not None:
            with contextlib.suppress(Exception):  # the original error is the one to report
                trainer.flush_tokens()
        message = str(exc) if isinstance(exc, NonFiniteError | ValueError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NonFiniteSamplingError):  # the sampler does not know the step: the metrics do
            done = list(runs.read_metrics(run_dir)["step"]) if dist.is_main else []
            message = f"step {int(max([*done, start])) + 1}: {exc}"
        if dist.is_main:
            runs.write_status(run_dir, state="failed", error=message, finished_at=time.time())
        print(traceback.format_exc(), file=sys.stderr)
        print(f"opd-lab: run failed: {message}", file=sys.stderr)
        return "failed"


def _drop_records_after(run_dir: Path, step: int) -> None:
    """A resumed run re-does the steps after its checkpoint: forget what the lost process logged for them.

    ``step=-1`` forgets everything (no checkpoint: the run starts over). Temporary token files a kill
    left half-written are removed too.
    """
    runs.truncate_metrics_after(run_dir, step)
    for s in runs.token_steps(run_dir):
        if s > step:
            path = runs.token_file(run_dir, s)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    tokens_dir = run_dir / runs.TOKENS_DIR
    if tokens_dir.is_dir():
        for tmp in tokens_dir.glob(".step_*.tmp"):
            tmp.unlink(missing_ok=True)


def train(cfg: RunConfig, runs_dir: str | Path = "runs", name: str | None = None, *, progress: bool = False) -> Path:
    """Library entry point: create a run directory for ``cfg``, train it, return the directory."""
    run_dir = runs.create_run_dir(runs_dir, name, prefix=cfg.objective)
    runs.write_config(run_dir, cfg.to_dict())
    runs.write_status(run_dir, state="queued", step=0, total_steps=cfg.steps, created_at=time.time())
    run_in_dir(run_dir, progress=progress)
    return run_dir


@dataclass(frozen=True)
class CliOutcome:
    """What `opd-lab train` did: its exit code, and (on the main rank) the run directory it trained."""

    code: int
    run_dir: Path | None


def train_from_cli(config_path: str | None, overrides: list[str], runs_dir: str, name: str | None,
                   resume: str | None, progress: bool = True,
                   on_start: Callable[[Path], object] | None = None) -> CliOutcome:
    """`opd-lab train`: validate first (no run dir on a bad config), print the run dir, then train.

    Under torchrun every rank runs this; rank 0 creates the run directory and tells the others.
    ``on_start(run_dir)`` runs on rank 0 just before training (the command line starts its health
    watch there: the trainer itself never reads the diagnostics).
    """
    dist = init_from_env()
    try:
        run_dir, resume_flag = _prepare_run_dir(config_path, overrides, runs_dir, name, resume, dist)
        if dist.is_main:
            print(run_dir, flush=True)
            if on_start is not None:
                on_start(run_dir)
        state = run_in_dir(run_dir, resume=resume_flag, progress=progress, dist=dist)
        return CliOutcome(0 if state in ("finished", "stopped") else 1, run_dir if dist.is_main else None)
    finally:
        shutdown(dist)


def _prepare_run_dir(config_path, overrides, runs_dir, name, resume, dist: DistInfo) -> tuple[Path, bool]:
    if resume:
        run_dir = Path(resume)
        if not runs.is_run_dir(run_dir):
            raise ConfigError(f"--resume {resume!r} is not a run directory (no config.json); pass the folder "
                              "that `opd-lab train` printed")
        _refuse_live(run_dir)
        return run_dir, True
    if config_path and Path(config_path).is_dir() and runs.is_run_dir(config_path):
        # A prepared run directory (the launcher's detached child): train it in place.
        run_dir = Path(config_path)
        return run_dir, checkpoints.latest(run_dir) is not None
    cfg = load_config(config_path, overrides)
    preflight(cfg)  # models, task, device: a bad one is one line and no run directory
    if name is not None:
        runs.validate_run_id(name)
    run_dir = None
    if dist.is_main:
        run_dir = runs.create_run_dir(runs_dir, name, prefix=cfg.objective)
        runs.write_config(run_dir, cfg.to_dict())
        runs.write_status(run_dir, state="queued", step=0, total_steps=cfg.steps, created_at=time.time(),
                          **process_identity.identity())
    return Path(broadcast_object(str(run_dir) if run_dir else None, dist)), False


def _refuse_live(run_dir: Path) -> None:
    """`train --resume` of a run another trainer is writing (or one on another host) is refused."""
    status = runs.read_status(run_dir)
    if status.get("elsewhere") and status["state"] in runs.ACTIVE_STATES:
        raise ConfigError(f"--resume {str(run_dir)!r}: the run is {status['state']} elsewhere (host "
                          f"{status['elsewhere']}); resume it on that host")
    holder = process_identity.writer_pid(run_dir)
    live = status["state"] in runs.ACTIVE_STATES and status.get("pid") not in (None, os.getpid())
    if holder is not None or live:
        pid = holder if holder and holder > 0 else status.get("pid")
        raise ConfigError(f"--resume {str(run_dir)!r}: the run is still being trained by process {pid}; stop it "
                          f"first (`opd-lab runs stop {run_dir.name}`) or wait for it")

