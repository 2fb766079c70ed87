"""Loading checkpoints: round trips of models this project did not make, presets, and clear failures."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from opd_core.models import (
    ModelLoadError,
    load_model,
    load_pair,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

CORPUS = ["the quick brown fox jumps over the lazy dog", "hello world, 12 + 34 = 46", "<|im_end|> ends a turn"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_level_tokenizer(eos: str | None = "<|im_end|>") -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer trained on a tiny corpus, with a ChatML template."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, pad_token="<|endoftext|>",
                                  bos_token=None, additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    return tok


def save_qwen2(path, tok, extra_rows: int = 0) -> None:
    """A tiny random Qwen2-style checkpoint whose embedding table is padded past the tokenizer."""
    config = Qwen2Config(vocab_size=len(tok) + extra_rows, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def test_qwen2_style_checkpoint_round_trips_and_padded_embeddings_load_silently(tmp_path):
    tok = byte_level_tokenizer()
    save_qwen2(tmp_path, tok, extra_rows=17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # padding rows are normal (Qwen2.5, the toy pair): no warning
        loaded = load_model(tmp_path, device="cpu")
    assert loaded.vocab_size == len(tok) and loaded.name == tmp_path.name
    assert loaded.model.generation_config.eos_token_id == tok.eos_token_id
    assert loaded.model.generation_config.pad_token_id == tok.pad_token_id
    ids = loaded.tokenizer("hello world", return_tensors="pt")["input_ids"]
    out = loaded.model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1] and not loaded.model.training


def test_gpt2_checkpoint_loads_in_bfloat16_without_warning(tmp_path):
    tok = byte_level_tokenizer()
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model(tmp_path, device="auto", dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.device == resolve_device("auto")


def _message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_missing_path_names_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(tmp_path / "nope")
    assert str(tmp_path / "nope") in _message(excinfo) and "checkpoint" in _message(excinfo)


def test_folder_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a model checkpoint directory"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(tmp_path)


def test_broken_config_gives_one_line_error(tmp_path):
    save_qwen2(tmp_path, byte_level_tokenizer())
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(tmp_path)
    assert "config.json is not a loadable model config" in _message(excinfo)


def test_remote_code_is_refused_unless_turned_on(tmp_path):
    save_qwen2(tmp_path, byte_level_tokenizer())
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as excinfo:
        load_model(tmp_path)
    # The config field is the switch; there is no --trust-remote-code flag to suggest (issue 17, defect 11).
    assert "trust_remote_code=true" in _message(excinfo) and "--trust-remote-code" not in _message(excinfo)


def test_tokenizer_without_eos_is_refused_with_the_fix(tmp_path):
    byte_level_tokenizer(eos=None).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no EOS token.*eos_token"):
        load_tokenizer(tmp_path)


def test_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path):
    tok = byte_level_tokenizer()
    save_qwen2(tmp_path, tok, extra_rows=-10)
    with pytest.raises(ModelLoadError, match="embeds only"):
        load_model(tmp_path)


def test_device_and_dtype_names_resolve_or_explain():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8")


def test_presets_resolve_to_the_right_sides():
    student, teacher = load_pair("toy:matched", "toy:mismatched", device="cpu")
    assert student.tokenizer.eos_token == "<|im_end|>" and teacher.tokenizer.eos_token == "</s>"
    assert student.vocab_size == len(student.tokenizer) and teacher.vocab_size == len(teacher.tokenizer)
    assert teacher.model.get_input_embeddings().weight.shape[0] >= teacher.vocab_size
    with pytest.raises(ModelLoadError, match="unknown toy preset"):
        load_pair("toy:nope", "toy:matched")
