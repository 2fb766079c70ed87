"""The per-step metrics of a run directory: ``metrics.jsonl``, one JSON object per step.

The only file written incrementally: :class:`MetricsWriter` appends and flushes one line per step, so a
kill loses at most the line being written. Readers skip a half-written last line silently and name
every other damaged line (garbage, not UTF-8, a record without a whole-number ``step``) in ``problems``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from opd_core.runs import METRICS_FILE, RunFileError, atomic_write_bytes, to_json


class MetricsWriter:
    """Appends one JSON line per step and flushes it, so a crash loses at most the line being written."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair_tail()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def _repair_tail(self) -> None:
        """Drop a half-written last line left by a killed process, so resumed appends start clean."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)

    def append(self, record: dict) -> None:
        """Append one step's record. JSON has no NaN, so a NaN/inf value is written as null like an
        unreported one; to keep "diverged" apart from "not reported", the names of the non-finite values
        are listed under ``nonfinite`` (the health report's NaN check reads that list)."""
        bad = sorted(k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            record = {**record, "nonfinite": bad}
        self._fh.write(to_json(record, indent=None) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_metric_records(run_dir: str | Path, start_byte: int = 0,
                        problems: list[str] | None = None) -> Iterator[tuple[dict, int]]:
    """Yield (record, end_byte) for complete lines from ``start_byte``; a partial last line is skipped.

    Lines that are not a JSON object (garbage, not UTF-8) and records whose ``step`` is not a whole
    number >= 0 are skipped; with ``problems`` given, one line per kind of damage is added to it.
    """
    path = Path(run_dir) / METRICS_FILE
    bad_lines: list[int] = []
    bad_steps: list[int] = []
    try:
        with open(path, "rb") as fh:
            fh.seek(start_byte)
            pos = start_byte
            for number, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    break
                pos += len(raw)
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except (ValueError, RecursionError):  # not JSON, or not UTF-8
                    if raw.strip():
                        bad_lines.append(number)
                    continue
                if not isinstance(rec, dict):
                    bad_lines.append(number)
                    continue
                if not _is_step(rec.get("step")):
                    bad_steps.append(number)
                    continue
                yield rec, pos
    except FileNotFoundError:
        return
    except IsADirectoryError:
        if problems is not None:
            problems.append(str(RunFileError(METRICS_FILE, "a directory, not a file")))
        return
    except OSError as exc:
        if problems is not None:
            problems.append(str(RunFileError(METRICS_FILE, f"cannot be read ({exc.strerror or exc})")))
        return
    if problems is not None:
        if bad_lines:
            problems.append(str(RunFileError(METRICS_FILE, f"{_count_lines(bad_lines)} not a JSON object "
                                                           "(garbage or not UTF-8); skipped")))
        if bad_steps:
            problems.append(str(RunFileError(METRICS_FILE, f"{_count_lines(bad_steps)} without a step that is a "
                                                           "whole number >= 0; skipped")))


def _is_step(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count_lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:3])) + (", ..." if len(numbers) > 3 else "")
    return f"{len(numbers)} line{'s' if len(numbers) > 1 else ''} ({shown}) {'are' if len(numbers) > 1 else 'is'}"


def read_metrics(run_dir: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """All per-step metrics as a DataFrame sorted by step; a step logged twice keeps its last record.

    A step can appear twice when a run is resumed from a checkpoint older than its last logged step:
    the resumed process re-runs those steps and its records are the ones the run's weights followed.
    Damaged lines are skipped (and named in ``problems``), so one bad line never hides the others.
    """
    records = [rec for rec, _ in iter_metric_records(run_dir, problems=problems)]
    if not records:
        return pd.DataFrame(columns=["step"])
    df = pd.DataFrame.from_records(records)
    if "step" in df:
        df = df[df["step"].notna()]
        df = df.astype({"step": "int64"}).drop_duplicates("step", keep="last").sort_values("step")
        df = df.reset_index(drop=True)
    return df


def truncate_metrics_after(run_dir: str | Path, step: int) -> None:
    """Keep only metric lines with ``step <= step`` (atomically): resume must not duplicate steps.

    ``step=-1`` empties the file (a run restarting from nothing re-logs its step 0 too).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [to_json(rec, indent=None) for rec, _ in iter_metric_records(run_dir)
            if isinstance(rec.get("step"), int) and rec["step"] <= step]
    atomic_write_bytes(path, ("".join(line + "\n" for line in kept)).encode())
