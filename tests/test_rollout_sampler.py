"""The rollout's own draw (inverse CDF) samples exactly HF's warped distribution, and only its support."""

from __future__ import annotations

import pytest
import torch

from opd_core.rollout import InverseCdfSampler, Sampling, sample_responses, sampling_processors


def _draw(logits: torch.Tensor, sampling: Sampling, n: int) -> torch.Tensor:
    """n draws per row of ``logits`` [R, V] through the processors the rollout uses; returns counts [R, V]."""
    procs = sampling_processors(sampling)
    big = logits.repeat(n, 1)
    picked = procs(None, big.clone()).argmax(-1).view(n, logits.shape[0])
    return torch.stack([torch.bincount(picked[:, r], minlength=logits.shape[1]) for r in range(logits.shape[0])])


def _warped(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution HF's own sampling would draw from: its warpers, then softmax."""
    x = logits.clone()
    for proc in sampling_processors(sampling)[:-1]:
        x = proc(None, x)
    return torch.softmax(x, -1)


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.7, top_p=0.8),
                                      Sampling(temperature=1.3, top_k=5), Sampling(top_p=0.5, top_k=12)])
def test_draws_follow_the_warped_distribution_and_never_leave_its_support(sampling):
    torch.manual_seed(0)
    logits = torch.randn(3, 40) * 2
    exact = _warped(logits, sampling)
    n = 20_000
    counts = _draw(logits, sampling, n)
    assert int((counts * (exact == 0)).sum()) == 0  # nothing outside the nucleus / top-k
    freq = counts.double() / n
    # 5 standard errors of a binomial frequency, per token
    tol = 5 * (exact.double() * (1 - exact.double()) / n).sqrt() + 1e-9
    assert bool(((freq - exact.double()).abs() <= tol).all())


def test_a_zero_probability_token_is_never_drawn_at_the_edges():
    scores = torch.full((4, 6), float("-inf"))
    scores[:, 2] = 0.0  # one token holds all the mass; the first and last are impossible
    for _ in range(50):
        assert InverseCdfSampler()(None, scores.clone()).argmax(-1).tolist() == [2, 2, 2, 2]


def test_the_same_seed_gives_the_same_tokens():
    logits = torch.randn(2, 30)
    procs = sampling_processors(Sampling(top_p=0.9))
    torch.manual_seed(5)
    a = procs(None, logits.repeat(10, 1)).argmax(-1)
    torch.manual_seed(5)
    b = procs(None, logits.repeat(10, 1)).argmax(-1)
    assert torch.equal(a, b)


def test_non_finite_scores_keep_the_multinomial_error_words():
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        InverseCdfSampler()(None, torch.tensor([[0.0, float("nan")]]))


def test_rollouts_stay_off_padding_rows_and_stop_at_eos():
    from opd_core.models import load_model
    from opd_core.toy.presets import resolve_pair

    loaded = load_model(resolve_pair("toy:matched")[0], device="cpu")
    tok = loaded.tokenizer
    rows = loaded.model.get_output_embeddings().weight.shape[0]
    vocab = rows - 3  # pretend the last 3 rows are padding past the tokenizer: they must never be sampled
    torch.manual_seed(0)
    responses, ended = sample_responses(loaded.model, [tok("1+1=").input_ids] * 16, Sampling(max_new_tokens=6),
                                        eos_ids=[tok.eos_token_id], pad_id=tok.eos_token_id, vocab_size=vocab)
    assert all(t < vocab for r in responses for t in r)
    for r, done in zip(responses, ended):
        assert (tok.eos_token_id in r) == done and (not done or r[-1] == tok.eos_token_id)
