"""Per-token statistics (opd_core.stats) against independent float64 references."""

import math

import torch

from opd_core.objectives.chunked import token_logprobs
from opd_core.stats import dense_token_stats, step_stats


def _refs(s, t, ids, k):
    ls, lt = s.double().log_softmax(-1), t.double().log_softmax(-1)
    ps, pt = ls.exp(), lt.exp()
    top = lt.topk(k, dim=-1).indices
    s_top = ls.topk(k, dim=-1)
    same = s_top.indices[..., :, None] == top[..., None, :]
    w = torch.softmax(s_top.values, -1)
    return {"student_logp": ls.gather(-1, ids[..., None])[..., 0], "teacher_entropy": -(pt * lt).sum(-1),
            "student_entropy": -(ps * ls).sum(-1),
            "reverse_kl": (ps * (ls - lt)).sum(-1), "forward_kl": (pt * (lt - ls)).sum(-1),
            "student_support_mass": ps.gather(-1, top).sum(-1),
            "topk_overlap": same.any(-2).double().mean(-1),
            "overlap_mass_student": (s_top.values.exp() * same.any(-1)).sum(-1),
            "overlap_mass_teacher": (pt.gather(-1, top) * same.any(-2)).sum(-1),
            "teachability": (w * (lt.gather(-1, s_top.indices) - s_top.values)).sum(-1)}


def test_step_stats_match_float64_references_whatever_the_chunking(monkeypatch):
    import opd_core.stats.record as stats_mod

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 50, generator=g) * 3, torch.randn(3, 7, 50, generator=g) * 3
    ids = torch.randint(0, 50, (3, 7), generator=g)
    ref = _refs(s, t, ids, 5)
    for chunk in (1, 4, 1000):
        monkeypatch.setattr(stats_mod, "auto_chunk_tokens", lambda v, c=None, chunk=chunk: chunk)
        got = step_stats(s, t, ids, support_k=5)
        for name, value in ref.items():
            assert torch.allclose(getattr(got, name).double(), value, atol=1e-5), (name, chunk)
    assert step_stats(s, t, ids).student_support_mass is None


def test_equal_models_have_zero_kl_zero_log_ratio_and_full_overlap():
    s = torch.randn(2, 4, 30)
    ids = torch.zeros(2, 4, dtype=torch.long)
    got = step_stats(s, s.clone(), ids, token_logprobs(s, ids), support_k=3)
    assert got.reverse_kl.abs().max() < 1e-5 and got.forward_kl.abs().max() < 1e-5
    assert (got.log_ratio == 0).all()  # the arithmetic of token_logprobs: exactly zero, not merely small
    assert torch.allclose(got.topk_overlap, torch.ones(2, 4))
    assert torch.allclose(got.overlap_mass_student, got.overlap_mass_teacher, atol=1e-6)
    assert got.teachability.abs().max() < 1e-6
    top = s.log_softmax(-1).topk(3, dim=-1)
    assert torch.allclose(got.student_support_mass, top.values.exp().sum(-1), atol=1e-6)


def test_nucleus_membership_keeps_exactly_the_tokens_top_p_sampling_keeps():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    members = []
    for i in range(4):
        rec = dense_token_stats(logits, logits, torch.tensor([[i]]), support_k=2, nucleus_p=0.9,
                                rollout_top_p=0.9)
        assert bool(rec.in_teacher_nucleus) == bool(rec.in_student_topp)
        members.append(bool(rec.in_teacher_nucleus))
    assert members == [True, True, True, False]


def test_unaligned_positions_have_unknown_teacher_statistics_and_a_chain_rule_nucleus():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(1, 3, 20, generator=g), torch.randn(1, 3, 20, generator=g)
    ids = torch.tensor([[1, 2, 3]])
    aligned = torch.tensor([[True, False, True]])
    t_lp = torch.tensor([[-1.0, math.log(0.2), -1.0]])
    rec = dense_token_stats(s, t, ids, t_lp, aligned=aligned, support_k=4, nucleus_p=0.9)
    assert torch.isnan(rec.teacher_entropy[0, 1]) and torch.isnan(rec.student_support_mass[0, 1])
    assert rec.teacher_rank[0, 1] == 0 and not rec.in_teacher_topk[0, 1]
    assert bool(rec.in_teacher_nucleus[0, 1])  # p_T = 0.2 >= 1 - 0.9: inside by its own probability
    assert torch.equal(rec.log_ratio, t_lp - rec.student_logp)
