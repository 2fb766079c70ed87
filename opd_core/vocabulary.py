"""Read a tokenizer once: each id's text, its special tokens by role, and what its chat template writes.

Vocabulary strings are an encoding, not text: byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM) writes each
byte as a printable character (``Ġ`` a space, ``Ċ`` a newline, ``ĠâĢľ`` a space and a curly quote);
SentencePiece (Llama-2, Gemma) writes a space as ``▁`` and bytes it has no piece for as ``<0xE2>``.
:func:`vocabulary` undoes that the way the tokenizer's own decoder does. It reads the decoder's spec
(``ByteLevel``; ``Replace ▁ → space`` or ``Metaspace``; ``ByteFallback``) and applies it to every
vocabulary entry at once, then checks a sample of ids against the decoder itself
(``convert_tokens_to_string`` after a fixed anchor token, so a decoder that strips a leading space
cannot hide it) and falls back to the decoder's own output wherever the two disagree.

Each id gets a *key* to compare vocabularies by: the exact bytes it stands for (so the two halves of a
multi-byte character never collide on a replacement character), or, for a special token, its role-free
name. Special tokens are every added token flagged ``special`` in the tokenizer's added-token table
plus the role tokens (transformers 5 ``all_special_tokens`` lists only bos/eos/unk, so Gemma's
``<start_of_turn>`` and Llama-3's ``<|eot_id|>`` would be missed). The chat template is rendered once
to find its markers and the token that closes an assistant turn (``<|eot_id|>`` for Llama-3,
``<end_of_turn>`` for Gemma, ``<|im_end|>`` for ChatML), which is not always the EOS.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from dataclasses import dataclass, field
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

ROLES = ("eos", "bos", "pad", "unk")
_REPLY = "OPDLABREPLY"
_CHECK_SAMPLE = 256
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character-to-byte table (the inverse of what byte-level BPE writes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass
class ChatTemplate:
    """What a tokenizer's chat template writes around one exchange (all None/empty without a template)."""

    present: bool
    sample: str | None            # the rendering of [user "2+2", assistant "OPDLABREPLY"]
    markers: list[str]            # added tokens the template writes (turn markers, end of turn)
    end_of_turn: str | None       # the token right after the assistant's text (None: plain text or none)


@dataclass
class Vocabulary:
    """One tokenizer's vocabulary, read once (see the module docstring)."""

    style: str                     # 'byte_level', 'metaspace' or 'plain'
    raw: list[str | None]          # the vocabulary string of each id (None for holes)
    texts: list[str | None]        # what each id decodes to (specials: their own name)
    keys: list[bytes | str | None]  # what ids are compared by: bytes, or 'special:<name>' for specials
    special_ids: frozenset[int]    # every special=True added token plus the role tokens
    roles: dict[str, int | None]   # eos/bos/pad/unk -> id
    template: ChatTemplate = field(default_factory=lambda: ChatTemplate(False, None, [], None))
    decoder_mismatches: int = 0    # sampled ids where the spec-based text disagreed with the decoder

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def end_of_turn(self) -> str | None:
        """The token that closes an assistant turn in the chat template (None without one)."""
        return self.template.end_of_turn

    def text(self, token_id: int) -> str:
        """The text an id stands for ('' for a hole)."""
        return (self.texts[token_id] or "") if 0 <= token_id < len(self.texts) else ""


def _spec(component) -> dict | None:
    if component is None:
        return None
    try:
        return json.loads(component.__getstate__())
    except Exception:  # a component that cannot describe itself: treated as absent
        return None


def decoder_style(tok: PreTrainedTokenizerBase) -> str:
    """How the tokenizer writes spaces in its vocabulary, read from its decoder's spec."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return "plain"
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            kind = node.get("type")
            if kind in ("ByteLevel", "Metaspace"):
                found.add(kind)
            if kind == "Replace" and (node.get("pattern") or {}).get("String") == "▁":
                found.add("Metaspace")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_spec(backend.decoder))
    if not found:
        walk(_spec(backend.pre_tokenizer))
    return "byte_level" if "ByteLevel" in found else "metaspace" if "Metaspace" in found else "plain"


@lru_cache(maxsize=1)
def _byte_table() -> dict[int, int]:
    """str.translate table from byte-level characters to the code points 0-255 (then latin-1 gives the bytes)."""
    return {ord(ch): b for ch, b in byte_decoder().items()}


def token_bytes(token: str, style: str) -> bytes:
    """The bytes one vocabulary entry stands for under the given style."""
    if style == "byte_level":
        try:
            return token.translate(_byte_table()).encode("latin-1")
        except UnicodeEncodeError:  # not a byte-level entry (an added token written as text)
            return token.encode("utf-8")
    if style == "metaspace":
        if token.startswith("<0x") and len(token) == 6 and token.endswith(">"):
            try:
                return bytes([int(token[3:5], 16)])  # SentencePiece byte fallback
            except ValueError:
                pass
        return token.replace("▁", " ").encode("utf-8")
    return token.encode("utf-8")


def special_ids(tok: PreTrainedTokenizerBase) -> set[int]:
    """Every special token: added tokens flagged special, plus the role tokens."""
    out = {int(i) for i, t in (getattr(tok, "added_tokens_decoder", {}) or {}).items() if getattr(t, "special", False)}
    out |= {i for i in role_ids(tok).values() if i is not None}
    out |= {int(i) for i in tok.all_special_ids if i is not None}
    return out


def role_ids(tok: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """The id of each role token (eos, bos, pad, unk), None where the tokenizer has none."""
    return {role: getattr(tok, f"{role}_token_id", None) for role in ROLES}


def render_sample(tok: PreTrainedTokenizerBase) -> str | None:
    """The chat template's rendering of one exchange, or None (no template, or one that cannot render it)."""
    if not getattr(tok, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "2+2"}, {"role": "assistant", "content": _REPLY}]
    try:
        return tok.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that needs other roles or variables: reported as not renderable
        return None


