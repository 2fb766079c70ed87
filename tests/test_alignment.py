"""Tokenizer alignment: the mismatch report, id maps by string and role, special masks, span alignment."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer
from transformers import PreTrainedTokenizerFast

from opd_core.alignment import (
    assign_teacher_to_student,
    cli_compare,
    compare_tokenizers,
    mismatched_special_ids,
    token_strings,
    vocab_id_map,
)
from opd_core.toy.presets import resolve_pair
from opd_core.toy.tokenizers import mismatched_teacher_tokenizer, student_tokenizer

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world hello there", "the end of the turn"]
REQUIRED_FIELDS = {"vocab_size_a", "vocab_size_b", "shared_strings", "overlap_ratio", "special_tokens", "eos_a",
                   "eos_b", "eos_maps_to", "differing_ids", "examples"}


def byte_level() -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def sentencepiece_style() -> PreTrainedTokenizerFast:
    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(CORPUS, vocab_size=120, min_frequency=1, special_tokens=["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=spm._tokenizer, eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def test_mismatched_preset_report_names_the_eos_difference_and_the_differing_ids():
    student_dir, teacher_dir = resolve_pair("toy:mismatched")
    report = compare_tokenizers(student_dir, teacher_dir).to_dict()
    assert set(report) >= REQUIRED_FIELDS
    assert (report["eos_a"], report["eos_b"]) == ("<|im_end|>", "</s>")
    student_eos_in_teacher = report["eos_maps_to"]["a_in_b"]
    assert not student_eos_in_teacher["is_eos"] and not student_eos_in_teacher["used_in_template"]
    assert student_eos_in_teacher["same_id_reads"] == "</s>"
    differing = {d["id"]: (d["a"], d["b"]) for d in report["differing_ids"]}
    student, teacher = student_tokenizer(), mismatched_teacher_tokenizer()
    three = student.convert_tokens_to_ids("3")
    assert differing[three] == ("3", teacher.convert_ids_to_tokens(three)) and differing[three][1] != "3"
    assert report["overlap_ratio"] < 1.0 and any(not ex["same"] for ex in report["examples"])
    text = compare_tokenizers(student_dir, teacher_dir).format_text()
    assert "<|im_end|>" in text and "never uses" in text


def test_matched_preset_report_shows_full_overlap():
    student_dir, teacher_dir = resolve_pair("toy:matched")
    report = compare_tokenizers(student_dir, teacher_dir)
    assert report.overlap_ratio == 1.0 and report.n_differing_ids == 0 and report.differing_ids == []
    assert report.shared_strings == report.vocab_size_a == report.vocab_size_b
    assert report.eos_maps_to["a_in_b"]["is_eos"] and report.chat_template_same
    assert all(ex["same"] and ex["same_ids"] for ex in report.examples)


def test_byte_level_and_sentencepiece_markers_normalise_to_spaces():
    gpt2_like, spm_like = byte_level(), sentencepiece_style()
    assert " the" in token_strings(gpt2_like) and " the" in token_strings(spm_like)
    report = compare_tokenizers(gpt2_like, spm_like, sample_texts=["hello world"])
    assert report.shared_strings >= 10
    assert report.eos_maps_to["a_in_b"]["token"] == "<|endoftext|>" and not report.eos_maps_to["a_in_b"]["is_eos"]
    mapping = vocab_id_map(gpt2_like, spm_like)
    the_a = token_strings(gpt2_like).index(" the")
    assert token_strings(spm_like)[mapping[the_a]] == " the"


def test_vocab_id_map_maps_by_string_and_specials_by_role():
    student, teacher = student_tokenizer(), mismatched_teacher_tokenizer()
    mapping = vocab_id_map(student, teacher)
    assert mapping.dtype == np.int64 and mapping.shape == (len(student),)
    assert mapping[student.eos_token_id] == teacher.eos_token_id  # EOS by meaning, not by id or string
    assert mapping[student.bos_token_id] == teacher.bos_token_id
    assert mapping[student.convert_tokens_to_ids("<|user|>")] == -1  # a marker the teacher lacks
    assert mapping[student.convert_tokens_to_ids("+1")] == -1  # a merge only the student has
    for char in "0123456789+=;":
        assert mapping[student.convert_tokens_to_ids(char)] == teacher.convert_tokens_to_ids(char)
    identity = vocab_id_map(student, student_tokenizer())
    assert (identity == np.arange(len(student))).all()


def test_mismatched_special_ids_lists_markers_and_eos_but_nothing_for_a_matched_pair():
    student, teacher = student_tokenizer(), mismatched_teacher_tokenizer()
    ids = mismatched_special_ids(student, teacher)
    names = set(student.convert_ids_to_tokens(ids))
    assert {"<|im_end|>", "<|user|>", "<|assistant|>"} <= names
    assert mismatched_special_ids(student, student_tokenizer()) == []
    extra = mismatched_special_ids(student, student_tokenizer(), extra_strings=["think"])
    assert extra == sorted(set(student("think", add_special_tokens=False)["input_ids"]))


def test_assign_teacher_to_student_uses_the_last_character_of_each_teacher_token():
    # student pieces: "ab" "c" "de" ; teacher pieces: "a" "bc" "d" "e" and a zero-width token
    student = [(0, 2), (2, 3), (3, 5)]
    teacher = [(0, 1), (1, 3), (3, 4), (4, 5), (5, 5)]
    assert assign_teacher_to_student(student, teacher) == [0, 1, 2, 2, -1]
    assert assign_teacher_to_student([(0, 2)], [(0, 1), (2, 4)]) == [0, -1]


@given(st.text(alphabet="0123456789+=;", min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
def test_every_teacher_token_of_the_same_text_lands_on_one_student_token(text):
    student, teacher = student_tokenizer(), mismatched_teacher_tokenizer()
    s_off = student(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    t_off = teacher(text + "</s>", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    owners = assign_teacher_to_student(s_off, t_off)
    assert owners[-1] == -1 and all(o >= 0 for o in owners[:-1])  # the teacher's own EOS has no student text
    assert owners[:-1] == sorted(owners[:-1])
    for (_start, end), owner in zip(t_off[:-1], owners[:-1]):
        s_start, s_end = s_off[owner]
        assert s_start <= end - 1 < s_end


def test_cli_compare_writes_json_with_the_documented_fields(capsys):
    student_dir, teacher_dir = resolve_pair("toy:mismatched")
    assert cli_compare(str(student_dir), str(teacher_dir), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) >= REQUIRED_FIELDS and data["eos_b"] == "</s>"
    assert cli_compare("toy:matched", "toy:matched", as_json=False) == 0
    assert "overlap 100.0%" in capsys.readouterr().out


def test_cli_compare_bad_path_exits_2_with_one_line(tmp_path, capsys):
    assert cli_compare(str(tmp_path / "missing"), "toy:matched", as_json=True) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and str(tmp_path / "missing") in captured.err


def test_compare_refuses_a_tokenizer_without_eos(tmp_path):
    tok = byte_level()
    tok.eos_token = None
    tok.save_pretrained(tmp_path)
    assert cli_compare(str(tmp_path), "toy:matched", as_json=False) == 2


@pytest.mark.parametrize("preset", ["toy:matched", "toy:mismatched"])
def test_report_round_trips_through_json(preset):
    report = compare_tokenizers(*resolve_pair(preset))
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_response_spans_cover_the_text_on_both_the_fast_and_the_fallback_path():
    from opd_core.models import load_tokenizer
    from opd_core.pairing import TokenizerPair
    from opd_core.toy.presets import resolve_pair

    student_dir, teacher_dir = resolve_pair("toy:mismatched")
    pair = TokenizerPair(load_tokenizer(student_dir), load_tokenizer(teacher_dir))
    ids = pair.student("7+8=15;4+3+1=8;=85", add_special_tokens=False)["input_ids"] + pair.student_eos_ids[:1]
    text, spans = pair.response_spans(ids)
    assert "".join(text[a:b] for a, b in spans) == text and spans[-1][1] == len(text)
    assert text[spans[-1][0]:] == "<|im_end|>"
    # A byte-level tokenizer splitting one multi-byte character over two tokens takes the fallback.
    from tests.test_models_loading import byte_level_tokenizer

    bl = byte_level_tokenizer()
    pair = TokenizerPair(bl, bl)
    ids = bl("héllo wörld", add_special_tokens=False)["input_ids"]
    text, spans = pair.response_spans(ids)
    assert text == "héllo wörld" and spans[-1][1] == len(text)
    assert all(a <= b for a, b in spans)


def test_cli_compare_says_what_a_preset_resolves_to_and_prints_each_line_once(capsys):
    assert cli_compare("toy:mismatched", "toy:mismatched", as_json=False) == 0
    out = capsys.readouterr().out
    assert "toy:mismatched → its student" in out and "toy:mismatched → its teacher" in out
    assert cli_compare("toy:matched", "toy:matched", as_json=False) == 0
    out = capsys.readouterr().out
    assert "EOS: both sides use" in out and "None" not in out
    lines = [line for line in out.splitlines() if line.startswith("re-tokenisation")]
    assert len(lines) == len(set(lines))


def test_a_tokenizer_without_a_chat_template_is_warned_about():
    from opd_core.alignment import turn_end_warnings

    tok = byte_level()
    assert not tok.chat_template
    (warning,) = turn_end_warnings(tok, "teacher")
    assert "no chat template" in warning and "<|endoftext|>" in warning
