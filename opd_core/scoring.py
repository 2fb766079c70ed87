"""One forward pass of each model over prompt+response sequences: the logits that predict each response token.

Layout: every row is ``[left pad][prompt][response][right pad]`` with all prompts ending at the same
column, so the logits that predict the response are one slice of the model output (a view, no
copy), and ``logits_to_keep`` spares the prompt positions' logits entirely (a pre-hook on the head drops
the one position past the response, so the logits come out contiguous). The teacher is read in
its own tokenization and brought onto the student's positions and vocabulary (``TeacherScores``).
Statistics over those logits live in :mod:`opd_core.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from opd_core.objectives.chunked import token_logprobs


@dataclass
class SequenceBatch:
    """Padded ids for one model plus where the responses sit."""

    input_ids: torch.Tensor       # [B, P+T]
    attention_mask: torch.Tensor  # [B, P+T]
    position_ids: torch.Tensor    # [B, P+T]
    response_ids: torch.Tensor    # [B, T] (pad where the response is shorter)
    response_mask: torch.Tensor   # [B, T] bool, True on real response tokens
    prompt_width: int             # P


def build_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                device: torch.device) -> SequenceBatch:
    """Left-pad prompts to a common end column and right-pad responses after it."""
    B = len(prompts)
    P = max(len(p) for p in prompts)
    T = max(1, max(len(r) for r in responses))
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        ids[b, P - len(p):P] = torch.tensor(list(p), dtype=torch.long)
        attn[b, P - len(p):P] = 1
        if len(r):
            ids[b, P:P + len(r)] = torch.tensor(list(r), dtype=torch.long)
            attn[b, P:P + len(r)] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    resp_mask = attn[:, P:].bool()
    return SequenceBatch(ids.to(device), attn.to(device), pos.to(device), ids[:, P:].to(device),
                         resp_mask.to(device), P)


def response_logits(model: torch.nn.Module, batch: SequenceBatch, vocab_size: int | None = None) -> torch.Tensor:
    """Logits [B, T, V] predicting each response token (position t predicts response token t).

    ``vocab_size`` cuts an embedding table padded past the tokenizer (Qwen2.5: 152,064 rows for
    151,936 tokens): the padding rows are no tokens, and comparing two models must use the real
    vocabulary only.
    """
    T = batch.response_ids.shape[1]
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None

    def first_t(_module, args):  # the head sees the T positions that predict the response, not T + 1
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 3 and args[0].shape[1] == T + 1:
            return (args[0][:, :T], *args[1:])
        return None

    handle = head.register_forward_pre_hook(first_t) if isinstance(head, torch.nn.Module) else None
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, logits_to_keep=T + 1, use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    logits = out.logits[:, :T]
    if vocab_size is not None and logits.shape[-1] > vocab_size:
        logits = logits[..., :vocab_size]
    # Contiguous once here: every chunked pass over these logits reshapes them to [B*T, V], and a strided view
    # made each such reshape copy all of [B,T,V] (three copies a step, 21% of a V=32,768 step on CPU).
    return logits if logits.is_contiguous() else logits.contiguous()


@dataclass
class TeacherScores:
    """What the teacher says about the student's tokens, on the student's positions and vocabulary.

    ``kind`` says how each student token is aligned (``opd_core.pairing``): 1 one-to-one (the whole
    distribution in ``logits`` is the teacher's, mapped onto the student's vocabulary), 2 a multi-token
    span (``sampled_logp`` is exact by the chain rule; ``logits`` is not comparable), 0 unaligned
    (neither: ``sampled_logp`` holds 0.0 only to keep the tensors finite, and the token must be masked
    with reason ``unaligned``). ``logits`` rows that are not 1:1 are a flat placeholder, never data.
    """

    sampled_logp: torch.Tensor   # [B, T] log p_T of each student token (chain rule over its characters)
    logits: torch.Tensor         # [B, T, V_student] teacher logits in the student's vocabulary
    aligned: torch.Tensor        # [B, T] bool: 1:1, the full distribution above is meaningful here
    kind: torch.Tensor | None = None  # [B, T] int8: 0 unaligned, 1 one-to-one, 2 multi-token span
    # Cross-tokenizer pairs, when asked (logging steps): the teacher's own top-K in its own vocabulary at the
    # teacher position that scores each student token (its first piece), never mapped; ids -1 where none.
    own_topk_ids: torch.Tensor | None = None    # [B, T, K] int64 teacher ids
    own_topk_logps: torch.Tensor | None = None  # [B, T, K] float32 log p_T

    def unaligned(self, real: torch.Tensor, full_distribution: bool) -> torch.Tensor:
        """Real tokens with no teacher number the objective can use: reason ``unaligned``.

        A sampled-token objective can use multi-token spans (their log-prob is exact); an objective that
        compares distributions needs a 1:1 alignment.
        """
        usable = self.aligned if full_distribution or self.kind is None else self.kind > 0
        return real & ~usable

    def no_number_where_unaligned(self, record, real: torch.Tensor):
        """A per-token record (``stats.TokenStats``) with no teacher number where there is none (kind 0):
        teacher_logp and log_ratio NaN, never the 0.0 (p = 1) kept in ``sampled_logp``; such a token is not
        counted as outside the teacher's nucleus either (unknown is not evidence of drift)."""
        if self.kind is None:
            return record
        none = (self.kind == 0) & real
        nucleus = record.in_teacher_nucleus
        return replace(record, teacher_logp=record.teacher_logp.masked_fill(none, float("nan")),
                       log_ratio=record.log_ratio.masked_fill(none, float("nan")),
                       in_teacher_nucleus=None if nucleus is None else nucleus | none)


