"""How the teacher reads what the student wrote, when the two tokenizers agree and when they do not.

Same tokenizer: the teacher scores the student's ids directly. Different tokenizers: the student's
response is turned back into text and the teacher scores *its own* tokenization of that text under
*its own* chat template. Credit follows the chain rule and never invents a probability: a student
token gets the teacher's log-prob only when teacher tokens tile its characters exactly (their sum is
then log p_T(the student token's text | the same prefix)). One teacher token with exactly the same
span is a 1:1 alignment, and only there is the teacher's whole next-token distribution comparable
(after mapping its vocabulary onto the student's by text); several teacher tokens tiling it is a
multi-token span; a teacher token crossing one of its boundaries (or none ending in it) leaves it
*unaligned*: it has no teacher number at all, and the loop masks it (reason ``unaligned``) and counts
it in the alignment coverage.

Special tokens are where pairs go wrong (failure mode 3). Without the fix, the student's EOS reaches
the teacher as the literal text ``<|im_end|>``, which a teacher whose template never used it reads as
a few ordinary, unlikely tokens: a giant negative signal at the end of every response. With
``mask_special_tokens`` the student's EOS is given to the teacher as the token that ends a reply on
the teacher's side (its chat template's end of turn, else its EOS: mapped by meaning), and tokens
whose meaning differs carry no signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from opd_core import alignment
from opd_core.alignment import MULTI_TOKEN, ONE_TO_ONE, UNALIGNED
from opd_core.schema import ALIGNMENT_METRICS
from opd_core.vocabulary import end_token_id, vocabulary

__all__ = ["MULTI_TOKEN", "ONE_TO_ONE", "UNALIGNED", "TeacherView", "TokenizerPair", "alignment_coverage",
           "same_vocabulary"]


@dataclass
class TeacherView:
    """The teacher's tokenization of one (prompt, student response) pair, and its link to student tokens."""

    prompt_ids: list[int]
    response_ids: list[int]
    owner: list[int]          # per teacher response token: the student token index it is credited to (-1 none)
    aligned_to: list[int]     # per student token: the teacher response token with the same span, or -1
    teacher_strings: list[str]  # per student token: the text of the teacher tokens credited to it ('' none)
    kinds: list[int] = field(default_factory=list)  # per student token: UNALIGNED / ONE_TO_ONE / MULTI_TOKEN
    teacher_pieces: list[list[str]] = field(default_factory=list)  # per student token: each teacher token's text


def alignment_coverage(kinds, real) -> dict[str, float | None]:
    """Shares of real student tokens aligned 1:1, in multi-token spans, and unaligned (arrays or tensors).

    The one definition of the coverage numbers the metrics, the report and the health check show.
    """
    real = np.asarray(real.cpu() if hasattr(real, "cpu") else real, dtype=bool)
    if kinds is None:  # a producer that does not know the alignment kinds: every real token is its own
        kinds = real.astype(np.int8)
    kinds = np.asarray(kinds.cpu() if hasattr(kinds, "cpu") else kinds)
    n = int(real.sum())
    if n == 0:
        return dict.fromkeys(ALIGNMENT_METRICS)
    k = kinds[real]
    return {"align_one_to_one_share": float((k == ONE_TO_ONE).sum() / n),
            "align_multi_token_share": float((k == MULTI_TOKEN).sum() / n),
            "align_unaligned_share": float((k == UNALIGNED).sum() / n)}


def _chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as the model's chat template renders it, ending where the assistant's reply starts."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def _eos_ids(tokenizer, model=None) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None) if model is not None else None
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    end = end_token_id(tokenizer)  # the template's end of turn ends a reply too (Llama-3: <|eot_id|>)
    if end is not None:
        ids.add(int(end))
    first = end if end is not None else tokenizer.eos_token_id
    return ([int(first)] if first is not None else []) + sorted(i for i in ids if i != first)


def same_vocabulary(a, b) -> bool:
    """True when both tokenizers give every string the same id and agree on EOS: ids can be shared as-is."""
    if a is b:
        return True
    va, vb = vocabulary(a), vocabulary(b)
    return va.raw == vb.raw and va.special_ids == vb.special_ids and a.eos_token_id == b.eos_token_id


