"""Scoring statistics against independent float64 references."""

import torch

from opd_core.scoring import nucleus_membership, step_stats, support_mass


def _refs(s, t, ids, k):
    ls, lt = s.double().log_softmax(-1), t.double().log_softmax(-1)
    ps, pt = ls.exp(), lt.exp()
    top = lt.topk(k, dim=-1).indices
    return {"student_logp": ls.gather(-1, ids[..., None])[..., 0], "teacher_entropy": -(pt * lt).sum(-1),
            "reverse_kl": (ps * (ls - lt)).sum(-1), "forward_kl": (pt * (lt - ls)).sum(-1),
            "support_mass": ps.gather(-1, top).sum(-1)}


def test_step_stats_match_float64_references_whatever_the_chunking():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 50, generator=g) * 3, torch.randn(3, 7, 50, generator=g) * 3
    ids = torch.randint(0, 50, (3, 7), generator=g)
    ref = _refs(s, t, ids, 5)
    for chunk in (1, 4, 1000):
        got = step_stats(s, t, ids, top_k=5, chunk_tokens=chunk)
        for name, value in ref.items():
            assert torch.allclose(got[name].double(), value, atol=1e-5), (name, chunk)
    assert "support_mass" not in step_stats(s, t, ids)


def test_equal_models_have_zero_kl_and_support_mass_matches_the_standalone_helper():
    s = torch.randn(2, 4, 30)
    ids = torch.zeros(2, 4, dtype=torch.long)
    got = step_stats(s, s.clone(), ids, top_k=3)
    assert got["reverse_kl"].abs().max() < 1e-5 and got["forward_kl"].abs().max() < 1e-5
    top = s.log_softmax(-1).topk(3, dim=-1).indices
    assert torch.allclose(got["support_mass"], support_mass(s, top), atol=1e-6)


def test_nucleus_membership_keeps_exactly_the_tokens_top_p_sampling_keeps():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    members = [bool(nucleus_membership(logits, torch.tensor([[i]]), top_p=0.9)) for i in range(4)]
    assert members == [True, True, True, False]