@torch.no_grad()
def score_teacher(pair, teacher: torch.nn.Module, views: Sequence, student_batch: SequenceBatch,
                  temperature: float = 1.0, own_top_k: int = 0) -> TeacherScores:
    """Run the teacher over its own reading of each response (see ``opd_core.pairing``).

    ``temperature`` divides the teacher's logits before anything is derived from them (the run's
    ``score_temperature``), so its log-probs are those of softmax(z / temperature) in its own vocabulary.
    ``own_top_k`` > 0 (logging steps of a cross-tokenizer pair) also keeps the teacher's unmapped top-K at the
    position that scores each student token (:func:`own_topk`), which the inspector shows in its own words.
    """
    device = student_batch.response_ids.device
    B, T = student_batch.response_ids.shape
    t_batch = build_batch([v.prompt_ids for v in views], [v.response_ids for v in views], pair.teacher_pad_id,
                          device)
    t_logits = response_logits(teacher, t_batch, len(pair.teacher))
    if temperature != 1.0:
        t_logits = t_logits / temperature
    real = student_batch.response_mask
    if pair.shared and t_logits.shape[1] == T:
        lp = token_logprobs(t_logits, student_batch.response_ids).float()
        kind = real.to(torch.int8)
        return TeacherScores(lp.masked_fill(~real, 0.0), t_logits, real.clone(), kind)
    t_lp = token_logprobs(t_logits, t_batch.response_ids).float().masked_fill(~t_batch.response_mask, 0.0)
    sampled = torch.zeros((B, T), device=device)
    kind = torch.zeros((B, T), dtype=torch.int8, device=device)
    rows_b, rows_i, rows_j = [], [], []
    for b, v in enumerate(views):
        kinds = torch.tensor(v.kinds or [1] * len(v.aligned_to), dtype=torch.int8, device=device)
        kind[b, : len(kinds)] = kinds
        owner = torch.tensor(v.owner, dtype=torch.long, device=device)
        keep = owner >= 0
        if keep.any():  # chain rule: the tokens tiling a student token's text sum to its log-prob
            keep &= kinds.to(torch.long)[owner.clamp(min=0)] > 0
            sampled[b].index_add_(0, owner[keep], t_lp[b, : len(v.owner)][keep])
        for i, j in enumerate(v.aligned_to):
            if j >= 0:
                rows_b.append(b)
                rows_i.append(i)
                rows_j.append(j)
    V = pair.student_vocab_size
    logits = torch.zeros((B, T, V), device=device, dtype=torch.float32)
    aligned = torch.zeros((B, T), dtype=torch.bool, device=device)
    if rows_b:
        index, valid = pair.projection_index()
        index_t = torch.as_tensor(index, device=device)
        valid_t = torch.as_tensor(valid, device=device)
        picked = t_logits[torch.tensor(rows_b, device=device), torch.tensor(rows_j, device=device)].float()
        proj = picked[:, index_t]
        floor = picked.min(-1, keepdim=True).values - 20.0
        proj = torch.where(valid_t[None, :], proj, floor)
        logits[torch.tensor(rows_b, device=device), torch.tensor(rows_i, device=device)] = proj
        aligned[torch.tensor(rows_b, device=device), torch.tensor(rows_i, device=device)] = True
    kind = kind.masked_fill(~real, 0)
    own_ids, own_logps = own_topk(t_logits, views, (B, T), own_top_k) if own_top_k > 0 else (None, None)
    return TeacherScores(sampled, logits, aligned & real, kind, own_ids, own_logps)


def own_topk(t_logits: torch.Tensor, views: Sequence, shape: tuple[int, int], k: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """The teacher's top-K (ids in its own vocabulary, log-probs) at the first teacher token credited to each
    student token: the position whose prediction scores that token's text (ids -1, log-probs NaN where none).

    For a student special token the teacher reads as literal text, this is the distribution the teacher
    really had there (its own end token, say), not the one mapped onto the student's vocabulary.
    """
    B, T = shape
    k = min(k, t_logits.shape[-1])
    ids = torch.full((B, T, k), -1, dtype=torch.long, device=t_logits.device)
    logps = torch.full((B, T, k), float("nan"), dtype=torch.float32, device=t_logits.device)
    rows_b, rows_i, rows_j = [], [], []
    for b, v in enumerate(views):
        seen: set[int] = set()
        for j, i in enumerate(v.owner):
            if 0 <= i < T and i not in seen and j < t_logits.shape[1]:
                seen.add(i)
                rows_b.append(b)
                rows_i.append(i)
                rows_j.append(j)
    if rows_b:
        bi = torch.tensor(rows_b, device=t_logits.device)
        ii = torch.tensor(rows_i, device=t_logits.device)
        picked = t_logits[bi, torch.tensor(rows_j, device=t_logits.device)].float()
        top, idx = picked.log_softmax(-1).topk(k, dim=-1)
        ids[bi, ii], logps[bi, ii] = idx, top
    return ids, logps
