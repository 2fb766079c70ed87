"""The fast paths give the reference path's loss, gradients and statistics (to 1e-5)."""

from __future__ import annotations

import pytest
import torch

from opd_core.objectives import ObjectiveBatch, compute_objective, reduce_loss
from opd_core.objectives.fused_head import fused_head_kl, reduction_weights
from opd_core.stats import step_stats

TOL = dict(rtol=1e-5, atol=1e-5)


def _problem(seed: int = 0, B: int = 3, T: int = 7, H: int = 16, V: int = 300, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    return hidden, weight, b, teacher, ids, mask


def _leaves(*ts):
    return [t.clone().requires_grad_(True) if t is not None else None for t in ts]


def _reference(objective, hidden, weight, b, teacher, ids, mask, reduce, **params):
    h, w, bb = _leaves(hidden, weight, b)
    logits = h @ w.T + (bb if bb is not None else 0)
    out = compute_objective(objective, ObjectiveBatch(logits, ids, mask, teacher_logits=teacher), **params)
    reduce(out.loss).backward()
    grads = [t.grad for t in (h, w, bb) if t is not None]
    return out.loss.detach(), grads, logits.detach()


@pytest.mark.parametrize("objective,params,alpha", [("reverse_kl", {}, 0.0), ("forward_kl", {}, 1.0),
                                                     ("kl_mix", {"alpha": 0.3}, 0.3)])
@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_head_kl_gives_the_reference_loss_and_gradients(objective, params, alpha, reduction, bias):
    hidden, weight, b, teacher, ids, mask = _problem(bias=bias)

    def reduce(loss):
        return reduce_loss(loss, mask, reduction=reduction)

    ref_loss, ref_grads, _ = _reference(objective, hidden, weight, b, teacher, ids, mask, reduce, **params)
    for with_stats, announce in ((True, True), (False, True), (False, False)):  # False: the recompute backward
        h, w, bb = _leaves(hidden, weight, b)
        loss, stats = fused_head_kl(h, w, bb, teacher, ids, mask, alpha=alpha, chunk_tokens=4, with_stats=with_stats,
                                    reduce_weights=reduction_weights(reduce, mask) if announce else None)
        assert bool(stats) == with_stats
        reduce(loss).backward()
        torch.testing.assert_close(loss.detach(), ref_loss, **TOL)
        for got, want in zip([t.grad for t in (h, w, bb) if t is not None], ref_grads):
            torch.testing.assert_close(got, want, **TOL)


def test_fused_head_kl_recomputes_when_the_gradient_is_not_the_announced_reduction():
    hidden, weight, b, teacher, ids, mask = _problem(seed=1)
    coef = torch.rand(mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def reduce(loss):
        return (loss * coef).sum()  # not the token mean announced below

    _, ref_grads, _ = _reference("reverse_kl", hidden, weight, b, teacher, ids, mask, reduce)
    h, w, bb = _leaves(hidden, weight, b)
    announced = reduction_weights(lambda x: reduce_loss(x, mask), mask)
    loss, _ = fused_head_kl(h, w, bb, teacher, ids, mask, reduce_weights=announced)
    reduce(loss).backward()
    for got, want in zip((h.grad, w.grad, bb.grad), ref_grads):
        torch.testing.assert_close(got, want, **TOL)


def test_fused_head_kl_float32_matches_the_reference_to_1e_5():
    hidden, weight, b, teacher, ids, mask = (t.float() if t.is_floating_point() else t for t in _problem(seed=2))

    def reduce(loss):
        return reduce_loss(loss, mask)

    ref_loss, ref_grads, _ = _reference("reverse_kl", hidden, weight, b, teacher, ids, mask, reduce)
    h, w, bb = _leaves(hidden, weight, b)
    loss, _ = fused_head_kl(h, w, bb, teacher, ids, mask, reduce_weights=reduction_weights(reduce, mask))
    reduce(loss).backward()
    torch.testing.assert_close(loss.detach(), ref_loss, **TOL)
    for got, want in zip((h.grad, w.grad, bb.grad), ref_grads):
        torch.testing.assert_close(got, want, **TOL)


def test_fused_head_kl_statistics_are_the_step_statistics():
    hidden, weight, b, teacher, ids, mask = _problem(seed=3)
    logits = hidden @ weight.T + b
    record = step_stats(logits, teacher, ids, support_k=5)
    with torch.no_grad():
        _, got = fused_head_kl(hidden, weight, b, teacher, ids, mask, support_k=5)
    names = {"student_logp": "student_logp", "teacher_entropy": "teacher_entropy", "reverse_kl": "reverse_kl",
             "forward_kl": "forward_kl", "support_mass": "student_support_mass"}
    assert set(got) == set(names)
    for name, theirs in names.items():
        want = getattr(record, theirs)
        torch.testing.assert_close(got[name][mask], want[mask].to(got[name].dtype), **TOL)
        assert (got[name][~mask] == 0).all()
    top = torch.log_softmax(teacher, -1).topk(5, dim=-1).indices
    with torch.no_grad():
        _, given = fused_head_kl(hidden, weight, b, teacher, ids, mask, support_ids=top)
    torch.testing.assert_close(given["support_mass"], got["support_mass"])


def test_fused_head_kl_reads_only_the_real_vocabulary_of_a_padded_teacher():
    hidden, weight, b, teacher, ids, mask = _problem(seed=4)
    padded = torch.cat([teacher, torch.full((*teacher.shape[:2], 9), 50.0, dtype=teacher.dtype)], -1)
    a, _ = fused_head_kl(hidden, weight, b, teacher, ids, mask)
    c, _ = fused_head_kl(hidden, weight, b, padded, ids, mask)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("support", ["teacher_topk", "teacher_topk_plus_sampled"])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_support_restricted_head_gives_topk_supports_loss_and_gradients(support, clip, dtype):
    from opd_core.objectives import per_token_loss
    from opd_core.objectives.chunked import token_logprob_stats
    from opd_core.objectives.support_head import restricts, topk_support_on_head
    from opd_core.student_head import HeadInputs

    hidden, weight, b, teacher, ids, mask = (t.to(dtype) if t.is_floating_point() else t
                                             for t in _problem(seed=6, V=200))
    params = {"k": 8, "support": support, "clip_log_ratio": clip}
    assert restricts({"renormalize": True, "tail_bucket": False, "support": support})
    h, w, bb = _leaves(hidden, weight, b)
    ref = per_token_loss("topk_support", h @ w.T + bb, teacher, ids, mask, **params)
    reduce_loss(ref.loss, mask).backward()
    ref_grads = [t.grad for t in (h, w, bb)]

    stats = token_logprob_stats(teacher, ids, 8, dtype=dtype)
    h, w, bb = _leaves(hidden, weight, b)
    out = topk_support_on_head(HeadInputs(h, w, bb), ids, mask, stats["topk_ids"], stats["topk_logps"],
                               stats["logp"], k=8, support=support, clip_log_ratio=clip, chunk_tokens=3)
    reduce_loss(out.loss, mask).backward()
    torch.testing.assert_close(out.loss.detach(), ref.loss.detach(), **TOL)
    torch.testing.assert_close(out.extras["teacher_support_mass"], ref.extras["teacher_support_mass"], **TOL)
    for got, want in zip((h.grad, w.grad, bb.grad), ref_grads):
        torch.testing.assert_close(got, want, **TOL)


def test_restricted_and_fused_paths_refuse_what_they_cannot_compute_exactly():
    from opd_core.objectives.support_head import restricts

    assert not restricts({"renormalize": False, "tail_bucket": False, "support": "teacher_topk"})
    assert not restricts({"renormalize": True, "tail_bucket": True, "support": "teacher_topk"})
    assert not restricts({"renormalize": True, "tail_bucket": False, "support": "student_topk_plus_sampled"})


def test_response_hidden_rebuilds_the_models_own_response_logits_without_computing_them():
    from transformers import AutoModelForCausalLM

    from opd_core.scoring import build_batch, response_logits
    from opd_core.student_head import plain_head, response_hidden
    from opd_core.toy.presets import resolve_pair

    model = AutoModelForCausalLM.from_pretrained(resolve_pair("toy:matched")[0])
    batch = build_batch([[1, 5, 6], [7, 8]], [[9, 10, 11, 12], [13]], pad_id=0, device=torch.device("cpu"))
    calls = []
    head = plain_head(model)
    handle = head.register_forward_hook(lambda _m, _a, out: calls.append(tuple(out.shape)))
    got = response_hidden(model, batch, vocab_size=80)
    handle.remove()
    assert calls[0][1] == 0  # the head itself made no logits
    want = response_logits(model, batch, vocab_size=80)
    assert got.weight.shape[0] == 80
    torch.testing.assert_close(got.logits(), want, rtol=1e-5, atol=1e-5)
    model.config.final_logit_softcapping = 30.0
    assert plain_head(model) is None and response_hidden(model, batch) is None


@pytest.mark.parametrize("objective,params", [("reverse_kl", {}), ("topk_support", {"k": 8}),
                                              ("topk_support", {"k": 8, "support": "teacher_topk_plus_sampled"})])
def test_a_run_on_the_fast_path_logs_what_the_reference_path_logs(tmp_path, monkeypatch, objective, params):
    from opd_core import fast_paths, runs
    from opd_core.config import from_dict
    from opd_core.train_entry import train

    cfg = {"steps": 3, "prompts_per_step": 2, "num_rollouts": 2, "max_new_tokens": 12, "eval_every": 0,
           "eval_size": 4, "log_tokens_every": 3, "checkpoint_every": 0, "reference_rollouts": False,
           "objective": objective, "objective_params": params}
    calls = []
    original = fast_paths.FastPath.compute
    monkeypatch.setattr(fast_paths.FastPath, "compute", lambda self, *a: calls.append(1) or original(self, *a))
    fast = runs.read_metrics(train(from_dict(cfg), tmp_path, "fast"))
    assert len(calls) == 1  # step 2 only: steps 1 and 3 log tokens and keep the full logits
    monkeypatch.setattr(fast_paths, "plan", lambda *a, **k: None)
    ref = runs.read_metrics(train(from_dict(cfg), tmp_path, "reference"))
    assert len(calls) == 1
    columns = ["loss", "grad_norm", "reverse_kl", "forward_kl", "mean_log_ratio", "student_entropy",
               "teacher_entropy_student_prefix", "signal_gini"]
    for col in columns:
        assert fast[col].tolist() == pytest.approx(ref[col].tolist(), rel=1e-5, abs=1e-6), col
    # the top-K set metrics: logging steps only on the fast path (steps 1 and 3 here), the same values there
    for col in ("student_support_mass", "topk_overlap", "teachability", "not_in_topk_ratio"):
        assert fast[col].isna().tolist() == [False, True, False], col
        assert fast[col][[0, 2]].tolist() == pytest.approx(ref[col][[0, 2]].tolist(), rel=1e-5, abs=1e-6), col


def test_the_fast_path_is_planned_only_where_it_is_exact():
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from opd_core.fast_paths import plan
    from opd_core.toy.presets import resolve_pair

    model = AutoModelForCausalLM.from_pretrained(resolve_pair("toy:matched")[0])
    cfg = SimpleNamespace(autocast=False, entropy_top_ratio=1.0, score_temperature_value=1.0)
    assert plan(cfg, "reverse_kl", {}, model) is not None
    assert plan(cfg, "kl_mix", {"alpha": 0.2}, model).params["alpha"] == 0.2
    assert plan(cfg, "topk_support", {"k": 4}, model) is not None
    assert plan(cfg, "topk_support", {"k": 4, "tail_bucket": True}, model) is None
    assert plan(cfg, "sampled_token", {}, model) is None
    assert plan(SimpleNamespace(**{**vars(cfg), "autocast": True}), "reverse_kl", {}, model) is None
    assert plan(SimpleNamespace(**{**vars(cfg), "entropy_top_ratio": 0.5}), "reverse_kl", {}, model) is None
    assert plan(SimpleNamespace(**{**vars(cfg), "score_temperature_value": 2.0}), "reverse_kl", {}, model) is None
    assert plan(cfg, "reverse_kl", {}, model.to(torch.bfloat16)) is None


def test_step_stats_from_the_head_equal_those_of_the_full_logits_and_give_the_teachers_topk():
    from opd_core.objectives.chunked import token_logprob_stats
    from opd_core.student_head import HeadInputs

    hidden, weight, b, teacher, ids, _ = _problem(seed=3)
    hidden, weight, b, teacher = hidden.float(), weight.float(), b.float(), teacher.float()
    head = HeadInputs(hidden, weight, b)
    aligned = torch.ones(ids.shape, dtype=torch.bool)
    aligned[1, 2] = False
    want = step_stats(head.logits(), teacher, ids, aligned=aligned)
    got = step_stats(head, teacher, ids, aligned=aligned, teacher_topk=5)
    for name in ("student_logp", "teacher_logp", "log_ratio", "student_entropy", "teacher_entropy", "reverse_kl",
                 "forward_kl"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, equal_nan=True)
    ref = token_logprob_stats(teacher, ids, top_k=5, chunk_tokens=None)
    assert torch.equal(got.teacher_topk_ids, ref["topk_ids"])
    torch.testing.assert_close(got.teacher_topk_logps, ref["topk_logps"], **TOL)


def test_response_logits_are_contiguous_and_those_of_the_full_forward():
    from transformers import AutoModelForCausalLM

    from opd_core.scoring import build_batch, response_logits
    from opd_core.toy.presets import resolve_pair

    model = AutoModelForCausalLM.from_pretrained(resolve_pair("toy:matched")[0])
    batch = build_batch([[1, 5, 6], [7, 8]], [[9, 10, 11, 12], [13]], pad_id=0, device=torch.device("cpu"))
    got = response_logits(model, batch)
    assert got.is_contiguous() and got.shape[1] == 4
    full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=batch.position_ids).logits
    torch.testing.assert_close(got, full[:, batch.prompt_width - 1:-1], **TOL)


def test_the_fused_kl_pass_fills_the_record_step_stats_gives():
    from opd_core.objectives.chunked import token_logprobs
    from opd_core.stats.record import StepStatsChunks

    hidden, weight, b, teacher, ids, _ = _problem(seed=4)
    hidden, weight, b, teacher = hidden.float(), weight.float(), b.float(), teacher.float()
    aligned = torch.ones(ids.shape, dtype=torch.bool)
    aligned[0, 3] = False
    t_lp = token_logprobs(teacher, ids).float()
    chunks = StepStatsChunks(ids)
    fused_head_kl(hidden, weight, b, teacher, ids, torch.ones_like(aligned), with_stats=False, on_chunk=chunks)
    got = chunks.record(t_lp, aligned=aligned)
    want = step_stats(hidden @ weight.T + b, teacher, ids, t_lp, aligned=aligned)
    for name in ("student_logp", "teacher_logp", "log_ratio", "student_entropy", "teacher_entropy", "reverse_kl",
                 "forward_kl", "signal"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-5, equal_nan=True)
