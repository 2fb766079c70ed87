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
    # every cut of 64 student rollouts: about 30 responses reach both the mild and the far bucket
    return measure_pair(student, teacher, n_prompts=16, rollouts=4, seed=3, rescue_budget=None)


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
    # on its own support the teacher finishes nearly everything
    assert r["rescue_rate_teacher_own"] >= 0.9
    assert r["rescue_rate_before_error"] >= 0.8
    # recovery is possible, and near the error the teacher does it: the 95% interval's low end is well above 0
    assert r["rescue_rate_mild_ci"][0] >= 0.25, r
    assert r["rescue_rate_mild_sampled"] >= 0.5
    # far from the error (>= 16 tokens) it rescues less than near it in the same responses, by more than
    # twice the paired standard error (measured 0.17-0.33 at +-0.06-0.11 over seeds 0-3, 96 rollouts each)
    assert r["rescue_fall_pairs"] >= 20, r
    assert r["rescue_fall_mild_far"] > 2 * r["rescue_fall_mild_far_se"], r
    # and far below what it does on its own prefixes: the far interval's top end is 0.3 under it
    assert r["rescue_rate_far_ci"][1] <= r["rescue_rate_teacher_own"] - 0.3, r
    assert r["rescue_rate_teacher_own_sampled"] - r["rescue_rate_drifted_sampled"] >= 0.1, r


def test_teacher_is_less_sure_right_after_the_students_error(measured):
    # Cut just before the first wrong token against cut right after it (adjacent positions): the teacher's
    # top-1 probability falls. Averaged over whole position buckets the entropy gap is small (-0.00 to
    # +0.07 nats across seeds): the v2 teacher stays sure and is wrong, which the rescue rate shows.
    top1 = {row["since_error"]: row["teacher_top1"] for row in measured["rescue_by_since_error"]}
    assert top1[0] < top1[-1] - 0.1, top1
    # the same from the token records, paired per response (what the health report reads): a fall of at
    # least 0.1 and of more than twice its standard error
    onset = measured["error_onset"]
    assert onset["n"] >= 20 and onset["top1_drop"] >= 0.1 and onset["top1_drop"] > 2 * onset["top1_drop_se"], onset
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


def _digests(root) -> dict[str, str]:
    """sha256 of every file the build wrote; metrics.json without its timings (wall clock, not content)."""
    import hashlib

    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "metrics.json":
            metrics = json.loads(data)
            metrics.pop("build_seconds")
            for entry in metrics["models"].values():
                entry.pop("train_seconds")
            data = json.dumps(metrics, sort_keys=True).encode()
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def test_build_runs_every_stage_end_to_end_and_twice_gives_the_same_bytes(tmp_path):
    # The shipped recipe's whole sequence (v1 teacher -> two fine-tuning stages; port to the other tokenizer
    # -> fine-tune; student copied; measured), in worker processes as `opd-lab toy build --world v2` runs
    # it, with tiny step counts.
    from opd_core.toy.build_v2 import WorldV2, build_v2

    world = WorldV2(teacher_stages=((2, 2e-3, 0.7), (2, 1e-3, 0.9)), port_steps=2, batch_size=4)
    digests = []
    for run in ("a", "b"):
        metrics = build_v2(tmp_path / run / "assets_v2", world=world, eval_examples=2, measure_prompts=1,
                           log=lambda _m: None)
        assert [m["train_steps"] for m in metrics["models"].values()] == [4, 2, 0]
        assert metrics["measured"]["rescue"]["n_cuts"] > 0 and metrics["cpu_capability"]
        digests.append(_digests(tmp_path / run / "assets_v2"))
    assert {f.split("/")[0] for f in digests[0]} == {"teacher", "teacher_mismatched", "student", "metrics.json"}
    assert digests[0] == digests[1]
