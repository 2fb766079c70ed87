"""Peak memory and time of one forward+backward of each objective, against plain full-vocabulary losses.

Why: at Qwen2.5's vocabulary (151,936) a plain implementation holds several float32 [B,T,V] copies;
ours holds only the model logits, their gradient and one chunk of tokens at a time. Each measurement
runs in a fresh subprocess so the peak of one cannot hide in the next. Prints a markdown table.

    python benchmarks/objectives_memory.py                      # B=4, T=512, V=151,936 (needs ~20 GB RAM on CPU)
    python benchmarks/objectives_memory.py --vocab 32000 --seq 128   # a quick look

Memory is the peak above what the inputs already use: ``torch.cuda.max_memory_allocated`` on CUDA, the
process's peak resident set (``ru_maxrss``) on CPU. The plain baselines are TRL's
``GKDTrainer.generalized_jsd_loss`` (when ``trl`` is installed: ``pip install trl``) and a textbook
full-vocabulary reverse KL written inline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opd_core.objectives import (  # noqa: E402
    ObjectiveBatch,
    TeacherNeeds,
    compute_objective,
    get_objective,
    reduce_loss,
    token_logprob_stats,
)

CASES = {
    "sampled_token": ("ours", "sampled_token", {}),
    "sampled_token (gamma=1)": ("ours", "sampled_token", {"gamma": 1.0}),
    "reverse_kl": ("ours", "reverse_kl", {}),
    "forward_kl": ("ours", "forward_kl", {}),
    "jsd (beta=0.5)": ("ours", "jsd", {"beta": 0.5}),
    "kl_mix (alpha=0.5)": ("ours", "kl_mix", {"alpha": 0.5}),
    "topk_support (k=32)": ("ours", "topk_support", {"k": 32}),
    "topk_support (k=32, +sampled, tail)": (
        "ours", "topk_support", {"k": 32, "support": "teacher_topk_plus_sampled", "tail_bucket": True}
    ),
    "plain reverse KL (textbook)": ("plain", "reverse_kl", {}),
    "TRL generalized_jsd_loss (beta=0.5)": ("trl", "jsd", {"beta": 0.5}),
    "TRL generalized_jsd_loss (beta=1, reverse KL)": ("trl", "jsd", {"beta": 1.0}),
}


def _reset_peak_rss() -> int:
    """Reset the kernel's resident-set high-water mark (VmHWM) and return the current resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def plain_reverse_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The textbook full-vocabulary reverse KL: log-softmax of both models over [B,T,V] at once."""
    ls = F.log_softmax(student.float(), -1)
    lt = F.log_softmax(teacher.float(), -1)
    per_token = (ls.exp() * (ls - lt)).sum(-1)
    return reduce_loss(per_token, mask)


def worker(case: str, batch: int, seq: int, vocab: int, dtype: torch.dtype, device: str) -> dict:
    """One measurement in this (fresh) process: peak extra memory and seconds of forward+backward."""
    kind, name, params = CASES[case]
    g = torch.Generator(device=device).manual_seed(0)
    student = torch.randn(batch, seq, vocab, generator=g, device=device, dtype=dtype).requires_grad_(True)
    teacher = torch.randn(batch, seq, vocab, generator=g, device=device, dtype=dtype)
    ids = torch.randint(0, vocab, (batch, seq), generator=g, device=device)
    mask = torch.ones(batch, seq, dtype=torch.bool, device=device)
    if kind == "trl":
        try:
            from trl.experimental.gkd import GKDTrainer
        except ImportError:
            return {"case": case, "skipped": "trl is not installed (pip install trl)"}

        def step() -> torch.Tensor:
            return GKDTrainer.generalized_jsd_loss(student, teacher, beta=params["beta"], reduction="batchmean")
    elif kind == "plain":

        def step() -> torch.Tensor:
            return plain_reverse_kl(student, teacher, mask)
    else:
        # the engine keeps only the teacher view the objective needs; scoring it is not part of the step
        needs = get_objective(name).needs_for(params)
        view = ObjectiveBatch(student, ids, mask)
        if needs is TeacherNeeds.FULL:
            view.teacher_logits = teacher
        else:
            stats = token_logprob_stats(teacher, ids, top_k=params.get("k", 0))
            view.teacher_sampled_logp = stats["logp"]
            view.teacher_topk_ids, view.teacher_topk_logps = stats["topk_ids"], stats["topk_logps"]
            del teacher  # the engine would not keep the teacher's full logits

        def step() -> torch.Tensor:
            return reduce_loss(compute_objective(name, view, **params).loss, mask)

    timings = []
    peak = None
    for _ in range(2):  # the first run gives the peak, the second (warm) the time
        student.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _reset_peak_rss()
        start = time.perf_counter()
        step().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
        if peak is None:
            top = torch.cuda.max_memory_allocated() if device == "cuda" else _status_bytes("VmHWM")
            peak = top - base
    return {"case": case, "peak_bytes": peak, "seconds": timings[-1]}


def run_case(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, "--batch", str(args.batch), "--seq", str(args.seq),
           "--vocab", str(args.vocab), "--dtype", args.dtype, "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = "out of memory (killed)" if proc.returncode in (-9, 137) else proc.stderr.strip()[-300:]
        return {"case": case, "skipped": reason}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", help="run only these cases (names as in the table)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq, args.vocab, dtype, args.device)))
        return
    one_copy = args.batch * args.seq * args.vocab * 4 / 2**30
    print(f"B={args.batch}, T={args.seq}, V={args.vocab:,}, logits {args.dtype} on {args.device}, "
          f"torch {torch.__version__}; one float32 [B,T,V] copy = {one_copy:.2f} GiB\n")
    print("| objective | peak extra memory (GiB) | in float32 [B,T,V] copies | fwd+bwd time (s) |")
    print("|---|---:|---:|---:|")
    for case in args.only or CASES:
        result = run_case(case, args)
        if "skipped" in result:
            print(f"| {case} | {result['skipped']} | | |", flush=True)
            continue
        gib = result["peak_bytes"] / 2**30
        print(f"| {case} | {gib:.2f} | {gib / one_copy:.2f} | {result['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
