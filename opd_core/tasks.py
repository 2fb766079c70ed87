"""Tasks the engine trains and evaluates on: the generic interface, the loader, and the JSONL prompt task.

A task hands out prompts (with an optional reference answer) for a split and grades a response. The engine
only ever sees this interface, so the built-in toy task and a user's JSONL file are interchangeable.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

SPLITS = ("train", "eval")
# End-of-turn strings a decoded response may still carry; graders ignore one trailing occurrence.
END_MARKERS = ("<|im_end|>", "</s>", "<|endoftext|>", "<|eot_id|>", "<eos>")


@dataclass(frozen=True)
class Example:
    """One prompt to roll out, with the reference answer the grader compares against (if any)."""

    prompt: str
    answer: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Grade:
    """The grader's verdict on one response; `first_error_char` marks where the text first went wrong."""

    correct: bool
    format_ok: bool
    first_error_char: int | None  # offset into the response text, None when no canonical text is known/wrong


@runtime_checkable
class Task(Protocol):
    """What the engine needs from a task: seeded prompts per split and a grader."""

    name: str

    def examples(self, split: str, n: int, seed: int) -> list[Example]: ...

    def grade(self, example: Example, response: str) -> Grade: ...


def cannot_pass(task: object, example: Example, response: str) -> bool:
    """True once no continuation of ``response`` can be graded correct by ``task`` (its optional
    ``cannot_pass`` method; a task without one never says so). Lets a continuation whose verdict is settled
    stop early: the rescue phase's greedy continuations of a teacher that left the format at its first token
    otherwise run to ``max_new_tokens``."""
    method = getattr(task, "cannot_pass", None)
    return bool(method(example, response)) if callable(method) else False


def marker_free_candidates(response: str) -> list[str]:
    """``response`` as a grader may still come to read it (``strip_end_marker``): without trailing whitespace,
    and without a trailing end-of-turn marker or a piece of one that could still grow into it."""
    text = response.rstrip()
    out = [text]
    for marker in END_MARKERS:
        for k in range(1, len(marker) + 1):
            if text.endswith(marker[:k]):
                out.append(text[:-k].rstrip())
    return out


def check_split(split: str) -> None:
    """Reject an unknown split name with a message that lists the valid ones."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def strip_end_marker(response: str) -> str:
    """Drop surrounding whitespace and one trailing end-of-turn string, so graders judge the content only."""
    text = response.strip()
    for marker in END_MARKERS:
        if text.endswith(marker):
            return text[: -len(marker)].rstrip()
    return text


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"answer\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)


def final_answer(response: str) -> str | None:
    """Extract a response's final answer: last \\boxed{}, else after '####', else after 'Answer:', else last line."""
    text = strip_end_marker(response)
    for pattern in (_BOXED, _HASHES, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


@dataclass
class JsonlTask:
    """Prompts from a user's .jsonl file ({"prompt": ..., "answer": optional, "split": optional} per line).

    Records without a "split" field are split deterministically by a hash of the prompt (about 1 in 10 to
    eval); a file too small to split serves every record to both splits.
    """

    path: Path
    records: list[Example]
    name: str = "jsonl"

    @classmethod
    def from_file(cls, path: str | Path) -> JsonlTask:
        """Read and validate the file, naming the line of the first bad record."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"task file {path} not found; pass 'toy:addition' or a path to a .jsonl file")
        records: list[Example] = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                records.append(_parse_record(path, lineno, line))
        if not records:
            raise ValueError(f"task file {path} has no records; add lines like {{\"prompt\": \"...\"}}")
        return cls(path=path, records=records, name=f"jsonl:{path.name}")

    def _pool(self, split: str) -> list[Example]:
        explicit = [r for r in self.records if "split" in r.meta]
        if explicit:
            return [r for r in self.records if r.meta.get("split") == split]
        if len(self.records) < 10:
            return list(self.records)
        return [r for r in self.records if (_stable_hash(r.prompt) % 10 == 0) == (split == "eval")]

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """Return n records of the split in a seeded order, cycling through the pool if n exceeds it."""
        check_split(split)
        pool = self._pool(split)
        if not pool:
            raise ValueError(f"task file {self.path} has no records for split {split!r}; add some with "
                             f"\"split\": \"{split}\" or drop the split fields")
        rng = random.Random(seed)
        out: list[Example] = []
        while len(out) < n:
            order = list(pool)
            rng.shuffle(order)
            out.extend(order[: n - len(out)])
        return out

    def grade(self, example: Example, response: str) -> Grade:
        """Exact match of the reference answer against the response's final answer (both stripped)."""
        if example.answer is None:
            return Grade(correct=False, format_ok=True, first_error_char=None)
        got = final_answer(response)
        if got is None:
            return Grade(correct=False, format_ok=False, first_error_char=None)
        return Grade(correct=got == example.answer.strip(), format_ok=True, first_error_char=None)


def _parse_record(path: Path, lineno: int, line: str) -> Example:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
        raise ValueError(f"{where}: needs a non-empty string field \"prompt\"; e.g. {{\"prompt\": \"2+2\"}}")
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise ValueError(f"{where}: \"answer\" must be a string or number, got {type(answer).__name__}")
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "answer")}
    if "split" in meta and meta["split"] not in SPLITS:
        raise ValueError(f"{where}: \"split\" must be one of {', '.join(SPLITS)}, got {meta['split']!r}")
    return Example(prompt=obj["prompt"], answer=None if answer is None else str(answer), meta=meta)


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def load_task(spec: str) -> Task:
    """Turn a task spec into a task: "toy:addition" (alias "toy") or a path to a .jsonl file."""
    if spec in ("toy", "toy:addition"):
        from opd_core.toy.task import AdditionTask

        return AdditionTask()
    if spec == "toy:addition-v2":
        from opd_core.toy.task_v2 import CorrectableAdditionTask

        return CorrectableAdditionTask()
    if spec.startswith("toy:"):
        raise ValueError(f"unknown built-in task {spec!r}; the built-in tasks are 'toy:addition', 'toy:addition-v2'")
    if not spec.endswith(".jsonl"):
        raise ValueError(f"task {spec!r} is neither a built-in ('toy:addition') nor a .jsonl file path")
    return JsonlTask.from_file(spec)
