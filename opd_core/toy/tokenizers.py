"""The toy world's tokenizers: a student tokenizer and a teacher tokenizer that differs like real pairs do.

Both are real Hugging Face fast tokenizers (a character-level BPE with a few merges, built with the
`tokenizers` library) saved with `save_pretrained`, each with BOS/EOS/PAD and a chat template:

- student (also the matched teacher's): `<|startoftext|><|user|>47+38<|im_end|><|assistant|>...<|im_end|>`;
  its end of turn and EOS is `<|im_end|>`.
- mismatched teacher: `<s>[INST]47+38[/INST]...</s>`; EOS `</s>`. It still has `<|im_end|>` in its
  vocabulary (as real families share tokens) but its template never uses it, a few ordinary ids are
  permuted (they mean different strings on the two sides) and one merge differs ("+1" against "1;"), so the
  same text tokenizes differently.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

# Ordinary characters: digits and the task's symbols first, then enough text characters that any short
# English string can be encoded without <unk>.
ALPHABET = list("0123456789+=;-*()") + list(" abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:?!'\"/\n")

STUDENT_SPECIALS = {
    "pad": "<|pad|>", "bos": "<|startoftext|>", "eos": "<|im_end|>", "unk": "<|unk|>",
    "user": "<|user|>", "assistant": "<|assistant|>",
}
TEACHER_SPECIALS = {
    "pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "user": "[INST]", "assistant": "[/INST]",
}
STUDENT_MERGES = [("+", "1"), ("=", "1")]
TEACHER_MERGES = [("=", "1"), ("1", ";")]
# Ordinary-token id swaps on the teacher side: the same id reads as a different string.
TEACHER_ID_SWAPS = [("3", "8"), ("+", "="), ("a", "e")]

STUDENT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}<|im_end|>"
    "{% else %}<|user|>{{ m['content'] }}<|im_end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEACHER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ m['content'] }}</s>"
    "{% else %}[INST]{{ m['content'] }}[/INST]{% endif %}"
    "{% endfor %}"
)


def _build(specials: dict[str, str], merges: list[tuple[str, str]], extra_specials: list[str],
           swaps: list[tuple[str, str]], template: str) -> PreTrainedTokenizerFast:
    order = [specials[k] for k in ("pad", "bos", "eos", "unk", "user", "assistant")]
    chars = list(ALPHABET)
    for x, y in swaps:
        i, j = chars.index(x), chars.index(y)
        chars[i], chars[j] = chars[j], chars[i]
    # Extra specials go last so that ordinary ids line up across the pair except for the deliberate swaps.
    tokens = order + chars + [x + y for x, y in merges] + extra_specials
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=specials["unk"], fuse_unk=True))
    backend.decoder = decoders.Fuse()  # tokens are plain substrings: decoding is concatenation
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials["bos"], eos_token=specials["eos"], pad_token=specials["pad"],
        unk_token=specials["unk"],
        additional_special_tokens=[specials["user"], specials["assistant"], *extra_specials],
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=512,
    )
    tok.chat_template = template
    return tok


def student_tokenizer() -> PreTrainedTokenizerFast:
    """Build tokenizer (a), the student's; tokenizer (b), the matched teacher's, is an identical copy."""
    return _build(STUDENT_SPECIALS, STUDENT_MERGES, [], [], STUDENT_TEMPLATE)


def mismatched_teacher_tokenizer() -> PreTrainedTokenizerFast:
    """Build tokenizer (c): other specials and template, `</s>` EOS, permuted ids, one different merge."""
    return _build(TEACHER_SPECIALS, TEACHER_MERGES, [STUDENT_SPECIALS["eos"]], TEACHER_ID_SWAPS, TEACHER_TEMPLATE)


def save_tokenizers(out_dir: Path) -> dict[str, Path]:
    """Write the three tokenizers under out_dir (one folder each) and return their folders by role."""
    dirs = {"student": out_dir / "student", "teacher": out_dir / "teacher",
            "teacher_mismatched": out_dir / "teacher_mismatched"}
    student_tokenizer().save_pretrained(dirs["student"])
    student_tokenizer().save_pretrained(dirs["teacher"])
    mismatched_teacher_tokenizer().save_pretrained(dirs["teacher_mismatched"])
    return dirs