class TokenizerPair:
    """The student's and teacher's tokenizers, with everything the engine needs to move between them."""

    def __init__(self, student_tok, teacher_tok, *, mask_special_tokens: bool = False,
                 mask_token_strings: tuple[str, ...] | list[str] = (), student_model=None, teacher_model=None):
        self.student = student_tok
        self.teacher = teacher_tok
        self.shared = same_vocabulary(student_tok, teacher_tok)
        self.map_eos_by_meaning = mask_special_tokens
        self.student_eos_ids = _eos_ids(student_tok, student_model)
        self.teacher_eos_ids = _eos_ids(teacher_tok, teacher_model)
        # The token that ends a reply on the teacher's side (its template's end of turn, else its EOS).
        self.teacher_end_id = end_token_id(teacher_tok)
        if self.teacher_end_id is None:
            self.teacher_end_id = self.teacher_eos_ids[0]
        self.student_pad_id = student_tok.pad_token_id if student_tok.pad_token_id is not None else self.student_eos_ids[0]
        self.teacher_pad_id = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else self.teacher_eos_ids[0]
        self.student_vocab_size = len(student_tok)
        s_vocab = vocabulary(student_tok)
        markers = [student_tok.convert_tokens_to_ids(m) for m in s_vocab.template.markers]
        self.special_ids = set(s_vocab.special_ids) | {m for m in markers if isinstance(m, int) and m >= 0}
        masked = set()
        if mask_special_tokens:
            masked |= set(alignment.mismatched_special_ids(student_tok, teacher_tok, list(mask_token_strings)))
        elif mask_token_strings:
            vocab = student_tok.get_vocab()
            masked |= {vocab[s] for s in mask_token_strings if s in vocab}
        self.masked_ids = masked
        # Teacher vocabulary -> student vocabulary (by string; specials by role) for distribution comparisons.
        self.student_to_teacher = None if self.shared else alignment.vocab_id_map(student_tok, teacher_tok)
        self.student_strings = s_vocab.texts   # decoded text of each id (what people read)
        self.student_raw = s_vocab.raw         # the vocabulary string, for those who ask
        self._teacher_texts = vocabulary(teacher_tok).texts
        self.teacher_strings = self._teacher_texts  # decoded text of each teacher id (its own top-K's words)
        self._prompt_cache: dict[tuple[str, str], list[int]] = {}

    def warnings(self) -> list[str]:
        """What a user must know before trusting this pair: a side without a chat template, an EOS that is
        not its end of turn (``alignment.turn_end_warnings``), said at launch and kept in alignment.json."""
        if self.shared:
            return alignment.turn_end_warnings(self.student, "student and teacher")
        return (alignment.turn_end_warnings(self.student, "student")
                + alignment.turn_end_warnings(self.teacher, "teacher"))

    # ------------------------------------------------------------------ prompts
    def student_prompt_ids(self, prompt: str) -> list[int]:
        return self._prompt_ids("student", prompt)

    def teacher_prompt_ids(self, prompt: str) -> list[int]:
        return self._prompt_ids("teacher", prompt)

    def _prompt_ids(self, side: str, prompt: str) -> list[int]:
        """Rendered once per prompt and side: every rollout of a prompt, every step, reuses it."""
        key = (side, prompt)
        if key not in self._prompt_cache:
            self._prompt_cache[key] = _chat_prompt_ids(self.student if side == "student" else self.teacher, prompt)
        return self._prompt_cache[key]

    # ------------------------------------------------------------------ responses
    def response_spans(self, response_ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        """The response's text and each student token's character span in it.

        Fast path: decode each token alone and lay the pieces end to end, which is exact whenever they
        concatenate to the decoded whole. Byte-level pieces of a multi-byte character or a decoder that
        rewrites spaces break that; then cumulative decoding (quadratic, but right) is used instead.
        """
        kw = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        text = self.student.decode(response_ids, **kw)
        pieces = [self.student.decode([t], **kw) for t in response_ids]
        if "".join(pieces) == text:
            spans, pos = [], 0
            for piece in pieces:
                spans.append((pos, pos + len(piece)))
                pos += len(piece)
            return text, spans
        spans, prev = [], 0
        for i in range(len(response_ids)):
            end = len(self.student.decode(response_ids[: i + 1], **kw))
            spans.append((prev, end))
            prev = end
        return text, spans

    def teacher_view(self, prompt: str, response_ids: list[int]) -> TeacherView:
        """How the teacher reads this response (see the module docstring)."""
        n = len(response_ids)
        if self.shared:
            texts = [self.student_strings[t] or "" for t in response_ids]
            return TeacherView(self.teacher_prompt_ids(prompt), list(response_ids), list(range(n)),
                               list(range(n)), texts, [ONE_TO_ONE] * n, [[t] for t in texts])
        text, spans = self.response_spans(response_ids)
        eos_at = None
        if self.map_eos_by_meaning and n and response_ids[-1] in self.student_eos_ids:
            eos_at = n - 1
            text = text[: spans[-1][0]]
        enc = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True)
        t_ids = list(enc["input_ids"])
        t_spans = [tuple(s) for s in enc["offset_mapping"]]
        student_spans = spans[:eos_at] if eos_at is not None else spans
        owner = alignment.assign_teacher_to_student(student_spans, t_spans)
        kinds = alignment.alignment_kinds(student_spans, t_spans, owner)
        if eos_at is not None:  # the student's end of reply, given to the teacher as its own (by meaning)
            t_ids.append(self.teacher_end_id)
            t_spans.append((spans[-1][0], spans[-1][0]))
            owner.append(eos_at)
            kinds.append(ONE_TO_ONE)
        aligned_to = [-1] * n
        for j, i in enumerate(owner):
            if 0 <= i < n and kinds[i] == ONE_TO_ONE:
                aligned_to[i] = j
        pieces: list[list[str]] = [[] for _ in range(n)]
        for j, i in enumerate(owner):
            if 0 <= i < n:
                tid = t_ids[j]
                pieces[i].append(self._teacher_texts[tid] or "" if 0 <= tid < len(self._teacher_texts) else "")
        strings = ["".join(p) for p in pieces]
        return TeacherView(self.teacher_prompt_ids(prompt), t_ids, owner, aligned_to, strings, kinds, pieces)

    def student_ids_for_text(self, text: str, ended: bool) -> list[int]:
        """The student's tokenization of a teacher-written response (teacher-prefix steps), EOS by meaning."""
        ids = self.student(text, add_special_tokens=False)["input_ids"]
        return ids + ([self.student_eos_ids[0]] if ended else [])

    def teacher_text(self, teacher_response_ids: list[int]) -> tuple[str, bool]:
        """A teacher rollout as plain text (its EOS removed) and whether it ended with EOS."""
        ended = bool(teacher_response_ids) and teacher_response_ids[-1] in self.teacher_eos_ids
        body = teacher_response_ids[:-1] if ended else teacher_response_ids
        return self.teacher.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False), ended

    def projection_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(teacher id per student id with -1 clamped to 0, valid mask) for projecting teacher logits."""
        assert self.student_to_teacher is not None
        idx = np.asarray(self.student_to_teacher, dtype=np.int64)
        return np.where(idx >= 0, idx, 0), idx >= 0
