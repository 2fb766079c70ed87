"""Recipes that train the toy teacher to high accuracy and warm-start a smaller, clearly weaker student.

Both are plain supervised fine-tuning on the canonical worked chains, rendered through each tokenizer's own
chat template with the loss on the response and its end-of-turn token only. The student stops as soon as
its greedy eval accuracy reaches a target band, so distillation has work left to do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from opd_core.tasks import Example, Task

_PROMPT, _RESPONSE = "\x00PROMPT\x00", "\x00RESPONSE\x00"


@dataclass(frozen=True)
class ModelSize:
    """The shape of a tiny Llama-style model."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


TEACHER_SIZE = ModelSize(hidden=96, layers=2, heads=4, intermediate=192)
STUDENT_SIZE = ModelSize(hidden=64, layers=2, heads=4, intermediate=128)


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one supervised run; `stop_at_accuracy` ends it early once reached."""

    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    eval_every: int = 0
    eval_examples: int = 256
    stop_at_accuracy: float | None = None
    label_smoothing: float = 0.0


TEACHER_RECIPE = Recipe(steps=600)
STUDENT_RECIPE = Recipe(steps=1500, eval_every=25, stop_at_accuracy=0.35)


def padded_vocab(n: int, multiple: int) -> int:
    """Round a vocabulary size up, as real checkpoints pad their embedding tables past the tokenizer."""
    return int(math.ceil(n / multiple) * multiple)


def new_model(tokenizer: PreTrainedTokenizerBase, size: ModelSize, *, seed: int,
              pad_multiple: int = 1) -> LlamaForCausalLM:
    """Create a randomly initialised tiny Llama whose generation config knows the tokenizer's specials."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=padded_vocab(len(tokenizer), pad_multiple), hidden_size=size.hidden,
        intermediate_size=size.intermediate, num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.heads, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return model


def render(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str | None = None) -> str:
    """Render one exchange with the tokenizer's chat template (the generation prompt when no response)."""
    messages = [{"role": "user", "content": prompt}]
    if response is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": response})
    return tokenizer.apply_chat_template(messages, tokenize=False)


class _Renderer:
    """Render many exchanges fast: the template is applied once to placeholders, then filled in."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.prompt = render(tokenizer, _PROMPT)
        full = render(tokenizer, _PROMPT, _RESPONSE)
        if not full.startswith(self.prompt) or full.count(_RESPONSE) != 1:
            raise ValueError("chat template does not render the generation prompt as a prefix of the exchange")
        self.completion = full[len(self.prompt):]

    def pair(self, prompt: str, response: str) -> tuple[str, str]:
        return self.prompt.replace(_PROMPT, prompt), self.completion.replace(_RESPONSE, response)


def encode_sft(tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> dict[str, torch.Tensor]:
    """Tokenize prompt + canonical response; labels are -100 on the prompt and padding (right-padded)."""
    renderer = _Renderer(tokenizer)
    pairs = [renderer.pair(ex.prompt, ex.meta["target"]) for ex in examples]
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False)["input_ids"]
    length = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(pairs), length), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p):n] = torch.tensor(c)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def greedy_responses(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                     max_new_tokens: int = 40, batch_size: int = 256) -> list[str]:
    """Greedy-decode responses for raw prompts (rendered with the chat template), cut at the EOS."""
    model.eval()
    renderer = _Renderer(tokenizer)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [renderer.prompt.replace(_PROMPT, p) for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, padding_side="left",
                        return_tensors="pt").to(model.device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            out.append(tokenizer.decode(row, skip_special_tokens=False))
    return out


def greedy_accuracy(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, task: Task,
                    examples: list[Example], max_new_tokens: int = 40) -> float:
    """Share of examples whose greedy response the task grades correct."""
    responses = greedy_responses(model, tokenizer, [ex.prompt for ex in examples], max_new_tokens=max_new_tokens)
    return sum(task.grade(ex, r).correct for ex, r in zip(examples, responses)) / len(examples)


def _smoothed_loss(model: LlamaForCausalLM, batch: dict, smoothing: float) -> torch.Tensor:
    """Next-token cross-entropy with label smoothing over the tokenizer's real vocabulary."""
    labels = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100, label_smoothing=smoothing)


def train_sft(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, task: Task, recipe: Recipe, *,
              seed: int, log: Callable[[str], None] = print,
              batch_fn: Callable[[PreTrainedTokenizerBase, int], dict] | None = None,
              max_new_tokens: int = 40) -> dict:
    """Train on fresh seeded train-split problems; returns steps run and the last eval accuracy seen.

    ``batch_fn(tokenizer, seed)`` makes a batch (default: the task's canonical targets, `encode_sft`).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps))))
    eval_set = task.examples("eval", recipe.eval_examples, seed=seed + 1)
    accuracy, step = None, 0
    for step in range(1, recipe.steps + 1):
        model.train()
        batch_seed = rng.randrange(2**31)
        batch = (batch_fn(tokenizer, batch_seed) if batch_fn is not None
                 else encode_sft(tokenizer, task.examples("train", recipe.batch_size, seed=batch_seed)))
        loss = model(**batch).loss if not recipe.label_smoothing else _smoothed_loss(model, batch, recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if recipe.eval_every and step % recipe.eval_every == 0:
            accuracy = greedy_accuracy(model, tokenizer, task, eval_set, max_new_tokens)
            log(f"  step {step:5d} loss {loss.item():.4f} eval acc {accuracy:.3f}")
            if recipe.stop_at_accuracy is not None and accuracy >= recipe.stop_at_accuracy:
                break
        elif step % 250 == 0:
            log(f"  step {step:5d} loss {loss.item():.4f}")
    model.eval()
    return {"steps": step, "last_eval_accuracy": accuracy}
