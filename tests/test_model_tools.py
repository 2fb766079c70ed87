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


def write_gguf(path, n_tokens: int, rows: int, hidden: int = 8) -> None:
    """A tiny GGUF file: a token list and a token_embd table (written by the gguf package itself)."""
    gguf = pytest.importorskip("gguf", reason="the 'gguf' package is not installed (pip install -e '.[real]')")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(n_tokens)])
    writer.add_token_merges(["t 0", "t 1"])  # an array of strings after the token list: skipped, not counted
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.zeros((rows, hidden), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_gguf_header_gives_the_token_count_and_embedding_rows_as_the_gguf_reader_does(tmp_path):
    from opd_core.model_tools import gguf_vocab_and_rows

    write_gguf(tmp_path / "m.gguf", n_tokens=37, rows=40)
    import gguf

    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert gguf_vocab_and_rows(tmp_path / "m.gguf") == (len(reader.fields["tokenizer.ggml.tokens"].data),
                                                        int(embd.shape[1])) == (37, 40)
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "m.gguf").read_bytes()[:200])  # truncated: unknown
    assert gguf_vocab_and_rows(tmp_path / "cut.gguf")[1] is None  # rows unknown: nothing is refused


def test_a_gguf_whose_tokens_outnumber_its_embedding_rows_is_refused_before_a_run_dir(tmp_path, capsys):
    from opd_core import cli
    from opd_core.models import preflight_model_source

    write_gguf(tmp_path / "ok.gguf", n_tokens=40, rows=48)  # padding rows are normal
    source = preflight_model_source(str(tmp_path / "ok.gguf"))
    assert (source.vocab_size, source.embedding_rows) == (40, 48)
    bad = tmp_path / "bad" / "m.gguf"
    bad.parent.mkdir()
    write_gguf(bad, n_tokens=41, rows=40)
    with pytest.raises(ModelLoadError, match="41 tokens but its token_embd table has only 40 rows"):
        preflight_model_source(str(bad.parent))
    runs_dir = tmp_path / "runs"
    assert cli.main(["train", "baseline", "--set", f"teacher={bad}", "--runs-dir", str(runs_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "token_embd" in err and "re-export" in err and "'teacher'" in err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_the_packaged_ggufs_fit_their_embeddings_by_their_headers():
    from opd_core.model_tools import gguf_vocab_and_rows
    from tests.real_assets import packaged_model

    assert gguf_vocab_and_rows(packaged_model("smollm2-135m-instruct")) == (49_152, 49_152)
    assert gguf_vocab_and_rows(packaged_model("gemma-3-270m")) == (262_144, 262_144)
