"""Which folders the dashboard reads runs from, and how a run is named safely in URLs and widgets.

A run is addressed by a *key* ``"<source>:<run_id>"`` (source ``runs`` = the user's folder, ``samples`` =
the shipped, read-only sample runs). Keys come from URLs and widgets, so they are untrusted: a key is
only ever turned into a path through :func:`opd_core.runs.run_path`, which refuses ids that escape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.server import ENV_RUNS_DIR, ENV_SAMPLE_RUNS
from opd_core import runs

SOURCE_LABELS = {"runs": "your runs", "samples": "sample"}


@dataclass(frozen=True)
class RunRef:
    """One run the dashboard can show: its safe key, where it lives and how to label it."""

    key: str
    source: str
    run_id: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.run_id} (sample)" if self.source == "samples" else self.run_id


def run_sources() -> dict[str, Path]:
    """The runs folders named by the environment `opd-lab` sets (user's runs first, then the samples)."""
    sources = {"runs": Path(os.environ.get(ENV_RUNS_DIR) or "runs").expanduser()}
    samples = os.environ.get(ENV_SAMPLE_RUNS, "")
    if samples:
        sources["samples"] = Path(samples).expanduser()
    return sources


def discover_runs(sources: dict[str, Path] | None = None) -> list[RunRef]:
    """Every run in every source, newest first within a source; a missing folder just has no runs."""
    sources = run_sources() if sources is None else sources
    found: list[RunRef] = []
    for source, base in sources.items():
        for run_id, path in _run_dirs(base):
            found.append(RunRef(f"{source}:{run_id}", source, run_id, path))
    return found


def _run_dirs(base: Path) -> list[tuple[str, Path]]:
    """(run_id, path) of every run under ``base``, newest first. When one damaged run makes the engine's
    listing fail, the folders are listed directly (newest modified first), so every other run still shows
    and the damaged one is named on its own row."""
    try:
        return runs.list_run_paths(base)
    except Exception:  # noqa: BLE001 - one run's damage must not hide the others
        pass
    entries = []
    for entry in sorted(base.iterdir()) if base.is_dir() else []:
        try:
            if runs.RUN_ID_PATTERN.match(entry.name) and runs.is_run_dir(entry):
                entries.append((entry.stat().st_mtime, entry.name, entry))
        except OSError:
            continue
    return [(name, path) for _, name, path in sorted(entries, reverse=True)]


def resolve_run_key(key: object, sources: dict[str, Path] | None = None) -> RunRef | None:
    """The run a key names, or None when the key is malformed, unknown or would leave its runs folder."""
    if not isinstance(key, str) or ":" not in key:
        return None
    source, run_id = key.split(":", 1)
    sources = run_sources() if sources is None else sources
    if source not in sources:
        return None
    try:
        path = runs.run_path(sources[source], run_id)
    except runs.RunDirError:
        return None
    if not runs.is_run_dir(path):
        return None
    return RunRef(f"{source}:{run_id}", source, run_id, path)
