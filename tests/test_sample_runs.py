"""The shipped sample runs: each health report names what that run suffers from, and each of the paper's
findings that EXPERIMENTS.md calls reproduced holds on the runs themselves.

The expectations are what the runs measurably show (`opd-lab samples summary`): sampled-token runs
concentrate their signal more than top-K support matching; without masking the mismatched pair's EOS
carries a giant wrong signal, responses run away and accuracy collapses, and masking rescues sampled-token
OPD far more than it changes top-K matching; unnormalised top-K loses support mass and collapses. On toy
world v2 the teacher finishes few drifted student prefixes correctly (rescue.json), so every run is
flagged for drift.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opd_core import runs
from opd_core.diagnostics import health
from opd_core.samples import SAMPLES, default_samples_dir, summary_table

SAMPLE_DIR = default_samples_dir()
EXPECTED = {
    # every run is on toy world v2; the mismatched pair's teacher rescues few drifted student prefixes, and
    # even the matched teacher far fewer than its own, so every run is flagged for drift
    "baseline-sampled-token": {"drift", "mismatch", "training"},
    "masked-sampled-token": {"drift", "imbalance", "training"},
    "top-p-sampled-token": {"drift", "mismatch", "training"},
    "masked-top-p-sampled-token": {"drift", "imbalance"},
    "topk-support": {"drift"},
    "topk-unnormalized": {"collapse", "drift", "training"},
    "topk-support-unmasked": {"drift"},
    "matched-sampled-token": {"drift"},
    "forward-kl-mixed-prefixes": {"collapse", "drift", "training"},
    "topk-support-k16": {"drift"},
    "topk-support-k48": {"drift"},
    "topk-support-top-p-1.0": {"drift"},
    "topk-support-top-p-0.8": {"drift"},
}


def test_every_sample_recipe_is_shipped_and_valid():
    assert set(EXPECTED) == set(SAMPLES)
    for name in SAMPLES:
        run = SAMPLE_DIR / name
        assert runs.validate_run_dir(run) == [], name
        assert runs.read_status(run)["state"] == "finished"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_report_flags_exactly_what_the_sample_suffers_from(name):
    report = health(SAMPLE_DIR / name)
    flagged = {f.mode for f in report.findings if f.severity in ("warning", "critical")}
    assert flagged == EXPECTED[name], [f.title for f in report.findings]


def test_baseline_mismatch_names_the_eos_and_the_fix():
    report = health(SAMPLE_DIR / "baseline-sampled-token")
    (finding,) = [f for f in report.findings if f.mode == "mismatch"]
    assert finding.evidence["eos_mean_log_ratio"] < -5
    assert "mask_special_tokens=true" in finding.fix


def test_baseline_starts_with_most_rewards_negative():
    from opd_core.diagnostics import rewards

    first = runs.token_steps(SAMPLE_DIR / "baseline-sampled-token")[0]
    tokens = runs.read_tokens(SAMPLE_DIR / "baseline-sampled-token", steps=[first], columns=list(rewards.COLUMNS))
    assert rewards.negative_reward_share(tokens, first) > 0.5


def _report_json(run_dir: Path, capsys: pytest.CaptureFixture) -> dict:
    """`opd-lab report RUN --json` in-process (the CLI's own main; a process per call would re-import torch;
    the exit status of the process is checked below, on a folder that is not a run)."""
    from opd_core.cli import main

    capsys.readouterr()
    code = main(["report", str(run_dir), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_baseline_report_json_has_a_drift_finding_with_rescue_rates(capsys):
    (drift,) = [f for f in _report_json(SAMPLE_DIR / "baseline-sampled-token", capsys)["findings"]
                if f["mode"] == "drift"]
    ev = drift["evidence"]
    assert ev["rescue_rate_teacher_own"] - ev["rescue_rate_drifted"] >= 0.5
    assert "rescue_rate_mild" in ev and "confidently_wrong_share" in ev and "position_matched_entropy_gap" in ev
    assert "top_p=0.9" in drift["fix"] and "max_new_tokens" in drift["fix"] and "fork" in drift["fix"]


@pytest.fixture(scope="module")
def table():
    """`opd-lab samples summary`, one row per sample run (what EXPERIMENTS.md section 1 prints)."""
    return summary_table(SAMPLE_DIR).set_index("run")


def test_every_sample_is_a_200_step_world_v2_run():
    for name in SAMPLES:
        config = runs.read_config(SAMPLE_DIR / name)
        assert config["task"] == "toy:addition-v2" and config["student"].endswith("-v2"), name
        assert runs.read_metrics(SAMPLE_DIR / name)["step"].max() == 200, name


def test_topk_support_has_a_lower_grad_norm_better_accuracy_and_shorter_responses_than_the_baseline(table):
    topk, base = table.loc["topk-support"], table.loc["baseline-sampled-token"]
    assert topk.grad_norm_mean < base.grad_norm_mean
    assert topk.eval_acc_final > base.eval_acc_final + 0.3
    assert topk.response_len_last20 < base.response_len_last20


def test_unnormalised_topk_collapses_and_the_report_names_it(table):
    unnorm, topk = table.loc["topk-unnormalized"], table.loc["topk-support"]
    # the student's mass inside the teacher's top-K falls away; the renormalised run keeps it
    assert unnorm.support_mass_first20 - unnorm.support_mass_min > 0.15
    assert topk.support_mass_first20 - topk.support_mass_min < 0.05
    assert unnorm.eval_acc_final < topk.eval_acc_final - 0.3
    (finding,) = [f for f in health(SAMPLE_DIR / "topk-unnormalized").findings if f.mode == "collapse"]
    assert "renormalize=true" in finding.fix


def test_sampled_token_signal_is_more_concentrated_than_topk_support_matching(table):
    sampled = [n for n, (example, _) in SAMPLES.items() if n.endswith("sampled-token")]
    topk = [n for n, (example, _) in SAMPLES.items() if example == "v2_topk_support"]
    assert len(sampled) == 5 and len(topk) == 6
    assert table.loc[sampled, "signal_gini"].min() > table.loc[topk, "signal_gini"].max()


def test_masking_helps_sampled_token_opd_far_more_than_topk_matching(table):
    final = table["eval_acc_final"]
    # under the paper's rollout top-p 0.9, both pairs otherwise identical
    sampled_gain = final["masked-top-p-sampled-token"] - final["top-p-sampled-token"]
    topk_gain = final["topk-support"] - final["topk-support-unmasked"]
    assert sampled_gain > 0.3 and abs(topk_gain) < 0.1
    # at top-p 1.0 the unmasked baseline has collapsed by step 100 while the masked run still holds
    assert table.loc["masked-sampled-token", "eval_acc_step100"] - table.loc["baseline-sampled-token",
                                                                             "eval_acc_step100"] > 0.3


def test_unmasked_sampled_token_runs_learn_not_to_stop():
    for name in ("baseline-sampled-token", "top-p-sampled-token"):
        report = health(SAMPLE_DIR / name)
        (mismatch,) = [f for f in report.findings if f.mode == "mismatch"]
        assert mismatch.evidence["eos_mean_log_ratio"] < -5
        assert any(f.mode == "training" and "response length" in f.title for f in report.findings), name


def test_report_cli_prints_json_for_a_sample_run(capsys):
    modes = {f["mode"] for f in _report_json(SAMPLE_DIR / "top-p-sampled-token", capsys)["findings"]}
    assert "mismatch" in modes


def test_report_cli_on_a_folder_that_is_not_a_run_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "opd_core", "report", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert "is not a run directory" in out.stderr
