"""Wall time of the default toy run and where a step's time goes.

    python benchmarks/train_speed.py                 # the default run: 200 steps x 32 rollouts
    python benchmarks/train_speed.py --steps 50 --config topk_support

Prints a markdown table: total wall time (goal <= 60 s on 2 CPU cores), mean time per step split into
rollout / scoring / objective / optimizer / logging / metrics / eval, and the per-token logging
overhead as a share of step time (goal <= 5%). Logging here is everything the run directory costs on
the step's critical path: the full per-token record, the token table and the teacher's reference
rollouts (``t_logging`` + ``t_reference``) at logging steps; the Parquet write itself happens on a
background thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from opd_core import runs  # noqa: E402
from opd_core.config import load_config  # noqa: E402
from opd_core.train_entry import run_in_dir  # noqa: E402

PHASES = ("t_rollout", "t_score", "t_objective", "t_optimizer", "t_metrics", "t_reference", "t_logging", "t_eval")


def measure(config: str, steps: int, overrides: list[str], threads: int) -> dict:
    cfg = load_config(config, [f"steps={steps}", "checkpoint_every=0", f"cpu_threads={threads}", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = runs.create_run_dir(tmp, "bench")
        runs.write_config(run_dir, cfg.to_dict())
        t0 = time.perf_counter()
        state = run_in_dir(run_dir, progress=False)
        wall = time.perf_counter() - t0
        m = runs.read_metrics(run_dir)
    assert state == "finished", state
    per_step = {p: float(m[p].fillna(0).mean()) if p in m else 0.0 for p in PHASES}
    step_total = float(m["step_time_s"].sum())
    return {"config": config, "steps": steps, "rollouts_per_step": cfg.batch_size, "wall_s": wall,
            "train_loop_s": step_total, "per_step": per_step, "step_mean": float(m["step_time_s"].mean()),
            # The teacher's reference rollouts run only for the token records: part of the logging cost.
            "logging_share": float(m["t_logging"].sum() + (m["t_reference"].sum() if "t_reference" in m else 0.0))
            / step_total,
            "final_eval_accuracy": float(m["eval_accuracy"].dropna().iloc[-1])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="baseline")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="cpu_threads (0 = the engine's auto choice)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    r = measure(args.config, args.steps, args.overrides, args.threads)
    print("| run | steps | rollouts/step | wall (s) | goal | per step (ms) | logging share | goal |")
    print("|---|---|---|---|---|---|---|---|")
    goal = "<= 60 s" + (" (met)" if r["wall_s"] <= 60 else " (missed)") if args.steps == 200 else "-"
    share_goal = "<= 5%" + (" (met)" if r["logging_share"] <= 0.05 else " (missed)")
    print(f"| {r['config']} | {r['steps']} | {r['rollouts_per_step']} | {r['wall_s']:.1f} | {goal} | "
          f"{1000 * r['step_mean']:.0f} | {100 * r['logging_share']:.1f}% | {share_goal} |")
    print()
    print("| phase | mean ms / step | share |")
    print("|---|---|---|")
    for p, v in r["per_step"].items():
        print(f"| {p[2:]} | {1000 * v:.1f} | {100 * v / r['step_mean']:.1f}% |")
    print(f"\nfinal eval accuracy: {r['final_eval_accuracy']:.3f}; cpu_threads={args.threads} (0 = auto); "
          f"torch threads used: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
