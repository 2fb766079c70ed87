"""Read saved rollouts (plain JSONL/Parquet, verl dumps, TRL completions, OPD Lab run dirs) into one record type.

Every trainer saves its rollouts under its own column names; this module maps each known shape onto
:class:`Rollout` (prompt, response, step, reward, correct) and refuses anything it cannot map with one
line naming the file, the columns it found and the flag that fixes it (``--map``). Nothing here touches
a model or a run directory, so a bad file fails before any directory is created.

Shapes recognised (first match wins; ``--map`` overrides any of them):

- **plain**: ``prompt`` + ``response`` (text), or ``messages`` (chat form; the last assistant message
  is the response). Optional ``step``, ``reward``, ``correct``, ``response_ids`` (student token ids).
- **verl** (``trainer.rollout_data_dir`` dumps, one ``<step>.jsonl`` per step): ``input``, ``output``,
  ``score``, ``step`` (+ ``gts`` and the reward function's extra keys, e.g. ``acc``).
- **trl** (``<output_dir>/completions/completions_<step>.parquet`` of GRPO/RLOO/Distillation trainers
  with ``log_completions=True``, or the W&B ``completions`` table exported as JSON): ``step``,
  ``prompt``, ``completion`` (text or chat messages), the reward functions' columns and ``advantage``.
- **run**: an OPD Lab run directory (its token records): re-score what any producer logged, with the
  exact token ids, under another objective or other checkpoints.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("prompt", "response", "messages", "step", "reward", "correct", "response_ids")
TEXT_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_MAP_HINT = "--map prompt=COL,response=COL (or messages=COL)"


class RolloutInputError(ValueError):
    """A rollouts file that cannot be read or mapped; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class Rollout:
    """One saved response and what it answered: the unit that is scored."""

    index: int                       # position in the input (files in order, rows in order): stable across runs
    step: int
    prompt: str | None               # user message, or the rendered prompt text with ``raw``
    messages: tuple | None           # chat messages before the response (instead of ``prompt``)
    response: str
    reward: float | None = None
    correct: bool | None = None
    response_ids: tuple[int, ...] | None = None  # exact student token ids, when the source kept them


@dataclass(frozen=True)
class RolloutSet:
    """Everything read from the input: the rollouts and how they were mapped (recorded in the run dir)."""

    shape: str
    files: tuple[str, ...]
    columns: dict[str, str]          # role -> column used
    rollouts: tuple[Rollout, ...]

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.rollouts})


# ----------------------------------------------------------------------------- mapping


