"""GGUF weights dequantised once into the user cache, so that the next load of the same file takes seconds.

Why: transformers rebuilds a GGUF model from its quantised blocks on every load. It parses the file's
metadata twice (262K token strings for Gemma-3, one Python call each) and dequantises every tensor in
numpy: ~35 s of CPU for Gemma-3-270M on this machine, ~12 s for SmolLM2-135M, paid by every run, resume
and re-scoring that names the file. The float32 result is an ordinary checkpoint: saved once as
safetensors under ``cache_root()/gguf-models/``, later loads read it like any Hugging Face folder.

The key is the file's resolved path, size and modification time and the transformers version (the
dequantisation is transformers' own), the tokenizer's key too (``tokenizer_files.converted_copy_dir``): a
replaced or rewritten file is converted again. A damaged copy is converted again, never trusted.

Disk: the copy is float32, 4 bytes a weight (1.07 GB for Gemma-3-270M). Only models up to
``$OPD_LAB_GGUF_CACHE_GB`` (default 4) are kept, and only when the disk has twice that free; a larger one is
dequantised on every load, with a one-line hint to convert it once (``opd-lab models convert``).
``OPD_LAB_GGUF_CACHE_GB=0`` turns the cache off.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

LIMIT_ENV = "OPD_LAB_GGUF_CACHE_GB"
DEFAULT_LIMIT_GB = 4.0
_FLOAT32_BYTES = 4


def limit_bytes() -> int:
    """The largest dequantised model (float32 bytes) the cache keeps; 0 when the cache is off."""
    raw = os.environ.get(LIMIT_ENV, "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_LIMIT_GB
    except ValueError:
        print(f"warning: {LIMIT_ENV}={raw!r} is not a number of GB; using {DEFAULT_LIMIT_GB:g}", file=sys.stderr)
        gb = DEFAULT_LIMIT_GB
    return max(0, int(gb * 1024**3))


def cache_dir(file: Path) -> Path:
    """Where the dequantised copy of ``file`` lives (whether or not it exists yet)."""
    from opd_core.tokenizer_files import converted_copy_dir

    return converted_copy_dir("gguf-models", file)


def load_cached(file: Path, dtype, dequantise: Callable | None = None):
    """The model stored in the GGUF ``file``, in ``dtype``: from its cached float32 copy when there is one,
    else dequantised (``dequantise(file, dtype)``, ``model_tools.load_gguf_model`` by default) and, when the
    cache allows it, saved for the next load."""
    import torch

    if dequantise is None:
        from opd_core.model_tools import load_gguf_model as dequantise
    limit = limit_bytes()
    if limit == 0:
        return dequantise(file, dtype)
    folder = cache_dir(file)
    if (folder / "config.json").is_file():
        try:
            return _read(folder, dtype)
        except Exception as exc:  # noqa: BLE001 - a damaged copy is rebuilt from the file, never trusted
            print(f"warning: the cached copy of {file.name} in {folder} could not be read ({type(exc).__name__}); "
                  "dequantising the GGUF file again", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    model = dequantise(file, torch.float32)
    _save(model, file, folder, limit)
    return model.to(dtype)


def _read(folder: Path, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def _save(model, file: Path, folder: Path, limit: int) -> None:
    """Keep the float32 model for the next load when it fits the limit and the disk; a failure to save only
    costs the next load its speed."""
    size = sum(p.numel() for p in model.parameters()) * _FLOAT32_BYTES  # a tied head is one parameter
    hint = f"`opd-lab models convert {file} FOLDER` once and pass FOLDER to skip dequantising"
    if size > limit:
        print(f"note: {file.name} dequantises to {size / 1024**3:.1f} GB, over the {limit / 1024**3:g} GB that "
              f"{LIMIT_ENV} lets the cache keep; it is dequantised on every load ({hint})", file=sys.stderr)
        return
    from opd_core.tokenizer_files import publish_folder

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(folder.parent).free < 2 * size:
            print(f"note: not caching {file.name}'s dequantised weights ({size / 1024**3:.1f} GB): the disk under "
                  f"{folder.parent} has less than twice that free ({hint})", file=sys.stderr)
            return
        publish_folder(folder, model.save_pretrained)
    except OSError as exc:  # read-only or full cache
        print(f"note: could not cache {file.name}'s dequantised weights in {folder.parent} ({exc}); "
              "the next load dequantises it again", file=sys.stderr)
