"""Time every dashboard page's server work on a run with about a million logged tokens.

Writes a synthetic run (opd_core.synthetic_runs) of the requested size, then renders each page with
Streamlit's AppTest twice: cold (empty cache, as on a first visit) and warm (cache hit, as on every rerun
after a widget change). Prints a markdown table for BENCHMARKS.md.

    python benchmarks/page_speed.py                   # 1,024,000 tokens: 40 logged steps x 64 samples x 400
    python benchmarks/page_speed.py --steps 4         # a quick smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAGES = ["runs", "inspector", "imbalance", "drift", "mismatch", "health", "compare"]


def make_run(runs_dir: Path, steps: int, samples: int, length: int) -> Path:
    """A synthetic run with every step logged: steps x samples x length tokens."""
    from opd_core.synthetic_runs import write_synthetic_run

    return write_synthetic_run(runs_dir / "million", steps=steps, log_every=1, samples=samples, length=length)


def time_pages(runs_dir: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """(cold, warm median) seconds per page, from a fresh AppTest on the given runs folder."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["OPD_LAB_RUNS_DIR"] = str(runs_dir)
    os.environ["OPD_LAB_SAMPLE_RUNS"] = ""
    main = str(REPO / "app" / "main.py")
    # Warm the interpreter (imports of plotly, pandas, pyarrow) on an empty folder, outside the timings.
    os.environ["OPD_LAB_RUNS_DIR"] = tempfile.mkdtemp()
    AppTest.from_file(main, default_timeout=300).run()
    os.environ["OPD_LAB_RUNS_DIR"] = str(runs_dir)
    st.cache_data.clear()

    results: dict[str, tuple[float, float]] = {}
    at = AppTest.from_file(main, default_timeout=300)
    at.run()
    for page in PAGES:
        st.cache_data.clear()
        at.switch_page(f"../pages/{page}.py")
        start = time.perf_counter()
        at.run()
        cold = time.perf_counter() - start
        if at.exception:
            raise SystemExit(f"page {page} raised: {[e.value for e in at.exception]}")
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - start)
        results[page] = (cold, statistics.median(warm))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="logged steps (default 40)")
    parser.add_argument("--samples", type=int, default=64, help="responses per step (default 64)")
    parser.add_argument("--length", type=int, default=400, help="tokens per response (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="warm reruns per page (median reported)")
    parser.add_argument("--out", type=Path, help="keep the generated run here (default: a temp folder)")
    args = parser.parse_args()

    runs_dir = args.out or Path(tempfile.mkdtemp(prefix="opd-page-speed-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reused = (runs_dir / "million").exists()
    if not reused:
        make_run(runs_dir, args.steps, args.samples, args.length)
    made = "reused from --out" if reused else f"written in {time.perf_counter() - start:.1f} s"
    tokens = args.steps * args.samples * args.length
    results = time_pages(runs_dir, args.repeats)

    print(f"Page server time on a run with {tokens:,} logged tokens ({args.steps} steps x {args.samples} samples "
          f"x {args.length} tokens; run {made}). {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}. Pages analyse the last 8 logged steps by "
          "default; cold = first visit (empty cache), warm = rerun (median).\n")
    print("| page | cold (s) | warm (s) | within 1 s |")
    print("|---|---:|---:|:---:|")
    for page, (cold, warm) in results.items():
        print(f"| {page} | {cold:.2f} | {warm:.2f} | {'yes' if cold <= 1.0 else 'no'} |")


if __name__ == "__main__":
    main()
