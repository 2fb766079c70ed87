"""How far OPD Lab's objectives are from each peer's, on the same random logits: the max-abs-difference table.

Why: docs/objectives.md states which setting reproduces TRL (GKDTrainer's ``generalized_jsd_loss`` and
DistillationTrainer's chunked kernel), the seed code (hhh675597/revisiting_opd), tinker-cookbook's
``incorporate_kl_penalty`` and verl's k1 policy-gradient distillation. This measures it. TRL is called when
it is installed; the seed's, tinker's and verl's formulas are the re-implementations in
``tests/test_objectives_seed.py`` (the seed's) and below (tinker's discounted advantage, verl's clamped k1
reward), written from their published code. Inputs are float64 (TRL's kernel accumulates in float32), with
mid-sequence masks and right padding. Each row: the quantity compared, the OPD Lab setting, the max
absolute difference (per token unless it says "scalar").

    python benchmarks/peer_parity.py            # the table
    python benchmarks/peer_parity.py --json     # the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from opd_core.objectives import entropy_gate, per_token_loss, reduce_loss  # noqa: E402
from tests.test_objectives_seed import (  # noqa: E402
    SEED_CLIP,
    K,
    inputs,
    logps,
    seed_entropy_top_mask,
    seed_memory_efficient_kl,
    seed_opd_advantage,
    seed_pg_loss,
    teacher_topk,
)


def _max(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    diff = (a.detach() - b.detach()).abs()
    return float(diff[mask].max() if mask is not None else diff.max())


def trl_rows(student, teacher, mask) -> list[tuple[str, str, str, float]]:
    rows = []
    try:
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        return [("TRL", "not installed (pip install trl)", "", float("nan"))]
    labels = torch.where(mask, 0, -100)
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for temperature in (1.0, 0.7):
            theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta,
                                                     temperature=temperature)
            out = per_token_loss("jsd", student / temperature, teacher / temperature, torch.zeros_like(labels),
                                 mask, beta=beta)
            ours = reduce_loss(out.value, mask)
            per_token = GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, temperature=temperature,
                                                        reduction="none").sum(-1)
            rows.append(("TRL generalized_jsd_loss", f"beta={beta}, T={temperature}: loss (scalar) / per token",
                         f"jsd beta={beta}, score_temperature={temperature}",
                         max(_max(ours, theirs), _max(out.value, per_token, mask))))
    try:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss
    except ImportError as exc:
        return rows + [("TRL DistillationTrainer kernel", f"not importable: {exc}", "", float("nan"))]
    g = torch.Generator().manual_seed(11)
    b, t = mask.shape
    hidden, vocab = 16, student.shape[-1]
    h_s = torch.randn(b, t, hidden, generator=g, dtype=torch.float64).requires_grad_(True)
    h_t = torch.randn(b, t, hidden, generator=g, dtype=torch.float64)
    w_s = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    w_t = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    for beta in (0.0, 0.5, 1.0):
        for temperature in (1.0, 0.7):
            theirs, _, _ = _chunked_divergence_loss(h_s, h_t, w_s, w_t, mask.long(), beta, temperature=temperature)
            (g_theirs,) = torch.autograd.grad(theirs, h_s)
            logits = h_s @ w_s.T
            out = per_token_loss("jsd", logits / temperature, (h_t @ w_t.T) / temperature,
                                 torch.zeros_like(mask, dtype=torch.long), mask, beta=beta)
            ours = reduce_loss(out.loss, mask)
            (g_ours,) = torch.autograd.grad(ours, h_s)
            rows.append(("TRL DistillationTrainer kernel", f"beta={beta}, T={temperature}: loss (scalar) and "
                         "grad wrt hidden states", f"jsd beta={beta}, score_temperature={temperature}",
                         max(_max(ours, theirs), _max(g_ours, g_theirs))))
    return rows


def seed_rows(student, teacher, ids, response, special) -> list[tuple[str, str, str, float]]:
    rows = []
    s_lp, t_lp = logps(student.detach(), teacher, ids)
    for gamma in (0.0, 0.5, 1.0):
        for clip in (False, True):
            want = seed_opd_advantage(s_lp, t_lp, response, gamma, clip)
            params = dict(gamma=gamma, mask_mode="reset", clip_log_ratio=SEED_CLIP if clip else None)
            got = per_token_loss("sampled_token", student, teacher, ids, response, **params).signal
            rows.append(("seed compute_opd_advantage", f"advantage, gamma={gamma}, clip={clip}, mid-sequence masks",
                         "sampled_token mask_mode=reset" + (", clip_log_ratio=5" if clip else ""),
                         _max(got, want, response)))
            skip = per_token_loss("sampled_token", student, teacher, ids, response, gamma=gamma,
                                  clip_log_ratio=SEED_CLIP if clip else None).signal
            if gamma > 0:
                rows.append(("seed compute_opd_advantage", f"advantage, gamma={gamma}, clip={clip} (not "
                             "reproduced)", "sampled_token mask_mode=skip (the default)", _max(skip, want, response)))
    s_live, _ = logps(student, teacher, ids)
    adv = seed_opd_advantage(s_live.detach(), t_lp, response, 0.9, True) * special
    (g_seed,) = torch.autograd.grad(seed_pg_loss(s_live, adv, special), student)
    out = per_token_loss("sampled_token", student, teacher, ids, special, reward_mask=response, gamma=0.9,
                         mask_mode="reset", clip_log_ratio=SEED_CLIP)
    (g_ours,) = torch.autograd.grad(reduce_loss(out.loss, special, reduction="sequence_mean"), student)
    rows.append(("seed policy loss (on-policy)", "gradient wrt logits, gamma=0.9, special tokens masked in the "
                 "loss only", "reset, clip 5, reward_mask=response, loss_reduction=sequence_mean",
                 _max(g_ours, g_seed)))
    (g_tok,) = torch.autograd.grad(reduce_loss(per_token_loss(
        "sampled_token", student, teacher, ids, special, reward_mask=response, gamma=0.9, mask_mode="reset",
        clip_log_ratio=SEED_CLIP).loss, special), student)
    rows.append(("seed policy loss (on-policy)", "the same gradient (not reproduced)", "loss_reduction=token_mean",
                 _max(g_tok, g_seed)))
    adv0 = seed_opd_advantage(s_lp, t_lp, response, 0.0, False)
    logged = seed_pg_loss(s_live, adv0, response).detach()
    out = per_token_loss("sampled_token", student, teacher, ids, response)
    rows.append(("seed logged pg_loss", "gamma=0 (scalar)", "value, sequence_mean",
                 _max(reduce_loss(out.value, response, reduction="sequence_mean"), logged)))
    rows.append(("seed logged pg_loss", "gamma=0, per token: the surrogate -A log p_S against -A",
                 "ObjectiveOutput.loss (the surrogate)", _max(out.loss, -adv0, response)))
    topk = teacher_topk(teacher)
    for norm, tail, ours in ((True, False, dict(support="teacher_topk")),
                             (False, False, dict(support="teacher_topk", renormalize=False)),
                             (True, True, dict(support="teacher_topk_plus_sampled"))):
        for clip in (False, True):
            l1, l2 = seed_memory_efficient_kl(student, teacher, ids, topk, norm_to_one=norm, tail=tail, clip=clip)
            got = per_token_loss("topk_support", student, teacher, ids, response, k=K,
                                 clip_log_ratio=SEED_CLIP if clip else None, **ours).loss
            what = ("renormalised" if norm else "not renormalised") + (", K+1 sampled slot" if tail else "")
            rows.append(("seed compute_memory_efficient_kl", f"{what}, clip={clip}",
                         "topk_support " + ", ".join(f"{k}={v}" for k, v in ours.items()) +
                         (", clip_log_ratio=5" if clip else ""), _max(got, l1 + l2, response)))
    l1, l2 = seed_memory_efficient_kl(student, teacher, ids, topk, norm_to_one=False, tail=True, clip=False)
    got = per_token_loss("topk_head_tail", student, teacher, ids, response, k=K)
    rows.append(("seed compute_memory_efficient_kl", "not renormalised + EMA-PG tail: value", "topk_head_tail",
                 _max(got.value, l1 + l2, response)))
    g = torch.Generator().manual_seed(12)
    entropy = torch.rand(response.shape, generator=g, dtype=torch.float64)
    gate = entropy_gate(entropy, response, 0.2)
    rows.append(("seed _compute_entropy_top_mask", "tokens kept, ratio 0.2 (count of disagreements)",
                 "entropy_top_ratio=0.2", float((gate != seed_entropy_top_mask(entropy, response, 0.2)).sum())))
    return rows


def tinker_rows(student, teacher, ids, response) -> list[tuple[str, str, str, float]]:
    """tinker-cookbook incorporate_kl_penalty: A = discounted_future_sum(-coef * mask * (log p - log q))."""
    rows = []
    s_lp, t_lp = logps(student.detach(), teacher, ids)
    reward = torch.where(response, t_lp - s_lp, 0.0)  # coef = 1
    for gamma in (0.0, 0.5, 1.0):
        tinker = torch.zeros_like(reward)
        running = torch.zeros(reward.shape[0], dtype=reward.dtype)
        for t in reversed(range(reward.shape[1])):
            running = reward[:, t] + gamma * running
            tinker[:, t] = running
        got = per_token_loss("sampled_token", student, teacher, ids, response, gamma=gamma).signal
        rows.append(("tinker incorporate_kl_penalty", f"advantage on response tokens, kl_discount_factor={gamma}",
                     "sampled_token mask_mode=skip (default)", _max(got, tinker, response)))
        if gamma > 0:  # the discount is what carries response KL into masked positions
            rows.append(("tinker incorporate_kl_penalty", f"advantage on masked positions (holes, padding: its "
                         f"leak), factor={gamma}",
                         "ours is 0 there", _max(got, tinker, ~response)))
    teacher_kl = (s_lp - t_lp)[response].mean()
    value = reduce_loss(per_token_loss("sampled_token", student, teacher, ids, response).value, response)
    rows.append(("tinker incorporate_kl_penalty", "logged teacher_kl (scalar)", "value, token_mean",
                 _max(value, teacher_kl)))
    return rows


def verl_rows(student, teacher, ids, response) -> list[tuple[str, str, str, float]]:
    """verl distillation, loss_mode=k1 with use_policy_gradient: reward = -min(log p_S - log p_T, clamp)."""
    s_lp, t_lp = logps(student.detach(), teacher, ids)
    rows = []
    for clamp in (None, 10.0):
        k1 = s_lp - t_lp if clamp is None else (s_lp - t_lp).clamp_max(clamp)
        got = per_token_loss("sampled_token", student, teacher, ids, response, clip_log_ratio=clamp).signal
        what = f"advantage, loss_max_clamp={clamp}" + ("" if clamp is None else " (verl clamps one side: "
                                                                        "differs where r_t > 10)")
        rows.append(("verl k1 policy gradient", what, f"sampled_token gamma=0, clip_log_ratio={clamp}",
                     _max(got, -k1, response)))
    return rows


def measure() -> list[dict]:
    student, teacher, ids, response, special = inputs(1, scale=3.0)
    rows = trl_rows(student, teacher, response) + seed_rows(student, teacher, ids, response, special)
    rows += tinker_rows(student, teacher, ids, response) + verl_rows(student, teacher, ids, response)
    # rows that show a difference on purpose (a default that does not reproduce the peer, its leak, the
    # surrogate) say so in their quantity; every other row is a setting that reproduces the peer
    shown = ("not reproduced", "leak", "surrogate", "one side")
    return [{"peer": p, "quantity": q, "ours": o, "max_abs_diff": d, "reproduces": not any(w in q for w in shown)}
            for p, q, o, d in rows]


def markdown(rows: list[dict]) -> str:
    lines = ["| peer | quantity | OPD Lab setting | max abs diff |", "|---|---|---|---|"]
    lines += [f"| {r['peer']} | {r['quantity']} | {r['ours']} | {r['max_abs_diff']:.3g} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure()
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
