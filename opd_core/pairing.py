"""How the teacher reads what the student wrote, when the two tokenizers agree and when they do not.

Same tokenizer: the teacher scores the student's ids directly. Different tokenizers: the student's
response is turned back into text and the teacher scores *its own* tokenization of that text under
*its own* chat template; each teacher token is attributed to the student token holding its last
character, so summing teacher log-probs per student token gives the teacher's probability of the
same string (the chain rule). Where a student token and a teacher token cover exactly the same
characters, the teacher's whole next-token distribution is also comparable (after mapping its
vocabulary onto the student's by string); elsewhere only the sampled-token log-prob is.

Special tokens are where pairs go wrong (failure mode 3). Without the fix, the student's EOS reaches
the teacher as the literal text ``<|im_end|>``, which a teacher whose template never used it reads as
a few ordinary, unlikely tokens: a giant negative signal at the end of every response. With
``mask_special_tokens`` the student's EOS is given to the teacher as the teacher's own EOS (mapped by
meaning), and tokens whose meaning differs carry no signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opd_core import alignment


@dataclass
class TeacherView:
    """The teacher's tokenization of one (prompt, student response) pair, and its link to student tokens."""

    prompt_ids: list[int]
    response_ids: list[int]
    owner: list[int]          # per teacher response token: the student token index it is attributed to (-1 none)
    aligned_to: list[int]     # per student token: the teacher response token with the same span, or -1
    teacher_strings: list[str]  # per student token: what the teacher read there ('' if nothing)


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
    return sorted(ids)


def same_vocabulary(a, b) -> bool:
    """True when both tokenizers give every string the same id and agree on EOS: ids can be shared as-is."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


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
        self.student_pad_id = student_tok.pad_token_id if student_tok.pad_token_id is not None else self.student_eos_ids[0]
        self.teacher_pad_id = teacher_tok.pad_token_id if teacher_tok.pad_token_id is not None else self.teacher_eos_ids[0]
        self.student_vocab_size = len(student_tok)
        self.special_ids = set(int(i) for i in student_tok.all_special_ids)
        masked = set()
        if mask_special_tokens:
            masked |= set(alignment.mismatched_special_ids(student_tok, teacher_tok, list(mask_token_strings)))
        elif mask_token_strings:
            vocab = student_tok.get_vocab()
            masked |= {vocab[s] for s in mask_token_strings if s in vocab}
        self.masked_ids = masked
        # Teacher vocabulary -> student vocabulary (by string; specials by role) for distribution comparisons.
        self.student_to_teacher = None if self.shared else alignment.vocab_id_map(student_tok, teacher_tok)
        self.student_strings = student_tok.convert_ids_to_tokens(list(range(self.student_vocab_size)))
        self._prompt_cache: dict[tuple[str, str], list[int]] = {}

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
            strings = [self.student_strings[t] for t in response_ids]
            return TeacherView(self.teacher_prompt_ids(prompt), list(response_ids), list(range(n)),
                               list(range(n)), strings)
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
        if eos_at is not None:
            t_ids.append(self.teacher_eos_ids[0])
            t_spans.append((spans[-1][0], spans[-1][0]))
            owner.append(eos_at)
        aligned_to = [-1] * n
        span_index = {sp: j for j, sp in enumerate(t_spans) if sp[1] > sp[0]}
        for i, sp in enumerate(student_spans):
            j = span_index.get(tuple(sp))
            if j is not None and owner[j] == i:
                aligned_to[i] = j
        if eos_at is not None:
            aligned_to[eos_at] = len(t_ids) - 1
        pieces: list[list[str]] = [[] for _ in range(n)]
        t_strings = self.teacher.convert_ids_to_tokens(t_ids)
        for j, i in enumerate(owner):
            if 0 <= i < n:
                pieces[i].append(t_strings[j])
        strings = [" | ".join(p) for p in pieces]
        return TeacherView(self.teacher_prompt_ids(prompt), t_ids, owner, aligned_to, strings)

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
