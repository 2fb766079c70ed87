"""Time the exact lab up to V^T = 3^10 (issue #9 target: under 2 s on 2 CPU cores) and print a table.

Each row: enumerate all V^T sequences, then exact bias and variance of the sampled-token estimator
over the default gamma grid (6 values) against the autograd gradient of the exact sequence KL; and,
separately, the top-K objectives table. Best of ``--repeat`` runs.

    python benchmarks/lab_enumeration.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from opd_core.lab import LabSetting, bias_variance_vs_gamma, enumerate_sequences, topk_bias  # noqa: E402

SIZES = [(2, 10), (3, 6), (3, 8), (4, 6), (3, 10), (2, 16), (4, 8)]
TARGET_S = 2.0


def best_of(repeat: int, fn) -> float:
    """Return the fastest of ``repeat`` wall-clock timings of ``fn()`` in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Print one table row per (V, T)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()} (the lab runs on 1)")
    print(f"{'V':>3} {'T':>3} {'V^T':>9} {'enumerate s':>12} {'γ grid s':>9} {'top-K s':>8}  target")
    for vocab, horizon in SIZES:
        setting = LabSetting(vocab_size=vocab, horizon=horizon, k=2)
        t_enum = best_of(args.repeat, lambda v=vocab, h=horizon: enumerate_sequences(v, h))
        t_gamma = best_of(args.repeat, lambda s=setting: bias_variance_vs_gamma(s))
        t_topk = best_of(args.repeat, lambda s=setting: topk_bias(s))
        verdict = "ok" if t_gamma < TARGET_S else "SLOW"
        print(f"{vocab:>3} {horizon:>3} {vocab**horizon:>9,} {t_enum:>12.4f} {t_gamma:>9.3f} {t_topk:>8.3f}  {verdict}")


if __name__ == "__main__":
    main()
