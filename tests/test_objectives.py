"""Each objective against an independent float64 NumPy reference, plus its gradient, sanity anchors,
masking, reduction, validation and the chunked scoring helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opd_core.objectives import (
    ObjectiveBatch,
    TeacherNeeds,
    compute_objective,
    get_objective,
    list_objectives,
    per_token_loss,
    reduce_loss,
    token_logprob_stats,
    validate_params,
)

B, T, V = 3, 6, 13
DIVERGENCES = ["reverse_kl", "forward_kl", "jsd", "kl_mix"]
TOPK_VARIANTS = [
    dict(support=s, renormalize=r, tail_bucket=tb)
    for s in ("teacher_topk", "teacher_topk_plus_sampled", "student_topk_plus_sampled")
    for r in (True, False)
    for tb in (False, True)
]


def make_inputs(seed: int = 0, dtype=torch.float64, b=B, t=T, v=V, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(b, t, v, generator=g)).to(dtype).requires_grad_(True)
    teacher = (scale * torch.randn(b, t, v, generator=g)).to(dtype)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    return student, teacher, ids, mask


# ---------------------------------------------------------------- NumPy float64 references


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kl(logp: np.ndarray, logq: np.ndarray) -> np.ndarray:
    return (np.exp(logp) * (logp - logq)).sum(-1)


def np_reference(name: str, s: np.ndarray, t: np.ndarray, ids: np.ndarray, mask: np.ndarray, **p) -> tuple:
    """(loss, signal) per token, computed loop by loop in float64."""
    ls, lt = np_log_softmax(s), np_log_softmax(t)
    loss = np.zeros(ids.shape)
    signal = np.zeros(ids.shape)
    nb, nt = ids.shape
    if name == "sampled_token":
        gamma = p.get("gamma", 0.0)
        r = np.zeros(ids.shape)
        for b in range(nb):
            for i in range(nt):
                if mask[b, i]:
                    r[b, i] = lt[b, i, ids[b, i]] - ls[b, i, ids[b, i]]
        for b in range(nb):
            for i in range(nt):
                a = sum(gamma**k * r[b, i + k] for k in range(nt - i))
                if mask[b, i]:
                    signal[b, i] = a
                    loss[b, i] = -a * ls[b, i, ids[b, i]]
        return loss, signal
    for b in range(nb):
        for i in range(nt):
            if not mask[b, i]:
                continue
            x, y = ls[b, i], lt[b, i]
            if name == "reverse_kl":
                val = np_kl(x, y)
            elif name == "forward_kl":
                val = np_kl(y, x)
            elif name == "kl_mix":
                a = p.get("alpha", 0.5)
                val = a * np_kl(y, x) + (1 - a) * np_kl(x, y)
            elif name == "jsd":
                beta = p.get("beta", 0.5)
                m = np.log(beta * np.exp(y) + (1 - beta) * np.exp(x))
                val = beta * np_kl(y, m) + (1 - beta) * np_kl(x, m)
            elif name == "topk_support":
                val = np_topk_support(s[b, i], t[b, i], int(ids[b, i]), **p)
            loss[b, i] = signal[b, i] = val
    return loss, signal


def np_topk_support(s, t, y, k=32, renormalize=True, support="teacher_topk", tail_bucket=False) -> float:
    k = min(k, len(s))
    source = s if support == "student_topk_plus_sampled" else t
    chosen = list(np.argsort(-source, kind="stable")[:k])
    if support != "teacher_topk" and y not in chosen:
        chosen.append(y)
    ls, lt = np_log_softmax(s), np_log_softmax(t)
    if tail_bucket:
        ps, pt = np.exp(ls[chosen]), np.exp(lt[chosen])
        ps = np.append(ps, 1 - ps.sum())
        pt = np.append(pt, 1 - pt.sum())
        keep = ps > 0
        return float((ps[keep] * (np.log(ps[keep]) - np.log(pt[keep]))).sum())
    if renormalize:
        return float(np_kl(np_log_softmax(s[chosen]), np_log_softmax(t[chosen])))
    return float((np.exp(ls[chosen]) * (ls[chosen] - lt[chosen])).sum())


def check_against_reference(name, dtype, atol, **params):
    student, teacher, ids, mask = make_inputs(1, dtype)
    out = per_token_loss(name, student, teacher, ids, mask, **params)
    ref_loss, ref_signal = np_reference(
        name, student.detach().double().numpy(), teacher.double().numpy(), ids.numpy(), mask.numpy(), **params
    )
    np.testing.assert_allclose(out.loss.detach().double().numpy(), ref_loss, atol=atol, rtol=atol)
    np.testing.assert_allclose(out.signal.double().numpy(), ref_signal, atol=atol, rtol=atol)
    assert out.loss.shape == out.signal.shape == (B, T)
    assert not out.signal.requires_grad


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "name,params",
    [("reverse_kl", {}), ("forward_kl", {}), ("jsd", {}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}),
     ("kl_mix", {}), ("kl_mix", {"alpha": 0.3}), ("sampled_token", {}), ("sampled_token", {"gamma": 0.7}),
     ("sampled_token", {"gamma": 1.0}), ("topk_support", {"k": 4})],
)
def test_objective_matches_numpy_reference(name, params, dtype, atol):
    check_against_reference(name, dtype, atol, **params)


@pytest.mark.parametrize("variant", TOPK_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_topk_support_variants_match_numpy_reference(variant):
    check_against_reference("topk_support", torch.float64, 1e-10, k=5, **variant)
    check_against_reference("topk_support", torch.float32, 1e-5, k=5, **variant)


def test_loss_is_float32_for_bfloat16_logits_and_zero_where_masked():
    student, teacher, ids, mask = make_inputs(2, torch.bfloat16)
    for name in list_objectives():
        out = per_token_loss(name, student, teacher, ids, mask)
        assert out.loss.dtype == torch.float32 and out.signal.dtype == torch.float32
        assert torch.all(out.loss[~mask] == 0) and torch.all(out.signal[~mask] == 0)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "name,params",
    [("reverse_kl", {}), ("forward_kl", {}), ("jsd", {"beta": 0.3}), ("kl_mix", {"alpha": 0.6})]
    + [("topk_support", {"k": 4, **v}) for v in TOPK_VARIANTS],
)
def test_divergence_gradient_matches_finite_differences(name, params):
    student, teacher, ids, mask = make_inputs(3, b=2, t=3, v=7)
    assert torch.autograd.gradcheck(
        lambda x: per_token_loss(name, x, teacher, ids, mask, **params).loss, (student,), atol=1e-6
    )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_sampled_token_gradient_is_stopgrad_advantage_times_score(gamma):
    student, teacher, ids, mask = make_inputs(4)
    out = per_token_loss("sampled_token", student, teacher, ids, mask, gamma=gamma)
    (grad,) = torch.autograd.grad(out.loss.sum(), student)
    s = student.detach().numpy()
    _, adv = np_reference("sampled_token", s, teacher.numpy(), ids.numpy(), mask.numpy(), gamma=gamma)
    probs = np.exp(np_log_softmax(s))
    onehot = np.eye(V)[ids.numpy()]
    expected = -adv[..., None] * (onehot - probs)  # d/ds of -A log softmax(s)[y], A held constant
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-10)


def test_chunk_size_changes_neither_loss_nor_gradient():
    student, teacher, ids, mask = make_inputs(5)
    for name in list_objectives():
        results = []
        for chunk in (1, 4, None):
            out = per_token_loss(name, student, teacher, ids, mask, chunk_tokens=chunk)
            (grad,) = torch.autograd.grad(out.loss.sum(), student)
            results.append((out.loss.detach(), grad))
        for loss, grad in results[1:]:
            torch.testing.assert_close(loss, results[0][0], atol=1e-12, rtol=0)
            torch.testing.assert_close(grad, results[0][1], atol=1e-12, rtol=0)


# ---------------------------------------------------------------- sanity anchors


@pytest.mark.parametrize(
    "name,params",
    [(n, {}) for n in DIVERGENCES] + [("jsd", {"beta": 0.0}), ("jsd", {"beta": 1.0})]
    + [("topk_support", {"k": 4, **v}) for v in TOPK_VARIANTS if v["renormalize"] or v["tail_bucket"]],
)
def test_student_equal_teacher_gives_zero_loss_and_zero_gradient(name, params):
    student, _, ids, mask = make_inputs(6)
    out = per_token_loss(name, student, student.detach().clone(), ids, mask, **params)
    (grad,) = torch.autograd.grad(out.loss.sum(), student)
    assert out.loss.abs().max() < 1e-12
    assert grad.abs().max() < 1e-12


def test_unnormalised_topk_has_a_nonzero_gradient_at_student_equal_teacher():
    # the truncated form keeps pushing mass off the support even at the optimum: why it collapses
    student, _, ids, mask = make_inputs(6)
    out = per_token_loss("topk_support", student, student.detach().clone(), ids, mask, k=4, renormalize=False)
    (grad,) = torch.autograd.grad(out.loss.sum(), student)
    assert out.loss.abs().max() < 1e-12
    assert grad.abs().max() > 1e-3


def test_sampled_token_signal_is_zero_when_student_equals_teacher():
    student, _, ids, mask = make_inputs(7)
    for gamma in (0.0, 0.5, 1.0):
        out = per_token_loss("sampled_token", student, student.detach().clone(), ids, mask, gamma=gamma)
        assert out.signal.abs().max() == 0


@pytest.mark.parametrize("variant", TOPK_VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
def test_topk_support_with_k_equal_vocab_is_reverse_kl(variant):
    student, teacher, ids, mask = make_inputs(8)
    reverse = per_token_loss("reverse_kl", student, teacher, ids, mask)
    topk = per_token_loss("topk_support", student, teacher, ids, mask, k=V, **variant)
    (g_rev,) = torch.autograd.grad(reverse.loss.sum(), student)
    (g_top,) = torch.autograd.grad(topk.loss.sum(), student)
    torch.testing.assert_close(topk.loss, reverse.loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(g_top, g_rev, atol=1e-10, rtol=0)
    assert torch.allclose(topk.extras["student_support_mass"][mask], torch.ones(()).double())


@pytest.mark.parametrize(
    "name,params,equals",
    [("jsd", {"beta": 0.0}, "forward_kl"), ("jsd", {"beta": 1.0}, "reverse_kl"),
     ("kl_mix", {"alpha": 1.0}, "forward_kl"), ("kl_mix", {"alpha": 0.0}, "reverse_kl")],
)
def test_interpolating_divergences_hit_their_endpoints_exactly(name, params, equals):
    student, teacher, ids, mask = make_inputs(9)
    a = per_token_loss(name, student, teacher, ids, mask, **params).loss
    b = per_token_loss(equals, student, teacher, ids, mask).loss
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_jsd_near_zero_beta_is_small_not_forward_kl():
    # documented discontinuity: the generalised JSD tends to 0 as beta -> 0, hence the special case
    student, teacher, ids, mask = make_inputs(9)
    small = per_token_loss("jsd", student, teacher, ids, mask, beta=1e-6).loss
    forward = per_token_loss("forward_kl", student, teacher, ids, mask).loss
    assert small.sum() < 1e-3 * forward.sum()


# ---------------------------------------------------------------- masking and reduction


@pytest.mark.parametrize("name", list_objectives())
def test_masked_tokens_change_neither_loss_nor_gradient(name):
    student, teacher, ids, mask = make_inputs(10)
    params = {"gamma": 0.8} if name == "sampled_token" else {}
    out = per_token_loss(name, student, teacher, ids, mask, **params)
    (grad,) = torch.autograd.grad(reduce_loss(out.loss, mask), student)
    # scramble everything at masked positions: logits of both models and the sampled id
    g = torch.Generator().manual_seed(99)
    student2 = student.detach().clone()
    student2[~mask] = 50 * torch.randn(int((~mask).sum()), V, generator=g, dtype=student2.dtype)
    student2.requires_grad_(True)
    teacher2 = teacher.clone()
    teacher2[~mask] = -30 * torch.rand(int((~mask).sum()), V, generator=g, dtype=teacher2.dtype)
    ids2 = torch.where(mask, ids, (ids + 5) % V)
    out2 = per_token_loss(name, student2, teacher2, ids2, mask, **params)
    (grad2,) = torch.autograd.grad(reduce_loss(out2.loss, mask), student2)
    torch.testing.assert_close(out2.loss, out.loss, atol=1e-12, rtol=0)
    torch.testing.assert_close(out2.signal, out.signal, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad2, grad, atol=1e-12, rtol=0)
    assert torch.all(grad[~mask] == 0)


def test_sampled_token_return_never_crosses_into_the_next_sequence():
    student, teacher, ids, mask = make_inputs(11)
    mask[:] = True
    out = per_token_loss("sampled_token", student, teacher, ids, mask, gamma=1.0)
    last = out.extras["log_ratio"][:, -1]
    torch.testing.assert_close(out.signal[:, -1], last)  # the last token's return is its own reward only
    torch.testing.assert_close(out.signal[:, 0], out.extras["log_ratio"].sum(-1))


@pytest.mark.parametrize("name", ["sampled_token", "reverse_kl", "topk_support"])
def test_reduction_uses_the_global_count_of_unmasked_tokens(name):
    # two micro-batches of different lengths == one concatenated (right-padded) batch
    s1, t1, i1, m1 = make_inputs(12, b=2, t=4)
    s2, t2, i2, m2 = make_inputs(13, b=3, t=7)
    m2[:, 5:] = False
    m1[:, 1:] = True
    pad = torch.zeros(2, 3, V, dtype=s1.dtype)
    s_cat = torch.cat([torch.cat([s1.detach(), pad], 1), s2.detach()]).requires_grad_(True)
    t_cat = torch.cat([torch.cat([t1, pad], 1), t2])
    i_cat = torch.cat([torch.cat([i1, torch.zeros(2, 3, dtype=torch.long)], 1), i2])
    m_cat = torch.cat([torch.cat([m1, torch.zeros(2, 3, dtype=torch.bool)], 1), m2])
    whole = reduce_loss(per_token_loss(name, s_cat, t_cat, i_cat, m_cat).loss, m_cat)
    (g_whole,) = torch.autograd.grad(whole, s_cat)
    n = int(m1.sum() + m2.sum())
    l1 = reduce_loss(per_token_loss(name, s1, t1, i1, m1).loss, m1, num_tokens=n)
    l2 = reduce_loss(per_token_loss(name, s2, t2, i2, m2).loss, m2, num_tokens=torch.tensor(n))
    (g1,) = torch.autograd.grad(l1, s1)
    (g2,) = torch.autograd.grad(l2, s2)
    torch.testing.assert_close(l1 + l2, whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_whole[:2, :4], g1, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_whole[2:], g2, atol=1e-12, rtol=0)
    mean_of_means = (reduce_loss(per_token_loss(name, s1, t1, i1, m1).loss, m1)
                     + reduce_loss(per_token_loss(name, s2, t2, i2, m2).loss, m2)) / 2
    assert not torch.isclose(mean_of_means, whole)


def test_reduce_loss_of_an_all_masked_batch_is_zero_and_rejects_negative_counts():
    loss = torch.ones(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert reduce_loss(loss, mask).item() == 0
    with pytest.raises(ValueError, match="num_tokens"):
        reduce_loss(loss, mask, num_tokens=-1)


# ---------------------------------------------------------------- the engine's path


@pytest.mark.parametrize("name", list_objectives())
def test_engine_path_with_sparse_teacher_view_equals_reference_entry_point(name):
    student, teacher, ids, mask = make_inputs(14, torch.float32)
    spec = get_objective(name)
    stats = token_logprob_stats(teacher.to(torch.bfloat16), ids, top_k=8)
    batch = ObjectiveBatch(student, ids, mask)
    if spec.needs is TeacherNeeds.FULL:
        batch.teacher_logits = teacher.to(torch.bfloat16)
    elif spec.needs is TeacherNeeds.SAMPLED:
        batch.teacher_sampled_logp = stats["logp"]
    else:
        batch.teacher_topk_ids, batch.teacher_topk_logps = stats["topk_ids"], stats["topk_logps"]
        batch.teacher_sampled_logp = stats["logp"]
    params = {"k": 8} if "k" in spec.params else {}
    out = compute_objective(name, batch, **params)
    ref = per_token_loss(name, student, teacher.to(torch.bfloat16).float(), ids, mask, **params)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    if name == "topk_support":
        assert set(out.extras) >= {"student_support_mass"}
        mass = out.extras["student_support_mass"][mask]
        assert torch.all((mass > 0) & (mass <= 1 + 1e-6))


def test_token_logprob_stats_matches_numpy_in_small_chunks():
    _, teacher, ids, _ = make_inputs(15, torch.float32)
    stats = token_logprob_stats(teacher, ids, top_k=4, chunk_tokens=5)
    x = teacher.double().numpy()
    lp = np_log_softmax(x)
    idx = ids.numpy()[..., None]
    np.testing.assert_allclose(stats["logp"].numpy(), np.take_along_axis(lp, idx, -1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(stats["entropy"].numpy(), -(np.exp(lp) * lp).sum(-1), atol=1e-5)
    np.testing.assert_array_equal(stats["topk_ids"].numpy(), np.argsort(-x, -1)[..., :4])
    np.testing.assert_allclose(stats["topk_logps"].numpy(), -np.sort(-lp, -1)[..., :4], atol=1e-5)
    rank = (x > np.take_along_axis(x, idx, -1)).sum(-1) + 1
    np.testing.assert_array_equal(stats["rank"].numpy(), rank)
    assert stats["logp"].dtype == torch.float32 and stats["rank"].dtype == torch.int64
    assert token_logprob_stats(teacher, ids, top_k=10_000)["topk_ids"].shape[-1] == V


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name,params,words",
    [("sampled_token", {"gamma": 1.5}, ["gamma", "[0, 1]"]), ("jsd", {"beta": -0.1}, ["beta", "[0, 1]"]),
     ("kl_mix", {"alpha": float("nan")}, ["alpha", "[0, 1]"]), ("topk_support", {"k": 0}, ["'k'", ">= 1"]),
     ("topk_support", {"k": 2.5}, ["'k'", "integer"]), ("topk_support", {"support": "all"}, ["support", "teacher_topk"]),
     ("topk_support", {"renormalize": "yes"}, ["renormalize", "true or false"]),
     ("topk_support", {"tail_bucket": 1}, ["tail_bucket", "true or false"]),
     ("reverse_kl", {"beta": 0.5}, ["beta", "no parameter"]), ("jsd", {"temperature": 1.0}, ["temperature", "beta"])],
)
def test_bad_parameters_raise_value_error_naming_parameter_and_range(name, params, words):
    student, teacher, ids, mask = make_inputs(16)
    with pytest.raises(ValueError) as info:
        per_token_loss(name, student, teacher, ids, mask, **params)
    for word in words:
        assert word in str(info.value)


def test_unknown_objective_lists_valid_names():
    with pytest.raises(ValueError) as info:
        validate_params("reverse_kld", {})
    for name in list_objectives():
        assert name in str(info.value)


def test_registry_declares_needs_and_defaults():
    assert set(list_objectives()) == {"sampled_token", "reverse_kl", "forward_kl", "jsd", "kl_mix", "topk_support",
                                      "topk_head_tail"}
    assert get_objective("sampled_token").needs is TeacherNeeds.SAMPLED
    assert get_objective("reverse_kl").needs is TeacherNeeds.FULL
    spec = get_objective("topk_support")
    assert spec.needs is TeacherNeeds.TOPK
    assert spec.needs_for({"support": "student_topk_plus_sampled"}) is TeacherNeeds.FULL
    assert spec.params == {"k": 32, "renormalize": True, "support": "teacher_topk", "tail_bucket": False,
                           "clip_log_ratio": None}
    assert validate_params("sampled_token", {}) == {"gamma": 0.0, "clip_log_ratio": None, "mask_mode": "skip"}
    assert all(get_objective(n).doc for n in list_objectives())


def test_engine_batch_missing_the_teacher_view_raises_a_clear_error():
    student, teacher, ids, mask = make_inputs(17)
    with pytest.raises(ValueError, match="teacher_logits"):
        compute_objective("reverse_kl", ObjectiveBatch(student, ids, mask))
    with pytest.raises(ValueError, match="teacher_sampled_logp"):
        compute_objective("sampled_token", ObjectiveBatch(student, ids, mask))
    with pytest.raises(ValueError, match="top_k >= 10"):
        stats = token_logprob_stats(teacher, ids, top_k=4)
        batch = ObjectiveBatch(student, ids, mask, teacher_topk_ids=stats["topk_ids"],
                               teacher_topk_logps=stats["topk_logps"])
        compute_objective("topk_support", batch, k=10)
    with pytest.raises(ValueError, match="mask must be a bool"):
        per_token_loss("reverse_kl", student, teacher, ids, mask.long())
    with pytest.raises(ValueError, match=r"sampled_ids must lie in \[0, 13\)"):
        per_token_loss("reverse_kl", student, teacher, torch.full_like(ids, V), mask)
    with pytest.raises(ValueError, match="teacher_logits must be a tensor"):
        per_token_loss("reverse_kl", student, teacher[:, :2], ids, mask)


@pytest.mark.parametrize("name,params", [("forward_kl", {}), ("jsd", {"beta": 0.5}), ("kl_mix", {"alpha": 1.0})])
def test_teacher_minus_infinity_logits_contribute_nothing_to_mass_covering_divergences(name, params):
    student, teacher, ids, mask = make_inputs(18)
    blocked = teacher.clone()
    blocked[..., -3:] = float("-inf")  # e.g. padded vocabulary rows the teacher never emits
    out = per_token_loss(name, student, blocked, ids, mask, **params)
    (grad,) = torch.autograd.grad(out.loss.sum(), student)
    assert torch.isfinite(out.loss).all() and torch.isfinite(grad).all()
    ref, _ = np_reference(name, student.detach().numpy(), np.nan_to_num(blocked.numpy(), neginf=-1e30),
                          ids.numpy(), mask.numpy(), **params)
    np.testing.assert_allclose(out.loss.detach().numpy(), ref, atol=1e-10)


# ---------------------------------------------------------------- parameter specs, value, reduction, gate


def test_every_parameter_declares_type_default_range_and_help():
    """The launch form draws a typed widget from these, so none may be missing."""
    for name in list_objectives():
        for param, d in get_objective(name).describe_params().items():
            assert d["kind"] in ("float", "int", "bool", "choice"), (name, param)
            assert d["help"] and d["valid"], (name, param)
            assert get_objective(name).validate({param: d["default"]})[param] == d["default"]
            if d["kind"] == "choice":
                assert d["default"] in d["choices"]
            if d["kind"] in ("float", "int") and d["default"] is not None:
                assert d["lo"] is None or d["default"] >= d["lo"]
                assert d["hi"] is None or d["default"] <= d["hi"]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "5", True])
def test_clip_log_ratio_refuses_non_positive_and_non_finite(bad):
    with pytest.raises(ValueError, match="clip_log_ratio.*finite float > 0"):
        validate_params("sampled_token", {"clip_log_ratio": bad})
    assert validate_params("sampled_token", {"clip_log_ratio": "none"})["clip_log_ratio"] is None
    with pytest.raises(ValueError, match="mask_mode.*'skip', 'reset'"):
        validate_params("sampled_token", {"mask_mode": "zero"})


def test_value_is_the_divergence_estimate_for_every_objective():
    student, teacher, ids, mask = make_inputs(21)
    for name in list_objectives():
        out = per_token_loss(name, student, teacher, ids, mask)
        assert out.value is not None and not out.value.requires_grad
        assert torch.all(out.value[~mask] == 0)
        if name == "sampled_token":  # -r_t, the Monte-Carlo reverse KL; the surrogate is another number
            torch.testing.assert_close(out.value, torch.where(mask, -out.extras["log_ratio"], 0.0))
            assert float((out.value - out.loss.detach()).abs().max()) > 1e-3
        else:
            torch.testing.assert_close(out.value, out.loss.detach())


def test_clip_log_ratio_clamps_the_reward_not_the_logged_value():
    student, teacher, ids, mask = make_inputs(22, scale=4.0)
    free = per_token_loss("sampled_token", student, teacher, ids, mask)
    clipped = per_token_loss("sampled_token", student, teacher, ids, mask, clip_log_ratio=1.0)
    assert float(free.signal.abs().max()) > 1.0
    torch.testing.assert_close(clipped.signal, free.signal.clamp(-1.0, 1.0))
    torch.testing.assert_close(clipped.value, free.value)


def test_sequence_mean_is_the_mean_of_per_sequence_token_means():
    loss = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, False, False, False], [False, False, False, False]])
    assert float(reduce_loss(loss, mask, reduction="sequence_mean")) == pytest.approx((2.5 + 10.0 + 0.0) / 3)
    assert float(reduce_loss(loss, mask)) == pytest.approx(20.0 / 5)
    # split over two micro-batches with the global sequence count: the same number
    parts = [reduce_loss(loss[i:j], mask[i:j], reduction="sequence_mean", num_sequences=3) for i, j in ((0, 1),
                                                                                                          (1, 3))]
    assert float(sum(parts)) == pytest.approx((2.5 + 10.0) / 3)
    equal = torch.ones(3, 4, dtype=torch.bool)  # equal lengths: the two reductions agree
    assert float(reduce_loss(loss, equal, reduction="sequence_mean")) == pytest.approx(float(reduce_loss(loss, equal)))
    with pytest.raises(ValueError, match="reduction must be one of token_mean, sequence_mean"):
        reduce_loss(loss, mask, reduction="batchmean")


def test_entropy_gate_keeps_the_top_ratio_of_each_row_and_validates():
    from opd_core.objectives import entropy_gate

    entropy = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [1.0, 2.0, 3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, True, True, True], [True, True, False, True, False]])
    gated = entropy_gate(entropy, mask, 0.4)
    assert gated.tolist() == [[False, True, False, True, False], [False, False, False, True, False]]
    assert torch.equal(entropy_gate(entropy, mask, 1.0), mask)
    for bad in (0.0, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"entropy_top_ratio must be a number in \(0, 1\]"):
            entropy_gate(entropy, mask, bad)


def test_discounted_advantage_never_leaks_into_masked_prompt_positions():
    """tinker-cookbook's incorporate_kl_penalty discounts over the whole datum (prompt + response) without
    re-masking, so with kl_discount_factor > 0 the prompt positions just before the response get discounted
    response KL as advantage. Ours: zero signal, zero loss and zero gradient at every masked position."""
    student, teacher, ids, _ = make_inputs(23)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 3:] = True  # positions 0..2 play the prompt
    out = per_token_loss("sampled_token", student, teacher, ids, mask, gamma=0.9)
    (grad,) = torch.autograd.grad(reduce_loss(out.loss, mask), student)
    assert torch.all(out.signal[:, :3] == 0) and torch.all(out.loss[:, :3] == 0)
    assert torch.all(grad[:, :3] == 0) and float(grad[:, 3:].abs().max()) > 0
    # tinker's formula on the same numbers: A = discounted_future_sum(mask * r) over the whole row
    r = torch.where(mask, out.extras["log_ratio"], 0.0)
    tinker = torch.zeros_like(r)
    running = torch.zeros(B, dtype=r.dtype)
    for t in reversed(range(T)):
        running = r[:, t] + 0.9 * running
        tinker[:, t] = running
    assert float(tinker[:, :3].abs().max()) > 1e-3  # its leak
    torch.testing.assert_close(tinker[:, 3:], out.signal[:, 3:])  # the same advantage on the response
