"""The health report on synthetic runs: each planted failure mode is flagged, and absent ones stay quiet."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from opd_core import runs
from opd_core.diagnostics import DiagnosticsError, Finding, HealthReport, format_report, health
from opd_core.synthetic_runs import synthetic_token_table, write_synthetic_run


def healthy_table(step: int, *, collapse: float = 0.0, teacher_flat_when_drifted: bool = False) -> pd.DataFrame:
    """A synthetic step with no EOS mismatch and a teacher that stays as sure off-support as on it."""
    t = synthetic_token_table(step, eos_mismatch=False, collapse=collapse)
    if not teacher_flat_when_drifted:
        t["teacher_entropy"] = np.float32(0.2)
        t["teacher_top1_prob"] = np.float32(0.85)
    return t


def write_run(run_dir, *, steps: int = 12, log_every: int = 4, objective: str = "reverse_kl", config: dict | None = None,
              table=healthy_table, metrics=None, alignment: dict | None = None):
    """A contract-valid run with hand-chosen token tables and metrics (healthy unless told otherwise)."""
    run_dir.mkdir(parents=True)
    runs.write_config(run_dir, {"objective": objective, "steps": steps, "max_new_tokens": 64, **(config or {})})
    runs.write_status(run_dir, state="finished", step=steps, total_steps=steps)
    for step in range(0, steps, log_every):
        runs.write_token_records(run_dir, step, table(step))
    with runs.MetricsWriter(run_dir) as mw:
        for step in range(steps):
            record = {"step": step, "time_s": float(step), "loss": 1.0 - 0.01 * step, "grad_norm": 1.0 + 0.1 * (step % 3),
                      "lr": 1e-3, "tokens": 192, "response_len": 24.0,
                      "eval_accuracy": 0.4 + 0.02 * step if step % 3 == 0 else None}
            if metrics:
                record.update(metrics(step))
            mw.append(record)
    if alignment is not None:
        runs.atomic_write_json(run_dir / "alignment.json", alignment)
    return run_dir


# ----------------------------------------------------------------------------- quiet on a healthy run


def test_a_healthy_dense_objective_run_has_no_findings(tmp_path):
    report = health(write_run(tmp_path / "ok"))
    assert report.findings == [], format_report(report)
    assert "No problems found" in format_report(report)


# ----------------------------------------------------------------------------- the planted modes, both ways


def test_synthetic_sampled_token_run_with_eos_mismatch_flags_imbalance_drift_and_mismatch(tmp_path):
    report = health(write_synthetic_run(tmp_path / "bad", eos_mismatch=True))
    assert {"imbalance", "drift", "mismatch"} <= report.modes()
    assert "collapse" not in report.modes()
    mism = next(f for f in report.findings if f.mode == "mismatch")
    assert mism.severity == "critical"
    assert mism.evidence["largest_log_ratio_token"] == "<|im_end|>"
    assert mism.evidence["largest_log_ratio"] == pytest.approx(-58.71, abs=0.01)
    assert "mask_special_tokens=true" in mism.fix
    assert mism.view == "mismatch"


def test_mismatch_stays_quiet_without_the_planted_eos(tmp_path):
    report = health(write_synthetic_run(tmp_path / "r", eos_mismatch=False))
    assert "mismatch" not in report.modes()


def test_collapse_is_flagged_only_when_support_mass_falls(tmp_path):
    collapsed = health(write_synthetic_run(tmp_path / "c", eos_mismatch=False, collapse_by_end=0.9))
    finding = next(f for f in collapsed.findings if f.mode == "collapse")
    assert finding.evidence["support_mass_last"] < finding.evidence["support_mass_first"] - 0.5
    assert "renormalize=true" in finding.fix
    steady = health(write_synthetic_run(tmp_path / "s", eos_mismatch=False, collapse_by_end=0.0))
    assert "collapse" not in steady.modes()


def test_collapse_fix_names_renormalize_on_an_unnormalised_topk_run(tmp_path):
    run = write_run(tmp_path / "r", objective="topk_support",
                    config={"objective_params": {"k": 8, "renormalize": False}},
                    table=lambda step: healthy_table(step, collapse=0.9 * step / 8))
    finding = next(f for f in health(run).findings if f.mode == "collapse")
    assert finding.fix.startswith("objective_params.renormalize=true")
    assert finding.severity == "critical"


def test_imbalance_is_judged_on_sampled_token_runs_and_not_on_dense_objectives(tmp_path):
    sampled = health(write_run(tmp_path / "st", objective="sampled_token"))
    finding = next(f for f in sampled.findings if f.mode == "imbalance")
    assert finding.evidence["gini"] >= 0.6 and "objective=topk_support" in finding.fix
    dense = health(write_run(tmp_path / "kl", objective="reverse_kl"))
    assert "imbalance" not in dense.modes()


def test_imbalance_stays_quiet_on_a_sampled_token_run_with_spread_signal(tmp_path):
    def spread(step):
        t = healthy_table(step)
        t["signal"] = np.random.default_rng(step).normal(0, 1, len(t)).astype(np.float32)
        return t

    assert "imbalance" not in health(write_run(tmp_path / "r", objective="sampled_token", table=spread)).modes()


def test_drift_is_flagged_when_the_teacher_goes_flat_off_support_and_quiet_when_it_does_not(tmp_path):
    flat = health(write_run(tmp_path / "flat", table=lambda s: healthy_table(s, teacher_flat_when_drifted=True)))
    finding = next(f for f in flat.findings if f.mode == "drift")
    assert finding.evidence["entropy_ratio"] >= 2.0
    assert "top_p=0.9" in finding.fix and finding.view == "drift"
    assert "drift" not in health(write_run(tmp_path / "steady")).modes()


def test_drift_compares_against_the_teachers_own_rollouts_when_logged(tmp_path):
    def with_reference(step):
        t = healthy_table(step, teacher_flat_when_drifted=True)
        ref = t.copy()
        ref["prefix_source"], ref["reference_only"] = "teacher", True
        ref["tokens_since_off_support"], ref["teacher_entropy"] = 0, np.float32(0.1)
        ref["signal"] = np.float32(50.0)  # reference rows must not count as training signal
        return pd.concat([t, ref], ignore_index=True)

    report = health(write_run(tmp_path / "r", table=with_reference))
    finding = next(f for f in report.findings if f.mode == "drift")
    assert finding.evidence["baseline"] == "teacher's own rollouts"
    assert finding.evidence["teacher_entropy_baseline"] == pytest.approx(0.1)
    assert "mismatch" not in report.modes()


def test_alignment_mismatch_with_masking_off_is_flagged_and_with_masking_on_is_not(tmp_path):
    alignment = {"eos_a": "<|im_end|>", "eos_b": "</s>", "differing_ids": [3, 8]}
    off = health(write_run(tmp_path / "off", alignment=alignment, config={"mask_special_tokens": False}))
    finding = next(f for f in off.findings if f.mode == "mismatch")
    assert finding.evidence["eos_differs"] is True and finding.evidence["n_differing_ids"] == 2
    on = health(write_run(tmp_path / "on", alignment=alignment, config={"mask_special_tokens": True}))
    assert "mismatch" not in on.modes()


def _onset_table(step: int, after: list[float], before: list[float] | None = None) -> pd.DataFrame:
    """A healthy step whose teacher top-1 at the first prefix holding the student's error is ``after[sample %
    len(after)]`` and one token earlier ``before[...]`` (0.85 everywhere else, entropy flat): only the
    error-onset evidence can speak."""
    t = healthy_table(step)
    onset = (t["tokens_since_off_support"] == 1).to_numpy()
    sample = t["sample"].to_numpy()
    t.loc[onset, "teacher_top1_prob"] = np.asarray(after, dtype=np.float32)[sample % len(after)][onset]
    if before is not None:
        prior = np.roll(onset, -1)  # rows are in (sample, pos) order and an error never starts at pos 0
        t.loc[prior, "teacher_top1_prob"] = np.asarray(before, dtype=np.float32)[sample % len(before)][prior]
    return t


def test_drift_fires_on_the_top1_fall_right_after_the_students_first_error(tmp_path):
    report = health(write_run(tmp_path / "fall", table=lambda s: _onset_table(s, [0.5])))
    (finding,) = [f for f in report.findings if f.mode == "drift"]
    assert finding.evidence["error_onset_top1_drop"] == pytest.approx(0.35, abs=1e-4)
    assert finding.evidence["error_onset_top1_before"] == pytest.approx(0.85)
    assert 20 <= finding.evidence["error_onset_n"] <= 24  # 8 responses x 3 logged steps, a few err at the end
    assert "first error" in finding.title and "fork" in finding.fix and "max_new_tokens" in finding.fix
    # a small fall, or a mean fall no larger than twice its standard error (responses disagree), stays quiet
    assert "drift" not in health(write_run(tmp_path / "small", table=lambda s: _onset_table(s, [0.8]))).modes()
    # responses fall by 1 or rise by 1 (5 in 8 fall): a mean fall of ~0.25 with a standard error of ~0.2
    flips = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    noisy = health(write_run(tmp_path / "noisy", table=lambda s: _onset_table(s, flips, [1 - x for x in flips])))
    assert "drift" not in noisy.modes()


def test_drift_finding_from_rescue_rates_is_critical_on_a_large_drop_and_carries_the_fall():
    from opd_core.diagnostics.health import check_drift

    summary = {"n_drifted": 70, "rescue_rate_drifted": 0.03, "rescue_rate_mild": 0.05, "rescue_rate_far": 0.0,
               "rescue_rate_teacher_own": 0.93, "confidently_wrong_share": 0.65, "rescue_fall_mild_far": 0.05,
               "rescue_fall_mild_far_se": 0.03, "rescue_fall_pairs": 21, "far_min_since_error": 16}
    (finding,) = check_drift(healthy_table(0), rescue_summary=summary)
    assert finding.severity == "critical" and "3% of drifted" in finding.title and "confidently wrong" in finding.title
    assert finding.evidence["rescue_fall_pairs"] == 21 and finding.evidence["far_min_since_error"] == 16
    # a teacher as good on drifted prefixes as on its own (and never sure-and-wrong) gives no finding
    fine = {**summary, "rescue_rate_drifted": 0.85, "confidently_wrong_share": 0.05}
    assert check_drift(healthy_table(0), rescue_summary=fine) == []
    # too few drifted cuts to read a rate
    assert check_drift(healthy_table(0), rescue_summary={**summary, "n_drifted": 5}) == []


def test_eos_mismatch_is_critical_from_the_first_logged_step_when_the_pooled_share_has_faded():
    # The student soon stops ending its answers (no EOS rows after step 0, larger signals on ordinary tokens):
    # pooled over the run the EOS carries ~2% of |signal|, at the start it carried most of it.
    from opd_core.diagnostics.health import check_mismatch
    from opd_core.synthetic_runs import synthetic_token_table

    later = []
    for step in range(1, 11):
        t = synthetic_token_table(step, eos_mismatch=False)
        t["is_eos"], t["is_special"], t["token"], t["teacher_token"] = False, False, "7", "7"
        t["signal"] = t["signal"] * 50
        later.append(t)
    tokens = pd.concat([synthetic_token_table(0, eos_mismatch=True), *later], ignore_index=True)
    (finding,) = check_mismatch(tokens, None, {"objective": "sampled_token"})
    ev = finding.evidence
    assert ev["eos_signal_share"] < 0.15 < 0.5 < ev["eos_signal_share_first_step"]
    assert ev["eos_token_share_first_step"] == pytest.approx(1 / 24, abs=1e-4)
    assert ev["eos_signal_enrichment_first_step"] > 10
    assert finding.severity == "critical" and "first logged step" in finding.title
    masked = tokens.assign(masked=tokens["is_eos"])
    assert all(f.severity != "critical" for f in check_mismatch(masked, None, {"objective": "sampled_token",
                                                                              "mask_special_tokens": True}))


# ----------------------------------------------------------------------------- training checks from metrics


def _training_checks(report: HealthReport) -> set[str]:
    return {f.evidence.get("check") for f in report.findings if f.mode == "training"}


def test_nan_loss_is_critical(tmp_path):
    report = health(write_run(tmp_path / "r", metrics=lambda s: {"loss": math.nan} if s == 7 else {}))
    finding = next(f for f in report.findings if f.mode == "training")
    assert finding.severity == "critical" and finding.evidence["first_steps"] == [7]
    assert report.findings[0] is finding  # most severe first


def test_an_unreported_grad_norm_is_not_read_as_nan(tmp_path):
    """An SDK or re-scoring run writes grad_norm as null ("not reported"): that is no divergence."""
    report = health(write_run(tmp_path / "r", metrics=lambda s: {"grad_norm": None, "lr": None}))
    assert "nan_loss" not in _training_checks(report)


def test_grad_norm_spike_is_flagged(tmp_path):
    report = health(write_run(tmp_path / "r", metrics=lambda s: {"grad_norm": 40.0} if s == 9 else {}))
    assert _training_checks(report) == {"grad_norm_spike"}


def test_runaway_response_length_is_flagged_and_critical_at_the_cap(tmp_path):
    report = health(write_run(tmp_path / "r", metrics=lambda s: {"response_len": 20.0 + 4 * s}))
    finding = next(f for f in report.findings if f.evidence.get("check") == "length_runaway")
    assert finding.severity == "critical"  # last quarter ~ 60 of max_new_tokens 64
    assert "mask_after_eos=true" in finding.fix


def test_falling_eval_accuracy_is_flagged(tmp_path):
    report = health(write_run(tmp_path / "r", metrics=lambda s: {"eval_accuracy": [0.5, 0.7, 0.45, 0.3][s // 3]}
                              if s % 3 == 0 else {}))
    finding = next(f for f in report.findings if f.evidence.get("check") == "eval_falling")
    assert finding.evidence["best_step"] == 3 and finding.evidence["last"] == pytest.approx(0.3)


# ----------------------------------------------------------------------------- report shape and input


def test_report_json_has_the_promised_shape_and_no_nan(tmp_path):
    report = health(write_synthetic_run(tmp_path / "r"))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["findings"]
    for f in data["findings"]:
        assert set(f) == {"mode", "severity", "title", "evidence", "fix", "view"}
        assert f["severity"] in {"info", "warning", "critical"}
        assert f["mode"] in {"imbalance", "drift", "mismatch", "collapse", "training"}


def test_text_report_names_each_finding_with_its_fix(tmp_path):
    report = health(write_synthetic_run(tmp_path / "r"))
    text = format_report(report)
    for f in report.findings:
        assert f.title in text and f.fix in text
    assert isinstance(report.findings[0], Finding)


def test_a_run_without_token_records_still_gets_the_metrics_checks(tmp_path):
    run = write_run(tmp_path / "r", metrics=lambda s: {"loss": math.nan} if s == 2 else {})
    for path in (run / "tokens").iterdir():
        path.unlink()
    report = health(run)
    assert report.modes() == {"training"}
    assert any("no token records" in note for note in report.skipped)


def test_health_of_a_folder_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(DiagnosticsError, match="not a run directory"):
        health(tmp_path)
