"""Toy world v2: column addition in free surface styles, where a wrong step can be taken back.

The problem set and the splits are v1's (2-3 digit a+b). The response is still a worked chain, one step
per column from the right, but:

- **Surface style is free.** Each step may name its operands in either order ("7+8" or "8+7"), write its
  sum after "=" or ":" and end in ";", "," or "."; the final "=85" may be ":85". The grader accepts every
  style. The teacher is trained on all of them (so it spreads its mass over harmless choices, like a
  reasoning model's phrasing); the student on the canonical style only ("7+8=15;4+3+1=8;=85", v1's), so
  it is sure of choices the teacher is not: most sampled-token rewards start negative, as in the paper.
  Every style has the same length as the canonical one, so the teacher's column lookups carry over.
- **A response can correct itself.** "!" abandons the attempt so far and the chain restarts from the
  first column; the last attempt is graded. The teacher learns this from chains with an injected wrong
  step (loss off on the wrong text) followed by "!" right after the wrong step or one step later, so it
  rescues a student prefix that went wrong a moment ago and was never shown one that went wrong long ago.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import regex

from opd_core.tasks import Example, Grade, check_split, strip_end_marker
from opd_core.toy.task import _operand, split_of

TASK_NAME = "toy:addition-v2"
CORRECTION = "!"
SEPARATORS = (";", ",", ".")
EQUALS = ("=", ":")
_STEP = r"\d\+\d(?:\+1)?[=:]\d{1,2}"
_ATTEMPT = re.compile(rf"^(?:{_STEP}[;,.])+[=:](\d+)$")


@dataclass(frozen=True)
class Column:
    """One column of the sum: its two digits, whether a carry comes in, and the column sum written."""

    x: int
    y: int
    carry: bool
    total: int


def columns(a: int, b: int) -> list[Column]:
    """The columns of a+b from the right, the shorter operand padded with 0 (v1's chain)."""
    da, db = str(a)[::-1], str(b)[::-1]
    out, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        out.append(Column(x, y, bool(carry), s))
        carry = 1 if s >= 10 else 0
    return out


@dataclass(frozen=True)
class Style:
    """The surface choices of one step: operand order, the sign before the sum, the separator."""

    swap: bool = False
    eq: str = "="
    sep: str = ";"


CANONICAL = Style()


def random_style(rng: random.Random, swap: bool = False) -> Style:
    """A style drawn uniformly over every harmless choice (what the teacher is trained on). Operand order
    stays fixed unless ``swap``: a teacher of this size copies the wrong digits when it may vary."""
    return Style(swap and rng.random() < 0.5, rng.choice(EQUALS), rng.choice(SEPARATORS))


def write_step(col: Column, style: Style, total: int | None = None) -> str:
    """One step's text in a style ("7+8+1=16"), without its separator; ``total`` overrides the sum."""
    x, y = (col.y, col.x) if style.swap else (col.x, col.y)
    carry = "+1" if col.carry else ""
    return f"{x}+{y}{carry}{style.eq}{col.total if total is None else total}"


def write_final(answer: int | str, style: Style) -> str:
    return f"{style.eq}{answer}"


def chain(a: int, b: int, styles: list[Style] | None = None, final: Style = CANONICAL) -> str:
    """A correct chain for a+b; canonical style unless per-column styles are given."""
    cols = columns(a, b)
    styles = styles or [CANONICAL] * len(cols)
    return "".join(write_step(c, s) + s.sep for c, s in zip(cols, styles)) + write_final(a + b, final)


def canonical_chain(a: int, b: int) -> str:
    """The student's style: v1's worked chain."""
    return chain(a, b)


def valid_pattern(a: int, b: int) -> str:
    """A regular expression matching exactly the correct single-attempt chains of a+b, in any style."""
    parts = []
    for c in columns(a, b):
        carry = r"\+1" if c.carry else ""
        parts.append(rf"(?:{c.x}\+{c.y}|{c.y}\+{c.x}){carry}[=:]{c.total}[;,.]")
    return "".join(parts) + rf"[=:]{a + b}"


def first_error(text: str, pattern: regex.Pattern) -> int | None:
    """Offset of the first character no correct chain can continue from (None: text is a correct chain)."""
    if pattern.fullmatch(text):
        return None
    lo, hi = 0, len(text)  # text[:lo] is a valid prefix; find the longest one by bisection (prefixes nest)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pattern.fullmatch(text[:mid], partial=True):
            lo = mid
        else:
            hi = mid - 1
    return lo


def parse_attempts(text: str) -> list[str]:
    """The attempts of a response, split at each correction marker."""
    return text.split(CORRECTION)


class CorrectableAdditionTask:
    """v2's task: same problems as v1, free surface style, '!' restarts the chain; the last attempt counts."""

    name = TASK_NAME

    def __init__(self) -> None:
        self._patterns: dict[tuple[int, int], regex.Pattern] = {}

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        """Draw n problems of the split; the same (split, n, seed) gives v1's problems in v1's order."""
        check_split(split)
        rng = random.Random(f"{split}:{seed}")
        out: list[Example] = []
        while len(out) < n:
            a, b = _operand(rng), _operand(rng)
            if split_of(a, b) != split:
                continue
            out.append(Example(prompt=f"{a}+{b}", answer=str(a + b),
                               meta={"a": a, "b": b, "target": canonical_chain(a, b)}))
        return out

    def pattern(self, a: int, b: int) -> regex.Pattern:
        key = (a, b)
        if key not in self._patterns:
            if len(self._patterns) > 4096:
                self._patterns.clear()
            self._patterns[key] = regex.compile(valid_pattern(a, b))
        return self._patterns[key]

    def grade(self, example: Example, response: str) -> Grade:
        """Correct when the last attempt is a well-formed chain ending in a+b; first error = where the first
        attempt left every correct chain (a '!' after a correct step counts as leaving it)."""
        text = strip_end_marker(response)
        a, b = _operands(example)
        last = parse_attempts(text)[-1].strip()
        match = _ATTEMPT.match(last)
        offset = first_error(text, self.pattern(a, b))
        return Grade(correct=bool(match) and match.group(1) == str(a + b), format_ok=bool(match),
                     first_error_char=offset)


def _operands(example: Example) -> tuple[int, int]:
    if "a" in example.meta and "b" in example.meta:
        return int(example.meta["a"]), int(example.meta["b"])
    match = re.fullmatch(r"\s*(\d+)\+(\d+)\s*", example.prompt)
    if not match:
        raise ValueError(f"{TASK_NAME} cannot grade prompt {example.prompt!r}; expected 'A+B' with digits")
    return int(match.group(1)), int(match.group(2))


# ----------------------------------------------------------------------------- training targets


@dataclass(frozen=True)
class Target:
    """A training response and the character spans that carry no loss (the injected wrong text)."""

    text: str
    no_loss: tuple[tuple[int, int], ...] = ()


def wrong_chain(a: int, b: int, rng: random.Random, styles: list[Style], final: Style) -> str:
    """A chain with one student-like mistake (a wrong sum, a miscopied digit, a carry added or dropped) in a
    random step, every later step computed consistently from it, as a student that did not notice would."""
    cols = columns(a, b)
    bad, kind = rng.randrange(len(cols)), rng.choice(("sum", "sum", "x", "y", "carry"))
    text, carry, digits = "", 0, []
    for i, c in enumerate(cols):
        x, y, has_carry = c.x, c.y, bool(carry)
        if i == bad and kind == "x":
            x = rng.choice([d for d in range(10) if d != c.x])
        if i == bad and kind == "y":
            y = rng.choice([d for d in range(10) if d != c.y])
        if i == bad and kind == "carry":
            has_carry = not has_carry
        total = x + y + int(has_carry)
        if i == bad and kind == "sum":
            total = rng.choice([t for t in range(max(0, total - 3), min(19, total + 3) + 1) if t != total])
        text += write_step(Column(x, y, has_carry, total), styles[i]) + styles[i].sep
        carry = 1 if total >= 10 else 0
        digits.append(total % 10)
    answer = ("1" if carry else "") + "".join(str(d) for d in reversed(digits))
    return text + write_final(answer.lstrip("0") or "0", final)


# Characters a teacher training chain runs on past its first mistake before it writes "!": mostly none,
# sometimes a few. A student prefix further past its mistake than this is off the teacher's support.
DELAY_WEIGHTS: dict[tuple[int, int], float] = {(0, 0): 0.5, (1, 3): 0.3, (4, 6): 0.2}


def teacher_target(a: int, b: int, rng: random.Random, *, error_rate: float = 0.5) -> Target:
    """A teacher training chain in random styles; with ``error_rate`` it first goes wrong (`wrong_chain`),
    runs on a few characters (``DELAY_WEIGHTS``), then writes '!' and a fresh correct chain. The wrong text
    carries no loss: the teacher learns to notice a mistake and restart, never to make one."""
    cols = columns(a, b)
    fresh = chain(a, b, [random_style(rng) for _ in cols], random_style(rng))
    if rng.random() >= error_rate:
        return Target(fresh)
    for _ in range(8):
        wrong = wrong_chain(a, b, rng, [random_style(rng) for _ in cols], random_style(rng))
        start = first_error(wrong, regex.compile(valid_pattern(a, b)))
        if start is not None and start < len(wrong):
            break
    else:
        return Target(fresh)
    lo, hi = rng.choices(list(DELAY_WEIGHTS), weights=list(DELAY_WEIGHTS.values()))[0]
    end = min(len(wrong), start + 1 + rng.randint(lo, hi))
    return Target(wrong[:end] + CORRECTION + fresh, ((start, end),))
