"""Peak memory of one loss forward+backward at Qwen2.5's vocabulary: ours (chunked top-K) against TRL.

Why: at V=151,936, B=4, T=1024 one float32 [B,T,V] tensor is 2.3 GiB; TRL's full-vocabulary
``generalized_jsd_loss`` holds several of them, ours holds one chunk of tokens at a time. Each case
runs in a fresh subprocess (``benchmarks/objectives_memory.py --worker``, the same measurement as that
script: the process's peak resident set above the inputs, or ``torch.cuda.max_memory_allocated``).

A case whose predicted peak does not fit in this machine's free memory is measured at the largest
batch that fits (same T and V) and reported in [B,T,V] copies, which do not depend on B (memory is
linear in B*T*V for every case here); the row says so. The worker runs under an address-space limit
so an allocation that does not fit fails cleanly instead of waking the kernel's OOM killer.

    python benchmarks/loss_memory.py                         # B=4, T=1024, V=151,936
    python benchmarks/loss_memory.py --vocab 4096 --seq 64   # a quick look
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.vs_trl import WorkerError, run_worker  # noqa: E402

WORKER = str(REPO / "benchmarks" / "objectives_memory.py")
# case name in objectives_memory.CASES -> float32 [B,T,V] copies it is expected to need at peak
# (measured at T=512: BENCHMARKS.md), plus the inputs (student, teacher logits and the student's gradient)
CASES = {
    "topk_support (k=32)": 1.1,
    "reverse_kl": 1.3,
    "TRL generalized_jsd_loss (beta=1, reverse KL)": 7.0,
}
OURS, ANCHOR = "topk_support (k=32)", "TRL generalized_jsd_loss (beta=1, reverse KL)"
INPUT_COPIES = 2.0
VIRTUAL_OVERHEAD = 3 * 2**30  # address space of the interpreter, torch and its libraries beyond the data


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping or the OOM killer)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def fitting_batch(copies: float, batch: int, seq: int, vocab: int, budget: int) -> int:
    """The largest batch <= ``batch`` whose predicted peak (inputs + ``copies``) fits in ``budget`` bytes."""
    one = seq * vocab * 4  # one float32 [1,T,V] copy
    for b in range(batch, 0, -1):
        if (copies + INPUT_COPIES + 0.5) * b * one + VIRTUAL_OVERHEAD <= budget:
            return b
    return 0


def _limit_address_space(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def measure_case(case: str, batch: int, seq: int, vocab: int, device: str, timeout: float = 400, *,
                 isolate: bool = True) -> dict:
    """Peak extra memory of ``case`` in [B,T,V] copies, at ``batch`` or the largest batch that fits.

    ``isolate=False`` measures in this process (a smoke run: the peak of earlier work can hide in it).
    """
    if not isolate:
        import torch

        from benchmarks.objectives_memory import worker

        r = worker(case, batch, seq, vocab, torch.float32, device)
        one_copy = batch * seq * vocab * 4
        return {"case": case, "batch": batch, "peak_bytes": r["peak_bytes"], "copies": r["peak_bytes"] / one_copy,
                "peak_gib_at_requested_batch": r["peak_bytes"] / 2**30, "seconds": r["seconds"]}
    budget = available_bytes() - 2**30 if device == "cpu" else 1 << 62
    b = fitting_batch(CASES.get(case, 8.0), batch, seq, vocab, budget) if device == "cpu" else batch
    if b == 0:
        return {"case": case, "error": f"does not fit in {budget / 2**30:.1f} GiB free even at B=1"}
    limit = _limit_address_space(budget) if device == "cpu" else None
    try:
        r = run_worker([WORKER, "--worker", case, "--batch", str(b), "--seq", str(seq), "--vocab", str(vocab),
                        "--device", device], timeout, preexec_fn=limit)
    except WorkerError as exc:
        return {"case": case, "error": str(exc)[-300:], "batch": b}
    if "skipped" in r:
        return {"case": case, "error": r["skipped"], "batch": b}
    one_copy = b * seq * vocab * 4
    return {"case": case, "batch": b, "peak_bytes": r["peak_bytes"], "copies": r["peak_bytes"] / one_copy,
            "peak_gib_at_requested_batch": r["peak_bytes"] / b * batch / 2**30, "seconds": r["seconds"]}


def compare(batch: int, seq: int, vocab: int, device: str = "cpu", cases: list[str] | None = None, *,
            isolate: bool = True) -> dict[str, dict]:
    """Measure each case (in its own process when ``isolate``); returns {case: result}."""
    out = {}
    for case in cases or list(CASES):
        out[case] = measure_case(case, batch, seq, vocab, device, isolate=isolate)
        print(f"  [loss_memory] {case}: {out[case]}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    results = compare(args.batch, args.seq, args.vocab, args.device)
    one = args.batch * args.seq * args.vocab * 4 / 2**30
    print(f"B={args.batch}, T={args.seq}, V={args.vocab:,}, float32 logits on {args.device}; one [B,T,V] copy = "
          f"{one:.2f} GiB\n")
    print("| loss | measured at B | peak extra memory (GiB, at the requested B) | [B,T,V] copies | fwd+bwd (s) |")
    print("|---|---:|---:|---:|---:|")
    for case, r in results.items():
        if "error" in r:
            print(f"| {case} | {r.get('batch', '-')} | failed: {r['error'][:160]} | | |")
            continue
        print(f"| {case} | {r['batch']} | {r['peak_gib_at_requested_batch']:.2f} | {r['copies']:.2f} | "
              f"{r['seconds']:.2f} |")
    if "copies" in results.get(OURS, {}) and "copies" in results.get(ANCHOR, {}):
        print(f"\nours / TRL = {results[OURS]['copies'] / results[ANCHOR]['copies']:.3f} (goal <= 0.25)")


if __name__ == "__main__":
    main()
