"""What the logger SDK costs a training loop: off, on (sampled), on every step, and the training-thread share.

    python benchmarks/sdk_overhead.py                 # defaults: B=8, T=128, V=8192, 4x512 layers, 30 steps
    python benchmarks/sdk_overhead.py --json out.json

A stand-in training step (a small MLP + LM head: forward, loss, backward, SGD) produces [B,T,V] logits
for a student and a frozen teacher, as a distillation trainer would. Each variant runs the same
steps, interleaved step by step so a busy machine slows all of them alike; the logger is called on
every step exactly as a trainer would call it. Reported: ms per
step, overhead against the no-logger loop, and the time the training thread spends inside the SDK
on a logged step (the rest, building the table and the disk writes, happens on the writer thread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from opd_core.logging_sdk import OPDLogger


def _lm(hidden: int, vocab: int, layers: int) -> torch.nn.Module:
    blocks = [m for _ in range(layers) for m in (torch.nn.Linear(hidden, hidden), torch.nn.GELU())]
    return torch.nn.Sequential(*blocks, torch.nn.Linear(hidden, vocab, bias=False))


def make_step(batch: int, length: int, vocab: int, hidden: int, layers: int, seed: int = 0):
    """A closure doing one stand-in training step; returns (ids, mask, student_logits, teacher_logits, loss)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length, hidden, generator=g)
    student = _lm(hidden, vocab, layers)
    teacher = _lm(hidden, vocab, layers).requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)

    def step():
        s_logits = student(h)
        with torch.no_grad():
            t_logits = teacher(h)
        loss = torch.nn.functional.cross_entropy(s_logits.reshape(-1, vocab), ids.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return ids, mask, s_logits.detach(), t_logits, float(loss.detach())

    return step


class Variant:
    """One way of calling the logger, timed step by step (variants are interleaved so machine noise hits all)."""

    def __init__(self, name: str, step_fn, logger: OPDLogger | None, via_logps: bool):
        self.name, self.step_fn, self.logger, self.via_logps = name, step_fn, logger, via_logps
        self.per_step: list[float] = []
        self.in_sdk: list[float] = []
        self.in_sdk_logged: list[float] = []
        self.close_s = 0.0

    def run_step(self, step: int) -> None:
        t0 = time.perf_counter()
        ids, mask, s_logits, t_logits, loss = self.step_fn()
        t1 = time.perf_counter()
        logged, logger = False, self.logger
        if logger is not None:
            if self.via_logps:  # the trainer already has the sampled-token log-probs (cheapest use)
                if logger.should_log(step):
                    s_lp = s_logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
                    t_lp = t_logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
                    logged = logger.log_step(step, token_ids=ids, mask=mask, student_logp=s_lp, teacher_logp=t_lp)
            else:
                logged = logger.log_logits(step, token_ids=ids, mask=mask, student_logits=s_logits,
                                           teacher_logits=t_logits, objective="reverse_kl")
            logger.log_metrics(step, {"loss": loss, "grad_norm": 0.0, "lr": 1e-3})
        t2 = time.perf_counter()
        self.per_step.append(t2 - t0)
        self.in_sdk.append(t2 - t1)
        if logged:
            self.in_sdk_logged.append(t2 - t1)

    def close(self) -> None:
        t0 = time.perf_counter()
        if self.logger is not None:
            self.logger.close()
        self.close_s = time.perf_counter() - t0

    def result(self) -> dict:
        steps = self.per_step[1:]  # the first step pays one-off warm-up
        return {
            "variant": self.name, "steps": len(self.per_step),
            "ms_per_step_median": 1e3 * statistics.median(steps), "ms_per_step_mean": 1e3 * statistics.mean(steps),
            "ms_in_sdk_per_step_mean": 1e3 * statistics.mean(self.in_sdk[1:]),
            "ms_in_sdk_on_logged_step_mean": 1e3 * statistics.mean(self.in_sdk_logged) if self.in_sdk_logged else 0.0,
            "logged_steps": len(self.in_sdk_logged), "close_drain_ms": 1e3 * self.close_s,
        }


def disabled_call_ns(calls: int = 100_000) -> float:
    """Nanoseconds per log_step + log_metrics call on a disabled logger (the cost of leaving calls in)."""
    off = OPDLogger(enabled=False)
    ids = torch.zeros(1, 1, dtype=torch.long)
    t0 = time.perf_counter()
    for step in range(calls):
        off.log_step(step, token_ids=ids, mask=ids, student_logp=ids, teacher_logp=ids)
        off.log_metrics(step, {"loss": 0.0})
    return 1e9 * (time.perf_counter() - t0) / calls


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4, help="hidden layers before the LM head (the step's own work)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--max-samples", type=int, default=8)
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        specs = [
            ("off (no logger)", None, False),
            ("disabled logger", dict(enabled=False), False),
            (f"on, log_step (logps), every={a.every}", dict(every=a.every), True),
            (f"on, log_logits, every={a.every}", dict(every=a.every), False),
            ("on, log_logits, every=1", dict(every=1), False),
        ]
        variants = [
            Variant(name, make_step(a.batch, a.length, a.vocab, a.hidden, a.layers),
                    None if kwargs is None else OPDLogger(Path(tmp) / f"run{i}", max_samples=a.max_samples,
                                                          config={"objective": "reverse_kl"}, **kwargs), via_logps)
            for i, (name, kwargs, via_logps) in enumerate(specs)
        ]
        for step in range(a.steps):
            for v in variants:
                v.run_step(step)
        for v in variants:
            v.close()
        results = [v.result() for v in variants]
    # Mean, not median: the cost of a sampled logger sits on 1 step in `every`, which is the point.
    base = results[0]["ms_per_step_mean"]
    for r in results:
        r["overhead_pct"] = 100.0 * (r["ms_per_step_mean"] - base) / base
    out = {"shape": {"batch": a.batch, "length": a.length, "vocab": a.vocab, "hidden": a.hidden, "layers": a.layers},
           "torch_threads": torch.get_num_threads(), "disabled_call_ns": disabled_call_ns(), "variants": results}
    print(f"B={a.batch} T={a.length} V={a.vocab}, {a.steps} steps, max_samples={a.max_samples}, "
          f"{torch.get_num_threads()} torch threads")
    print(f"{'variant':38s} {'mean ms/step':>12s} {'overhead':>9s} {'ms in SDK (logged step)':>24s} {'close ms':>9s}")
    for r in results:
        print(f"{r['variant']:38s} {r['ms_per_step_mean']:12.1f} {r['overhead_pct']:8.1f}% "
              f"{r['ms_in_sdk_on_logged_step_mean']:24.1f} {r['close_drain_ms']:9.1f}")
    print(f"disabled logger: {out['disabled_call_ns']:.0f} ns per log_step + log_metrics pair")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
