"""Pins the exact bias/variance lab: enumeration, estimator moments, the paper's two claims, training."""

import itertools
import math

import pytest
import torch

from opd_core.lab import (
    Estimator,
    LabSetting,
    TrainSetting,
    context_ids,
    enumerate_sequences,
    estimator_table,
    exact_moments,
    exact_sequence_kl,
    exact_sequence_kl_gradient,
    make_student,
    make_teacher,
    per_context_gradients,
    per_sequence_gradients,
    score_sequences,
    topk_support_per_context,
    train_curves,
    variance_vs_horizon,
)
from opd_core.lab.estimators import exact_moments_from_rows, per_position_rows


def _pair(vocab=3, horizon=4, task="copy", sharpness=2.0):
    return make_student(vocab, horizon, seed=0), make_teacher(vocab, horizon, task, sharpness, seed=1)


def _gamma_table(vocab, horizon, gammas, task="copy"):
    student, teacher = _pair(vocab, horizon, task)
    return estimator_table(student, teacher, [Estimator("sampled_token", gamma=g) for g in gammas])


# --- enumeration -------------------------------------------------------------------------------


def test_enumeration_lists_every_sequence_once_and_probabilities_sum_to_one():
    seqs = enumerate_sequences(3, 4)
    assert seqs.shape == (81, 4)
    assert {tuple(r) for r in seqs.tolist()} == set(itertools.product(range(3), repeat=4))
    student, teacher = _pair(3, 4)
    assert float(score_sequences(student, teacher, seqs).student_seq_prob.sum()) == pytest.approx(1.0, abs=1e-12)


def test_exact_sequence_kl_matches_a_pure_python_sum_over_sequences():
    student, teacher = _pair(2, 3)
    log_s, log_t = student.log_probs().tolist(), teacher.log_probs().tolist()
    expected = 0.0
    for seq in itertools.product(range(2), repeat=3):
        ls = lt = 0.0
        for t, tok in enumerate(seq):
            ctx = 0 if t == 0 else 1 + (t - 1) * 2 + seq[t - 1]
            ls, lt = ls + log_s[ctx][tok], lt + log_t[ctx][tok]
        expected += math.exp(ls) * (ls - lt)
    assert float(exact_sequence_kl(student, teacher, enumerate_sequences(2, 3))) == pytest.approx(expected, rel=1e-12)


def test_exact_kl_gradient_matches_finite_differences():
    student, teacher = _pair(3, 3)
    seqs = enumerate_sequences(3, 3)
    _, grad = exact_sequence_kl_gradient(student, teacher, seqs)
    eps = 1e-6
    for index in (0, 4, 11, grad.numel() - 1):
        bump = torch.zeros(student.num_params, dtype=student.logits.dtype)
        bump[index] = eps
        up = exact_sequence_kl(student.with_logits(student.logits + bump.view_as(student.logits)), teacher, seqs)
        down = exact_sequence_kl(student.with_logits(student.logits - bump.view_as(student.logits)), teacher, seqs)
        assert float(grad[index]) == pytest.approx(float(up - down) / (2 * eps), abs=1e-7)


def test_context_ids_encode_position_and_previous_token():
    seqs = torch.tensor([[2, 0, 1]])
    assert context_ids(seqs, 3).tolist() == [[0, 1 + 0 * 3 + 2, 1 + 1 * 3 + 0]]


# --- the paper's claims, exactly ------------------------------------------------------------------


@pytest.mark.parametrize("task", ["copy", "mirror"])
@pytest.mark.parametrize("horizon", [1, 2, 4])
def test_bias_at_gamma_one_is_zero(task, horizon):
    table = _gamma_table(3, horizon, [1.0], task)
    assert table["bias"].iloc[0] < 1e-6
    assert table["kl_grad_norm"].iloc[0] > 1e-2  # the target is not trivially zero


@pytest.mark.parametrize("horizon", [2, 3, 5])
def test_bias_at_gamma_zero_is_not_zero_beyond_one_token(horizon):
    table = _gamma_table(3, horizon, [0.0])
    assert table["bias"].iloc[0] > 1e-2


