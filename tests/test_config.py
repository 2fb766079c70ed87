"""Config validation: every malformed config is one clear line naming the field, and nothing else."""

import json

import pytest

from opd_core.config import (
    ConfigError,
    RunConfig,
    config_reference_markdown,
    field_docs,
    from_dict,
    load_config,
)


def test_defaults_validate_and_round_trip_through_json(tmp_path):
    cfg = from_dict({})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"tmeperature": 1.0}, "'tmeperature' is not a known field (did you mean 'temperature'?)"),
        ({"top_p": "high"}, "'top_p': 'high' is not a number"),
        ({"top_p": 1.5}, "'top_p': 1.5 is out of range"),
        ({"top_p": 0.0}, "allowed: top_p > 0.0"),
        ({"steps": 0}, "'steps': 0 is out of range"),
        ({"num_rollouts": 2.5}, "'num_rollouts': 2.5 is not an integer"),
        ({"objective": "reverse_kld"}, "unknown objective 'reverse_kld'"),
        ({"objective": "jsd", "beta": 2}, "beta"),
        ({"objective": "sampled_token", "k": 4}, "k"),
        ({"student": "/no/such/checkpoint"}, "'student': '/no/such/checkpoint' is not a directory"),
        ({"teacher": "toy:nope"}, "unknown preset 'toy:nope'"),
        ({"dtype": "int8"}, "'dtype': 'int8' is not allowed"),
        ({"mask_special_tokens": "maybe"}, "is not a boolean"),
    ],
)
def test_malformed_config_gives_one_line_naming_the_field(data, needle):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_overrides_parse_types_and_objective_params(tmp_path):
    cfg = load_config(None, ["objective=topk_support", "k=8", "renormalize=false", "top_p=0.9",
                             "mask_special_tokens=true", "objective_params.support=teacher_topk_plus_sampled"])
    assert cfg.objective == "topk_support"
    assert cfg.objective_params["k"] == 8
    assert cfg.objective_params["renormalize"] is False
    assert cfg.objective_params["support"] == "teacher_topk_plus_sampled"
    assert cfg.top_p == 0.9 and cfg.mask_special_tokens is True


def test_toml_file_and_shipped_examples_load():
    for name in ("baseline", "masked", "top_p", "topk_support", "topk_unnormalized", "matched",
                 "forward_kl_mixed"):
        cfg = load_config(name)
        assert isinstance(cfg, RunConfig)
    assert load_config("topk_unnormalized").objective_params["renormalize"] is False


def test_missing_or_broken_config_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_every_field_is_documented_in_a_group():
    docs = field_docs()
    assert all(d["help"] and d["group"] for d in docs)
    md = config_reference_markdown()
    for d in docs:
        assert f"`{d['name']}`" in md


def test_docs_config_md_is_generated_from_the_config_and_in_sync():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert path.read_text() == config_reference_markdown() + "\n", (
        "docs/config.md is stale: regenerate it with "
        "python -c \"from opd_core.config import config_reference_markdown as m; open('docs/config.md','w').write(m()+'\\n')\"")


def test_objective_params_given_as_text_is_parsed_or_named():
    assert from_dict({"objective": "topk_support", "objective_params": '{"k": 4}'}).objective_params["k"] == 4
    with pytest.raises(ConfigError, match="'objective_params'.*is not a JSON object"):
        from_dict({"objective": "topk_support", "objective_params": "k=4"})
