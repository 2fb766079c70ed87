"""The shipped sample runs: each health report names what that run suffers from, and nothing else.

The expectations are what the runs measurably show (see EXPERIMENTS.md and `opd-lab samples summary`):
sampled-token runs concentrate their signal (imbalance); without masking the mismatched pair's EOS
carries a giant wrong signal and accuracy collapses; unnormalised top-K loses support mass; top-K
support matching and forward KL train cleanly. On toy world v2 the mismatched teacher finishes few
drifted student prefixes correctly (rescue.json), so every v2 run on that pair is flagged for drift.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opd_core import runs
from opd_core.diagnostics import health
from opd_core.samples import SAMPLES, default_samples_dir

SAMPLE_DIR = default_samples_dir()
EXPECTED = {
    # toy world v2 (the mismatched pair's teacher rescues few drifted student prefixes: drift everywhere)
    "baseline-sampled-token": {"drift", "mismatch", "training"},
    "masked-sampled-token": {"drift", "imbalance", "training"},
    "topk-support": {"drift"},
    "topk-unnormalized": {"drift"},
    "topk-support-unmasked": {"drift"},
    "topk-support-k16": {"drift"},
    "topk-support-k48": {"drift"},
    "topk-support-top-p-1.0": {"drift"},
    "topk-support-top-p-0.8": {"drift"},
    # toy world v1
    "top-p-sampled-token": {"mismatch", "imbalance", "training"},
    "matched-sampled-token": {"imbalance"},
    "forward-kl-mixed-prefixes": set(),
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


def test_baseline_report_json_has_a_drift_finding_with_rescue_rates():
    out = subprocess.run([sys.executable, "-m", "opd_core", "report", str(SAMPLE_DIR / "baseline-sampled-token"),
                          "--json"], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    (drift,) = [f for f in json.loads(out.stdout)["findings"] if f["mode"] == "drift"]
    ev = drift["evidence"]
    assert ev["rescue_rate_teacher_own"] - ev["rescue_rate_drifted"] >= 0.5
    assert "rescue_rate_mild" in ev and "confidently_wrong_share" in ev and "position_matched_entropy_gap" in ev
    assert "top_p=0.9" in drift["fix"] and "max_new_tokens" in drift["fix"] and "fork" in drift["fix"]


def test_report_cli_prints_json_for_a_sample_run():
    out = subprocess.run([sys.executable, "-m", "opd_core", "report", str(SAMPLE_DIR / "top-p-sampled-token"),
                          "--json"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    modes = {f["mode"] for f in json.loads(out.stdout)["findings"]}
    assert "mismatch" in modes


def test_report_cli_on_a_folder_that_is_not_a_run_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "opd_core", "report", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert "is not a run directory" in out.stderr
