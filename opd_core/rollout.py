"""Batched rollouts: sample responses from a model for a batch of prompts (KV-cached, padding-aware).

Sampling runs inside Hugging Face's ``generate`` (KV cache, EOS stop) with HF's own temperature, top-k
and top-p warpers, so the distribution sampled from is exactly theirs; this module prepares left-padded
batches, pins every sampling knob explicitly (a checkpoint's own generation_config must not silently add
top-k=50), and cuts each response at its first EOS.

The draw itself is ours (:class:`InverseCdfSampler`): ``torch.multinomial`` draws one exponential
variate per vocabulary entry per token (argmax of p / Exp(1)), which at V = 32,768 was 18% of a whole
training step on CPU (49 ms per token for 32 rows); inverse-CDF sampling draws one uniform per row and
costs a cumulative sum (about 20x cheaper). Both sample exactly the warped distribution, but they consume
the random stream differently, so a seed gives other (equally distributed) tokens than ``multinomial``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


class NonFiniteSamplingError(RuntimeError):
    """The sampled model's next-token probabilities are NaN/inf: names the tensor and the likely cause.

    Raised instead of the sampler's own "probability tensor contains either inf, nan or element < 0",
    which says nothing about which model, which weights or what to change.
    """


def _non_finite_cause(model: PreTrainedModel) -> str:
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
    dtype = next(model.parameters()).dtype
    if bad:
        more = f" (and {len(bad) - 1} other tensor(s))" if len(bad) > 1 else ""
        return (f"the student's weights hold NaN/inf: parameter {bad[0]!r}{more}; likely cause: a diverged update "
                "(a lower learning_rate, max_grad_norm=1.0 and dtype=float32) or a damaged checkpoint")
    return (f"the logits overflowed in {str(dtype).removeprefix('torch.')} with finite weights; likely cause: "
            "float16 range (use dtype=float32 or bfloat16)")


@dataclass(frozen=True)
class Sampling:
    """How responses are drawn. ``greedy`` ignores the other knobs (used for eval)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 32
    greedy: bool = False


class InverseCdfSampler(LogitsProcessor):
    """The last processor of a sampling ``generate``: draws the next token from softmax(scores) by inverse CDF
    and returns scores that are 0 there and -inf elsewhere, so ``generate``'s greedy argmax takes it.

    One uniform per row (float64 cumulative sum, searched on the right so a zero-probability token is never
    drawn) instead of ``multinomial``'s one exponential per vocabulary entry; see the module docstring.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:  # noqa: ARG002
        probs = torch.softmax(scores.float(), dim=-1)
        cdf = probs.double().cumsum_(-1)
        total = cdf[:, -1:]  # NaN when any probability is (a softmax never gives inf or < 0)
        if not bool(torch.isfinite(total).all()):
            # the words of torch.multinomial's error, which sample_responses turns into NonFiniteSamplingError
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        u = torch.rand(total.shape, dtype=torch.float64, device=scores.device) * total
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total: a positive-mass token
        picked = torch.searchsorted(cdf, u, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, picked, 0.0)


def sampling_processors(sampling: Sampling) -> LogitsProcessorList:
    """HF's warpers in HF's order (temperature, top-k, top-p; what ``do_sample=True`` would add), then the draw."""
    procs = LogitsProcessorList()
    if sampling.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k:
        procs.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
    if sampling.top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
    procs.append(InverseCdfSampler())
    return procs


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, so every prompt ends where generation starts."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """The response up to and including its first EOS, and whether it ended with one."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in eos_ids:
            return out, True
    return out, False


class _StopWhen(StoppingCriteria):
    """Ends a row once ``stop_when(row, generated ids)`` says so, and remembers how long the row was then.
    Asked after every token of a row that has not ended: the question (decode the row, check it) costs about
    as much as a toy model's decoding step, nothing beside a real model's."""

    def __init__(self, stop_when: Callable[[int, list[int]], bool], first_row: int, prompt_len: int,
                 eos: set[int]) -> None:
        self.stop_when, self.first_row, self.prompt_len, self.eos = stop_when, first_row, prompt_len, eos
        self.lengths: dict[int, int] = {}

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:  # noqa: ARG002
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(input_ids[:, self.prompt_len:].tolist()):
            if i in self.lengths or self.eos.intersection(row):  # stopped here, or ended with its EOS
                done[i] = True
            elif self.stop_when(self.first_row + i, row):
                self.lengths[i] = len(row)
                done[i] = True
        return done


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    sampling: Sampling,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    vocab_size: int | None = None,
    batch_size: int = 256,
    stop_when: Callable[[int, list[int]], bool] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Sample one response per prompt; returns (responses cut after the first EOS, ended-with-EOS flags).

    ``vocab_size`` (the tokenizer's) keeps sampling off embedding rows padded past the tokenizer.
    ``stop_when(prompt index, ids so far)``: True ends that response there (checked after every token), for a
    caller whose verdict on a response is already settled.
    """
    device = next(model.parameters()).device
    eos = {int(e) for e in eos_ids}
    rows = model.get_output_embeddings().weight.shape[0]
    padding_ids = list(range(vocab_size, rows)) if vocab_size is not None and rows > vocab_size else None
    # greedy decoding as far as generate knows: the sampling is in the processors (temperature, top-k, top-p
    # as HF applies them, then InverseCdfSampler), after the suppression of padding rows
    gen = GenerationConfig(
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=sorted(eos),
        pad_token_id=pad_id,
        suppress_tokens=padding_ids,
    )
    processors = None if sampling.greedy else sampling_processors(sampling)
    responses: list[list[int]] = []
    ended: list[bool] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start:start + batch_size]
            ids, mask = left_pad(chunk, pad_id, device)
            stop = None if stop_when is None else _StopWhen(stop_when, start, ids.shape[1], eos)
            try:
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                     logits_processor=processors,
                                     stopping_criteria=None if stop is None else StoppingCriteriaList([stop]))
            except RuntimeError as exc:
                if "probability tensor contains" not in str(exc):
                    raise
                raise NonFiniteSamplingError("rollout sampling: next-token probabilities contain NaN/inf; "
                                             + _non_finite_cause(model)) from None
            for i, row in enumerate(out[:, ids.shape[1]:].tolist()):
                resp, done = cut_at_eos(row[: stop.lengths[i]] if stop is not None and i in stop.lengths else row, eos)
                responses.append(resp)
                ended.append(done)
    finally:
        model.train(was_training)
    return responses, ended
