"""The seed recipe's settings through the built-in loop on the toy pair: entropy gate, scoring temperature,
loss reduction, and the logged loss being the objective's value (surrogate kept as surrogate_loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opd_core import runs
from opd_core.config import from_dict
from opd_core.train_entry import train

TINY = {"steps": 1, "prompts_per_step": 2, "num_rollouts": 3, "max_new_tokens": 16, "eval_every": 0,
        "eval_size": 4, "log_tokens_every": 1, "checkpoint_every": 0, "reference_rollouts": False,
        "mask_special_tokens": True}


def _run(tmp_path, name: str, **over):
    run = train(from_dict({**TINY, **over}), tmp_path, name)
    assert runs.read_status(run)["state"] == "finished"
    return run, runs.read_metrics(run), runs.read_tokens(run)


def test_entropy_gate_keeps_each_responses_most_uncertain_tokens_and_names_the_rest(tmp_path):
    _, _, base = _run(tmp_path, "base")
    _, metrics, gated = _run(tmp_path, "gated", entropy_top_ratio=0.3)
    assert (gated["masked_reason"] == "entropy_gate").any()
    assert np.array_equal(base["token_id"].to_numpy(), gated["token_id"].to_numpy())  # same rollouts
    before = ~base["masked"]
    for _sample, rows in gated.groupby("sample"):
        was = before[rows.index]
        kept = ~rows["masked"]
        n = int(was.sum())
        if n == 0:
            continue
        assert int(kept.sum()) >= max(1, math.floor(n * 0.3))  # ties may keep a few more
        assert set(rows.loc[was & ~kept, "masked_reason"]) <= {"entropy_gate"}
        dropped = rows.loc[was & ~kept, "student_entropy"]
        if len(dropped):
            assert rows.loc[kept, "student_entropy"].min() >= dropped.max() - 1e-5
        # Tokens the gate newly masks name it; tokens masked anyway (special, unaligned) keep their reason.
        assert (rows.loc[~was, "masked_reason"] == base.loc[rows.index][~was]["masked_reason"]).all()
    assert metrics["tokens"].iloc[0] == int((~gated["masked"]).sum())


def test_score_temperature_divides_both_models_logits(tmp_path):
    _, _, plain = _run(tmp_path, "t1")
    run, _, sharp = _run(tmp_path, "t05", score_temperature=0.5)
    assert runs.read_config(run)["score_temperature"] == 0.5
    assert np.array_equal(plain["token_id"].to_numpy(), sharp["token_id"].to_numpy())  # rollouts unchanged
    real = ~plain["masked"]
    # softmax(z / 0.5) is sharper than softmax(z): lower entropy on every token, both models
    assert (sharp.loc[real, "student_entropy"] < plain.loc[real, "student_entropy"] + 1e-6).all()
    aligned = real & plain["teacher_entropy"].notna()  # a full teacher distribution exists where aligned
    assert aligned.sum() > 0
    assert (sharp.loc[aligned, "teacher_entropy"] < plain.loc[aligned, "teacher_entropy"] + 1e-6).all()
    assert (sharp["log_ratio"] - plain["log_ratio"]).abs().max() > 1e-3
    run, _, _ = _run(tmp_path, "rollout", score_temperature="rollout", temperature=0.7)
    assert runs.read_config(run)["score_temperature"] == "rollout"


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
def test_logged_loss_is_the_reduced_objective_value(tmp_path, reduction):
    """sampled_token: loss = the mean of -r_t (the Monte-Carlo reverse KL), by tokens or by responses;
    surrogate_loss is the differentiated -A log p_S, another number."""
    _, metrics, tokens = _run(tmp_path, reduction, loss_reduction=reduction)
    trained = tokens[~tokens["masked"]]
    if reduction == "token_mean":
        want = float((-trained["log_ratio"]).mean())
    else:
        per_sample = (-trained["log_ratio"]).groupby(trained["sample"]).mean()
        want = float(per_sample.sum() / tokens["sample"].nunique())
    assert metrics["loss"].iloc[0] == pytest.approx(want, abs=1e-4)
    assert abs(metrics["surrogate_loss"].iloc[0] - metrics["loss"].iloc[0]) > 1e-3


def test_divergence_objectives_log_the_same_number_as_loss_and_surrogate(tmp_path):
    _, metrics, _ = _run(tmp_path, "rkl", objective="reverse_kl")
    assert metrics["loss"].iloc[0] == pytest.approx(metrics["surrogate_loss"].iloc[0], rel=1e-6)
    assert metrics["loss"].iloc[0] == pytest.approx(metrics["reverse_kl"].iloc[0], rel=1e-4)


def test_seed_recipe_settings_train_together(tmp_path):
    _, metrics, tokens = _run(tmp_path, "seed", steps=2, objective="sampled_token",
                              objective_params={"gamma": 0.5, "mask_mode": "reset", "clip_log_ratio": 5.0},
                              entropy_top_ratio=0.5, loss_reduction="sequence_mean", score_temperature="rollout",
                              temperature=0.9)
    assert all(math.isfinite(x) for x in metrics["loss"]) and metrics["grad_norm"].max() > 0
    assert (tokens["masked_reason"] == "entropy_gate").any()
    _, metrics, _ = _run(tmp_path, "head_tail", objective="topk_head_tail", objective_params={"k": 8},
                         entropy_top_ratio=0.5)
    assert math.isfinite(metrics["loss"].iloc[0]) and metrics["grad_norm"].iloc[0] > 0
