"""Rebuild the shipped toy checkpoints from scratch: tokenizers, two teachers, a weaker student, metrics.

`opd-lab toy build` calls `cli_build`. Everything is seeded and trained on CPU with one thread (the
models are too small to gain from more, and one thread stays fast when other work shares the cores).
Assets are written to a temporary folder beside the target and renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from opd_core.tasks import Task
from opd_core.toy import recipes
from opd_core.toy.presets import ASSETS_DIR
from opd_core.toy.task import AdditionTask, worked_chain
from opd_core.toy.tokenizers import mismatched_teacher_tokenizer, student_tokenizer

EVAL_EXAMPLES = 500
EVAL_SEED = 1234
TEACHER_PAD_MULTIPLE = 16  # teachers' embedding tables are padded past the tokenizer, like real checkpoints


def build_all(out_dir: Path | None = None, *, seed: int = 0, log: Callable[[str], None] = print,
              teacher_recipe: recipes.Recipe = recipes.TEACHER_RECIPE,
              student_recipe: recipes.Recipe = recipes.STUDENT_RECIPE,
              eval_examples: int = EVAL_EXAMPLES, threads: int = 1) -> dict:
    """Train and save the toy teacher, mismatched teacher and student; return the measured metrics."""
    out_dir = Path(out_dir) if out_dir is not None else ASSETS_DIR
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        metrics = _build_into(staging, seed=seed, log=log, teacher_recipe=teacher_recipe,
                              student_recipe=student_recipe, eval_examples=eval_examples)
        metrics["build_seconds"] = round(time.perf_counter() - started, 1)
        metrics["threads"] = threads
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(previous_threads)
    log(f"toy assets written to {out_dir} in {metrics['build_seconds']} s")
    return metrics


def _build_into(root: Path, *, seed: int, log: Callable[[str], None], teacher_recipe: recipes.Recipe,
                student_recipe: recipes.Recipe, eval_examples: int) -> dict:
    task = AdditionTask()
    eval_set = task.examples("eval", eval_examples, seed=EVAL_SEED)
    tok_student, tok_mismatched = student_tokenizer(), mismatched_teacher_tokenizer()
    plan = [
        ("teacher", tok_student, recipes.TEACHER_SIZE, teacher_recipe, TEACHER_PAD_MULTIPLE, seed),
        ("teacher_mismatched", tok_mismatched, recipes.TEACHER_SIZE, teacher_recipe, TEACHER_PAD_MULTIPLE,
         seed + 1),
        ("student", tok_student, recipes.STUDENT_SIZE, student_recipe, 1, seed + 2),
    ]
    metrics: dict = {"seed": seed, "eval_examples": eval_examples, "eval_seed": EVAL_SEED,
                     "torch": torch.__version__, "models": {}}
    for name, tok, size, recipe, pad_multiple, model_seed in plan:
        log(f"training {name} ({size.layers} layers, hidden {size.hidden})")
        t0 = time.perf_counter()
        model = recipes.new_model(tok, size, seed=model_seed, pad_multiple=pad_multiple)
        run = recipes.train_sft(model, tok, task, recipe, seed=model_seed, log=log)
        accuracy, format_ok = _evaluate(model, tok, task, eval_set)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        entry = {"params": sum(p.numel() for p in model.parameters()), "size": asdict(size),
                 "vocab_size": len(tok), "embedding_rows": model.config.vocab_size, "train_steps": run["steps"],
                 "eval_accuracy": accuracy, "eval_format_ok": format_ok,
                 "train_seconds": round(time.perf_counter() - t0, 1)}
        if name == "teacher_mismatched":
            entry["student_eos_logp"] = _foreign_eos_logp(model, tok, eval_set[:64], tok_student.eos_token)
        metrics["models"][name] = entry
        log(f"  {name}: eval accuracy {accuracy:.3f}, format ok {format_ok:.3f}")
    return metrics


def _evaluate(model, tok, task: Task, eval_set) -> tuple[float, float]:
    responses = recipes.greedy_responses(model, tok, [ex.prompt for ex in eval_set])
    grades = [task.grade(ex, r) for ex, r in zip(eval_set, responses)]
    return (round(sum(g.correct for g in grades) / len(grades), 4),
            round(sum(g.format_ok for g in grades) / len(grades), 4))


@torch.no_grad()
def _foreign_eos_logp(model, tok, examples, eos_text: str) -> float:
    """Mean log-prob the teacher gives the student's EOS text right after a correct answer (failure mode 3)."""
    values = []
    for ex in examples:
        text = recipes.render(tok, ex.prompt) + worked_chain(ex.meta["a"], ex.meta["b"]) + eos_text
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -2, : len(tok)]
        values.append(torch.log_softmax(logits.float(), -1)[ids[0, -1]].item())
    return round(sum(values) / len(values), 3)


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished staging folder; the old assets survive until the new ones are in."""
    backup = None
    if out_dir.exists():
        backup = out_dir.with_name(f".{out_dir.name}.old-{time.time_ns()}")
        out_dir.rename(backup)
    staging.rename(out_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def cli_build(args) -> int:
    """Entry point of `opd-lab toy build` (reads optional `out`, `seed`, `world` from args); returns an exit code."""
    out = getattr(args, "out", None)
    seed = getattr(args, "seed", 0) or 0
    try:
        if getattr(args, "world", "v1") == "v2":
            from opd_core.toy.build_v2 import build_v2

            metrics = build_v2(Path(out) if out else None, seed=seed)
        else:
            metrics = build_all(Path(out) if out else None, seed=seed)
    except (OSError, ValueError) as exc:
        print(f"error: toy build failed: {exc}")
        return 2
    for name, entry in metrics["models"].items():
        print(f"{name}: {entry['params']:,} params, eval accuracy {entry['eval_accuracy']:.3f}")
    return 0
