"""On a tiny vocabulary and horizon, enumerate every sequence: the expected sampled-token gradient at
gamma = 1 is exactly the gradient of the sequence-level reverse KL; at gamma = 0 it is biased."""

from __future__ import annotations

import itertools

import torch

from opd_core.objectives import per_token_loss

VOCAB, HORIZON = 3, 3


def prefix_index(prefix: tuple[int, ...]) -> int:
    """Row of the logits table for a prefix: all prefixes of length < t come first."""
    offset = sum(VOCAB**i for i in range(len(prefix)))
    return offset + sum(tok * VOCAB ** (len(prefix) - 1 - i) for i, tok in enumerate(prefix))


def tabular_policies(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student table (a parameter), teacher table, every sequence [N, T] and its prefix rows [N, T]."""
    g = torch.Generator().manual_seed(seed)
    rows = sum(VOCAB**i for i in range(HORIZON))
    student = torch.randn(rows, VOCAB, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher = 1.5 * torch.randn(rows, VOCAB, generator=g, dtype=torch.float64)
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=HORIZON)))
    prefix_rows = torch.tensor([[prefix_index(tuple(y[:t])) for t in range(HORIZON)] for y in seqs.tolist()])
    return student, teacher, seqs, prefix_rows


def sequence_logprob(table: torch.Tensor, seqs: torch.Tensor, prefix_rows: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(table[prefix_rows], -1)  # [N, T, V]
    return logp.gather(-1, seqs[..., None])[..., 0].sum(-1)


def exact_sequence_reverse_kl_grad(student, teacher, seqs, prefix_rows) -> torch.Tensor:
    log_ps = sequence_logprob(student, seqs, prefix_rows)
    log_pt = sequence_logprob(teacher, seqs, prefix_rows)
    kl = (log_ps.exp() * (log_ps - log_pt)).sum()
    (grad,) = torch.autograd.grad(kl, student)
    return grad


def expected_sampled_token_grad(student, teacher, seqs, prefix_rows, gamma: float) -> torch.Tensor:
    """sum_y p_S(y) * grad of sum_t -A_t(y) log p_S(y_t | y_<t): the exact expectation, no sampling."""
    mask = torch.ones(seqs.shape, dtype=torch.bool)
    out = per_token_loss("sampled_token", student[prefix_rows], teacher[prefix_rows], seqs, mask, gamma=gamma)
    weights = sequence_logprob(student, seqs, prefix_rows).exp().detach()
    (grad,) = torch.autograd.grad((weights * out.loss.sum(-1)).sum(), student)
    return grad


def test_probabilities_of_all_sequences_sum_to_one():
    student, _, seqs, prefix_rows = tabular_policies(0)
    total = sequence_logprob(student, seqs, prefix_rows).exp().sum()
    assert abs(total.item() - 1) < 1e-12
    assert len(seqs) == VOCAB**HORIZON


def test_expected_gradient_at_gamma_one_equals_sequence_reverse_kl_gradient():
    for seed in range(3):
        policies = tabular_policies(seed)
        exact = exact_sequence_reverse_kl_grad(*policies)
        expected = expected_sampled_token_grad(*policies, gamma=1.0)
        assert exact.abs().max() > 1e-2  # a non-trivial gradient
        torch.testing.assert_close(expected, exact, atol=1e-10, rtol=1e-10)


def test_expected_gradient_at_gamma_zero_is_biased():
    for seed in range(3):
        policies = tabular_policies(seed)
        exact = exact_sequence_reverse_kl_grad(*policies)
        token_level = expected_sampled_token_grad(*policies, gamma=0.0)
        bias = (token_level - exact).abs().max().item()
        assert bias > 1e-2, f"token-level OPD should be biased, got max |bias| {bias}"
        # the bias sits at the early prefixes (future rewards are dropped); the last step is exact
        last_rows = slice(sum(VOCAB**i for i in range(HORIZON - 1)), None)
        torch.testing.assert_close(token_level[last_rows], exact[last_rows], atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- topk_head_tail: unbiased at one prefix

HT_VOCAB = 7


def _one_prefix(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    student = (1.5 * torch.randn(HT_VOCAB, generator=g, dtype=torch.float64)).requires_grad_(True)
    teacher = 1.5 * torch.randn(HT_VOCAB, generator=g, dtype=torch.float64)
    return student, teacher


def _expected_over_sampled_token(name: str, student, teacher, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """(E_y[value], E_y[grad]) with y ~ p_S enumerated over the whole vocabulary: row y samples token y."""
    rows = student[None, None, :].expand(1, HT_VOCAB, HT_VOCAB)
    ids = torch.arange(HT_VOCAB)[None, :]
    mask = torch.ones(1, HT_VOCAB, dtype=torch.bool)
    out = per_token_loss(name, rows, teacher[None, None, :].expand(1, HT_VOCAB, HT_VOCAB), ids, mask, **params)
    weights = torch.softmax(student, -1).detach()[None, :]
    (grad,) = torch.autograd.grad((weights * out.loss).sum(), student)
    return (weights * out.value).sum(), grad


def _full_reverse_kl(student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
    ls, lt = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    kl = (ls.exp() * (ls - lt)).sum()
    (grad,) = torch.autograd.grad(kl, student)
    return kl.detach(), grad


def test_head_tail_expected_value_and_gradient_equal_the_full_reverse_kl():
    for seed in range(4):
        for support in ("teacher_topk", "student_topk"):
            for k in (1, 3, HT_VOCAB - 1):
                student, teacher = _one_prefix(seed)
                value, grad = _expected_over_sampled_token("topk_head_tail", student, teacher, k=k, support=support)
                kl, kl_grad = _full_reverse_kl(student, teacher)
                torch.testing.assert_close(value, kl, atol=1e-12, rtol=0)
                torch.testing.assert_close(grad, kl_grad, atol=1e-12, rtol=0)


def test_head_tail_without_the_plus_one_is_biased_by_the_support_mass_gradient():
    """The seed / EMA-PG tail term sg(d) grad log p(y) alone: E[grad] = grad KL + grad P_S(S)."""
    student, teacher = _one_prefix(7)
    k = 3
    support = torch.topk(teacher, k).indices
    logp = torch.log_softmax(student, -1)
    lt = torch.log_softmax(teacher, -1)
    head = (logp[support].exp() * (logp[support] - lt[support])).sum()
    outside = torch.ones(HT_VOCAB, dtype=torch.float64)
    outside[support] = 0.0
    p = logp.exp().detach()
    d = (logp - lt).detach()
    seed_surrogate = head + (p * outside * d * logp).sum()  # E_y of 1[y not in S] sg(d(y)) log p(y)
    (seed_grad,) = torch.autograd.grad(seed_surrogate, student)
    _, kl_grad = _full_reverse_kl(student, teacher)
    (mass_grad,) = torch.autograd.grad(torch.softmax(student, -1)[support].sum(), student)
    torch.testing.assert_close(seed_grad, kl_grad + mass_grad, atol=1e-12, rtol=0)
    assert float((seed_grad - kl_grad).abs().max()) > 1e-3  # the bias is real, not rounding
