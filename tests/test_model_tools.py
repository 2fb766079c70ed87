"""Preparing checkpoints: cut a small student, GGUF paths, tied embeddings stored once, vocab fit checked early."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from opd_core import checkpoints
from opd_core.model_tools import cut, find_gguf
from opd_core.models import ModelLoadError, load_model, load_tokenizer, vocab_fit_problem
from tests.test_models_loading import byte_level_tokenizer


def tiny_llama(path, layers: int = 3, tied: bool = True):
    tok = byte_level_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=tied, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model


def test_cut_keeps_the_first_layers_and_their_weights(tmp_path):
    big = tiny_llama(tmp_path / "big", layers=3)
    out = cut(tmp_path / "big", tmp_path / "small", layers=2)
    small = load_model(out, device="cpu")
    assert small.model.config.num_hidden_layers == 2 and len(small.model.model.layers) == 2
    for name, value in small.model.state_dict().items():
        assert torch.equal(value, big.state_dict()[name]), name
    with pytest.raises(ValueError, match="choose 1..3"):
        cut(tmp_path / "big", tmp_path / "bad", layers=4)


def test_checkpoints_store_tied_embeddings_once_and_restore_them_tied(tmp_path):
    model = tiny_llama(tmp_path / "m", layers=1)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    opt = torch.optim.AdamW(model.parameters())
    path = checkpoints.save(tmp_path / "run", 1, model, opt)
    with safe_open(str(path / "student.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert len({"lm_head.weight", "model.embed_tokens.weight"} & keys) == 1
    fresh = LlamaForCausalLM(model.config)
    assert checkpoints.load(path, fresh) == 1
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()


def test_gguf_paths_are_found_in_files_and_folders(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert find_gguf(tmp_path / "m.gguf") == tmp_path / "m.gguf" and find_gguf(tmp_path) == tmp_path / "m.gguf"
    (tmp_path / "n.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="2 GGUF files"):
        find_gguf(tmp_path)
    tiny_llama(tmp_path / "hf", layers=1)
    assert find_gguf(tmp_path / "hf") is None  # a Hugging Face folder stays one
    with pytest.raises(ModelLoadError) as err:
        load_tokenizer(tmp_path / "m.gguf")
    assert "m.gguf" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="or a .gguf file"):
        load_model(tmp_path / "x.bin")


def test_a_tokenizer_larger_than_the_embedding_table_is_named_in_one_line(tmp_path):
    problem = vocab_fit_problem(tmp_path, 262_145, 262_144)
    assert "262145 tokens" in problem and "262144" in problem and "1 added token" in problem
    assert vocab_fit_problem(tmp_path, 88, 96) is None  # padding rows are normal


def test_preflight_accepts_a_gguf_file_and_names_a_fake_one(tmp_path):
    from opd_core.models import preflight_model_source

    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"NOPE")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        preflight_model_source(str(fake))
    fake.write_bytes(b"GGUF\x03\x00\x00\x00")
    source = preflight_model_source(str(tmp_path))  # a folder holding one .gguf
    assert source.gguf and source.path == fake
    with pytest.raises(ModelLoadError, match="no such file"):
        preflight_model_source(str(tmp_path / "missing.gguf"))


def test_config_accepts_a_gguf_model_argument_and_hints_at_convert(tmp_path):
    from opd_core.config import ConfigError, from_dict

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert from_dict({"student": str(tmp_path / "m.gguf")}).student == str(tmp_path / "m.gguf")
    assert from_dict({"teacher": str(tmp_path)}).teacher == str(tmp_path)  # a folder holding one
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="models convert"):
        from_dict({"student": str(tmp_path / "empty")})
