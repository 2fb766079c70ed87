"""The runs of a folder at a glance: one summary per run directory, and the contract check of one.

Every function here reads damaged runs without raising: what is wrong is listed in the summary's
``problems`` (one line per damaged file, naming it), so one broken run never hides the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opd_core.run_metrics import iter_metric_records, read_metrics
from opd_core.run_tokens import token_file_problem, token_schema_columns, token_step_problem, token_steps
from opd_core.runs import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    REQUIRED_METRICS,
    STATES,
    STATUS_FILE,
    TOKEN_COLUMNS,
    TOKENS_DIR,
    RunFileError,
    is_run_dir,
    is_run_name,
    read_config,
    read_json_object,
    read_status,
)


@dataclass
class RunSummary:
    """What the run list shows for one run directory, and what is damaged in it (``problems``)."""

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
    problems: list[str] = field(default_factory=list)
    elsewhere: str | None = None  # the host a live run is training on, when it is not this one


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _whole(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def summarize_run(run_dir: str | Path, runs_dir: str | Path | None = None) -> RunSummary:
    """One run's summary; never raises for a damaged run (the damage is listed in ``problems``)."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    if runs_dir is not None and run_dir.is_symlink():
        target = run_dir.resolve()
        if Path(runs_dir).resolve() not in target.parents:
            problems.append(f"{run_dir.name}: a symlink to {target}, outside the runs folder")
    status = read_status(run_dir, problems)
    config = read_config(run_dir, problems)
    problems += [str(p) for p in check_run_files(run_dir)]
    objective = config.get("objective")
    if isinstance(objective, dict):
        objective = objective.get("name")
    for key, value, ok in (("objective", objective, _text(objective)), ("steps", config.get("steps"),
                           _whole(config.get("steps"))), ("student", config.get("student"),
                           _text(config.get("student"))), ("teacher", config.get("teacher"), _text(config.get("teacher")))):
        if value is not None and ok is None:
            problems.append(str(RunFileError(CONFIG_FILE, f"{key} {value!r} is not a {'number' if key == 'steps' else 'name'}")))
    return RunSummary(
        run_id=run_dir.name,
        path=run_dir,
        state=status["state"],
        step=_whole(status.get("step")),
        total_steps=_whole(status.get("total_steps")) or _whole(config.get("steps")),
        objective=_text(objective),
        student=_text(config.get("student")),
        teacher=_text(config.get("teacher")),
        started_at=status.get("started_at"),
        updated_at=status.get("updated_at"),
        error=status.get("error"),
        parent=_text(status.get("parent")) or _text(config.get("parent_run")),
        fork_step=_whole(status.get("fork_step")) or _whole(config.get("fork_step")),
        stale=bool(status.get("stale")),
        config=config,
        problems=list(dict.fromkeys(problems)),
        elsewhere=status.get("elsewhere"),
    )


def check_run_files(run_dir: str | Path) -> list[RunFileError]:
    """Damage visible without reading whole files: each file of the wrong kind, each token file that is not
    Parquet. Cheap enough for every run of a list (JSON damage is found by the readers themselves)."""
    run_dir = Path(run_dir)
    found: list[RunFileError] = []
    for name in (METRICS_FILE, LOG_FILE):
        if (run_dir / name).is_dir():
            found.append(RunFileError(name, "a directory, not a file"))
    for name in (TOKENS_DIR, CHECKPOINTS_DIR):
        path = run_dir / name
        if path.exists() and not path.is_dir():
            found.append(RunFileError(name, "a file, not a folder"))
    found += [p for s in token_steps(run_dir) if (p := token_file_problem(run_dir, s)) is not None]
    return found


def _run_entries(runs_dirs) -> Iterator[tuple[Path, Path]]:
    """(runs folder, entry) of every run directory directly under the folders; missing folders, symlink loops
    and unreadable folders are skipped."""
    for base in map(Path, runs_dirs):
        try:
            entries = sorted(base.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                if is_run_name(entry.name) and is_run_dir(entry):
                    yield base, entry
            except OSError:  # a symlink loop, an unreadable folder: not a run we can show
                continue


def list_runs(*runs_dirs: str | Path) -> list[RunSummary]:
    """Every run directory directly under the given folders, newest first; missing folders are skipped.

    A damaged run is listed with its ``problems``; it never hides the other runs.
    """
    found: dict[Path, RunSummary] = {}
    for base, entry in _run_entries(runs_dirs):
        try:
            found.setdefault(entry.resolve(), summarize_run(entry, base))
        except OSError:
            continue
    return sorted(found.values(), key=lambda r: (_whole(r.started_at) or 0, r.run_id), reverse=True)


def list_run_paths(*runs_dirs: str | Path) -> list[tuple[str, Path]]:
    """(run_id, path) of every run :func:`list_runs` lists, in its order, from each status.json's ``started_at``
    alone. Every dashboard page offers the runs on every rerun; summarising each one (its config, its
    trainer's liveness, the header of every token file) is the Runs table's job, not the run picker's."""
    found: dict[Path, tuple[int, str, Path]] = {}
    for _, entry in _run_entries(runs_dirs):
        try:
            status = read_json_object(entry, STATUS_FILE, []) or {}
            found.setdefault(entry.resolve(), (_whole(status.get("started_at")) or 0, entry.name, entry))
        except OSError:
            continue
    return [(run_id, path) for _, run_id, path in sorted(found.values(), key=lambda r: r[:2], reverse=True)]


def validate_run_dir(run_dir: str | Path) -> list[str]:
    """Problems that break the run-directory contract (empty list = valid). Used by tests and the SDK."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    if not is_run_name(run_dir.name):
        problems.append(f"directory name {run_dir.name!r} is not a valid run id")
    damage: list[str] = []
    if read_json_object(run_dir, CONFIG_FILE, damage) is None and not damage:
        problems.append("config.json is missing or not a JSON object")
    status = read_json_object(run_dir, STATUS_FILE, damage)
    problems += damage
    if status is None and not any(d.startswith(STATUS_FILE) for d in damage):
        problems.append("status.json is missing or not a JSON object")
    elif status is not None:
        if status.get("state") not in STATES:
            problems.append(f"status.json state {status.get('state')!r} is not one of {STATES}")
        for key in ("step", "total_steps"):
            if key not in status:
                problems.append(f"status.json lacks {key!r}")
    records = [rec for rec, _ in iter_metric_records(run_dir, problems=problems)]
    metrics = read_metrics(run_dir)
    if metrics.empty or "step" not in metrics:
        problems.append("metrics.jsonl is missing or has no step records")
    else:
        raw_steps = [rec.get("step") for rec in records]
        if len(raw_steps) != len(set(raw_steps)):
            problems.append("metrics.jsonl has duplicated steps")
        for col in REQUIRED_METRICS:
            if col not in metrics:
                problems.append(f"metrics.jsonl lacks {col!r}")
    steps = token_steps(run_dir)
    if not steps:
        problems.append("tokens/ has no step_NNNNNN.parquet files")
    else:
        problems += [str(p) for s in steps if (p := token_step_problem(run_dir, s)) is not None]
        names = set(token_schema_columns(run_dir))
        missing = [c for c in TOKEN_COLUMNS if c not in names]
        if names and missing:
            problems.append(f"token records lack columns {missing}")
    return problems
