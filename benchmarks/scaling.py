"""How one loss forward+backward grows with sequence length T and vocabulary V (time and peak memory).

Why: a user moving from the toy pair to a real model needs to know what doubling T or V costs. Each
point is one fresh subprocess of ``benchmarks/objectives_memory.py --worker`` (peak resident set above
the inputs, warm fwd+bwd time). The growth exponent is the slope of log(cost) against log(T) or log(V)
over the sweep: 1.0 is linear, 2.0 quadratic.

    python benchmarks/scaling.py            # T in 256..2048 at V=32,768; V in 32,768..131,072 at T=512; B=1
    python benchmarks/scaling.py --quick    # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.vs_trl import WorkerError, run_worker  # noqa: E402

WORKER = str(REPO / "benchmarks" / "objectives_memory.py")
OBJECTIVES = ["topk_support (k=32)", "reverse_kl"]
FULL = {"T": ([256, 512, 1024, 2048], 32_768), "V": ([32_768, 65_536, 131_072], 512)}
QUICK = {"T": ([32, 64], 2_048), "V": ([1_024, 2_048], 32)}


def point(case: str, seq: int, vocab: int, batch: int = 1, *, isolate: bool = True) -> dict:
    """Peak extra bytes and warm seconds of one fwd+bwd of ``case`` at (batch, seq, vocab)."""
    if not isolate:  # a smoke run: in-process, so an earlier peak can hide this one
        import torch

        from benchmarks.objectives_memory import worker

        return worker(case, batch, seq, vocab, torch.float32, "cpu")
    return run_worker([WORKER, "--worker", case, "--batch", str(batch), "--seq", str(seq), "--vocab", str(vocab),
                       "--device", "cpu"], timeout=300)


def exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log(y) on log(x): the power of growth (1 = linear)."""
    if len(xs) < 2 or any(y <= 0 for y in ys):
        return math.nan
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def sweep(quick: bool = False, objectives: list[str] | None = None, *, isolate: bool = True) -> list[dict]:
    """One result per (objective, axis): the points and the time and memory growth exponents."""
    grid = QUICK if quick else FULL
    results = []
    for case in objectives or (OBJECTIVES[:1] if quick else OBJECTIVES):
        for axis, (values, fixed) in grid.items():
            pts = []
            for v in values:
                seq, vocab = (v, fixed) if axis == "T" else (fixed, v)
                try:
                    r = point(case, seq, vocab, isolate=isolate)
                except WorkerError as exc:
                    pts.append({"x": v, "error": str(exc)[-200:]})
                    continue
                pts.append({"x": v, "seconds": r["seconds"], "peak_bytes": r["peak_bytes"]})
            ok = [p for p in pts if "error" not in p]
            res = {"objective": case, "axis": axis, "fixed": fixed, "points": pts,
                   "time_exponent": exponent([p["x"] for p in ok], [p["seconds"] for p in ok]),
                   "memory_exponent": exponent([p["x"] for p in ok], [p["peak_bytes"] for p in ok])}
            results.append(res)
            print(f"  [scaling] {case} vs {axis}: time^{res['time_exponent']:.2f} memory^{res['memory_exponent']:.2f}",
                  file=sys.stderr, flush=True)
    return results


def describe(exp: float) -> str:
    """A word for a growth exponent."""
    if math.isnan(exp):
        return "n/a"
    if exp < 0.5:
        return "flat"
    return "linear" if exp <= 1.25 else "super-linear"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = sweep(args.quick)
    print("| objective | axis (other fixed) | points: value -> fwd+bwd s / peak MiB | time growth | memory growth |")
    print("|---|---|---|---|---|")
    for r in results:
        other = f"V={r['fixed']:,}" if r["axis"] == "T" else f"T={r['fixed']:,}"
        pts = "; ".join(f"{p['x']:,}: failed" if "error" in p else
                        f"{p['x']:,}: {p['seconds']:.3f} s / {p['peak_bytes'] / 2**20:.0f}" for p in r["points"])
        print(f"| {r['objective']} | {r['axis']} ({other}, B=1) | {pts} | ^{r['time_exponent']:.2f} "
              f"({describe(r['time_exponent'])}) | ^{r['memory_exponent']:.2f} ({describe(r['memory_exponent'])}) |")


if __name__ == "__main__":
    main()
