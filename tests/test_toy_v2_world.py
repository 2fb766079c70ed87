"""Toy world v2 keeps its promises: measured live on the shipped checkpoints (nothing is retrained here).

Each test pins one requirement: most sampled-token rewards negative at the start; a good teacher and a
clearly weaker student; a teacher that rescues mild drift but not far drift and is less sure on drifted
prefixes at the same positions; the tokenizer / special-token mismatch of the mismatched pair; a build
that is seeded and single-threaded (bit-reproducible; checked on a few steps).
"""

from __future__ import annotations

import json

import pytest

from opd_core.toy.presets import ASSETS_V2_DIR, resolve_pair

pytestmark = pytest.mark.skipif(not (ASSETS_V2_DIR / "teacher").is_dir(),
                                reason="toy v2 assets not built (`opd-lab toy build --world v2`)")


@pytest.fixture(scope="module")
def measured():
    from opd_core.toy.measure_v2 import measure_pair

    student, teacher = resolve_pair("toy:matched-v2")
    return measure_pair(student, teacher, n_prompts=16, rollouts=4, seed=3, rescue_budget=240)


@pytest.fixture(scope="module")
def build_metrics():
    return json.loads((ASSETS_V2_DIR / "metrics.json").read_text())


def test_most_sampled_token_rewards_are_negative_at_the_start(measured):
    assert measured["negative_reward_share"] > 0.5


def test_teacher_is_good_and_student_well_below(measured, build_metrics):
    models = build_metrics["models"]
    assert models["teacher"]["eval_accuracy"] >= 0.9  # greedy, 300 eval problems, at build time
    assert models["teacher_mismatched"]["eval_accuracy"] >= 0.9
    assert build_metrics["measured"]["teacher_sampled_accuracy"] >= 0.9  # its own sampled rollouts, 96 of them
    assert measured["teacher_sampled_accuracy"] >= 0.85  # live, 64 rollouts: binomial noise ~0.03
    assert models["student"]["eval_accuracy"] <= models["teacher"]["eval_accuracy"] - 0.3
    assert measured["student_sampled_accuracy"] <= measured["teacher_sampled_accuracy"] - 0.3


def test_teacher_rescues_mild_drift_but_not_far_drift(measured):
    r = measured["rescue"]
    assert r["rescue_rate_teacher_own"] >= 0.9
    assert r["rescue_rate_before_error"] >= 0.8
    # recovery is possible, and the teacher does it near the error (at the run's sampling and greedily)...
    assert r["rescue_rate_mild_sampled"] >= 0.5 and r["rescue_rate_mild"] >= 0.3
    # ...less far from it (clearly at 16 tokens), and far less than on its own prefixes
    assert r["rescue_rate_teacher_own"] - r["rescue_rate_drifted"] >= 0.3, r
    assert r["rescue_rate_teacher_own_sampled"] - r["rescue_rate_drifted_sampled"] >= 0.1, r
    by = {row["since_error"]: row["rescue_rate_greedy"] for row in measured["rescue_by_since_error"]}
    assert by[16] < by[0] and by[16] < by[-1] - 0.3, by


def test_teacher_is_less_sure_right_after_the_students_error(measured):
    # Cut just before the first wrong token against cut right after it (adjacent positions): the teacher's
    # top-1 probability falls. Averaged over whole position buckets the entropy gap is small (-0.00 to
    # +0.07 nats across seeds): the v2 teacher stays sure and is wrong, which the rescue rate shows.
    top1 = {row["since_error"]: row["teacher_top1"] for row in measured["rescue_by_since_error"]}
    assert top1[0] < top1[-1] - 0.1, top1
    assert measured["position_matched"]["n_drifted"] >= 50


def test_mismatched_pair_keeps_the_special_token_mismatch(build_metrics):
    from opd_core.alignment import compare_tokenizers
    from opd_core.models import load_tokenizer

    student, teacher = resolve_pair("toy:mismatched-v2")
    report = compare_tokenizers(load_tokenizer(student), load_tokenizer(teacher)).to_dict()
    assert report["eos_a"] == "<|im_end|>" and report["eos_b"] == "</s>"
    assert not report["chat_template_same"] and report["n_differing_ids"] > 0
    assert not report["eos_maps_to"]["a_in_b"]["used_in_template"]
    assert build_metrics["models"]["teacher_mismatched"]["student_eos_logp"] < -5


def test_build_is_seeded_and_bit_reproducible(tmp_path):
    from opd_core.toy.build_v2 import WorldV2, train_one

    world = WorldV2(teacher_stages=((2, 2e-3, 0.7),), port_steps=1, batch_size=4)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        train_one("teacher", str(out), 10, world, 2)
        digests.append((out / "teacher" / "model.safetensors").read_bytes())
    assert digests[0] == digests[1]
