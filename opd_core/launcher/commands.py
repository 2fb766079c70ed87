"""The run operations behind `opd-lab runs` and the Launch/Live pages: launch, stop, resume, fork, list.

Each validates before it writes anything (a bad config raises :class:`~opd_core.config.ConfigError`
before a run directory exists), records what it did in the run's status file, and pumps the queue
itself when it queued something. Listing only reads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opd_core import checkpoints, process_identity, runs
from opd_core.config import LINEAGE_FIELDS, ConfigError, RunConfig, from_dict, load_config, merge_config
from opd_core.launcher.processes import signal_trainer
from opd_core.launcher.queue import LauncherError, enqueue, pump, queue_lock
from opd_core.preflight import preflight


def _validated(config: RunConfig | Mapping[str, Any]) -> RunConfig:
    return config if isinstance(config, RunConfig) else from_dict(dict(config))


def launch(config: RunConfig | Mapping[str, Any], runs_dir: str | Path, name: str | None = None, *,
           prefix: str | None = None, max_concurrent: int | None = None) -> Path:
    """Validate ``config``, write a new run directory as queued and pump the queue; returns the run dir.

    A bad config (values, model folders, task file, device) raises :class:`~opd_core.config.ConfigError`
    before anything is written.
    """
    cfg = _validated(config)
    preflight(cfg)
    if name is not None:
        runs.validate_run_id(name)
    run_dir = runs.create_run_dir(runs_dir, name, prefix=prefix or cfg.objective)
    runs.write_config(run_dir, cfg.to_dict())
    enqueue(run_dir, step=cfg.fork_step or 0, total_steps=cfg.steps, created_at=time.time(),
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
    if runs.is_run_name(text) and text not in (".", ".."):
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

    Only a trainer that provably is the recorded process on this host is signalled (same host, same
    kernel start time); a run training on another host cannot be stopped from here. Returns the status
    after the request (a running run still reads ``running`` until its trainer has written ``stopped``).
    """
    run_dir = Path(run_dir)
    with queue_lock(run_dir.parent):
        status = runs.read_status(run_dir)
        state = status["state"]
        _refuse_elsewhere(run_dir, status, "it cannot be stopped from this machine: stop it on that host")
        if state == "queued" and status.get("pid") is None:
            return runs.write_status(run_dir, state="stopped", finished_at=time.time(), error=None)
        if state not in ("running", "queued"):
            raise LauncherError(f"run {run_dir.name} is {state}, not running or queued; nothing to stop")
        sent, why = signal_trainer(status)
        if not sent:
            raise LauncherError(f"run {run_dir.name} was not signalled: {why}")
        runs.write_status(run_dir, stop_requested_at=time.time())
    return runs.read_status(run_dir)


def _refuse_elsewhere(run_dir: Path, status: dict, what_to_do: str) -> None:
    """A run recorded as active on another host is that host's to stop or resume, never this machine's."""
    if status.get("elsewhere"):
        raise LauncherError(f"run {run_dir.name} is {status['state']} elsewhere (host {status['elsewhere']}); "
                            f"{what_to_do}")


def resume(run_dir: str | Path, *, max_concurrent: int | None = None) -> Path:
    """Queue a stopped or failed run to continue from its latest checkpoint (from the start if it has none)."""
    run_dir = Path(run_dir)
    with queue_lock(run_dir.parent):
        status = runs.read_status(run_dir)
        state = status["state"]
        _refuse_elsewhere(run_dir, status, "resume it on that host")
        if state not in ("stopped", "failed"):
            hint = ("fork it with more steps: `opd-lab runs fork RUN --set steps=N`" if state == "finished"
                    else "wait for it, or stop it first")
            raise LauncherError(f"run {run_dir.name} is {state}; only stopped or failed runs resume ({hint})")
        holder = process_identity.writer_pid(run_dir)
        if holder is not None:
            raise LauncherError(f"run {run_dir.name} is still being written by a live trainer"
                                + (f" (pid {holder})" if holder > 0 else "") + "; stop it first")
        saved = checkpoints.list_checkpoints(run_dir)
        cfg = runs.read_config(run_dir)
        if not cfg:
            raise LauncherError(f"run {run_dir.name} has no readable config.json, so it cannot be resumed")
        fork_step = cfg.get("fork_step")
        enqueue(run_dir, start_step=saved[-1] if saved else (fork_step if isinstance(fork_step, int) else 0))
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
    data = {k: v for k, v in runs.read_config(parent_dir).items() if k not in LINEAGE_FIELDS}
    if not data:
        raise LauncherError(f"run {parent_dir.name} has no readable config.json, so it cannot be forked")
    data = merge_config(data, changes or {})
    bad = [k for k in LINEAGE_FIELDS if k in data]
    if bad:
        raise ConfigError(f"config field '{bad[0]}' is set by fork itself; choose the parent and --step instead")
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
