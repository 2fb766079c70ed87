"""A GGUF file's dequantised weights are kept once in the user cache: the next load reads them, equal to a fresh
dequantisation; a changed file, a damaged copy, a model over the size limit and a cache turned off all fall back
to dequantising the file. The real SmolLM2 round trip is in tests/test_real_models.py."""

from __future__ import annotations

import os

import pytest
import torch

from opd_core import gguf_cache
from tests.test_model_tools import tiny_llama


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OPD_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(gguf_cache.LIMIT_ENV, raising=False)
    return tmp_path / "cache"


@pytest.fixture
def gguf(tmp_path):
    """A stand-in GGUF file and a dequantiser that counts its calls and builds the same tiny model each time."""
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF stand-in")
    reference = tiny_llama(tmp_path / "ref", layers=2)
    calls = []

    def dequantise(path, dtype):
        calls.append((path, dtype))
        return tiny_llama(tmp_path / f"built{len(calls)}", layers=2).to(dtype)

    return file, dequantise, calls, reference


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_second_load_reads_the_cached_copy_and_equals_the_first(cache, gguf):
    file, dequantise, calls, reference = gguf
    first = gguf_cache.load_cached(file, torch.float32, dequantise)
    assert len(calls) == 1 and calls[0][1] == torch.float32  # dequantised once, in float32 for the copy
    folder = gguf_cache.cache_dir(file)
    assert folder.parent == cache / "gguf-models" and (folder / "config.json").is_file()
    second = gguf_cache.load_cached(file, torch.float32, dequantise)
    assert len(calls) == 1  # not dequantised again
    assert _same_weights(second, first) and _same_weights(second, reference)
    halved = gguf_cache.load_cached(file, torch.bfloat16, dequantise)
    assert len(calls) == 1 and next(halved.parameters()).dtype == torch.bfloat16
    assert _same_weights(halved, reference.to(torch.bfloat16))  # the same cast as dequantising to bfloat16
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_rewritten_file_is_converted_again(cache, gguf):
    file, dequantise, calls, _ = gguf
    gguf_cache.load_cached(file, torch.float32, dequantise)
    before = gguf_cache.cache_dir(file)
    file.write_bytes(b"GGUF stand-in, rewritten")
    os.utime(file, ns=(1, 1))
    assert gguf_cache.cache_dir(file) != before
    gguf_cache.load_cached(file, torch.float32, dequantise)
    assert len(calls) == 2


def test_a_damaged_copy_is_dequantised_again_and_replaced(cache, gguf, capsys):
    file, dequantise, calls, reference = gguf
    gguf_cache.load_cached(file, torch.float32, dequantise)
    weights = gguf_cache.cache_dir(file) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a copy cut short (a full disk, a kill)
    model = gguf_cache.load_cached(file, torch.float32, dequantise)
    assert len(calls) == 2 and _same_weights(model, reference)
    assert "could not be read" in capsys.readouterr().err
    assert _same_weights(gguf_cache.load_cached(file, torch.float32, dequantise), reference) and len(calls) == 2


def test_over_the_limit_or_turned_off_nothing_is_kept(cache, gguf, monkeypatch, capsys):
    file, dequantise, calls, reference = gguf
    monkeypatch.setenv(gguf_cache.LIMIT_ENV, "0.000001")  # ~1 KB: the tiny model is larger
    assert _same_weights(gguf_cache.load_cached(file, torch.float32, dequantise), reference)
    err = capsys.readouterr().err
    assert "dequantised on every load" in err and "opd-lab models convert" in err
    assert not gguf_cache.cache_dir(file).exists()
    monkeypatch.setenv(gguf_cache.LIMIT_ENV, "0")
    gguf_cache.load_cached(file, torch.float32, dequantise)
    assert len(calls) == 2 and not (cache / "gguf-models").exists()
    monkeypatch.setenv(gguf_cache.LIMIT_ENV, "lots")
    assert gguf_cache.limit_bytes() == int(gguf_cache.DEFAULT_LIMIT_GB * 1024**3)
    assert "not a number" in capsys.readouterr().err


def test_a_read_only_cache_still_loads(cache, gguf, capsys):
    file, dequantise, calls, reference = gguf
    cache.mkdir()
    (cache / "gguf-models").write_text("a file where the cache folder should be")
    assert _same_weights(gguf_cache.load_cached(file, torch.float32, dequantise), reference)
    assert "could not cache" in capsys.readouterr().err
