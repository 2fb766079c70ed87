"""The per-token record of a batch (:class:`TokenStats`): from both models' logits in one fused pass, or from
a sparse teacher view.

One fused chunked pass over the student's and the teacher's logits ([B,T,V], the teacher already in
the student's vocabulary) yields a :class:`TokenStats` record of [B,T] tensors (top-K lists [B,T,K]).
The loop runs the cheap subset on every step (:func:`step_stats`) and the full record on logging steps
(:func:`dense_token_stats`); a trainer that only has sampled log-probs and top-K lists (the SDK) gets
the same record, with what it cannot know left as ``None``, from :func:`sparse_token_stats`. The
step's metrics are reductions of the record (:mod:`opd_core.stats.reduce`), so a number means the same
in our loop, the SDK, the TRL bridge, re-scoring and the dashboard. Definitions of the less obvious columns:

* ``in_teacher_topk``: the sampled token is among the teacher's top-K ids (K = the support k).
* ``student_support_mass``: Σ p_S over the teacher's top-K (the student's full-vocabulary mass there).
* ``topk_overlap``: the share of the teacher's top-K ids that are also in the student's top-K.
* ``overlap_mass_student`` / ``overlap_mass_teacher``: Σ p_S and Σ p_T over the ids in both top-K sets.
* ``teachability``: the teacher's margin over the student on the student's top-K,
  Σ_{v ∈ top-K_S} p̃_S(v) (log p_T(v) − log p_S(v)), p̃_S = p_S renormalised over its top-K. Positive
  where the teacher would raise the student's own likely continuations ("Prefix Teach, Suffix Fade").
* ``in_student_topp`` / ``in_teacher_nucleus``: the probability of the tokens strictly more likely
  than the sampled one is below top_p (exactly the set nucleus sampling keeps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from opd_core.objectives.chunked import auto_chunk_tokens


def _default_support_k() -> int:
    from opd_core.objectives import get_objective

    return int(get_objective("topk_support").params["k"])


DEFAULT_SUPPORT_K: int = _default_support_k()
"""K of the top-K statistics when the objective has none: the ``k`` default of ``topk_support``."""


@dataclass
class TokenStats:
    """Per-token statistics of one batch: [B,T] tensors (top-K lists [B,T,K]); None = not known."""

    student_logp: Tensor
    teacher_logp: Tensor
    log_ratio: Tensor
    student_entropy: Tensor | None = None
    teacher_entropy: Tensor | None = None
    teacher_top1_prob: Tensor | None = None
    teacher_rank: Tensor | None = None          # int64; exact from logits (0 where unaligned)
    teacher_rank_exact: bool = True              # False: from top-K lists, K+1 outside them (a lower bound)
    in_teacher_topk: Tensor | None = None
    in_student_topp: Tensor | None = None
    in_teacher_nucleus: Tensor | None = None
    aligned: Tensor | None = None
    student_support_mass: Tensor | None = None
    topk_overlap: Tensor | None = None
    overlap_mass_student: Tensor | None = None
    overlap_mass_teacher: Tensor | None = None
    teachability: Tensor | None = None
    reverse_kl: Tensor | None = None
    forward_kl: Tensor | None = None
    signal: Tensor | None = None
    token_loss: Tensor | None = None
    token_value: Tensor | None = None            # the objective's per-token value (what the logged loss averages)
    teacher_topk_ids: Tensor | None = None
    teacher_topk_logps: Tensor | None = None
    student_topk_ids: Tensor | None = None
    student_topk_logps: Tensor | None = None
    # Cross-tokenizer runs only: the teacher's own top-K, in its own vocabulary (never mapped onto the
    # student's), at the teacher position that scores the token (``scoring.own_topk``); ids -1 where none.
    teacher_own_topk_ids: Tensor | None = None
    teacher_own_topk_logps: Tensor | None = None

    def rows(self, index: Sequence[int] | Tensor) -> TokenStats:
        """The same record for a subset of the batch rows (the responses that get logged)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                idx = torch.as_tensor(index, dtype=torch.long, device=v.device)
                v = v.index_select(0, idx)
            out[f.name] = v
        return TokenStats(**out)

    def to(self, device: str | torch.device) -> TokenStats:
        """A copy on another device (the host, for a background writer)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})


# ----------------------------------------------------------------------------- the fused pass

_CHEAP = ("student_logp", "student_entropy", "teacher_entropy", "reverse_kl", "forward_kl")
_SUPPORT = ("student_support_mass", "in_teacher_topk", "topk_overlap", "overlap_mass_student",
            "overlap_mass_teacher", "teachability")
_FULL = ("teacher_top1_prob", "teacher_rank", "in_student_topp", "in_teacher_nucleus")


def _topk_support_stats(ls: Tensor, lt: Tensor, ps: Tensor, pt: Tensor, s_idx: Tensor, t_idx: Tensor,
                        y: Tensor, k: int) -> dict[str, Tensor]:
    """The top-K-set statistics of one chunk (see the module docstring for each definition).

    The two top-K sets are boolean masks over the vocabulary, so every statistic is one elementwise pass.
    """
    in_t = torch.zeros_like(ls, dtype=torch.bool).scatter_(-1, t_idx[:, :k], True)
    in_s = torch.zeros_like(ls, dtype=torch.bool).scatter_(-1, s_idx[:, :k], True)
    both = in_t & in_s
    ps_s = ps * in_s                                   # p_S on its own top-K; renormalised below (p~_S)
    margin = torch.where(in_s, lt - ls, 0.0)
    return {
        "student_support_mass": (ps * in_t).sum(-1),
        "in_teacher_topk": in_t.gather(-1, y).squeeze(-1),
        "topk_overlap": both.sum(-1) / k,
        "overlap_mass_student": (ps * both).sum(-1),
        "overlap_mass_teacher": (pt * both).sum(-1),
        "teachability": (ps_s * margin).sum(-1) / ps_s.sum(-1),
    }


class _HeadRows:
    """The student's logits a chunk of tokens at a time from its final hidden states and LM head
    (``student_head.HeadInputs``), so a fast-path step never holds its [B,T,V] logits."""

    def __init__(self, head) -> None:
        B, T, H = head.hidden.shape
        self.shape = (B, T, head.weight.shape[0])
        self.dtype = torch.promote_types(head.hidden.dtype, torch.float32)
        self.device = head.hidden.device
        self.hidden = head.hidden.detach().reshape(B * T, H).to(self.dtype)
        self.weight = head.weight.detach().to(self.dtype)
        self.bias = None if head.bias is None else head.bias.detach().to(self.dtype)

    def __getitem__(self, rows: slice) -> Tensor:
        x = self.hidden[rows] @ self.weight.T
        return x if self.bias is None else x + self.bias


def _cheap_chunk(xs: Tensor, ls: Tensor, lt: Tensor, ps: Tensor, pt: Tensor, y: Tensor) -> dict[str, Tensor]:
    """The every-step statistics (``_CHEAP``) of one chunk from the student's logits, both log-softmaxes and
    both distributions: defined here once, for the fused pass below and for ``StepStatsChunks``."""
    diff = ls - lt
    return {
        # log p_S(y) in the arithmetic of objectives.chunked.token_logprobs (x_y - logsumexp x): equal models
        # then give an exactly-zero log-ratio against a teacher scored by token_logprobs.
        "student_logp": (xs.gather(-1, y) - xs.logsumexp(-1, keepdim=True)).squeeze(-1).float(),
        # -Σ p log p with 0·log 0 = 0 (the NaN of 0·-inf); ~10x cheaper on CPU than torch.special.entr
        "student_entropy": -(ps * ls).nan_to_num(0.0).sum(-1),
        "teacher_entropy": -(pt * lt).nan_to_num(0.0).sum(-1),
        "reverse_kl": (ps * diff).sum(-1),
        "forward_kl": -(pt * diff).sum(-1),
    }


class StepStatsChunks:
    """The every-step record filled a chunk of tokens at a time by a pass that already holds both models'
    log-softmaxes (the fused LM head + KL of a fast-path step), so the step makes no second pass over V.

    Call it with (flat row indices, student logits, both log-softmaxes, both distributions) per chunk, for
    every row of the batch; then ``record`` gives what ``step_stats`` gives for the same tokens.
    """

    def __init__(self, ids: Tensor) -> None:
        self.shape = ids.shape
        self.ids = ids.reshape(-1, 1).long()
        self.out = {name: torch.full((self.ids.shape[0],), float("nan"), device=ids.device) for name in _CHEAP}

    @torch.no_grad()
    def __call__(self, rows: Tensor, xs: Tensor, ls: Tensor, lt: Tensor, ps: Tensor, pt: Tensor) -> None:
        for name, value in _cheap_chunk(xs, ls, lt, ps, pt, self.ids[rows]).items():
            self.out[name][rows] = value.float()

    def record(self, teacher_logp: Tensor, *, aligned: Tensor | None = None,
               signal: Tensor | None = None) -> TokenStats:
        out = _teacher_side({k: v.reshape(self.shape) for k, v in self.out.items()}, aligned)
        return _step_record(out, teacher_logp.float(), aligned, signal)


@torch.no_grad()
def _fused_pass(student_logits, teacher_logits: Tensor, ids: Tensor, *, support_k: int, log_k: int,
                full: bool, rollout_top_p: float = 1.0, rollout_temperature: float = 1.0,
                nucleus_p: float = 0.9, chunk_tokens: int | None = None, teacher_topk: int = 0) -> dict[str, Tensor]:
    """One chunked pass over both [B,T,V] logit tensors (the student's as a tensor or a ``_HeadRows``);
    returns the [B,T](,K) statistics by name. ``teacher_topk`` (without ``full``) adds the teacher's sorted
    top-K ids and log-probs from the same normalisation (what ``topk_support`` trains on)."""
    B, T, V = student_logits.shape
    if tuple(teacher_logits.shape) != tuple(student_logits.shape):
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same [B, T, V] shape; map the teacher "
                         "to the student's vocabulary first")
    k = min(support_k, V)
    kk = min(max(support_k, log_k), V) if full else k
    tk = 0 if full else min(teacher_topk, V)
    n = B * T
    dev = student_logits.device
    chunk = auto_chunk_tokens(V)  # the chunking of token_logprobs: equal models give an exactly-zero ratio
    on_head = isinstance(student_logits, _HeadRows)
    s_flat, t_flat = (student_logits if on_head else student_logits.reshape(n, V)), teacher_logits.reshape(n, V)
    y_all = ids.reshape(n, 1).long()
    names = list(_CHEAP) + (list(_SUPPORT) if k else []) + (list(_FULL) if full else [])
    bools = {"in_teacher_topk", "in_student_topp", "in_teacher_nucleus"}
    out = {name: torch.empty(n, device=dev, dtype=torch.bool if name in bools else
                             (torch.long if name == "teacher_rank" else torch.float32)) for name in names}
    if full:
        for side in ("teacher", "student"):
            out[f"{side}_topk_ids"] = torch.empty(n, kk, dtype=torch.long, device=dev)
            out[f"{side}_topk_logps"] = torch.empty(n, kk, device=dev)
    if tk:
        out["teacher_topk_ids"] = torch.empty(n, tk, dtype=torch.long, device=dev)
        out["teacher_topk_logps"] = torch.empty(n, tk, device=dev)
    work = torch.promote_types(student_logits.dtype, torch.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        xs, xt, y = s_flat[a:b].to(work), t_flat[a:b].float(), y_all[a:b]
        ls, lt = F.log_softmax(xs, -1), F.log_softmax(xt, -1)  # fused kernels: ~6x cheaper than x - lse on CPU
        ps, pt = F.softmax(xs, -1), F.softmax(xt, -1)
        for name, value in _cheap_chunk(xs, ls, lt, ps, pt, y).items():
            out[name][a:b] = value
        if tk:
            out["teacher_topk_logps"][a:b], out["teacher_topk_ids"][a:b] = lt.topk(tk, dim=-1)
        if not (k or full):
            continue
        t_top, t_idx = lt.topk(kk, dim=-1, sorted=full)  # the sets alone need no order (half the cost)
        s_top, s_idx = ls.topk(kk, dim=-1, sorted=full)
        if k:
            for name, value in _topk_support_stats(ls, lt, ps, pt, s_idx, t_idx, y, k).items():
                out[name][a:b] = value
        if full:
            out["teacher_top1_prob"][a:b] = t_top[:, 0].exp()
            out["teacher_rank"][a:b] = (xt > xt.gather(-1, y)).sum(-1) + 1
            pt_y = pt.gather(-1, y)
            out["in_teacher_nucleus"][a:b] = (pt * (pt > pt_y)).sum(-1) < nucleus_p
            if rollout_top_p < 1.0 and rollout_temperature > 0:
                pr = ps if rollout_temperature == 1.0 else torch.softmax(xs / rollout_temperature, -1)
                pr_y = pr.gather(-1, y)
                out["in_student_topp"][a:b] = (pr * (pr > pr_y)).sum(-1) < rollout_top_p
            else:
                out["in_student_topp"][a:b] = True
            out["teacher_topk_ids"][a:b], out["teacher_topk_logps"][a:b] = t_idx, t_top
            out["student_topk_ids"][a:b], out["student_topk_logps"][a:b] = s_idx, s_top.float()
        del xs, xt, ls, lt, ps, pt
    return {name: v.reshape(B, T, *v.shape[1:]) for name, v in out.items()}


def _teacher_side(out: dict[str, Tensor], aligned: Tensor | None) -> dict[str, Tensor]:
    """Teacher-distribution statistics are unknown (NaN / False / 0) where the tokenizations disagree."""
    if aligned is None:
        return out
    teacher_side = ("teacher_entropy", "reverse_kl", "forward_kl", "teacher_top1_prob", "student_support_mass",
                    "topk_overlap", "overlap_mass_student", "overlap_mass_teacher", "teachability")
    for name in teacher_side:
        if name in out:
            out[name] = out[name].masked_fill(~aligned, float("nan"))
    if "in_teacher_topk" in out:
        out["in_teacher_topk"] = out["in_teacher_topk"] & aligned
    if "teacher_rank" in out:
        out["teacher_rank"] = out["teacher_rank"].masked_fill(~aligned, 0)
    return out


def step_stats(student_logits, teacher_logits: Tensor, ids: Tensor, teacher_logp: Tensor | None = None,
               *, support_k: int = 0, aligned: Tensor | None = None, signal: Tensor | None = None,
               teacher_topk: int = 0) -> TokenStats:
    """The every-step subset of the record in one fused pass: log-probs, entropies, KLs and (with
    ``support_k``) the top-K set statistics. ``teacher_logp`` defaults to the teacher logits' own;
    ``signal`` (the objective's per-token signal) to the sampled log-ratio.

    ``student_logits`` is [B,T,V], or the student's hidden states and head (``student_head.HeadInputs``,
    a fast-path step): its logits are then made a chunk at a time and never held whole. ``teacher_topk``
    also returns the teacher's sorted top-K (``teacher_topk_ids`` / ``teacher_topk_logps``, every position)
    from the same pass, so a step normalises the teacher's logits once for its metrics and its objective.
    """
    student = student_logits.detach() if isinstance(student_logits, Tensor) else _HeadRows(student_logits)
    out = _teacher_side(_fused_pass(student, teacher_logits.detach(), ids, support_k=support_k,
                                    log_k=0, full=False, teacher_topk=teacher_topk), aligned)
    t_lp = _own_logp(teacher_logits, ids) if teacher_logp is None else teacher_logp.float()
    return _step_record(out, t_lp, aligned, signal)


def _step_record(out: dict[str, Tensor], t_lp: Tensor, aligned: Tensor | None, signal: Tensor | None) -> TokenStats:
    log_ratio = t_lp - out["student_logp"]
    return TokenStats(teacher_logp=t_lp, log_ratio=log_ratio, aligned=aligned,
                      signal=log_ratio if signal is None else signal.detach().float(), **out)


def dense_token_stats(student_logits: Tensor, teacher_logits: Tensor, ids: Tensor,
                      teacher_logp: Tensor | None = None, *, aligned: Tensor | None = None,
                      support_k: int = DEFAULT_SUPPORT_K, log_top_k: int = 8, rollout_top_p: float = 1.0,
                      rollout_temperature: float = 1.0, nucleus_p: float = 0.9, signal: Tensor | None = None,
                      token_loss: Tensor | None = None, token_value: Tensor | None = None) -> TokenStats:
    """The full per-token record from both models' logits (logging steps): one fused chunked pass.

    ``teacher_logp`` is the teacher's log-prob of each sampled token (for a cross-tokenizer pair the
    chain rule over its characters, ``scoring.TeacherScores.sampled_logp``); ``aligned`` marks where
    ``teacher_logits`` is a meaningful distribution. Top-K lists keep ``log_top_k`` entries; the
    top-K statistics use ``support_k``. ``signal`` defaults to the sampled log-ratio and ``token_loss``
    to the γ=0 sampled-token loss −signal·log p_S. ``token_value`` is the objective's per-token value
    (``ObjectiveOutput.value``), whose reduction is the logged ``loss``; None when not known.
    """
    out = _teacher_side(_fused_pass(student_logits.detach(), teacher_logits.detach(), ids, support_k=support_k,
                                    log_k=log_top_k, full=True, rollout_top_p=rollout_top_p,
                                    rollout_temperature=rollout_temperature, nucleus_p=nucleus_p), aligned)
    t_lp = _own_logp(teacher_logits, ids) if teacher_logp is None else teacher_logp.float()
    if aligned is not None:  # judge an unaligned token by its own (chain-rule) probability
        own = t_lp >= math.log(1.0 - nucleus_p) if nucleus_p < 1 else torch.ones_like(aligned)
        out["in_teacher_nucleus"] = torch.where(aligned, out["in_teacher_nucleus"], own)
    L = min(log_top_k, out["teacher_topk_ids"].shape[-1])
    for name in ("teacher_topk_ids", "teacher_topk_logps", "student_topk_ids", "student_topk_logps"):
        out[name] = out[name][..., :L]
    log_ratio = t_lp - out["student_logp"]
    signal, token_loss = default_signal(log_ratio, out["student_logp"], signal, token_loss)
    value = None if token_value is None else token_value.detach().float()
    return TokenStats(teacher_logp=t_lp, log_ratio=log_ratio, aligned=aligned, signal=signal,
                      token_loss=token_loss, token_value=value, **out)


def _own_logp(logits: Tensor, ids: Tensor) -> Tensor:
    from opd_core.objectives.chunked import token_logprobs

    return token_logprobs(logits.detach(), ids).float()


def default_signal(log_ratio: Tensor, student_logp: Tensor, signal: Tensor | None,
                   token_loss: Tensor | None) -> tuple[Tensor, Tensor]:
    """What a token contributes when the trainer did not say: the sampled log-ratio, and the γ=0
    sampled-token loss −signal·log p_S (NaN when only the signal was given: its loss is unknown)."""
    if token_loss is None:
        token_loss = -log_ratio * student_logp if signal is None else torch.full_like(log_ratio, float("nan"))
    return (log_ratio if signal is None else signal.detach().float()), token_loss.detach().float()


def nucleus_from_topk(ids: Tensor, topk_ids: Tensor, topk_logps: Tensor, top_p: float) -> Tensor:
    """Nucleus membership judged from a model's top-K list (True when the list cannot tell).

    A token is inside when the mass ranked strictly above it is below ``top_p``; outside the list all K
    listed tokens rank above it. Equal to the exact test whenever the list reaches the token.
    """
    if top_p >= 1.0 or topk_ids.shape[-1] == 0:
        return torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    probs = topk_logps.double().exp()
    before = probs.cumsum(-1) - probs
    hit = topk_ids == ids[..., None]
    found = hit.any(-1)
    mass_above = torch.where(found, (before * hit).sum(-1), probs.sum(-1))
    return mass_above < top_p


def sparse_token_stats(token_ids: Tensor, student_logp: Tensor, teacher_logp: Tensor, *,
                       student_entropy: Tensor | None = None, teacher_entropy: Tensor | None = None,
                       teacher_topk_ids: Tensor | None = None, teacher_topk_logps: Tensor | None = None,
                       student_topk_ids: Tensor | None = None, student_topk_logps: Tensor | None = None,
                       teacher_rank: Tensor | None = None, student_support_mass: Tensor | None = None,
                       signal: Tensor | None = None, token_loss: Tensor | None = None,
                       rollout_top_p: float = 1.0, nucleus_p: float = 0.9) -> TokenStats:
    """The record from what a trainer holds without full logits: sampled log-probs and top-K lists.

    Statistics the inputs cannot determine stay None (written as null/NaN, never invented). With the
    teacher's top-K, ``teacher_rank`` is the 1-based position in it and K+1 outside (a lower bound).
    """
    ids = token_ids.long()
    s_lp, t_lp = student_logp.float(), teacher_logp.float()
    log_ratio = t_lp - s_lp
    sig, loss = default_signal(log_ratio, s_lp, signal, token_loss)
    rec = TokenStats(student_logp=s_lp, teacher_logp=t_lp, log_ratio=log_ratio, signal=sig, token_loss=loss,
                     student_entropy=None if student_entropy is None else student_entropy.float(),
                     teacher_entropy=None if teacher_entropy is None else teacher_entropy.float(),
                     student_support_mass=None if student_support_mass is None else student_support_mass.float(),
                     teacher_rank=None if teacher_rank is None else teacher_rank.long())
    rec.in_student_topp = (torch.ones(ids.shape, dtype=torch.bool) if student_topk_ids is None else
                           nucleus_from_topk(ids, student_topk_ids.long(), student_topk_logps, rollout_top_p))
    if student_topk_ids is not None:
        rec.student_topk_ids, rec.student_topk_logps = student_topk_ids.long(), student_topk_logps.float()
    if teacher_topk_ids is None:
        return rec
    t_ids, t_lps = teacher_topk_ids.long(), teacher_topk_logps.float()
    rec.teacher_topk_ids, rec.teacher_topk_logps = t_ids, t_lps
    K = t_ids.shape[-1]
    hit = t_ids == ids[..., None]
    rec.in_teacher_topk = hit.any(-1)
    rec.teacher_top1_prob = t_lps[..., 0].exp() if K else torch.full(ids.shape, float("nan"))
    if rec.teacher_rank is None:
        rec.teacher_rank = torch.where(rec.in_teacher_topk, hit.int().argmax(-1) + 1, K + 1).long()
        rec.teacher_rank_exact = False
    rec.in_teacher_nucleus = nucleus_from_topk(ids, t_ids, t_lps, nucleus_p)
    if student_topk_ids is not None and K:
        rec.topk_overlap, rec.overlap_mass_student, rec.overlap_mass_teacher = topk_list_overlap(
            rec.student_topk_ids, rec.student_topk_logps, t_ids, t_lps)
    return rec


def topk_list_overlap(student_ids: Tensor, student_logps: Tensor, teacher_ids: Tensor,
                      teacher_logps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """``topk_overlap``, ``overlap_mass_student`` and ``overlap_mass_teacher`` from the two top-K lists
    ([..., K] each): the definitions of the fused pass, for a producer or reader holding only the lists."""
    same = student_ids[..., :, None] == teacher_ids[..., None, :]
    overlap = same.any(-2).float().sum(-1) / max(teacher_ids.shape[-1], 1)
    mass_s = (student_logps.float().exp() * same.any(-1)).sum(-1)
    mass_t = None if teacher_logps is None else (teacher_logps.float().exp() * same.any(-2)).sum(-1)
    return overlap, mass_s, mass_t
