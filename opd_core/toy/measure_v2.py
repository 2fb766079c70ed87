"""Measure what toy world v2 promises, on a pair of checkpoints: the numbers its build records and its tests pin.

- the teacher's accuracy on its own sampled rollouts, and the student's (the gap distillation can close);
- the share of negative sampled-token rewards log p_T - log p_S on the student's rollouts (failure mode 1:
  the paper finds most of them negative at the start);
- the teacher's rescue rate on student prefixes cut at each distance from the first error, beside its own
  prefixes (failure mode 2, as correctness), and its entropy / top-1 probability on drifted against
  on-support prefixes at the same positions (failure mode 2, as confidence).

Everything is seeded, one thread, on CPU, and small enough to run in a test (a few seconds per pair).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from opd_core import rescue
from opd_core.diagnostics import drift
from opd_core.pairing import TokenizerPair
from opd_core.rollout import Sampling, sample_responses
from opd_core.toy.task_v2 import CorrectableAdditionTask

MAX_NEW_TOKENS = 64


def load(student_dir: Path, teacher_dir: Path):
    """(pair, student model, teacher model) from two checkpoint folders, in eval mode."""
    stok, ttok = AutoTokenizer.from_pretrained(student_dir), AutoTokenizer.from_pretrained(teacher_dir)
    student = LlamaForCausalLM.from_pretrained(student_dir).eval()
    teacher = LlamaForCausalLM.from_pretrained(teacher_dir).eval()
    return TokenizerPair(stok, ttok, student_model=student, teacher_model=teacher), student, teacher


@torch.no_grad()
def _teacher_stats(pair: TokenizerPair, teacher, prompts, responses):
    """Per student token: teacher log-prob of the token, entropy and top-1 at that prefix (shared vocab)."""
    out = []
    for p, r in zip(prompts, responses):
        lp = _response_logprobs(teacher, pair.teacher_prompt_ids(p), r, len(pair.teacher))
        out.append((lp.gather(1, torch.tensor(r)[:, None])[:, 0].numpy(), (-(lp.exp() * lp).sum(-1)).numpy(),
                    lp.exp().max(-1).values.numpy()))
    return out


@torch.no_grad()
def _student_logps(pair: TokenizerPair, student, prompts, responses):
    return [_response_logprobs(student, pair.student_prompt_ids(p), r, pair.student_vocab_size)
            .gather(1, torch.tensor(r)[:, None])[:, 0].numpy() for p, r in zip(prompts, responses)]


def _response_logprobs(model, prompt_ids: list[int], response: list[int], vocab: int) -> torch.Tensor:
    """[len(response), vocab] log-probs of the next token at each response position (shared vocab, one row)."""
    x = torch.tensor([prompt_ids + list(response)])
    return torch.log_softmax(model(x).logits[0, len(prompt_ids) - 1:-1, :vocab].float(), -1)


def measure_pair(student_dir: Path, teacher_dir: Path, *, n_prompts: int = 24, rollouts: int = 4, seed: int = 0,
                 rescue_budget: int | None = None) -> dict:
    """The world's numbers on the matched pair (shared vocabulary): see the module docstring."""
    torch.set_num_threads(1)
    pair, student, teacher = load(student_dir, teacher_dir)
    if not pair.shared:
        raise ValueError("measure_pair needs a pair that shares its vocabulary (the matched v2 pair)")
    task = CorrectableAdditionTask()
    examples = task.examples("eval", n_prompts, seed=seed)
    by_prompt = {ex.prompt: ex for ex in examples}
    prompts = [ex.prompt for ex in examples for _ in range(rollouts)]
    sampling = Sampling(1.0, 1.0, 0, MAX_NEW_TOKENS)
    torch.manual_seed(seed)
    s_resp, _ = sample_responses(student, [pair.student_prompt_ids(p) for p in prompts], sampling,
                                 eos_ids=pair.student_eos_ids, pad_id=pair.student_pad_id,
                                 vocab_size=pair.student_vocab_size)
    t_resp, _ = sample_responses(teacher, [pair.teacher_prompt_ids(p) for p in prompts], sampling,
                                 eos_ids=pair.teacher_eos_ids, pad_id=pair.teacher_pad_id, vocab_size=len(pair.teacher))

    def accuracy(responses):
        return float(np.mean([task.grade(by_prompt[p], pair.student.decode(r, skip_special_tokens=True)).correct
                              for p, r in zip(prompts, responses)]))

    t_stats = _teacher_stats(pair, teacher, prompts, s_resp)
    s_logp = _student_logps(pair, student, prompts, s_resp)
    own_stats = _teacher_stats(pair, teacher, prompts, t_resp)
    rows = []
    for i, (p, r) in enumerate(zip(prompts, s_resp)):
        text, spans = pair.response_spans(r)
        grade = task.grade(by_prompt[p], pair.student.decode(r, skip_special_tokens=True))
        t_lp, ent, top1 = t_stats[i]
        for t in range(len(r)):
            rows.append({"step": 0, "sample": i, "pos": t, "prefix_source": "student", "masked": False,
                         "log_ratio": float(t_lp[t] - s_logp[i][t]), "teacher_entropy": float(ent[t]),
                         "teacher_top1_prob": float(top1[t]),
                         "prefix_wrong": grade.first_error_char is not None and spans[t][0] > grade.first_error_char})
    for i, r in enumerate(t_resp):
        _, ent, top1 = own_stats[i]
        rows += [{"step": 0, "sample": 10_000 + i, "pos": t, "prefix_source": "teacher", "masked": False,
                  "teacher_entropy": float(ent[t]), "teacher_top1_prob": float(top1[t]), "prefix_wrong": False}
                 for t in range(len(r))]
    tokens = pd.DataFrame(rows)
    student_rows = tokens[tokens["prefix_source"] == "student"]
    rolls = rescue.rollouts_from_batch(0, prompts, s_resp, pair.student_eos_ids, "student",
                                       teacher_top1=[s[2] for s in t_stats])
    rolls += rescue.rollouts_from_batch(0, prompts, t_resp, pair.teacher_eos_ids, "teacher", sample_offset=10_000)
    wrong = rescue.first_wrong_tokens(rolls, pair, task, by_prompt)
    cuts = rescue.plan_cuts(rolls, wrong, budget=rescue_budget, seed=seed, every_cut=True)
    table = rescue.evaluate_cuts(cuts, pair, teacher, task, by_prompt, sampling, max_new_tokens=MAX_NEW_TOKENS,
                                 seed=seed)
    return {"n_prompts": n_prompts, "rollouts": rollouts, "seed": seed,
            "teacher_sampled_accuracy": accuracy(t_resp), "student_sampled_accuracy": accuracy(s_resp),
            "negative_reward_share": float((student_rows["log_ratio"] < 0).mean()),
            "position_matched": drift.position_matched_gap(tokens, measure="prefix_wrong"),
            "error_onset": drift.error_onset(tokens),
            "rescue": rescue.summarize(table),
            "rescue_by_since_error": rescue.by_since_error(table).to_dict("records")}
