"""Compare two tokenizers and bridge them: the mismatch report, id maps by string, span alignment.

When student and teacher tokenizers differ, the teacher must be asked about the same *text*, never the
same ids. This module says how far apart two tokenizers are (vocabulary overlap, ids that read as other
strings, special tokens and chat templates side by side, how each side reads the other's EOS), maps ids by
normalised string (special tokens by role), lists the student ids whose meaning differs on the teacher
side, and attributes teacher tokens to student tokens by character offsets.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

ROLES = ("eos", "bos", "pad", "unk")
MAX_LISTED_IDS = 50
DEFAULT_SAMPLES = ["Hello, world! 12+34", "7+8=15;4+3+1=8;=85", "The answer is 1998."]


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Invert GPT-2's byte-to-unicode table (byte-level BPE writes bytes as printable characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _space_style(tok: PreTrainedTokenizerBase) -> str:
    """Tell how the tokenizer writes spaces in its vocabulary: 'byte_level', 'metaspace' or 'plain'."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return "metaspace" if any("▁" in t for t in list(tok.get_vocab())[:2000]) else "plain"
    spec = json.loads(backend.to_str())
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("ByteLevel", "Metaspace"):
                found.add(node["type"])
            if node.get("type") == "Replace" and "▁" in json.dumps(node):
                found.add("Metaspace")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk({k: spec.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")})
    return "byte_level" if "ByteLevel" in found else "metaspace" if "Metaspace" in found else "plain"


def normalise_token(token: str, style: str) -> str:
    """Write a vocabulary entry as the text it stands for (byte-level 'Ġ' and SentencePiece '▁' as spaces)."""
    if style == "byte_level":
        decoder = _byte_decoder()
        if all(ch in decoder for ch in token):
            return bytes(decoder[ch] for ch in token).decode("utf-8", errors="backslashreplace")
        return token
    if style == "metaspace":
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return chr(int(token[3:5], 16))  # SentencePiece byte fallback
        return token.replace("▁", " ")
    return token


def token_strings(tok: PreTrainedTokenizerBase) -> list[str | None]:
    """The normalised string of every id below len(tok) (None for holes in the vocabulary)."""
    style = _space_style(tok)
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    raw = tok.convert_ids_to_tokens(list(range(len(tok))))
    return [None if t is None else (t if i in special else normalise_token(t, style)) for i, t in enumerate(raw)]


def _as_tokenizer(tok: PreTrainedTokenizerBase | str | Path) -> PreTrainedTokenizerBase:
    if isinstance(tok, (str, Path)):
        from opd_core.models import load_tokenizer

        return load_tokenizer(tok)
    return tok


def _role_ids(tok: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {role: getattr(tok, f"{role}_token_id", None) for role in ROLES}


def _template_markers(tok: PreTrainedTokenizerBase) -> list[str]:
    """Special tokens the chat template writes (its turn markers and end of turn)."""
    template = tok.chat_template if isinstance(getattr(tok, "chat_template", None), str) else ""
    rendered = _render_sample(tok) or ""
    specials = [t for t in tok.all_special_tokens if t]
    return sorted({t for t in specials if t in template or t in rendered})


def _render_sample(tok: PreTrainedTokenizerBase) -> str | None:
    if not getattr(tok, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "4"}]
    try:
        return tok.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that needs other roles or variables: report it as not renderable
        return None


def _special_table(tok: PreTrainedTokenizerBase) -> dict:
    table = {role: {"token": getattr(tok, f"{role}_token", None), "id": tid}
             for role, tid in _role_ids(tok).items()}
    table["chat_markers"] = _template_markers(tok)
    table["all_special"] = sorted(t for t in tok.all_special_tokens if t)
    table["chat_template_sample"] = _render_sample(tok)
    return table


@dataclass
class TokenizerReport:
    """How two tokenizers differ, in the fields `opd-lab tokenizers compare --json` writes."""

    name_a: str
    name_b: str
    vocab_size_a: int
    vocab_size_b: int
    shared_strings: int
    overlap_ratio: float  # shared distinct strings / distinct strings on either side (1.0 = same vocabulary)
    special_tokens: dict  # {"a": table, "b": table}
    eos_a: str | None
    eos_b: str | None
    eos_maps_to: dict  # how each side reads the other's EOS (by id, by string, in its template)
    differing_ids: list[dict]  # ids present on both sides that read as different strings (first few)
    n_differing_ids: int
    chat_template_same: bool
    examples: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as plain JSON-ready data."""
        return asdict(self)

    def format_text(self) -> str:
        """The report as a short human-readable text."""
        a, b = self.special_tokens["a"], self.special_tokens["b"]
        lines = [f"A: {self.name_a}", f"B: {self.name_b}",
                 f"vocabulary: A {self.vocab_size_a}, B {self.vocab_size_b}, shared strings "
                 f"{self.shared_strings} (overlap {self.overlap_ratio:.1%})",
                 f"ids reading as different strings: {self.n_differing_ids}"]
        lines += [f"  id {d['id']}: A {d['a']!r} / B {d['b']!r}" for d in self.differing_ids[:10]]
        lines.append("special tokens (A | B):")
        for role in ROLES:
            lines.append(f"  {role:4s} {a[role]['token']!s:>20} ({a[role]['id']}) | {b[role]['token']} ({b[role]['id']})")
        lines.append(f"  chat markers  {a['chat_markers']} | {b['chat_markers']}")
        lines.append(f"chat template: {'same' if self.chat_template_same else 'different'}")
        lines.append(f"  A renders: {a['chat_template_sample']!r}")
        lines.append(f"  B renders: {b['chat_template_sample']!r}")
        for side, info in self.eos_maps_to.items():
            lines.append(f"EOS {side}: {info['summary']}")
        for ex in self.examples:
            flag = "DIFFERENT pieces" if not ex["same"] else "same pieces, other ids" if not ex["same_ids"] else "same"
            lines.append(f"re-tokenisation {flag}: {ex['text']!r}")
            if not ex["same"]:
                lines.append(f"  A: {ex['tokens_a']}")
                lines.append(f"  B: {ex['tokens_b']}")
        return "\n".join(lines)


def _eos_reading(src: PreTrainedTokenizerBase, dst: PreTrainedTokenizerBase, dst_strings: list) -> dict:
    """What dst makes of src's EOS: the string at the same id, how it tokenizes the text, template use."""
    eos, eos_id = src.eos_token, src.eos_token_id
    same_id = dst_strings[eos_id] if eos_id is not None and eos_id < len(dst_strings) else None
    tokens = dst.tokenize(eos) if eos else []
    in_template = bool(eos) and eos in (_render_sample(dst) or "")
    is_eos = eos == dst.eos_token
    if is_eos:
        summary = f"{eos!r} is also the other side's EOS"
    else:
        summary = (f"{eos!r} is not the other side's EOS ({dst.eos_token!r}); it reads id {eos_id} as "
                   f"{same_id!r}, tokenizes the text as {tokens} and its chat template "
                   f"{'uses' if in_template else 'never uses'} it")
    return {"token": eos, "id": eos_id, "same_id_reads": same_id, "tokenized_as": tokens,
            "used_in_template": in_template, "is_eos": is_eos, "summary": summary}


def _retokenise(tok_a: PreTrainedTokenizerBase, tok_b: PreTrainedTokenizerBase, text: str) -> dict:
    ids_a = tok_a(text, add_special_tokens=False)["input_ids"]
    ids_b = tok_b(text, add_special_tokens=False)["input_ids"]
    tokens_a = [normalise_token(t, _space_style(tok_a)) for t in tok_a.convert_ids_to_tokens(ids_a)]
    tokens_b = [normalise_token(t, _space_style(tok_b)) for t in tok_b.convert_ids_to_tokens(ids_b)]
    return {"text": text, "tokens_a": tokens_a, "tokens_b": tokens_b, "ids_a": ids_a, "ids_b": ids_b,
            "same": tokens_a == tokens_b, "same_ids": ids_a == ids_b}


def compare_tokenizers(a: PreTrainedTokenizerBase | str | Path, b: PreTrainedTokenizerBase | str | Path,
                       sample_texts: list[str] | None = None) -> TokenizerReport:
    """Build the mismatch report of two tokenizers (objects or folders)."""
    tok_a, tok_b = _as_tokenizer(a), _as_tokenizer(b)
    strings_a, strings_b = token_strings(tok_a), token_strings(tok_b)
    set_a = {s for s in strings_a if s is not None}
    set_b = {s for s in strings_b if s is not None}
    shared = set_a & set_b
    differing = [{"id": i, "a": x, "b": y} for i, (x, y) in enumerate(zip(strings_a, strings_b))
                 if x is not None and y is not None and x != y]
    samples = list(sample_texts) if sample_texts is not None else [
        *DEFAULT_SAMPLES, f"=85{tok_a.eos_token}", f"=85{tok_b.eos_token}"]
    return TokenizerReport(
        name_a=str(getattr(tok_a, "name_or_path", "") or "A"), name_b=str(getattr(tok_b, "name_or_path", "") or "B"),
        vocab_size_a=len(tok_a), vocab_size_b=len(tok_b), shared_strings=len(shared),
        overlap_ratio=round(len(shared) / max(1, len(set_a | set_b)), 6),
        special_tokens={"a": _special_table(tok_a), "b": _special_table(tok_b)},
        eos_a=tok_a.eos_token, eos_b=tok_b.eos_token,
        eos_maps_to={"a_in_b": _eos_reading(tok_a, tok_b, strings_b),
                     "b_in_a": _eos_reading(tok_b, tok_a, strings_a)},
        differing_ids=differing[:MAX_LISTED_IDS], n_differing_ids=len(differing),
        chat_template_same=getattr(tok_a, "chat_template", None) == getattr(tok_b, "chat_template", None),
        examples=[_retokenise(tok_a, tok_b, t) for t in samples],
    )


def vocab_id_map(src_tok: PreTrainedTokenizerBase, dst_tok: PreTrainedTokenizerBase) -> np.ndarray:
    """Map every src id to the dst id with the same normalised string; specials by role; -1 when none."""
    src_strings, dst_strings = token_strings(src_tok), token_strings(dst_tok)
    dst_index: dict[str, int] = {}
    for i, s in enumerate(dst_strings):
        if s is not None:
            dst_index.setdefault(s, i)
    out = np.array([-1 if s is None else dst_index.get(s, -1) for s in src_strings], dtype=np.int64)
    src_specials = set(src_tok.all_special_ids)
    for i in src_specials:  # a special is mapped by role, never by string alone (EOS means end, not text)
        if i < len(out):
            out[i] = dst_index.get(src_strings[i], -1) if src_strings[i] in dst_tok.all_special_tokens else -1
    dst_roles = _role_ids(dst_tok)
    for role in reversed(ROLES):  # eos last so that it wins when one id has several roles
        src_id = getattr(src_tok, f"{role}_token_id", None)
        if src_id is not None and src_id < len(out):
            out[src_id] = -1 if dst_roles[role] is None else dst_roles[role]
    return out


def mismatched_special_ids(student_tok: PreTrainedTokenizerBase, teacher_tok: PreTrainedTokenizerBase,
                           extra_strings: list[str] | tuple[str, ...] = ()) -> list[int]:
    """Student ids whose meaning differs on the teacher side (to mask from the distillation signal)."""
    out: set[int] = set()
    teacher_roles = _role_ids(teacher_tok)
    teacher_specials = set(teacher_tok.all_special_tokens)
    for sid in student_tok.all_special_ids:
        roles = [r for r, i in _role_ids(student_tok).items() if i == sid]
        same_role = any(teacher_roles[r] is not None for r in roles)
        same_string = student_tok.convert_ids_to_tokens(sid) in teacher_specials
        if not (same_role or same_string):
            out.add(sid)
    teacher_markers = set(_template_markers(teacher_tok))
    for marker in _template_markers(student_tok):
        if marker not in teacher_markers:
            out.add(student_tok.convert_tokens_to_ids(marker))
    for text in extra_strings:
        out.update(student_tok(text, add_special_tokens=False)["input_ids"])
    return sorted(i for i in out if i is not None and i >= 0)


def assign_teacher_to_student(student_offsets: list[tuple[int, int]],
                              teacher_offsets: list[tuple[int, int]]) -> list[int]:
    """For each teacher token, the student token whose span holds the teacher token's last character.

    Summing teacher log-probs per assigned student token is the chain rule over the same string: the
    teacher's probability of a student token's text. -1 marks a teacher token with no such student token.
    """
    owner: dict[int, int] = {}
    for index, (start, end) in enumerate(student_offsets):
        for char in range(start, end):
            owner.setdefault(char, index)
    return [owner.get(end - 1, -1) if end > start else -1 for start, end in teacher_offsets]


def cli_compare(path_a: str, path_b: str, as_json: bool) -> int:
    """Entry point of `opd-lab tokenizers compare A B [--json]`: print the report, return the exit code."""
    from opd_core.models import resolve_model_path

    try:
        report = compare_tokenizers(_cli_path(path_a, resolve_model_path, "student"),
                                    _cli_path(path_b, resolve_model_path, "teacher"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.format_text())
    return 0


def _cli_path(spec: str, resolve, role: str) -> Path:
    """A preset name on the A side means its student, on the B side its teacher; paths pass through."""
    return resolve(spec, role)
