"""Regenerate the tiny rollouts files in this folder, one per shape `opd-lab score` reads.

    python examples/rollouts/make_rollouts.py

The toy student (`toy:matched`) answers 4 addition prompts, 2 samples each, at two "training
steps"; the same responses are then written the way each trainer saves them:

- plain.jsonl              prompt, response, step, correct         (any trainer, your own script)
- chat.jsonl               messages (chat form), step, reward
- verl/<step>.jsonl        input, output, gts, score, step, acc    (verl trainer.rollout_data_dir)
- trl/completions_<step>.parquet  step, prompt, completion, accuracy_reward, advantage
                                                                   (TRL GRPO log_completions=True)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from opd_core.models import load_model
from opd_core.pairing import TokenizerPair
from opd_core.rollout import Sampling, sample_responses
from opd_core.tasks import load_task

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(0)
    student = load_model("toy:matched", device="cpu")
    tok = student.tokenizer
    pair = TokenizerPair(tok, tok, student_model=student.model, teacher_model=student.model)
    task = load_task("toy:addition")
    rows = []
    for step in (1, 2):
        examples = task.examples("train", 4, seed=100 + step)
        prompts = [ex.prompt for ex in examples for _ in range(2)]
        ids = [pair.student_prompt_ids(p) for p in prompts]
        responses, _ = sample_responses(student.model, ids, Sampling(1.0, 1.0, 0, 24), eos_ids=pair.student_eos_ids,
                                        pad_id=pair.student_pad_id, vocab_size=pair.student_vocab_size)
        by_prompt = {ex.prompt: ex for ex in examples}
        for p, r, pid in zip(prompts, responses, ids):
            kept = tok.decode(r, skip_special_tokens=False)  # keeps the EOS text
            plain = tok.decode(r, skip_special_tokens=True)
            grade = task.grade(by_prompt[p], plain)
            rows.append({"step": step, "prompt": p, "response": kept, "plain": plain, "correct": grade.correct,
                         "answer": by_prompt[p].answer, "rendered": tok.decode(pid, skip_special_tokens=True)})

    def jsonl(path: Path, objs: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs))

    jsonl(HERE / "plain.jsonl", [{"prompt": r["prompt"], "response": r["response"], "step": r["step"],
                                  "correct": r["correct"]} for r in rows])
    jsonl(HERE / "chat.jsonl", [{"messages": [{"role": "user", "content": r["prompt"]},
                                              {"role": "assistant", "content": r["response"]}],
                                 "step": r["step"], "reward": float(r["correct"])} for r in rows])
    for step in (1, 2):
        # verl decodes prompts and responses with skip_special_tokens=True (so no EOS text survives).
        jsonl(HERE / "verl" / f"{step}.jsonl", [{"input": r["rendered"], "output": r["plain"], "gts": r["answer"],
                                                 "score": float(r["correct"]), "step": step,
                                                 "acc": bool(r["correct"])} for r in rows if r["step"] == step])
        sel = [r for r in rows if r["step"] == step]
        reward = [float(r["correct"]) for r in sel]
        mean = sum(reward) / len(reward)
        (HERE / "trl").mkdir(exist_ok=True)
        pd.DataFrame({"step": [step] * len(sel), "prompt": [r["prompt"] for r in sel],
                      "completion": [r["plain"] for r in sel], "accuracy_reward": reward,
                      "advantage": [x - mean for x in reward]}).to_parquet(
            HERE / "trl" / f"completions_{step:05d}.parquet", index=False)


if __name__ == "__main__":
    main()