def parse_map(spec: str | list[str] | None) -> dict[str, str]:
    """``"prompt=question,response=answer"`` (or several --map flags) -> {role: column}."""
    items: list[str] = []
    for part in [spec] if isinstance(spec, str) else (spec or []):
        items += [p for p in part.split(",") if p.strip()]
    out: dict[str, str] = {}
    for item in items:
        role, sep, col = item.partition("=")
        role, col = role.strip(), col.strip()
        if not sep or not col:
            raise RolloutInputError(f"--map {item!r} is not ROLE=COLUMN; write e.g. --map prompt=question,"
                                    "response=answer")
        if role not in ROLES:
            raise RolloutInputError(f"--map {item!r}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        out[role] = col
    return out


def split_items(text: str | None) -> list[str]:
    """A form field of several values ("k=32, top_p=0.9" or one per line) -> ["k=32", "top_p=0.9"]."""
    return [item.strip() for line in (text or "").splitlines() for item in line.split(",") if item.strip()]


_SHAPES: tuple[tuple[str, dict[str, str]], ...] = (
    ("run", {}),
    ("verl", {"prompt": "input", "response": "output", "reward": "score", "correct": "acc"}),
    ("trl", {"prompt": "prompt", "response": "completion", "reward": "reward"}),
    ("plain", {"prompt": "prompt", "response": "response", "messages": "messages", "reward": "reward",
               "correct": "correct", "response_ids": "response_ids"}),
)


def _detect(columns: list[str], first: dict, user: dict[str, str]) -> tuple[str, dict[str, str]]:
    cols = set(columns)
    if {"input", "output"} <= cols:
        shape = "verl"
    elif {"prompt", "completion"} <= cols:
        shape = "trl"
    else:
        shape = "plain"
    base = dict(dict(_SHAPES)[shape])
    if "score" in cols and "reward" not in cols:
        base["reward"] = "score"
    if shape == "trl" and "reward" not in cols:
        # GRPO writes one column per reward function: a single one is the reward; several need --map.
        numeric = [c for c in columns if c not in ("step", "prompt", "completion", "advantage")
                   and _number(first.get(c)) is not None and not isinstance(first.get(c), bool)]
        if len(numeric) == 1:
            base["reward"] = numeric[0]
    base["step"] = "step"
    mapping = {role: col for role, col in base.items() if col in cols}
    if "messages" in mapping and ("prompt" in mapping or "response" in mapping):
        del mapping["messages"]  # explicit text columns win over a chat column
    mapping.update(user)
    return ("custom" if user else shape), mapping


def _check_mapping(path: Path, columns: list[str], mapping: dict[str, str], user: dict[str, str]) -> None:
    missing = [col for col in user.values() if col not in columns]
    found = ", ".join(columns) if columns else "none"
    if missing:
        raise RolloutInputError(f"{path}: column {missing[0]!r} given to --map is not in the file "
                                f"(columns found: {found})")
    if "messages" in mapping:
        return
    for role in ("response", "prompt"):
        if role not in mapping:
            raise RolloutInputError(f"{path}: no {role} column (columns found: {found}); name it with "
                                    f"{_MAP_HINT}")


# ----------------------------------------------------------------------------- readers


def _read_jsonl(path: Path) -> list[dict]:
    data = path.read_bytes()
    if b"\x00" in data[:4096]:
        raise RolloutInputError(f"{path}: binary content, not JSONL; pass a .jsonl file (one JSON object per "
                                "line) or a .parquet file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RolloutInputError(f"{path}: not UTF-8 text (byte {exc.start}); pass a UTF-8 .jsonl file or a "
                                ".parquet file") from None
    stripped = text.lstrip()
    table = _wandb_table(stripped)
    if table is not None:
        return table
    if stripped.startswith("["):  # a .json file holding one array of objects
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise RolloutInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); write one JSON "
                                    "object per line") from None
        lines = [(i + 1, r) for i, r in enumerate(rows)]
    else:
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise RolloutInputError(f"{path}: line {n} is not valid JSON ({exc.msg}); each line must be one "
                                        "JSON object") from None
    for n, obj in lines:
        if not isinstance(obj, dict):
            raise RolloutInputError(f"{path}: line {n} is a JSON {type(obj).__name__}, not an object; each line "
                                    "must be one object such as {\"prompt\": ..., \"response\": ...}")
    return [obj for _, obj in lines]


def _wandb_table(text: str) -> list[dict] | None:
    """Rows of a table exported from Weights & Biases (``{"columns": [...], "data": [[...], ...]}``): how TRL
    versions that logged completions only to W&B (the ``completions`` table) can be read back."""
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not (isinstance(obj, dict) and isinstance(obj.get("columns"), list) and isinstance(obj.get("data"), list)):
        return None
    return [dict(zip(obj["columns"], row)) for row in obj["data"] if isinstance(row, list)]


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise RolloutInputError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); pass a "
                                ".parquet or .jsonl file") from None
    return table.to_pylist()


def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    if suffix in TEXT_SUFFIXES:
        return _read_jsonl(path)
    head = path.read_bytes()[:4]
    if head == b"PAR1":
        return _read_parquet(path)
    return _read_jsonl(path)


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def input_files(path: str | Path) -> list[Path]:
    """The files a ROLLOUTS argument names: the file itself, or every JSONL/Parquet file in a folder."""
    path = Path(path)
    if not path.exists():
        raise RolloutInputError(f"{path}: no such file or folder; pass a .jsonl/.parquet file, a folder of them "
                                "(verl's rollout_data_dir, TRL's completions/) or an OPD Lab run directory")
    if path.is_file():
        return [path]
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                    + PARQUET_SUFFIXES and not p.name.startswith(".")), key=_natural_key)
    if not files:
        raise RolloutInputError(f"{path}: folder holds no .jsonl or .parquet files; pass the folder the trainer "
                                "dumped rollouts into, or one file")
    return files


# ----------------------------------------------------------------------------- values


def _text(value: Any, path: Path, row: int, role: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        # TRL conversational completion: [{"role": "assistant", "content": ...}]
        return "".join(str(m["content"]) for m in value)
    raise RolloutInputError(f"{path}: row {row}: {role} is {type(value).__name__}, not text; map a text column "
                            f"with --map {role}=COL")


def _messages(value: Any, path: Path, row: int) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                      for m in value)):
        raise RolloutInputError(f"{path}: row {row}: messages is not a list of {{\"role\", \"content\"}} objects; "
                                "fix the row or map text columns with --map prompt=COL,response=COL")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool | str | list | dict):
        return float(value) if isinstance(value, bool) else None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _flag(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "correct")
    num = _number(value)
    return None if num is None else num > 0


