"""The run-config fields of the seed recipe and the peer conventions: entropy_top_ratio, score_temperature,
loss_reduction and the new objective parameters, as the CLI, the docs and the launch form take them."""

from __future__ import annotations

import json

import pytest

from opd_core.config import ConfigError, field_docs, from_dict, load_config


def test_defaults_leave_training_as_before():
    cfg = from_dict({})
    assert cfg.entropy_top_ratio == 1.0 and cfg.loss_reduction == "token_mean"
    assert cfg.score_temperature == 1.0 and cfg.score_temperature_value == 1.0
    assert cfg.objective_params == {"gamma": 0.0, "clip_log_ratio": None, "mask_mode": "skip"}


def test_values_from_text_as_the_cli_and_the_form_give_them():
    cfg = load_config(None, ["entropy_top_ratio=0.2", "score_temperature=0.7", "loss_reduction=sequence_mean",
                             "clip_log_ratio=5", "mask_mode=reset", "gamma=0.5"])
    assert cfg.entropy_top_ratio == 0.2 and cfg.score_temperature == 0.7
    assert cfg.loss_reduction == "sequence_mean"
    assert cfg.objective_params == {"gamma": 0.5, "clip_log_ratio": 5.0, "mask_mode": "reset"}
    assert load_config(None, ["clip_log_ratio=none"]).objective_params["clip_log_ratio"] is None
    head_tail = load_config(None, ["objective=topk_head_tail", "k=16", "support=student_topk"])
    assert head_tail.objective_params == {"k": 16, "support": "student_topk"}


def test_rollout_score_temperature_follows_the_rollout_temperature_and_is_recorded():
    cfg = from_dict({"score_temperature": "rollout", "temperature": 0.6})
    assert cfg.score_temperature == "rollout" and cfg.score_temperature_value == 0.6
    assert from_dict({"score_temperature": "Rollout", "temperature": 0}).score_temperature_value == 1.0  # greedy
    saved = json.loads(json.dumps(cfg.to_dict()))  # config.json round trip
    assert saved["score_temperature"] == "rollout" and from_dict(saved) == cfg


@pytest.mark.parametrize("field, value, needle", [
    ("entropy_top_ratio", 0, "out of range"),
    ("entropy_top_ratio", 1.5, "out of range"),
    ("entropy_top_ratio", "nan", "not a finite number"),
    ("entropy_top_ratio", float("inf"), "not a finite number"),
    ("score_temperature", 0, "finite number > 0"),
    ("score_temperature", "-1", "finite number > 0"),
    ("score_temperature", "nan", "finite number > 0"),
    ("score_temperature", "inf", "finite number > 0"),
    ("score_temperature", "hot", "finite number > 0"),
    ("score_temperature", True, "finite number > 0"),
    ("loss_reduction", "batchmean", "choose one of token_mean, sequence_mean"),
])
def test_bad_values_are_one_line_naming_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        from_dict({field: value})
    assert f"'{field}'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("params, needle", [
    ({"clip_log_ratio": 0}, "clip_log_ratio"), ({"clip_log_ratio": "nan"}, "clip_log_ratio"),
    ({"mask_mode": "zero"}, "mask_mode"),
])
def test_bad_objective_params_are_refused(params, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict({"objective_params": params})


def test_the_form_sees_typed_documented_fields():
    docs = {d["name"]: d for d in field_docs()}
    assert docs["loss_reduction"]["choices"] == ("token_mean", "sequence_mean")
    assert docs["entropy_top_ratio"]["lo"] == 0.0 and docs["entropy_top_ratio"]["hi"] == 1.0
    for name in ("entropy_top_ratio", "score_temperature", "loss_reduction"):
        assert docs[name]["group"] == "Objective" and docs[name]["help"]
        assert "check" not in docs[name]


def test_seed_teacher_topk_preset_is_the_seed_readme_recipe():
    cfg = load_config("seed_teacher_topk")
    assert cfg.objective == "topk_support" and cfg.objective_params["k"] == 32
    assert cfg.objective_params["renormalize"] is True and cfg.objective_params["support"] == "teacher_topk"
    assert (cfg.entropy_top_ratio, cfg.loss_reduction, cfg.score_temperature) == (0.2, "sequence_mean", "rollout")
    assert cfg.top_p == 0.9
