"""Build toy world v2's checkpoints: a styled, self-correcting teacher (two tokenizers) and a narrow student.

`opd-lab toy build --world v2` calls `build_v2`. Like v1 everything is seeded, trained on CPU with one
thread per model, and written to a staging folder that replaces ``assets_v2`` only when complete. The two
teachers train in two processes at once (one thread each, so the result does not depend on scheduling).
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from opd_core.toy import recipes
from opd_core.toy.build import _foreign_eos_logp, _swap_into_place
from opd_core.toy.measure_v2 import measure_pair
from opd_core.toy.presets import ASSETS_DIR, ASSETS_V2_DIR
from opd_core.toy.task_v2 import CorrectableAdditionTask, Target, teacher_target
from opd_core.toy.tokenizers import (
    STUDENT_SPECIALS,
    TEACHER_SPECIALS,
    mismatched_teacher_tokenizer,
    student_tokenizer,
)

EVAL_EXAMPLES = 300
MEASURE_CUTS = 240
EVAL_SEED = 1234
MAX_NEW_TOKENS = 96
TEACHER_PAD_MULTIPLE = 16


@dataclass(frozen=True)
class WorldV2:
    """Everything that shapes v2's checkpoints (the defaults are the shipped ones)."""

    # Fine-tuning v1's teacher on styled, self-correcting chains: (steps, learning rate, share of chains with
    # a mistake) per stage. The second stage, mostly mistakes, makes noticing them reliable.
    teacher_stages: tuple[tuple[int, float, float], ...] = ((600, 2e-3, 0.7), (400, 1e-3, 0.9))
    port_steps: int = 300      # the mismatched teacher: the v2 teacher ported to the other tokenizer
    port_lr: float = 1e-3
    port_error_rate: float = 0.3
    batch_size: int = 64
    label_smoothing: float = 0.0  # 0: a smoothed teacher samples junk tokens at temperature 1


def encode_targets(tokenizer, prompts: list[str], targets: list[Target]) -> dict[str, torch.Tensor]:
    """Tokenize prompt + response (+ end of turn); loss only on response tokens outside the no-loss spans."""
    renderer = recipes._Renderer(tokenizer)
    rows = []
    for prompt, target in zip(prompts, targets):
        p_text, c_text = renderer.pair(prompt, target.text)
        p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        enc = tokenizer(c_text, add_special_tokens=False, return_offsets_mapping=True)
        start = c_text.index(target.text) if target.no_loss else 0
        keep = [not any(start + a < b_ and start + b > a_ for a_, b_ in target.no_loss)
                for a, b in enc["offset_mapping"]]
        rows.append((p_ids, enc["input_ids"], keep))
    length = max(len(p) + len(c) for p, c, _ in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, c, keep) in enumerate(rows):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        lab = torch.tensor([t if k else -100 for t, k in zip(c, keep)])
        labels[i, len(p):n] = lab
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _batch_fn(batch_size: int, error_rate: float):
    """Batches of teacher training chains (styles, mistakes followed by '!') for `recipes.train_sft`."""
    task = CorrectableAdditionTask()

    def make(tokenizer, seed: int) -> dict[str, torch.Tensor]:
        rng = random.Random(seed)
        examples = task.examples("train", batch_size, seed=seed)
        targets = [teacher_target(ex.meta["a"], ex.meta["b"], rng, error_rate=error_rate) for ex in examples]
        return encode_targets(tokenizer, [ex.prompt for ex in examples], targets)

    return make


def _accuracy(model, tok, examples) -> tuple[float, float]:
    task = CorrectableAdditionTask()
    responses = recipes.greedy_responses(model, tok, [ex.prompt for ex in examples], max_new_tokens=MAX_NEW_TOKENS)
    grades = [task.grade(ex, r) for ex, r in zip(examples, responses)]
    return (round(sum(g.correct for g in grades) / len(grades), 4),
            round(sum(g.format_ok for g in grades) / len(grades), 4))


