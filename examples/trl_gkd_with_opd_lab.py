"""Train with TRL's GKDTrainer and diagnose the run in OPD Lab: the three lines that matter are marked.

    pip install "opd-lab[trl]"
    python examples/trl_gkd_with_opd_lab.py --steps 20 --runs-dir runs --name gkd-toy
    opd-lab report runs/gkd-toy            # or: opd-lab --runs-dir runs   (the dashboard)

The defaults use OPD Lab's offline toy pair (``toy:matched``) and its addition task so this runs on a
laptop CPU in seconds; pass Hugging Face checkpoint folders as --student / --teacher for a real run
(they must share a vocabulary, as GKD requires). The same ``attach_opd_lab`` call works on TRL's
``DistillationTrainer``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from opd_core.integrations.trl import attach_opd_lab  # (1) the bridge
from opd_core.models import resolve_model_path
from opd_core.toy.task import AdditionTask


def gkd_classes() -> tuple[type, type]:
    """GKDConfig/GKDTrainer wherever this TRL version keeps them (trl.experimental.gkd since 0.24)."""
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        from trl import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def toy_dataset(n: int, seed: int) -> Dataset:
    """Chat-format prompts of the toy addition task, with the canonical chain as the reference answer."""
    examples = AdditionTask().examples("train", n, seed)
    return Dataset.from_list([{"messages": [{"role": "user", "content": ex.prompt},
                                            {"role": "assistant", "content": ex.meta["target"]}]}
                              for ex in examples])


def match_padded_vocab(student, teacher, n_tokens: int) -> None:
    """Drop the teacher's padding rows when only the embedding tables differ (as in Qwen2.5 0.5B vs 7B).

    GKD insists on equal ``vocab_size``; rows past the tokenizer's last id are never sampled, so
    removing them changes no probability of a real token.
    """
    s_rows = student.get_input_embeddings().weight.shape[0]
    t_rows = teacher.get_input_embeddings().weight.shape[0]
    if t_rows != s_rows and n_tokens <= min(s_rows, t_rows):
        teacher.resize_token_embeddings(s_rows)


def build_trainer(student: str, teacher: str, output_dir: str, steps: int, seed: int = 0,
                  lmbda: float = 1.0, beta: float = 0.5, batch_size: int = 4, max_new_tokens: int = 24):
    """A GKDTrainer on CPU-friendly settings (the usual TRL code; nothing OPD Lab specific)."""
    GKDConfig, GKDTrainer = gkd_classes()
    student_dir, teacher_dir = resolve_model_path(student, "student"), resolve_model_path(teacher, "teacher")
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    args = GKDConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-4,
        lmbda=lmbda, beta=beta, max_new_tokens=max_new_tokens, max_length=64, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=seed, disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    match_padded_vocab(model, teacher_model, len(tokenizer))
    return GKDTrainer(
        model=model, teacher_model=teacher_model, args=args, train_dataset=toy_dataset(batch_size * steps, seed), processing_class=tokenizer,
    )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="toy:matched", help="student checkpoint folder or toy preset")
    parser.add_argument("--teacher", default="toy:matched", help="teacher checkpoint folder or toy preset")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default=None, help="run id (default: sdk-TIME-XXXX)")
    parser.add_argument("--every", type=int, default=5, help="log token records every N steps")
    parser.add_argument("--output-dir", default=None, help="TRL's output_dir (default: <run dir>/trl)")
    args = parser.parse_args(argv)

    output_dir = args.output_dir or str(Path(args.runs_dir) / ".trl_output")
    trainer = build_trainer(args.student, args.teacher, output_dir, args.steps)
    logger = attach_opd_lab(trainer, runs_dir=args.runs_dir, name=args.name, every=args.every)  # (2)
    trainer.train()  # (3) the run directory is complete when this returns
    print(logger.run_dir)
    return logger.run_dir


if __name__ == "__main__":
    main()
