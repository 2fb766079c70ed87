"""Compare two tokenizers and bridge them: the mismatch report, id maps by text, span alignment.

When student and teacher tokenizers differ, the teacher must be asked about the same *text*, never the
same ids. This module says how far apart two tokenizers are (vocabulary overlap by decoded text, ids
that read as other text, special tokens and chat templates side by side, EOS and end of turn, how each
side reads the other's EOS), maps ids by text (special tokens by role), lists the student ids whose
meaning differs on the teacher side, and attributes teacher tokens to student tokens by character
offsets. Every vocabulary is read once (``opd_core.vocabulary``); nothing here re-reads a tokenizer
per token.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from opd_core.vocabulary import ROLES, Vocabulary, end_token_id, vocabulary

MAX_LISTED_IDS = 50
SHOWN_IDS = 10
DEFAULT_SAMPLES = ["Hello, world! 12+34", "7+8=15;4+3+1=8;=85", "The answer is 1998.", "  indented\n\ttab “quote”"]


def token_strings(tok: PreTrainedTokenizerBase) -> list[str | None]:
    """The decoded text of every id below len(tok) (specials by name; None for holes in the vocabulary)."""
    return list(vocabulary(tok).texts)


def _as_tokenizer(tok: PreTrainedTokenizerBase | str | Path) -> PreTrainedTokenizerBase:
    if isinstance(tok, str | Path):
        from opd_core.tokenizer_files import load_tokenizer

        return load_tokenizer(tok, fast=True)
    return tok


def _special_table(tok: PreTrainedTokenizerBase, vocab: Vocabulary) -> dict:
    table = {role: {"token": getattr(tok, f"{role}_token", None), "id": tid} for role, tid in vocab.roles.items()}
    table["end_of_turn"] = vocab.end_of_turn
    table["chat_markers"] = vocab.template.markers
    table["all_special"] = sorted(vocab.raw[i] for i in vocab.special_ids if vocab.raw[i] is not None)
    table["has_chat_template"] = vocab.template.present
    table["chat_template_sample"] = vocab.template.sample
    return table


@dataclass
class TokenizerReport:
    """How two tokenizers differ, in the fields `opd-lab tokenizers compare --json` writes."""

    name_a: str
    name_b: str
    vocab_size_a: int
    vocab_size_b: int
    shared_strings: int
    overlap_ratio: float  # shared distinct texts / distinct texts on either side (1.0 = same vocabulary)
    special_tokens: dict  # {"a": table, "b": table}
    eos_a: str | None
    eos_b: str | None
    eos_maps_to: dict  # how each side reads the other's EOS (by id, by string, in its template)
    differing_ids: list[dict]  # ids present on both sides that read as different text (first few)
    n_differing_ids: int
    chat_template_same: bool
    examples: list[dict] = field(default_factory=list)
    end_of_turn_a: str | None = None
    end_of_turn_b: str | None = None
    ids_mapped_a_to_b: int = 0  # ids of A with a counterpart of the same text (or role) in B
    style_a: str = ""
    style_b: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data."""
        return asdict(self)

    def format_text(self) -> str:
        """The report as a short human-readable text."""
        a, b = self.special_tokens["a"], self.special_tokens["b"]
        lines = [f"A: {self.name_a} ({self.style_a})", f"B: {self.name_b} ({self.style_b})",
                 f"vocabulary: A {self.vocab_size_a}, B {self.vocab_size_b}, shared texts "
                 f"{self.shared_strings} (overlap {self.overlap_ratio:.1%}); A ids with a B counterpart "
                 f"{self.ids_mapped_a_to_b} of {self.vocab_size_a}",
                 f"ids reading as different text: {self.n_differing_ids}"]
        lines += [f"  id {d['id']}: A {d['a']!r} / B {d['b']!r}" for d in self.differing_ids[:SHOWN_IDS]]
        if self.n_differing_ids > SHOWN_IDS:
            lines.append(f"  … {self.n_differing_ids - SHOWN_IDS} more (--json lists the first {MAX_LISTED_IDS})")
        lines.append("special tokens (A | B):")
        for role in ROLES:
            lines.append(f"  {role:4s} {a[role]['token']!s:>20} ({a[role]['id']}) | {b[role]['token']} ({b[role]['id']})")
        lines.append(f"  end of turn {a['end_of_turn']!s:>13} | {b['end_of_turn']}")
        lines.append(f"  chat markers  {a['chat_markers']} | {b['chat_markers']}")
        lines.append(f"  all special   {len(a['all_special'])} | {len(b['all_special'])}")
        lines.append(f"chat template: {'same' if self.chat_template_same else 'different'}")
        lines.append(f"  A renders: {a['chat_template_sample']!r}")
        lines.append(f"  B renders: {b['chat_template_sample']!r}")
        if self.eos_a == self.eos_b and self.eos_maps_to["a_in_b"]["is_eos"]:
            lines.append(f"EOS: both sides use {self.eos_a!r}")
        else:
            lines += [f"EOS {side}: {info['summary']}" for side, info in self.eos_maps_to.items()]
        seen = set()
        for ex in self.examples:
            if ex["text"] in seen:
                continue
            seen.add(ex["text"])
            flag = "DIFFERENT pieces" if not ex["same"] else "same pieces, other ids" if not ex["same_ids"] else "same"
            lines.append(f"re-tokenisation {flag}: {ex['text']!r}")
            if not ex["same"]:
                lines.append(f"  A: {ex['tokens_a']}")
                lines.append(f"  B: {ex['tokens_b']}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _eos_reading(src: PreTrainedTokenizerBase, dst: PreTrainedTokenizerBase, dst_vocab: Vocabulary) -> dict:
    """What dst makes of src's EOS: the text at the same id, how it tokenizes the text, template use."""
    eos, eos_id = src.eos_token, src.eos_token_id
    same_id = dst_vocab.texts[eos_id] if eos_id is not None and eos_id < len(dst_vocab) else None
    ids = dst(eos, add_special_tokens=False)["input_ids"] if eos else []
    tokens = [dst_vocab.text(i) for i in ids]
    in_template = bool(eos) and eos in (dst_vocab.template.sample or "")
    is_eos = eos == dst.eos_token
    if is_eos:
        summary = f"{eos!r} is also the other side's EOS"
    else:
        at_id = (f"reads id {eos_id} as {same_id!r}" if same_id is not None
                 else f"has no id {eos_id}")
        summary = (f"{eos!r} is not the other side's EOS ({dst.eos_token!r}); it {at_id}, tokenizes the text "
                   f"as {tokens} and its chat template {'uses' if in_template else 'never uses'} it")
    return {"token": eos, "id": eos_id, "same_id_reads": same_id, "tokenized_as": tokens,
            "used_in_template": in_template, "is_eos": is_eos, "summary": summary}


def _retokenise(tok_a, tok_b, vocab_a: Vocabulary, vocab_b: Vocabulary, text: str) -> dict:
    ids_a = tok_a(text, add_special_tokens=False)["input_ids"]
    ids_b = tok_b(text, add_special_tokens=False)["input_ids"]
    tokens_a = [vocab_a.text(i) for i in ids_a]
    tokens_b = [vocab_b.text(i) for i in ids_b]
    return {"text": text, "tokens_a": tokens_a, "tokens_b": tokens_b, "ids_a": ids_a, "ids_b": ids_b,
            "same": tokens_a == tokens_b, "same_ids": ids_a == ids_b}


def turn_end_warnings(tok: PreTrainedTokenizerBase, side: str) -> list[str]:
    """Sentences about one side's end of reply: no chat template, or an EOS that is not its end of turn."""
    vocab = vocabulary(tok)
    name = str(getattr(tok, "name_or_path", "") or side)
    out = []
    if not vocab.template.present:
        out.append(f"{side} ({name}) has no chat template: prompts are the raw text after its BOS, with no turn "
                   f"markers, and a reply ends with its EOS {tok.eos_token!r}")
    elif vocab.end_of_turn and vocab.end_of_turn != tok.eos_token:
        out.append(f"{side}: EOS {tok.eos_token!r} is not the token that ends an assistant turn in its chat "
                   f"template ({vocab.end_of_turn!r}); replies end with {vocab.end_of_turn!r}")
    return out


def compare_tokenizers(a: PreTrainedTokenizerBase | str | Path, b: PreTrainedTokenizerBase | str | Path,
                       sample_texts: list[str] | None = None, names: tuple[str, str] | None = None) -> TokenizerReport:
    """Build the mismatch report of two tokenizers (objects or folders)."""
    tok_a, tok_b = _as_tokenizer(a), _as_tokenizer(b)
    va, vb = vocabulary(tok_a), vocabulary(tok_b)
    set_a = {k for k in va.keys if k is not None}
    set_b = {k for k in vb.keys if k is not None}
    shared = set_a & set_b
    differing = [{"id": i, "a": va.texts[i], "b": vb.texts[i]} for i, (x, y) in enumerate(zip(va.keys, vb.keys))
                 if x is not None and y is not None and x != y]
    samples = list(sample_texts) if sample_texts is not None else [
        *DEFAULT_SAMPLES, f"=85{tok_a.eos_token}", f"=85{tok_b.eos_token}"]
    samples = list(dict.fromkeys(samples))
    mapped = int((vocab_id_map(tok_a, tok_b) >= 0).sum())
    name_a, name_b = names or (str(getattr(tok_a, "name_or_path", "") or "A"),
                               str(getattr(tok_b, "name_or_path", "") or "B"))
    return TokenizerReport(
        name_a=name_a, name_b=name_b, vocab_size_a=len(tok_a), vocab_size_b=len(tok_b), shared_strings=len(shared),
        overlap_ratio=round(len(shared) / max(1, len(set_a | set_b)), 6),
        special_tokens={"a": _special_table(tok_a, va), "b": _special_table(tok_b, vb)},
        eos_a=tok_a.eos_token, eos_b=tok_b.eos_token,
        eos_maps_to={"a_in_b": _eos_reading(tok_a, tok_b, vb), "b_in_a": _eos_reading(tok_b, tok_a, va)},
        differing_ids=differing[:MAX_LISTED_IDS], n_differing_ids=len(differing),
        chat_template_same=getattr(tok_a, "chat_template", None) == getattr(tok_b, "chat_template", None),
        examples=[_retokenise(tok_a, tok_b, va, vb, t) for t in samples],
        end_of_turn_a=va.end_of_turn, end_of_turn_b=vb.end_of_turn, ids_mapped_a_to_b=mapped,
        style_a=va.style, style_b=vb.style,
        warnings=turn_end_warnings(tok_a, "A") + turn_end_warnings(tok_b, "B"),
    )


def vocab_id_map(src_tok: PreTrainedTokenizerBase, dst_tok: PreTrainedTokenizerBase) -> np.ndarray:
    """Map every src id to the dst id with the same text; specials by role (EOS to the end of a reply); -1 none."""
    src, dst = vocabulary(src_tok), vocabulary(dst_tok)
    dst_index: dict[bytes | str, int] = {}
    for i, k in enumerate(dst.keys):
        if k is None:
            continue
        # Two ids with the same text: keep the one the tokenizer emits. SentencePiece's byte-fallback piece
        # <0x2C> reads as "," too, but Gemma writes "," with its own piece and gives <0x2C> almost no mass.
        if k not in dst_index or _is_byte_piece(dst.raw[dst_index[k]]):
            dst_index[k] = i
    out = np.fromiter((-1 if k is None else dst_index.get(k, -1) for k in src.keys), dtype=np.int64,
                      count=len(src.keys))
    dst_roles = dict(dst.roles)
    dst_roles["eos"] = end_token_id(dst_tok)
    for role in reversed(ROLES):  # eos last so that it wins when one id has several roles
        src_id = src.roles.get(role)
        if src_id is not None and src_id < len(out):
            out[src_id] = -1 if dst_roles[role] is None else dst_roles[role]
    src_end = end_token_id(src_tok)
    if src_end is not None and src_end < len(out) and dst_roles["eos"] is not None:
        out[src_end] = dst_roles["eos"]  # the end of a reply means the end of a reply on both sides
    return out


def _is_byte_piece(raw: str | None) -> bool:
    return raw is not None and len(raw) == 6 and raw.startswith("<0x") and raw.endswith(">")


def mismatched_special_ids(student_tok: PreTrainedTokenizerBase, teacher_tok: PreTrainedTokenizerBase,
                           extra_strings: list[str] | tuple[str, ...] = ()) -> list[int]:
    """Student ids whose meaning differs on the teacher side (to mask from the distillation signal).

    Every special token of the student (its whole added-token table, not only bos/eos/unk) unless the
    teacher has the same special token or the same role; every marker the student's chat template
    writes (its EOS/end of turn included) unless the teacher's template writes it too; plus the ids of
    ``extra_strings``.
    """
    student, teacher = vocabulary(student_tok), vocabulary(teacher_tok)
    teacher_keys = {teacher.keys[i] for i in teacher.special_ids if i < len(teacher)}
    teacher_roles = {r for r, i in teacher.roles.items() if i is not None}
    out: set[int] = set()
    for sid in student.special_ids:
        if sid >= len(student):
            continue
        by_role = any(r in teacher_roles for r, i in student.roles.items() if i == sid)
        if not (by_role or student.keys[sid] in teacher_keys):
            out.add(sid)
    teacher_markers = set(teacher.template.markers)
    for marker in student.template.markers:  # a turn marker means something only in its own template
        if marker not in teacher_markers:
            out.add(student_tok.convert_tokens_to_ids(marker))
    for text in extra_strings:
        out.update(student_tok(text, add_special_tokens=False)["input_ids"])
    return sorted(i for i in out if i is not None and i >= 0)


def assign_teacher_to_student(student_offsets: list[tuple[int, int]],
                              teacher_offsets: list[tuple[int, int]]) -> list[int]:
    """For each teacher token, the student token whose span holds the teacher token's last character.

    -1 marks a teacher token with no such student token (an empty span, or text outside every student
    span). Whether the owned teacher tokens cover a student token *exactly* (and so give its probability
    by the chain rule) is decided by :func:`alignment_kinds`.
    """
    owner: dict[int, int] = {}
    for index, (start, end) in enumerate(student_offsets):
        for char in range(start, end):
            owner.setdefault(char, index)
    return [owner.get(end - 1, -1) if end > start else -1 for start, end in teacher_offsets]


UNALIGNED, ONE_TO_ONE, MULTI_TOKEN = 0, 1, 2


def alignment_kinds(student_offsets: list[tuple[int, int]], teacher_offsets: list[tuple[int, int]],
                    owner: list[int]) -> list[int]:
    """Per student token: 1 when one teacher token has exactly its span, 2 when several teacher tokens
    tile its span exactly, 0 otherwise (a teacher token crosses one of its boundaries, or none ends in it).

    Only exact tilings give the teacher's probability of the student token's own text, given the same
    prefix: the product of the teacher's probabilities of the tokens that tile it (the chain rule).
    A teacher token that starts before the student token covers text the student wrote earlier, one that
    ends in a later student token covers text not yet written; either way no honest number exists, so
    the token is unaligned (and masked). A zero-length student token (half of a character) is unaligned.
    """
    n = len(student_offsets)
    owned: list[list[int]] = [[] for _ in range(n)]
    for j, i in enumerate(owner):
        if 0 <= i < n:
            owned[i].append(j)
    kinds = [UNALIGNED] * n
    for i, (start, end) in enumerate(student_offsets):
        js = owned[i]
        if not js or end <= start:
            continue
        pieces = [tuple(teacher_offsets[j]) for j in js]
        pieces = [p for p in pieces if p[1] > p[0]]
        tiles = bool(pieces) and pieces[0][0] == start and pieces[-1][1] == end and all(
            a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        if tiles:
            kinds[i] = ONE_TO_ONE if len(pieces) == 1 else MULTI_TOKEN
    return kinds


def cli_compare(path_a: str, path_b: str, as_json: bool) -> int:
    """Entry point of `opd-lab tokenizers compare A B [--json]`: print the report, return the exit code.

    A toy preset stands for one tokenizer: its student on the A side, its teacher on the B side; the
    report names which, so `compare toy:mismatched toy:mismatched` says it compares student with teacher.
    """
    from opd_core.tokenizer_files import resolve_model_path

    try:
        path_a_resolved = resolve_model_path(path_a, "student")
        path_b_resolved = resolve_model_path(path_b, "teacher")
        report = compare_tokenizers(path_a_resolved, path_b_resolved,
                                    names=(_describe(path_a, path_a_resolved, "student"),
                                           _describe(path_b, path_b_resolved, "teacher")))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
    return 0


def _describe(spec: str, resolved: Path, role: str) -> str:
    """A preset is named with what it resolves to; a path as given."""
    if spec.startswith("toy:"):
        return f"{spec} → its {role} ({resolved})"
    return spec