def port_weights(model, tok, source_dir: Path) -> None:
    """Start a model for another tokenizer from a trained one: every weight copied, each embedding row taken
    from the source token with the same string (specials by role, a merge missing on the source side as the
    mean of its characters). Tokens the source never had (a foreign `<|im_end|>`) keep their random rows."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    src = LlamaForCausalLM.from_pretrained(source_dir)
    src_tok = AutoTokenizer.from_pretrained(source_dir)
    state = {k: v for k, v in src.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    model.load_state_dict(state, strict=False)
    src_emb = src.get_input_embeddings().weight.detach()
    emb = model.get_input_embeddings().weight
    src_vocab = src_tok.get_vocab()
    roles = {TEACHER_SPECIALS[k]: STUDENT_SPECIALS[k] for k in TEACHER_SPECIALS}  # the same role on each side
    with torch.no_grad():
        for text, i in tok.get_vocab().items():
            source = roles.get(text, text)
            if source in src_vocab and (text not in tok.all_special_tokens or text in roles):
                emb[i] = src_emb[src_vocab[source]]
            elif text not in tok.all_special_tokens and all(ch in src_vocab for ch in text):
                emb[i] = torch.stack([src_emb[src_vocab[ch]] for ch in text]).mean(0)


def _fine_tune(model, tok, world: WorldV2, steps: int, lr: float, error_rate: float, seed: int) -> None:
    recipe = recipes.Recipe(steps=steps, batch_size=world.batch_size, lr=lr, warmup=max(1, min(50, steps // 5)),
                            label_smoothing=world.label_smoothing)
    recipes.train_sft(model, tok, CorrectableAdditionTask(), recipe, seed=seed, log=lambda _m: None,
                      batch_fn=_batch_fn(world.batch_size, error_rate), max_new_tokens=MAX_NEW_TOKENS)


def train_one(name: str, out_dir: str, seed: int, world: WorldV2, eval_examples: int,
              v1_dir: str | None = None) -> dict:
    """Make one model of v2 (in its own process, one thread) and save it with its tokenizer.

    - teacher: v1's teacher (it already adds columns) fine-tuned on v2's styled chains with corrections;
    - teacher_mismatched: that teacher ported to the other tokenizer and template (`port_weights`) and
      fine-tuned briefly: the same knowledge behind a different interface;
    - student: v1's student as it is: trained on the canonical style only, clearly weaker.
    """
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    v1 = Path(v1_dir) if v1_dir else ASSETS_DIR
    task = CorrectableAdditionTask()
    steps = 0
    if name == "student":
        tok = student_tokenizer()
        model = LlamaForCausalLM.from_pretrained(v1 / "student")
    elif name == "teacher":
        tok = student_tokenizer()
        model = LlamaForCausalLM.from_pretrained(v1 / "teacher")
        for i, (stage_steps, lr, error_rate) in enumerate(world.teacher_stages):
            _fine_tune(model, tok, world, stage_steps, lr, error_rate, seed + i)
            steps += stage_steps
    else:
        tok = mismatched_teacher_tokenizer()
        model = recipes.new_model(tok, recipes.TEACHER_SIZE, seed=seed, pad_multiple=TEACHER_PAD_MULTIPLE)
        port_weights(model, tok, Path(out_dir) / "teacher")
        steps = world.port_steps
        _fine_tune(model, tok, world, steps, world.port_lr, world.port_error_rate, seed)
    model.eval()
    eval_set = task.examples("eval", eval_examples, seed=EVAL_SEED)
    accuracy, format_ok = _accuracy(model, tok, eval_set)
    model.save_pretrained(Path(out_dir) / name)
    tok.save_pretrained(Path(out_dir) / name)
    entry = {"params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok),
             "embedding_rows": model.config.vocab_size, "train_steps": steps, "eval_accuracy": accuracy,
             "eval_format_ok": format_ok, "train_seconds": round(time.perf_counter() - t0, 1),
             "start": {"teacher": "v1 teacher", "teacher_mismatched": "v2 teacher, ported",
                       "student": "v1 student (unchanged)"}[name]}
    if name == "teacher_mismatched":
        entry["student_eos_logp"] = _foreign_eos_logp(model, tok, eval_set[:64], student_tokenizer().eos_token)
    return entry


def build_v2(out_dir: Path | None = None, *, seed: int = 0, log: Callable[[str], None] = print,
             world: WorldV2 = WorldV2(), eval_examples: int = EVAL_EXAMPLES, workers: int = 2,
             measure_prompts: int = 24) -> dict:
    """Train and save v2's teacher, mismatched teacher and student; return (and write) the measured metrics.

    Every model trains in a worker process on one thread and the measurement runs on one thread, so the
    checkpoints are the same bytes whatever the machine's core count or the scheduling of the workers
    (metrics.json differs only in its timings, ``build_seconds`` and each model's ``train_seconds``). The
    same bytes need the same PyTorch kernels too: ``cpu_capability`` records which instruction set they ran
    on (the shipped assets: AVX512; forced to AVX2, 30 teacher steps already give other bytes)."""
    out_dir = Path(out_dir) if out_dir is not None else ASSETS_V2_DIR
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    plan = [("teacher", seed + 10), ("teacher_mismatched", seed + 11), ("student", seed + 12)]
    try:
        log(f"training {', '.join(n for n, _ in plan)} ({workers} processes, one thread each)")
        with ProcessPoolExecutor(max_workers=workers) as pool:
            # the teacher and the student at once; the mismatched teacher starts from the finished teacher
            futures = {n: pool.submit(train_one, n, str(staging), s, world, eval_examples)
                       for n, s in (plan[0], plan[2])}
            models = {"teacher": futures["teacher"].result()}
            name, model_seed = plan[1]
            models[name] = pool.submit(train_one, name, str(staging), model_seed, world, eval_examples).result()
            models["student"] = futures["student"].result()
        for name, entry in models.items():
            log(f"  {name}: eval accuracy {entry['eval_accuracy']:.3f} in {entry['train_seconds']} s")
        log("measuring the world's promises on the matched pair")
        measured = measure_pair(staging / "student", staging / "teacher", n_prompts=measure_prompts,
                                rescue_budget=MEASURE_CUTS)
        metrics = {"world": "v2", "seed": seed, "eval_examples": eval_examples, "eval_seed": EVAL_SEED,
                   "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                   "config": asdict(world), "models": models, "measured": measured,
                   "build_seconds": round(time.perf_counter() - started, 1), "workers": workers}
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"toy v2 assets written to {out_dir} in {metrics['build_seconds']} s")
    return metrics
