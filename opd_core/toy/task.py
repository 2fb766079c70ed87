"""The toy reasoning task: column addition written as a worked chain, graded against the canonical chain.

Prompt "47+38" has the response "7+8=15;4+3+1=8;=85": one step per column from the right (the shorter
operand padded with 0, the carry written as "+1"), then "=" and the sum. Every step depends on the carry
of the one before, so a single early wrong digit sends the rest of the chain off the teacher's training
distribution, which is what on-policy distillation's teacher-reliability failure needs.
"""

from __future__ import annotations

import random
import re
import zlib

import regex

from opd_core.tasks import Example, Grade, check_split, marker_free_candidates, strip_end_marker

MIN_OPERAND = 10  # two digits
MAX_OPERAND = 999  # three digits
EVAL_SHARE = 10  # one problem in EVAL_SHARE belongs to the eval split
# The exact grammar of a response: steps "a+b[+1]=s;" then "=answer".
_STEP = r"\d\+\d(?:\+1)?=\d{1,2}"
_FORMAT = re.compile(rf"^(?:{_STEP};)+=\d+$")
# The same grammar for prefixes: does some continuation of this text still match it?
_FORMAT_PREFIX = regex.compile(rf"(?:{_STEP};)+=\d+")


def worked_chain(a: int, b: int) -> str:
    """Return the canonical response for a+b (the text the teacher is trained to produce)."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        carry = 1 if s >= 10 else 0
    return ";".join(steps) + f";={a + b}"


def split_of(a: int, b: int) -> str:
    """Assign a problem to a split by a stable hash, so eval problems never appear in training."""
    return "eval" if zlib.crc32(f"{a}+{b}".encode()) % EVAL_SHARE == 0 else "train"


def first_difference(text: str, reference: str) -> int | None:
    """Return the offset of the first character where text departs from reference (None if equal)."""
    for i, (x, y) in enumerate(zip(text, reference)):
        if x != y:
            return i
    return None if len(text) == len(reference) else min(len(text), len(reference))


class AdditionTask:
    """Seeded 2-3 digit addition prompts with worked-chain answers; exact-match and format grader."""

    name = "toy:addition"

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """Draw n problems of the split; the same (split, n, seed) always gives the same list."""
        check_split(split)
        rng = random.Random(f"{split}:{seed}")
        out: list[Example] = []
        while len(out) < n:
            a = _operand(rng)
            b = _operand(rng)
            if split_of(a, b) != split:
                continue
            out.append(Example(prompt=f"{a}+{b}", answer=str(a + b),
                               meta={"a": a, "b": b, "target": worked_chain(a, b)}))
        return out

    def grade(self, example: Example, response: str) -> Grade:
        """Grade a response: correct when the final answer matches, format_ok when the chain parses."""
        text = strip_end_marker(response)
        a, b = _operands(example)
        canonical = worked_chain(a, b)
        format_ok = bool(_FORMAT.match(text))
        answer = text.rsplit("=", 1)[-1] if format_ok else None
        offset = first_difference(response, canonical)
        if offset is not None and offset == len(canonical) and text == canonical:
            offset = None  # only an end-of-turn marker or whitespace follows the canonical chain
        return Grade(correct=answer == str(a + b), format_ok=format_ok, first_error_char=offset)

    def cannot_pass(self, example: Example, response: str) -> bool:  # noqa: ARG002 - the grammar decides
        """True once no continuation of ``response`` is a well-formed chain (``grade`` then says wrong whatever
        follows): the text, with or without a trailing piece of an end marker, is no prefix of the grammar."""
        return not any(_FORMAT_PREFIX.fullmatch(text.lstrip(), partial=True) is not None
                       for text in marker_free_candidates(response))


def _operand(rng: random.Random) -> int:
    digits = rng.choice((2, 3))
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _operands(example: Example) -> tuple[int, int]:
    if "a" in example.meta and "b" in example.meta:
        return int(example.meta["a"]), int(example.meta["b"])
    match = re.fullmatch(r"\s*(\d+)\+(\d+)\s*", example.prompt)
    if not match:
        raise ValueError(f"toy:addition cannot grade prompt {example.prompt!r}; expected 'A+B' with digits")
    return int(match.group(1)), int(match.group(2))
