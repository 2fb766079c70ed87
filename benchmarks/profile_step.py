"""Where one non-logging training step of our loop spends its time, on the benchmark pairs of issue #21.

Why: a lever is worth writing only where the time goes. This builds the loop exactly as
``benchmarks/vs_trl.py`` does (same pair, batch, rollouts, one thread), runs one warm-up step, then
profiles ``--steps`` non-logging steps with cProfile and prints the loop's own phase timers and the
functions with the most time (torch ops show as their Python entry points).

    python benchmarks/profile_step.py --vocab 32768 --objective topk_support
    python benchmarks/profile_step.py --vocab 151936 --objective reverse_kl --batch 8
    python benchmarks/profile_step.py --vocab 32768 --batch 8 --trl gkd   # TRL's step, by phase, same work
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_trainer(run_root: str, objective: str, vocab: int | str, batch: int, max_new_tokens: int, steps: int):
    """The loop of ``vs_trl.measure_ours`` on the same pair and settings, with no logging step but the first."""
    from benchmarks.vs_trl import _pair_dirs
    from opd_core import runs
    from opd_core.config import load_config
    from opd_core.train import Trainer

    student, teacher, task = _pair_dirs(vocab)
    rollouts = 4 if batch % 4 == 0 else 1
    params = {"k": 32} if objective == "topk_support" else {}
    overrides = [f"student={student}", f"teacher={teacher}", *([f"task={task}"] if task else []),
                 f"objective={objective}", f"steps={steps + 10}", f"prompts_per_step={batch // rollouts}",
                 f"num_rollouts={rollouts}", f"max_new_tokens={max_new_tokens}", "lmbda=1.0", "temperature=1.0",
                 "top_p=1.0", "checkpoint_every=0", "eval_every=0", "cpu_threads=1", "eval_size=8",
                 "log_tokens_every=1000", *(f"objective_params.{k}={v}" for k, v in params.items())]
    cfg = load_config(None, overrides)
    run_dir = runs.create_run_dir(run_root, "profile")
    return Trainer(cfg, run_dir, log=lambda *_: None)


def profile_trl(kind: str, vocab: int | str, batch: int, max_new_tokens: int, steps: int) -> dict[str, float]:
    """TRL's step on the same work as ``vs_trl.measure_trl``, split into generation, ``compute_loss`` (both
    forwards and the loss) and the rest (backward, clipping, optimizer); medians in ms after 2 warm-up steps."""
    import statistics

    import torch
    from transformers import TrainerCallback

    from benchmarks.vs_trl import _steady, _trl_trainer

    torch.set_num_threads(1)
    spent: dict[str, list[float]] = {"generate": [], "compute_loss": [], "step": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name].append(time.perf_counter() - t0)
        return wrapper

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            spent["step"].append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(kind, 1.0, steps + 2, batch, max_new_tokens, tmp, vocab)
        gen = "generate_on_policy_outputs" if kind == "gkd" else "_generate_and_score_completions"
        setattr(trainer, gen, timed("generate", getattr(trainer, gen)))
        trainer.compute_loss = timed("compute_loss", trainer.compute_loss)
        trainer.add_callback(StepTimer())
        trainer.train()
    out = {k: 1e3 * statistics.median(_steady(v)) for k, v in spent.items() if v}
    out["rest"] = out["step"] - out.get("generate", 0.0) - out.get("compute_loss", 0.0)
    return {k: round(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="32768", help="vocabulary of the random-weight pair, or 'smollm2'")
    parser.add_argument("--objective", default="topk_support")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=1, help="non-logging steps profiled after one warm-up step")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--trl", choices=["gkd", "distillation"], help="profile TRL's trainer instead of our loop")
    args = parser.parse_args(argv)
    vocab = args.vocab if args.vocab == "smollm2" else int(args.vocab)
    if args.trl:
        print(f"TRL {args.trl}, median ms per step: {profile_trl(args.trl, vocab, args.batch, args.max_new_tokens, 3)}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(tmp, args.objective, vocab, args.batch, args.max_new_tokens, args.steps)
        tr.observe(tr.train_step(2), False)  # warm-up (not a logging step)
        prof = cProfile.Profile()
        for step in range(3, 3 + args.steps):
            t0 = time.perf_counter()
            prof.enable()
            result = tr.train_step(step)
            metrics = tr.observe(result, False)
            prof.disable()
            total = time.perf_counter() - t0
            phases = {k: round(1e3 * v) for k, v in metrics.items() if k.startswith("t_")}
            print(f"step {step}: {1e3 * total:.0f} ms; phases (ms) {phases}; fast path: "
                  f"{result.scored.head is not None}")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
