"""One forward pass of each model over prompt+response sequences: the logits that predict each response token.

Layout: every row is ``[left pad][prompt][response][right pad]`` with all prompts ending at the same
column, so the logits that predict the response are one slice of the model output (a view, no
copy), and ``logits_to_keep`` spares the prompt positions' logits entirely. The teacher is read in
its own tokenization and brought onto the student's positions and vocabulary (``TeacherScores``).
Statistics over those logits live in :mod:`opd_core.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :T]
    if vocab_size is not None and logits.shape[-1] > vocab_size:
        logits = logits[..., :vocab_size]
    return logits


@dataclass
class TeacherScores:
    """What the teacher says about the student's tokens, on the student's positions and vocabulary."""

    sampled_logp: torch.Tensor   # [B, T] log p_T of each student token (chain rule over its characters)
    logits: torch.Tensor         # [B, T, V_student] teacher logits in the student's vocabulary
    aligned: torch.Tensor        # [B, T] bool: the full distribution above is meaningful here


@torch.no_grad()
def score_teacher(pair, teacher: torch.nn.Module, views: Sequence, student_batch: SequenceBatch,
                  temperature: float = 1.0) -> TeacherScores:
    """Run the teacher over its own reading of each response (see ``opd_core.pairing``).

    ``temperature`` divides the teacher's logits before anything is derived from them (the run's
    ``score_temperature``), so its log-probs are those of softmax(z / temperature) in its own vocabulary.
    """
    device = student_batch.response_ids.device
    B, T = student_batch.response_ids.shape
    t_batch = build_batch([v.prompt_ids for v in views], [v.response_ids for v in views], pair.teacher_pad_id,
                          device)
    t_logits = response_logits(teacher, t_batch, len(pair.teacher))
    if temperature != 1.0:
        t_logits = t_logits / temperature
    if pair.shared and t_logits.shape[1] == T:
        lp = token_logprobs(t_logits, student_batch.response_ids).float()
        return TeacherScores(lp.masked_fill(~student_batch.response_mask, 0.0), t_logits,
                             student_batch.response_mask.clone())
    t_lp = token_logprobs(t_logits, t_batch.response_ids).float().masked_fill(~t_batch.response_mask, 0.0)
    sampled = torch.zeros((B, T), device=device)
    aligned = torch.zeros((B, T), dtype=torch.bool, device=device)
    rows_b, rows_i, rows_j = [], [], []
    for b, v in enumerate(views):
        owner = torch.tensor(v.owner, dtype=torch.long, device=device)
        keep = owner >= 0
        if keep.any():
            sampled[b].index_add_(0, owner[keep], t_lp[b, : len(v.owner)][keep])
        for i, j in enumerate(v.aligned_to):
            if j >= 0:
                rows_b.append(b)
                rows_i.append(i)
                rows_j.append(j)
    V = pair.student_vocab_size
    logits = torch.zeros((B, T, V), device=device, dtype=torch.float32)
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
    return TeacherScores(sampled, logits, aligned & student_batch.response_mask)
