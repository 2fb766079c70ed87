"""Synthetic run directories with planted failure modes, for tests and page-speed benchmarks.

The real engine writes runs from real models; this writes runs of any size in seconds, with a known
answer planted in them (an EOS the teacher never uses, a supervision signal concentrated on a few
tokens, teacher entropy that rises with drift, a support collapse), so diagnostics and pages can be
tested against the truth and timed on a million tokens without training anything.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from opd_core import runs

DIGITS = list("0123456789")
FORMAT = ["+", "=", ";", "c", " "]
EOS_STUDENT = "<|im_end|>"


def _sample_tokens(rng: np.random.Generator, n: int) -> list[str]:
    pool = DIGITS + FORMAT
    return list(rng.choice(pool, size=n))


def synthetic_token_table(
    step: int,
    *,
    samples: int = 8,
    length: int = 24,
    top_k: int = 8,
    vocab: int = 64,
    eos_mismatch: bool = True,
    collapse: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Token records of one step for ``samples`` responses of ``length`` tokens (the last is EOS).

    ``eos_mismatch`` plants the paper's ``<|im_end|>`` case: teacher log-prob about -58 at EOS.
    ``collapse`` in [0, 1] lowers the student's mass inside the teacher's top-K as it grows.
    """
    rng = np.random.default_rng(seed * 100_003 + step)
    n = samples * length
    sample = np.repeat(np.arange(samples), length)
    pos = np.tile(np.arange(length), samples)
    is_eos = pos == length - 1
    tokens = np.array(_sample_tokens(rng, n), dtype=object)
    tokens[is_eos] = EOS_STUDENT
    token_id = rng.integers(4, vocab, size=n)
    token_id[is_eos] = 2
    # Drift: a per-sample point after which the prefix is off the teacher's support.
    first_off = rng.integers(3, length, size=samples)
    drift_steps = np.maximum(0, pos - first_off[sample])
    student_logp = -np.abs(rng.normal(0.2, 0.3, size=n))
    teacher_logp = student_logp + rng.normal(-0.05, 0.05, size=n)
    # A few tokens carry large ratios (imbalance); drifted prefixes make the teacher flat.
    spikes = rng.random(n) < 0.03
    teacher_logp[spikes] -= rng.uniform(3, 8, size=spikes.sum())
    teacher_entropy = 0.2 + 0.15 * drift_steps + rng.normal(0, 0.05, size=n).clip(-0.1, 0.1)
    if eos_mismatch:
        student_logp[is_eos] = -0.004
        teacher_logp[is_eos] = -58.71
    log_ratio = teacher_logp - student_logp
    teacher_rank = np.where(spikes, rng.integers(2, 30, size=n), 1)
    teacher_rank[is_eos & eos_mismatch] = vocab - 1
    topk_ids = rng.integers(0, vocab, size=(n, top_k))
    topk_ids[:, 0] = token_id
    topk_lp = np.sort(-np.abs(rng.normal(0, 2, size=(n, top_k))), axis=1)[:, ::-1]
    support_mass = np.clip(0.95 - collapse * 0.8 + rng.normal(0, 0.02, size=n), 0.01, 1.0)
    df = pd.DataFrame({
        "step": np.full(n, step, dtype=np.int64),
        "sample": sample.astype(np.int64),
        "pos": pos.astype(np.int64),
        "token_id": token_id.astype(np.int64),
        "token": tokens.astype(str),
        "is_special": is_eos,
        "masked": np.zeros(n, dtype=bool),
        "prefix_source": np.full(n, "student"),
        "student_logp": student_logp.astype(np.float32),
        "teacher_logp": teacher_logp.astype(np.float32),
        "log_ratio": log_ratio.astype(np.float32),
        "student_entropy": np.abs(rng.normal(0.5, 0.2, size=n)).astype(np.float32),
        "teacher_entropy": teacher_entropy.astype(np.float32),
        "teacher_top1_prob": np.exp(-teacher_entropy).astype(np.float32),
        "teacher_rank": teacher_rank.astype(np.int64),
        "in_teacher_topk": teacher_rank <= top_k,
        "in_student_topp": rng.random(n) < 0.97,
        "teacher_topk_ids": list(topk_ids.astype(np.int64)),
        "teacher_topk_logps": list(topk_lp.astype(np.float32)),
        "student_topk_ids": list(topk_ids.astype(np.int64)),
        "student_topk_logps": list(topk_lp.astype(np.float32)),
        "signal": log_ratio.astype(np.float32),
        "token_loss": (-log_ratio * student_logp).astype(np.float32),
        "drift": np.cumsum(np.abs(log_ratio).reshape(samples, length), axis=1).ravel().astype(np.float32),
        "tokens_since_off_support": drift_steps.astype(np.int64),
        "prefix_wrong": drift_steps > 0,
        "student_support_mass": support_mass.astype(np.float32),
        "topk_overlap": np.clip(support_mass + rng.normal(0, 0.05, size=n), 0, 1).astype(np.float32),
        "is_eos": is_eos,
        "teacher_token": np.where(is_eos & eos_mismatch, "<", tokens).astype(str),
        "reference_only": np.zeros(n, dtype=bool),
        "response_text": np.full(n, ""),
        "prompt": np.array([f"{10 + s}+{20 + s}" for s in sample]),
        "correct": (first_off[sample] > length // 2),
        "reward": (first_off[sample] > length // 2).astype(np.float32),
    })
    return df


def write_synthetic_run(
    run_dir: str | Path,
    *,
    steps: int = 20,
    log_every: int = 5,
    samples: int = 8,
    length: int = 24,
    objective: str = "sampled_token",
    eos_mismatch: bool = True,
    collapse_by_end: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write a complete, contract-valid run directory with synthetic metrics and token records."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"student": "synthetic:student", "teacher": "synthetic:teacher",
              "objective": objective, "steps": steps, "seed": seed, "synthetic": True}
    runs.write_config(run_dir, config)
    start = time.time()
    runs.write_status(run_dir, state="running", step=0, total_steps=steps, started_at=start)
    rng = np.random.default_rng(seed)
    with runs.MetricsWriter(run_dir) as mw:
        for step in range(steps):
            frac = step / max(1, steps - 1)
            if step % log_every == 0 or step == steps - 1:
                table = synthetic_token_table(step, samples=samples, length=length, eos_mismatch=eos_mismatch,
                                              collapse=collapse_by_end * frac, seed=seed)
                runs.write_token_records(run_dir, step, table)
            mw.append({
                "step": step, "time_s": 0.1 * (step + 1), "loss": float(1.0 - 0.5 * frac + rng.normal(0, 0.02)),
                "reverse_kl": float(0.8 - 0.4 * frac), "forward_kl": float(0.9 - 0.4 * frac),
                "grad_norm": float(1.0 + rng.random()), "lr": 1e-3, "tokens": samples * length,
                "tokens_per_s": 1000.0, "response_len": float(length), "signal_gini": 0.8,
                "signal_top1pct_share": 0.5, "teacher_entropy_student_prefix": 0.6,
                "teacher_entropy_teacher_prefix": 0.2, "special_token_signal_share": 0.6 if eos_mismatch else 0.0,
                "eval_accuracy": float(0.3 + 0.4 * frac) if step % 5 == 0 else None,
            })
    runs.write_status(run_dir, state="finished", step=steps, finished_at=time.time())
    return run_dir