def chat_template(tok: PreTrainedTokenizerBase, specials: set[int]) -> ChatTemplate:
    """The markers the template writes and the token that closes the assistant's turn."""
    sample = render_sample(tok)
    source = tok.chat_template if isinstance(getattr(tok, "chat_template", None), str) else ""
    added = {int(i): t.content for i, t in (getattr(tok, "added_tokens_decoder", {}) or {}).items()}
    names = {i: added.get(i) or tok.convert_ids_to_tokens(i) for i in specials}
    markers = {n for n in names.values() if n and (n in source or (sample and n in sample))}
    tagged = {i: c for i, c in added.items() if c.startswith("<") and c.endswith(">") and len(c) > 2}
    end_of_turn = None
    if sample:
        ids = tok(sample, add_special_tokens=False)["input_ids"]
        markers |= {tagged[i] for i in ids if i in tagged}  # e.g. Qwen's <think>; not Gemma's "\n" runs
        tail = sample.split(_REPLY, 1)[1] if _REPLY in sample else ""
        for content in sorted(set(added.values()), key=len, reverse=True):
            if content and tail.startswith(content):
                end_of_turn = content
                break
    return ChatTemplate(bool(getattr(tok, "chat_template", None)), sample, sorted(markers), end_of_turn)


def _anchor(raw: list[str | None], keys: list, specials: set[int]) -> int | None:
    for want in (b"a", b"e", b"t", b"x"):
        for i, k in enumerate(keys):
            if k == want and i not in specials:
                return i
    return next((i for i, r in enumerate(raw) if r and i not in specials), None)


def _check_against_decoder(tok: PreTrainedTokenizerBase, raw: list, keys: list, specials: set[int]) -> list[int]:
    """Ids (of a spread sample) whose spec-based text disagrees with the tokenizer's own decoder."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and backend.decoder is None:
        return []  # no decoder: decode() only joins tokens with spaces, each token's text is itself
    anchor = _anchor(raw, keys, specials)
    if anchor is None:
        return []
    a_text = tok.convert_tokens_to_string([raw[anchor]])
    n = len(raw)
    sample = range(0, n, max(1, n // _CHECK_SAMPLE))
    bad = []
    for i in sample:
        key = keys[i]
        if i in specials or raw[i] is None or not isinstance(key, bytes):
            continue
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: the decoder can only print a replacement mark for it
        got = tok.convert_tokens_to_string([raw[anchor], raw[i]])
        if got != a_text + text:
            bad.append(i)
    return bad


def vocabulary(tok: PreTrainedTokenizerBase) -> Vocabulary:
    """The tokenizer's :class:`Vocabulary`, built once per tokenizer object and cached."""
    try:
        cached = _cache.get(tok)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    style = decoder_style(tok)
    backend = getattr(tok, "backend_tokenizer", None)
    n = len(tok)
    raw = ([backend.id_to_token(i) for i in range(n)] if backend is not None
           else tok.convert_ids_to_tokens(list(range(n))))
    specials = special_ids(tok)
    keys: list[bytes | str | None] = []
    for i, t in enumerate(raw):
        if t is None:
            keys.append(None)
        elif i in specials:
            keys.append(f"special:{t}")
        else:
            keys.append(token_bytes(t, style))
    bad = _check_against_decoder(tok, raw, keys, specials)
    if bad:  # the spec reading is off for this tokenizer: trust the decoder itself, id by id
        a = _anchor(raw, keys, specials)
        prefix = tok.convert_tokens_to_string([raw[a]])
        for i, t in enumerate(raw):
            if t is not None and i not in specials:
                keys[i] = tok.convert_tokens_to_string([raw[a], t])[len(prefix):].encode("utf-8")
    texts = [None if k is None else (k[len("special:"):] if isinstance(k, str) else
                                     k.decode("utf-8", errors="replace")) for k in keys]
    vocab = Vocabulary(style=style, raw=raw, texts=texts, keys=keys, special_ids=frozenset(specials),
                       roles=role_ids(tok), template=chat_template(tok, specials), decoder_mismatches=len(bad))
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced: not cached
        _cache[tok] = vocab
    return vocab


def end_token_id(tok: PreTrainedTokenizerBase) -> int | None:
    """The token that ends an assistant's reply: the template's end of turn when it has one, else EOS."""
    eot = vocabulary(tok).end_of_turn
    if eot is not None:
        eot_id = tok.convert_tokens_to_ids(eot)
        if isinstance(eot_id, int) and eot_id >= 0 and eot_id != tok.unk_token_id:
            return eot_id
    return tok.eos_token_id
