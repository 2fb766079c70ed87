"""The per-token records of a run directory: ``tokens/step_NNNNNN.parquet``, one file per logged step.

Written atomically (temporary file + rename), by one writer (:func:`write_token_records`, or
:func:`write_token_stream` where a step arrives in batches). Read per file:
a damaged file (0 bytes, garbage, a directory, a column of another type than the other files) is
skipped and named as a :class:`~opd_core.runs.RunFileError`, so the other steps still read.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from opd_core.runs import TOKEN_COLUMNS, TOKENS_DIR, RunFileError
from opd_core.schema import RECORD_KEY_COLUMNS

_TOKEN_FILE_PATTERN = re.compile(r"^step_(\d{6,})\.parquet$")


def token_file(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / TOKENS_DIR / f"step_{int(step):06d}.parquet"


def write_token_records(run_dir: str | Path, step: int, records: pd.DataFrame | pa.Table) -> Path:
    """Write one logged step's per-token records as Parquet, atomically (temp file + rename)."""
    table = records if isinstance(records, pa.Table) else pa.Table.from_pandas(records, preserve_index=False)
    return write_token_stream(run_dir, step, table.schema, [table])


def write_token_stream(run_dir: str | Path, step: int, schema: pa.Schema, tables: Iterable[pa.Table]) -> Path:
    """Write one step's token file from ``tables`` streamed in order (one in memory at a time), atomically.

    Used where a step's records arrive in batches (re-scoring): the file appears whole or not at all,
    so a kill mid-write never leaves a half step for the readers.
    """
    path = token_file(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for table in tables:
                writer.write_table(table.cast(schema))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def token_steps(run_dir: str | Path) -> list[int]:
    """The steps that have per-token records, ascending (names only: a damaged file is still listed)."""
    tdir = Path(run_dir) / TOKENS_DIR
    try:
        names = [entry.name for entry in os.scandir(tdir)]
    except OSError:  # absent, a file, unreadable
        return []
    steps = []
    for name in names:
        m = _TOKEN_FILE_PATTERN.match(name)
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def token_file_problem(run_dir: str | Path, step: int) -> RunFileError | None:
    """What is wrong with one step's token file from its outside (type, size, Parquet magic), or None."""
    path = token_file(run_dir, step)
    name = f"{TOKENS_DIR}/{path.name}"
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(4)
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    except FileNotFoundError:
        return RunFileError(name, "a symlink to a missing file" if path.is_symlink() else "missing")
    except IsADirectoryError:
        return RunFileError(name, "a directory, not a file")
    except OSError as exc:
        return RunFileError(name, f"cannot be read ({exc.strerror or exc})")
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        return RunFileError(name, f"not a Parquet file ({size} bytes)")
    return None


def _token_schema(run_dir: str | Path, step: int) -> pa.Schema:
    """The schema of one step's token file; RunFileError naming the file when it cannot be read."""
    problem = token_file_problem(run_dir, step)
    if problem is not None:
        raise problem
    try:
        return pq.read_schema(token_file(run_dir, step))
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise RunFileError(f"{TOKENS_DIR}/{token_file(run_dir, step).name}",
                           f"not a readable Parquet file ({type(exc).__name__})") from None


def _record_schema(run_dir: str | Path, step: int) -> pa.Schema:
    """The schema of a token file that holds records: readable, and with the columns that place each record
    (``RECORD_KEY_COLUMNS``). A file without them has nothing a reader can show; RunFileError naming it."""
    schema = _token_schema(run_dir, step)
    missing = [c for c in RECORD_KEY_COLUMNS if c not in schema.names]
    if missing:
        raise RunFileError(f"{TOKENS_DIR}/{token_file(run_dir, step).name}",
                           f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                           f"that place{'' if len(missing) > 1 else 's'} each record (it has {len(schema.names)} "
                           "columns)")
    return schema


def token_step_problem(run_dir: str | Path, step: int) -> RunFileError | None:
    """Why one step's token records cannot be shown (outside damage, an unreadable footer, no sample/pos
    columns), or None: what a page that shows one step checks before reading it."""
    try:
        _record_schema(run_dir, step)
    except RunFileError as exc:
        return exc
    return None


def token_schema_columns(run_dir: str | Path) -> list[str]:
    """Column names present in the run's token files (the schema of the first file that holds records)."""
    for step in token_steps(run_dir):
        try:
            return list(_record_schema(run_dir, step).names)
        except RunFileError:
            continue
    return []


def read_tokens(
    run_dir: str | Path,
    steps: Iterable[int] | None = None,
    columns: Sequence[str] | None = None,
    filters: list | None = None,
    problems: list[str] | None = None,
) -> pd.DataFrame:
    """Per-token records of the given steps (all by default), reading only the requested columns.

    Unknown columns are ignored rather than raising, so a page asking for an optional column still
    works on a run written by an older engine or another trainer. A damaged token file (not Parquet,
    a directory, without the sample/pos columns, columns of another type than the other files) is skipped
    and named in ``problems``;
    the other steps still read.
    """
    available = token_steps(run_dir)
    wanted = available if steps is None else [s for s in steps if s in set(available)]
    empty = pd.DataFrame(columns=list(columns) if columns else list(TOKEN_COLUMNS))
    good: list[int] = []
    schemas: list[pa.Schema] = []
    for step in wanted:
        try:
            this = _record_schema(run_dir, step)
        except RunFileError as exc:
            _note(problems, exc)
            continue
        if schemas and (mismatch := _schema_mismatch(schemas[0], this, columns)):
            _note(problems, RunFileError(f"{TOKENS_DIR}/{token_file(run_dir, step).name}", mismatch))
            continue
        good.append(step)
        schemas.append(this)
    if not good:
        return empty
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowException, ValueError):
        schema = schemas[0]
    cols = [c for c in columns if c in set(schema.names)] if columns is not None else None
    try:
        return _read_token_files(run_dir, good, cols, filters, schema)
    except (OSError, pa.ArrowException) as exc:
        if len(good) == 1:
            _note(problems, RunFileError(f"{TOKENS_DIR}/{token_file(run_dir, good[0]).name}",
                                         f"not a readable Parquet file ({type(exc).__name__})"))
            return empty
    frames = [frame for step in good
              if (frame := read_tokens(run_dir, [step], columns, filters, problems)) is not None and len(frame)]
    return pd.concat(frames, ignore_index=True) if frames else empty


