"""Token gates applied to the mask before any objective: which supervised tokens a step trains on."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# n * ratio is floored after adding this, so that 10 * 0.3 (= 3.0000000000000004 or 2.9999999 depending on
# the float) keeps 3 tokens, as the ratio means.
_FLOOR_SLACK = 1e-6


def entropy_gate(student_entropy: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """Keep only each sample's top ``ratio`` highest-entropy supervised tokens (the seed's ``entropy_top_ratio``).

    Why: the seed recipe trains on the tokens where the student is uncertain (the forks of a reasoning
    path) and skips the confident majority, whose log-ratio is near zero anyway.

    Per row b with n_b supervised tokens (``mask`` True): keep = max(1, floor(n_b * ratio)); the threshold is
    the keep-th largest entropy among them; a supervised token is kept when its entropy >= that threshold
    (ties at the threshold are all kept, so a row can keep a few more than ``keep``). A row with no
    supervised token keeps none. ``ratio`` in (0, 1]; 1 returns ``mask`` unchanged. Returns a new bool
    mask [B,T], a subset of ``mask``. NaN entropies are never kept.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) \
            or not 0.0 < ratio <= 1.0:
        raise ValueError(f"entropy_top_ratio must be a number in (0, 1] (1 = keep every token), got {ratio!r}")
    if student_entropy.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"student_entropy {tuple(student_entropy.shape)} and mask {tuple(mask.shape)} must both "
                         "be [B, T]")
    mask = mask.bool()
    if ratio == 1.0 or mask.shape[-1] == 0:
        return mask.clone()
    entropy = student_entropy.detach().to(torch.float64)
    valid = mask & ~torch.isnan(entropy)
    n_valid = valid.sum(-1)
    keep = torch.floor(n_valid.to(torch.float64) * ratio + _FLOOR_SLACK).long().clamp_min(1)
    ranked = torch.where(valid, entropy, torch.full_like(entropy, -math.inf)).sort(-1, descending=True).values
    index = (keep.clamp_max(entropy.shape[-1]) - 1)[:, None]
    threshold = ranked.gather(-1, index)
    return valid & (entropy >= threshold)
