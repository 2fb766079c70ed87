"""The student-side levers of issue #21, each against its reference path, on the same tensors in one process.

Why: a lever is kept only if it wins where it is meant to, measured side by side. For each vocabulary and
hidden size this times the student's head + loss forward and backward (what the objective costs the step,
from final hidden states to the head's gradients) and its peak extra memory:

* ``reverse_kl`` reference: logits = hidden @ W.T ([B,T,V]), the chunked recompute loss, backward;
* ``reverse_kl`` fused: ``objectives.fused_head.fused_head_kl`` (no [B,T,V], analytic gradient in the
  forward; the step statistics come out of the same pass);
* ``topk_support`` (k=32) reference: full logits + the chunked loss;
* ``topk_support`` restricted: ``objectives.support_head`` (33 head rows per token).

    python benchmarks/fast_paths.py                     # N=768 tokens (32 x 24), V 32,768 and 151,936
    python benchmarks/fast_paths.py --hidden 576 --threads 1
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _cases(hidden, weight, teacher, ids, mask, k):
    import torch

    from opd_core.objectives import ObjectiveBatch, compute_objective, reduce_loss
    from opd_core.objectives.chunked import token_logprob_stats
    from opd_core.objectives.fused_head import fused_head_kl, reduction_weights
    from opd_core.objectives.support_head import topk_support_on_head
    from opd_core.stats import step_stats
    from opd_core.student_head import HeadInputs

    stats = token_logprob_stats(teacher, ids, k)
    weights = reduction_weights(lambda x: reduce_loss(x, mask), mask)

    def leaves():
        return hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)

    def ref_kl():
        h, w = leaves()
        logits = h @ w.T
        out = compute_objective("reverse_kl", ObjectiveBatch(logits, ids, mask, teacher_logits=teacher))
        reduce_loss(out.loss, mask).backward()
        step_stats(logits.detach(), teacher, ids)  # the step metrics the loop computes from the logits

    def fused_kl():
        h, w = leaves()
        loss, _ = fused_head_kl(h, w, None, teacher, ids, mask, reduce_weights=weights)
        reduce_loss(loss, mask).backward()

    def ref_topk():
        h, w = leaves()
        logits = h @ w.T
        ob = ObjectiveBatch(logits, ids, mask, teacher_topk_ids=stats["topk_ids"],
                            teacher_topk_logps=stats["topk_logps"], teacher_sampled_logp=stats["logp"])
        out = compute_objective("topk_support", ob, k=k)
        reduce_loss(out.loss, mask).backward()
        step_stats(logits.detach(), teacher, ids, support_k=k)

    def restricted_topk():
        h, w = leaves()
        out = topk_support_on_head(HeadInputs(h, w, None), ids, mask, stats["topk_ids"], stats["topk_logps"],
                                   stats["logp"], k=k, support="teacher_topk")
        reduce_loss(out.loss, mask).backward()
        with torch.no_grad():  # the step metrics from a no-grad fused pass (no [B,T,V] either)
            fused_head_kl(hidden, weight, None, teacher, ids, mask, support_ids=stats["topk_ids"])

    return {"reverse_kl reference (+ step_stats)": ref_kl, "reverse_kl fused (stats included)": fused_kl,
            "topk_support reference (+ step_stats)": ref_topk,
            "topk_support restricted (+ no-grad fused stats)": restricted_topk}


def measure(vocab: int, hidden_size: int, tokens: int, k: int, rounds: int) -> dict[str, dict]:
    """Best-of-``rounds`` time and the peak RSS growth of each case (cases interleaved within a round)."""
    import torch

    g = torch.Generator().manual_seed(0)
    B = max(1, tokens // 24)
    T = tokens // B
    hidden = torch.randn(B, T, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) / hidden_size ** 0.5
    teacher = torch.randn(B, T, vocab, generator=g) * 2
    ids = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    cases = _cases(hidden, weight, teacher, ids, mask, k)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: {"best_ms": 1e3 * min(ts), "all_ms": [round(1e3 * t) for t in ts]} for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_768, 151_936])
    parser.add_argument("--hidden", type=int, default=64, help="student hidden size (toy 64; SmolLM2-135M 576)")
    parser.add_argument("--tokens", type=int, default=768, help="response tokens per step (32 x 24)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for vocab in args.vocab:
        results[vocab] = measure(vocab, args.hidden, args.tokens, args.k, args.rounds)
        print(f"V={vocab:,}, H={args.hidden}, {args.tokens} tokens, {args.threads} thread(s), best of "
              f"{args.rounds}:", file=sys.stderr)
        for name, r in results[vocab].items():
            print(f"  {name}: {r['best_ms']:.0f} ms {r['all_ms']}", file=sys.stderr)
    print("| V | case | best (ms) | vs its reference |")
    print("|---:|---|---:|---:|")
    for vocab, res in results.items():
        names = list(res)
        for i, name in enumerate(names):
            ref = res[names[i - i % 2]]["best_ms"]
            print(f"| {vocab:,} | {name} | {res[name]['best_ms']:.0f} | {res[name]['best_ms'] / ref:.2f}x |")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