def _note(problems: list[str] | None, problem: RunFileError) -> None:
    if problems is not None and str(problem) not in problems:
        problems.append(str(problem))


def _schema_mismatch(first: pa.Schema, other: pa.Schema, columns: Sequence[str] | None) -> str | None:
    """Why ``other`` cannot be read together with ``first`` (a shared column of another type), or None."""
    names = set(first.names) & set(other.names)
    if columns is not None:
        names &= set(columns)
    for name in sorted(names):
        a, b = first.field(name).type, other.field(name).type
        if a != b and not (pa.types.is_integer(a) and pa.types.is_integer(b)) \
                and not (pa.types.is_floating(a) and pa.types.is_floating(b)):
            return f"column {name!r} is {b}, not {a} as in the other token files"
    return None


def _read_token_files(run_dir: str | Path, steps: list[int], cols: list[str] | None, filters: list | None,
                      schema: pa.Schema | None = None) -> pd.DataFrame:
    import pyarrow.dataset as ds

    files = [str(token_file(run_dir, s)) for s in steps]
    dataset = ds.dataset(files, format="parquet", schema=schema)
    table = dataset.to_table(columns=cols, filter=_to_expression(filters) if filters else None)
    return table.to_pandas()


def _to_expression(filters: list) -> Any:
    """[(column, op, value), ...] -> a pyarrow dataset expression (AND of all)."""
    import pyarrow.compute as pc

    ops = {"==": lambda f, v: f == v, "!=": lambda f, v: f != v, "<": lambda f, v: f < v,
           "<=": lambda f, v: f <= v, ">": lambda f, v: f > v, ">=": lambda f, v: f >= v,
           "in": lambda f, v: f.isin(list(v))}
    expr = None
    for col, op, value in filters:
        if op not in ops:
            raise ValueError(f"filter operator {op!r} is not supported; use one of {', '.join(ops)}")
        term = ops[op](pc.field(col), value)
        expr = term if expr is None else expr & term
    return expr
