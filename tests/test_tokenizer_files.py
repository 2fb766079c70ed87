"""Tokenizers found and loaded without torch: GGUF tokenizers converted once into a cache, folders read directly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from opd_core import tokenizer_files
from opd_core.tokenizer_files import ModelLoadError, gguf_tokenizer_dir, load_tokenizer, read_tokenizer_json


def small_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(["the", "end", "of", "turn"])}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")


def test_a_gguf_tokenizer_is_converted_once_per_file_version(tmp_path, monkeypatch):
    monkeypatch.setenv("OPD_LAB_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF" + b"\0" * 60)
    reads = []
    monkeypatch.setattr(tokenizer_files, "_read_gguf_tokenizer", lambda f: reads.append(f) or small_tokenizer())
    first = gguf_tokenizer_dir(file)
    assert first.parent == tmp_path / "cache" / "gguf-tokenizers" and (first / "tokenizer.json").is_file()
    assert gguf_tokenizer_dir(file) == first and len(reads) == 1  # the second use reads the cache
    tok = load_tokenizer(file, fast=True)
    assert tok.eos_token == "</s>" and tok("the end", add_special_tokens=False)["input_ids"] == [2, 3]
    assert tok.name_or_path == str(file) == load_tokenizer(file).name_or_path  # reports name the file, not the cache
    assert len(reads) == 1
    os.utime(file, ns=(1, 1))  # the file changed: converted again, into another folder
    assert gguf_tokenizer_dir(file) != first and len(reads) == 2
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_an_unwritable_cache_reads_the_gguf_file_itself(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("OPD_LAB_CACHE", str(blocker))
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF")
    monkeypatch.setattr(tokenizer_files, "_read_gguf_tokenizer", lambda f: small_tokenizer())
    assert load_tokenizer(file).eos_token == "</s>"


def test_folders_of_other_classes_are_left_to_autotokenizer(tmp_path):
    tok = small_tokenizer()
    tok.save_pretrained(tmp_path)
    assert read_tokenizer_json(tmp_path) is not None  # TokenizersBackend: read directly
    config = tmp_path / "tokenizer_config.json"
    for cls in ("BertTokenizer", ""):
        text = config.read_text().replace('"TokenizersBackend"', f'"{cls}"')
        config.write_text(text)
        assert read_tokenizer_json(tmp_path) is None
        config.write_text(text.replace(f'"{cls}"', '"TokenizersBackend"'))
    (tmp_path / "tokenizer.json").unlink()
    assert read_tokenizer_json(tmp_path) is None


def test_a_broken_folder_is_one_line_on_the_fast_path_too(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "TokenizersBackend"}')
    with pytest.raises(ModelLoadError, match="tokenizer files could not be loaded"):
        load_tokenizer(tmp_path, fast=True)


def test_tokenizers_compare_never_imports_torch():
    code = ("import sys; from opd_core.cli import main; rc = main(['tokenizers', 'compare', 'toy:mismatched', "
            "'toy:mismatched']); assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-2000:]