def _step(value: Any, path: Path, row: int) -> int:
    try:
        step = int(value)
    except (TypeError, ValueError):
        raise RolloutInputError(f"{path}: row {row}: step {value!r} is not an integer; fix it or map another "
                                "column with --map step=COL") from None
    if step < 0:
        raise RolloutInputError(f"{path}: row {row}: step {step} is negative")
    return step


def _rollout(index: int, obj: dict, mapping: dict[str, str], path: Path, row: int, default_step: int) -> Rollout:
    step = _step(obj.get(mapping["step"]), path, row) if mapping.get("step") and obj.get(mapping["step"]) \
        is not None else default_step
    prompt = messages = None
    if "messages" in mapping and "response" not in mapping:
        msgs = _messages(obj.get(mapping["messages"]), path, row)
        if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise RolloutInputError(f"{path}: row {row}: messages must end with the assistant's response after at "
                                    "least one prompt message")
        messages, response = tuple(msgs[:-1]), msgs[-1]["content"]
    else:
        raw_prompt = obj.get(mapping["prompt"])
        if isinstance(raw_prompt, list):
            messages = tuple(_messages(raw_prompt, path, row))  # TRL conversational prompt
        else:
            prompt = _text(raw_prompt, path, row, "prompt")
        response = _text(obj.get(mapping["response"]), path, row, "response")
    ids = obj.get(mapping["response_ids"]) if "response_ids" in mapping else None
    if ids is not None:
        try:
            ids = tuple(int(i) for i in ids)
        except (TypeError, ValueError):
            raise RolloutInputError(f"{path}: row {row}: response_ids is not a list of integers") from None
    reward = _number(obj.get(mapping["reward"])) if "reward" in mapping else None
    correct = _flag(obj.get(mapping["correct"])) if "correct" in mapping else None
    return Rollout(index, step, prompt, messages, response, reward, correct, ids)


def read_rollouts(path: str | Path, column_map: dict[str, str] | None = None, *, default_step: int = 1) -> RolloutSet:
    """Every rollout under ``path`` (a file, a folder of files, or a run directory), validated and mapped.

    Rows without a step get ``default_step``. Raises :class:`RolloutInputError` (one line) on anything
    it cannot read or map.
    """
    from opd_core import runs

    user = dict(column_map or {})
    if Path(path).is_dir() and runs.is_run_dir(path):
        return _read_run_dir(Path(path))
    files = input_files(path)
    rollouts: list[Rollout] = []
    shape, used = "", {}
    for file in files:
        rows = _read_file(file)
        if not rows:
            raise RolloutInputError(f"{file}: no rollouts (empty file); pass a file with one JSON object per "
                                    "response")
        columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
        file_shape, mapping = _detect(columns, rows[0], user)
        _check_mapping(file, columns, mapping, user)
        if shape and (file_shape, mapping) != (shape, used):
            raise RolloutInputError(f"{file}: columns differ from {files[0].name} ({', '.join(columns)}); keep one "
                                    "shape per folder or pass the files one by one")
        shape, used = file_shape, mapping
        for row, obj in enumerate(rows, 1):
            rollouts.append(_rollout(len(rollouts), obj, mapping, file, row, default_step))
    return RolloutSet(shape, tuple(str(f) for f in files), used, tuple(rollouts))


def _read_run_dir(run_dir: Path) -> RolloutSet:
    """An OPD Lab run directory as rollouts: one per (step, sample), with its exact token ids."""
    from opd_core import runs

    cols = ["step", "sample", "pos", "token_id", "prompt", "response_text", "correct", "reward", "reference_only"]
    df = runs.read_tokens(run_dir, columns=cols)
    if df.empty:
        raise RolloutInputError(f"{run_dir}: run directory has no token records to re-score (tokens/ is empty)")
    if "prompt" not in df:
        raise RolloutInputError(f"{run_dir}: token records carry no prompt column, so they cannot be re-scored; "
                                "re-log with prompts (OPDLogger prompts=...)")
    if "reference_only" in df:
        df = df[~df["reference_only"].fillna(False).astype(bool)]
    df = df.sort_values(["step", "sample", "pos"])
    rollouts: list[Rollout] = []
    for (step, _sample), g in df.groupby(["step", "sample"], sort=True):
        first = g.iloc[0]
        reward = _number(first.get("reward")) if "reward" in g else None
        correct = _flag(first.get("correct")) if "correct" in g else None
        rollouts.append(Rollout(len(rollouts), int(step), str(first["prompt"]), None,
                                str(first.get("response_text", "") or ""), reward, correct,
                                tuple(int(t) for t in g["token_id"])))
    return RolloutSet("run", (str(run_dir),), {"response_ids": "token_id", "prompt": "prompt", "step": "step"},
                      tuple(rollouts))