def test_for_one_token_every_gamma_gives_the_same_estimator():
    table = _gamma_table(4, 1, [0.0, 0.3, 0.75, 1.0])
    assert table["bias"].max() < 1e-12
    assert table["variance"].max() - table["variance"].min() < 1e-12
    assert table["mean_grad_norm"].max() - table["mean_grad_norm"].min() < 1e-12


def test_variance_grows_with_gamma_and_bias_shrinks_on_the_default_setting():
    table = _gamma_table(4, 5, [0.0, 0.5, 1.0])
    assert list(table["variance"]) == sorted(table["variance"])
    assert list(table["bias"]) == sorted(table["bias"], reverse=True)
    assert table["variance"].iloc[-1] > 3 * table["variance"].iloc[0]


def test_sequence_level_variance_grows_faster_with_horizon_than_token_level():
    frame = variance_vs_horizon(LabSetting(vocab_size=3, horizon=6), horizons=[2, 6])
    var = frame.pivot(index="horizon", columns="estimator", values="variance")
    token, sequence = "sampled-token γ=0", "sampled-token γ=1"
    full_return = "sequence REINFORCE (full return)"
    token_growth = var.at[6, token] / var.at[2, token]
    assert var.at[6, sequence] / var.at[2, sequence] > 2 * token_growth
    assert var.at[6, full_return] / var.at[2, full_return] > 2 * token_growth


@pytest.mark.parametrize(
    "estimator",
    [
        Estimator("sampled_token", gamma=0.0),
        Estimator("sampled_token", gamma=0.6),
        Estimator("sampled_token", gamma=1.0),
        Estimator("topk_support", k=2, variant="renormalized"),
    ],
    ids=lambda e: e.label,
)
def test_exact_expectation_matches_monte_carlo_within_its_standard_error(estimator):
    student, teacher = _pair(3, 4)
    seqs = enumerate_sequences(3, 4)
    probs = score_sequences(student, teacher, seqs).student_seq_prob
    exact = exact_moments(per_sequence_gradients(student, teacher, seqs, estimator), probs)
    n = 20_000
    sample = per_sequence_gradients(student, teacher, student.sample(n, torch.Generator().manual_seed(7)), estimator)
    mc_mean, stderr = sample.mean(0), sample.std(0) / math.sqrt(n)
    z = (mc_mean - exact.mean).abs() / stderr.clamp_min(1e-12)
    assert float(z.max()) < 4.5  # ~40 coordinates, seeded: a wrong expectation is off by many errors
    mc_var = float((sample - mc_mean).pow(2).sum(1).mean())
    assert mc_var == pytest.approx(exact.variance, rel=0.1)


def test_moments_from_rows_equal_moments_of_the_full_gradient_matrix():
    student, teacher = _pair(3, 4)
    seqs = enumerate_sequences(3, 4)
    scored = score_sequences(student, teacher, seqs)
    for est in (Estimator("sampled_token", gamma=0.4), Estimator("sequence_reinforce"), Estimator("reverse_kl")):
        full = exact_moments(per_sequence_gradients(student, teacher, seqs, est), scored.student_seq_prob)
        rows = per_position_rows(student, teacher, scored, est)
        compact = exact_moments_from_rows(scored.contexts, rows, scored.student_seq_prob, student.logits.shape[0])
        torch.testing.assert_close(compact.mean, full.mean)
        assert compact.variance == pytest.approx(full.variance, rel=1e-10)


# --- dense objectives and top-K ---------------------------------------------------------------------


def test_gamma_zero_expectation_equals_the_dense_reverse_kl_gradient():
    student, teacher = _pair(3, 4)
    table = estimator_table(student, teacher, [Estimator("sampled_token", gamma=0.0), Estimator("reverse_kl")])
    assert table["bias_vs_token_kl"].max() < 1e-10
    assert table["bias"].iloc[0] == pytest.approx(table["bias"].iloc[1], rel=1e-10)
    assert table["variance"].iloc[1] < table["variance"].iloc[0]  # the analytic objective has less noise


