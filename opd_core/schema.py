"""The run-directory schema in one place: promised token columns and metric keys, and why a token is masked.

The writer (:mod:`opd_core.run_writer`) builds files to this schema; the readers and the validator
(:mod:`opd_core.runs`) check against it. Add names freely; never rename one (DESIGN.md).
"""

from __future__ import annotations

# Per-token record columns promised to users and outside tools (never rename; add freely).
TOKEN_COLUMNS: tuple[str, ...] = (
    "step", "sample", "pos", "token_id", "token", "is_special", "masked", "prefix_source",
    "student_logp", "teacher_logp", "log_ratio", "student_entropy", "teacher_entropy",
    "teacher_top1_prob", "teacher_rank", "in_teacher_topk", "in_student_topp",
    "teacher_topk_ids", "teacher_topk_logps", "student_topk_ids", "student_topk_logps",
    "signal", "token_loss", "drift",
)

# The token columns that place a record (which rollout of the step, which response position): a token file
# without them holds nothing a reader can show, so readers treat it as damaged.
RECORD_KEY_COLUMNS: tuple[str, ...] = ("sample", "pos")

# Token columns only a cross-tokenizer run writes (student and teacher tokenize differently):
# ``teacher_own_topk``, the teacher's own top-K as a list of {id, text, logp} in its own vocabulary (never
# mapped onto the student's) at the teacher position that scores the token (its first teacher piece).
CROSS_TOKENIZER_COLUMNS: tuple[str, ...] = ("teacher_own_topk",)

# Per-step metric names promised likewise (a step may omit the ones it did not measure, e.g. eval).
METRIC_COLUMNS: tuple[str, ...] = (
    "step", "time_s", "loss", "reverse_kl", "forward_kl", "grad_norm", "lr", "tokens",
    "tokens_per_s", "response_len", "signal_gini", "signal_top1pct_share",
    "teacher_entropy_student_prefix", "teacher_entropy_teacher_prefix",
    "special_token_signal_share", "eval_accuracy",
)

# Every metric opd_core.stats.step_metrics reduces from a step's tokens (a step omits the prefix source it
# did not see); docs/diagnostics.md defines each.
STEP_METRICS: tuple[str, ...] = (
    "reverse_kl", "forward_kl", "reverse_kl_sampled", "response_len", "signal_gini", "signal_top1pct_share",
    "special_token_signal_share", "negative_reward_share", "mean_log_ratio", "student_entropy",
    "student_support_mass", "not_in_topk_ratio", "topk_overlap", "overlap_mass_student", "overlap_mass_teacher",
    "teachability", "masked_share", "eos_rate", "teacher_entropy_student_prefix",
    "teacher_entropy_teacher_prefix",
)

# Cross-tokenizer alignment coverage per step (pairing.alignment_coverage): shares of real student tokens
# aligned 1:1, in multi-token spans, unaligned. Written by producers that know the alignment (the loop).
ALIGNMENT_METRICS: tuple[str, ...] = ("align_one_to_one_share", "align_multi_token_share", "align_unaligned_share")

# Keys every metrics.jsonl line of a training step carries (null when the trainer did not report them).
REQUIRED_METRICS: tuple[str, ...] = ("step", "time_s", "loss", "grad_norm", "lr", "tokens")

# Why a token carries no signal, in the order the ``masked_reason`` column names the first that applies.
# A producer adds a reason by adding a named boolean mask (see run_writer.masked_reason).
MASK_REASONS: tuple[str, ...] = ("padding", "special", "after_eos", "unaligned", "entropy_gate", "loss_mask")