def test_topk_with_k_equal_to_vocab_is_the_full_reverse_kl():
    student, teacher = _pair(4, 3)
    full = per_context_gradients(student, teacher, Estimator("reverse_kl"))
    for variant in ("renormalized", "unnormalized", "tail_bucket"):
        topk = per_context_gradients(student, teacher, Estimator("topk_support", k=4, variant=variant))
        torch.testing.assert_close(topk, full)


def test_truncated_topk_is_biased_and_the_unnormalised_sum_can_go_negative():
    student, teacher = _pair(4, 4)
    table = estimator_table(
        student, teacher, [Estimator("topk_support", k=2, variant=v) for v in ("renormalized", "unnormalized")]
    )
    assert table["bias_vs_token_kl"].min() > 1e-2
    # a KL over the support alone, without renormalising, is no divergence: it rewards moving mass off it
    uniform_student = torch.zeros_like(teacher.logits)
    assert float(topk_support_per_context(uniform_student, teacher.logits, 2, "unnormalized").min()) < 0
    assert float(topk_support_per_context(uniform_student, teacher.logits, 2, "renormalized").min()) >= 0


def test_student_equal_to_teacher_has_zero_gradient_for_every_estimator():
    _, teacher = _pair(3, 3)
    estimators = [Estimator("sampled_token", gamma=g) for g in (0.0, 1.0)] + [
        Estimator("reverse_kl"),
        Estimator("topk_support", k=2, variant="renormalized"),
        Estimator("topk_support", k=2, variant="tail_bucket"),
    ]
    table = estimator_table(teacher, teacher, estimators)
    assert table["sequence_kl"].abs().max() < 1e-12
    assert table["mean_grad_norm"].max() < 1e-12
    assert table["variance"].max() < 1e-20


def test_topk_matches_the_objectives_library():
    from opd_core.objectives import per_token_loss

    student, teacher = _pair(5, 3)
    s_logits, t_logits = student.logits[None], teacher.logits[None]
    ids = torch.zeros(s_logits.shape[:2], dtype=torch.long)
    mask = torch.ones_like(ids, dtype=torch.bool)
    for variant, params in {
        "renormalized": {"renormalize": True},
        "unnormalized": {"renormalize": False},
        "tail_bucket": {"renormalize": False, "tail_bucket": True},
    }.items():
        ours = topk_support_per_context(student.logits, teacher.logits, 3, variant)
        theirs = per_token_loss("topk_support", s_logits, t_logits, ids, mask, k=3, **params).loss[0]
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-5, atol=1e-7)


# --- training ---------------------------------------------------------------------------------------


def test_training_is_seeded_and_shows_coupling_variance_and_unnormalised_collapse():
    setting = LabSetting(vocab_size=3, horizon=4)
    estimators = [
        Estimator("sampled_token", gamma=0.0),
        Estimator("sampled_token", gamma=1.0),
        Estimator("topk_support", k=2, variant="unnormalized"),
    ]
    train = TrainSetting(steps=40, lr=0.3)
    curves = train_curves(setting, train, estimators)
    again = train_curves(setting, train, estimators)
    assert curves.equals(again)
    by = curves.groupby("estimator", sort=False)
    first, last, proxy = by["sequence_kl"].first(), by["sequence_kl"].last(), by["variance_proxy"].mean()
    token, sequence, unnorm = (e.label for e in estimators)
    assert last[token] < 0.5 * first[token]
    assert proxy[sequence] > proxy[token]
    assert last[unnorm] > last[token]


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 6, "horizon": 10}, "reduce the vocabulary size or the horizon"),
        ({"vocab_size": 3, "k": 4}, "k=4"),
        ({"task": "reverse"}, "unknown task"),
        ({"gammas": (0.0, 1.5)}, "gammas"),
        ({"sharpness": -1.0}, "sharpness"),
    ],
)
def test_bad_settings_raise_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabSetting(**kwargs)


def test_bad_estimators_raise_a_clear_error():
    with pytest.raises(ValueError, match="unknown estimator kind"):
        Estimator("forward")
    with pytest.raises(ValueError, match="needs k"):
        Estimator("topk_support")
    with pytest.raises(ValueError, match="gamma"):
        Estimator("sampled_token", gamma=2.0)
