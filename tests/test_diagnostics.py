"""Each diagnostic on hand-built token tables whose answer is known without running the code under test."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from opd_core.diagnostics import DiagnosticsError, collapse, drift, imbalance, mismatch
from opd_core.diagnostics.loading import pick_steps


def table(**columns) -> pd.DataFrame:
    """A token table with step/sample/pos filled in as one response when not given."""
    n = len(next(iter(columns.values())))
    base = {"step": np.zeros(n, dtype=np.int64), "sample": np.zeros(n, dtype=np.int64), "pos": np.arange(n)}
    base.update(columns)
    return pd.DataFrame(base)


# ----------------------------------------------------------------------------- imbalance: Gini, Lorenz, top share


def test_gini_of_uniform_signal_is_zero():
    assert imbalance.gini(np.full(50, 0.3)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [2, 10, 1000])
def test_gini_of_one_hot_signal_is_n_minus_one_over_n(n):
    values = np.zeros(n)
    values[n // 2] = 5.0
    assert imbalance.gini(values) == pytest.approx((n - 1) / n)


def test_gini_uses_absolute_values_so_sign_does_not_matter():
    assert imbalance.gini([-1.0, 1.0, -1.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
    assert imbalance.gini([0.0, 0.0, -4.0]) == pytest.approx(2 / 3)


def test_gini_of_no_values_is_nan_and_of_all_zero_is_zero():
    assert np.isnan(imbalance.gini([]))
    assert imbalance.gini([0.0, 0.0]) == 0.0


def test_lorenz_curve_starts_at_origin_ends_at_one_and_is_downsampled():
    rng = np.random.default_rng(0)
    curve = imbalance.lorenz_curve(rng.exponential(size=100_000), points=50)
    assert list(curve.columns) == ["token_share", "signal_share"]
    assert len(curve) == 50
    assert curve.iloc[0].tolist() == [0.0, 0.0]
    assert curve.iloc[-1].tolist() == pytest.approx([1.0, 1.0])
    assert (np.diff(curve["signal_share"]) >= -1e-12).all()
    assert (curve["signal_share"] <= curve["token_share"] + 1e-12).all()


def test_lorenz_curve_of_uniform_signal_is_the_diagonal_and_of_one_hot_stays_flat():
    uniform = imbalance.lorenz_curve(np.ones(10), points=11)
    assert uniform["signal_share"].to_numpy() == pytest.approx(uniform["token_share"].to_numpy())
    one_hot = imbalance.lorenz_curve([0, 0, 0, 0, 7.0], points=6)
    # 4 of 5 tokens carry nothing: the curve is 0 up to token share 0.8, then rises to 1.
    assert one_hot["signal_share"].to_numpy() == pytest.approx([0, 0, 0, 0, 0, 1.0])


def test_top_share_of_one_hot_and_uniform():
    values = np.zeros(100)
    values[3] = -2.0
    assert imbalance.top_share(values, 0.01) == pytest.approx(1.0)
    assert imbalance.top_share(np.ones(100), 0.05) == pytest.approx(0.05)
    assert imbalance.top_share(np.ones(10), 0.01) == pytest.approx(0.1)  # at least one token


def test_top_share_rejects_a_fraction_outside_zero_one():
    with pytest.raises(ValueError, match="fraction"):
        imbalance.top_share([1.0], 1.5)


def test_summary_leaves_out_masked_and_reference_only_rows():
    t = table(signal=[1.0, 1.0, 1.0, 1.0, 100.0, 100.0], log_ratio=[-1.0, -1.0, 1.0, 1.0, -100.0, -100.0],
              masked=[False, False, False, False, True, False],
              reference_only=[False, False, False, False, False, True])
    s = imbalance.summary(t)
    assert s["n_tokens"] == 4
    assert s["gini"] == pytest.approx(0.0, abs=1e-12)
    assert s["negative_share"] == pytest.approx(0.5)
    assert s["max_abs_signal"] == pytest.approx(1.0)


def test_summary_can_exclude_special_tokens_to_separate_imbalance_from_mismatch():
    t = table(token=["1", "2", "3", "<|im_end|>"], signal=[1.0, 1.0, 1.0, -58.0],
              is_special=[False, False, False, True])
    assert imbalance.summary(t)["gini"] > 0.5
    assert imbalance.summary(t, exclude_special=True)["gini"] == pytest.approx(0.0, abs=1e-12)


def test_summary_falls_back_to_log_ratio_when_no_signal_column():
    t = table(log_ratio=[0.0, 0.0, 0.0, -3.0])
    s = imbalance.summary(t)
    assert s["signal_column"] == "log_ratio"
    assert s["gini"] == pytest.approx(0.75)


def test_signal_by_position_puts_a_planted_end_spike_in_the_last_bucket():
    signal = np.full(20, 0.5)
    signal[19] = 9.5  # total = 19*0.5 + 9.5 = 19
    out = imbalance.signal_by_position(table(signal=signal), buckets=4)
    assert out["position_bucket"].tolist() == [0, 5, 10, 15]
    assert out["n"].tolist() == [5, 5, 5, 5]
    assert out["share"].to_numpy() == pytest.approx([2.5 / 19, 2.5 / 19, 2.5 / 19, 11.5 / 19])
    assert out["mean_abs_signal"].iloc[-1] == pytest.approx(11.5 / 5)


def test_token_kind_classifies_digits_format_special_and_other():
    t = table(token=["7", "42", "+1", "+", ";", " ", "\n", "<|im_end|>", "</s>", "[INST]", "hello", "x", "ab3"],
              is_special=[False] * 11 + [True, False])
    assert imbalance.token_kind(t).tolist() == [
        "digit", "digit", "digit", "format", "format", "format", "format", "special", "special", "special",
        "other", "special", "other"]


def test_signal_by_kind_shares_match_hand_computed_values():
    t = table(token=["1", "2", "+", "<|im_end|>", "a"], signal=[1.0, 1.0, 2.0, 5.0, 1.0],
              is_eos=[False, False, False, True, False])
    out = imbalance.signal_by_kind(t).set_index("kind")
    assert out.loc["digit", "share"] == pytest.approx(0.2)
    assert out.loc["format", "share"] == pytest.approx(0.2)
    assert out.loc["special", "share"] == pytest.approx(0.5)
    assert out.loc["other", "share"] == pytest.approx(0.1)
    assert out.loc["digit", "n"] == 2
    assert out.loc["digit", "mean_abs_signal"] == pytest.approx(1.0)


def test_negative_reward_share_by_step_counts_unmasked_negative_log_ratios():
    t = pd.DataFrame({
        "step": [0, 0, 0, 0, 0, 5, 5, 5, 5],
        "log_ratio": [-1, -2, -0.1, 0.5, 9, -1, 1, 2, 3],
        "masked": [False, False, False, False, True, False, False, False, False],
    })
    out = imbalance.negative_reward_share_by_step(t)
    assert out["step"].tolist() == [0, 5]
    assert out["negative_share"].to_numpy() == pytest.approx([0.75, 0.25])
    assert out["n"].tolist() == [4, 4]


def test_top_tokens_lists_the_largest_abs_signal_first():
    t = table(token=list("abcdef"), signal=[0.1, -5.0, 0.2, 3.0, -0.3, 0.0])
    out = imbalance.top_tokens(t, n=3)
    assert out["token"].tolist() == ["b", "d", "e"]
    assert out["abs_signal"].to_numpy() == pytest.approx([5.0, 3.0, 0.3])
    assert out["pos"].tolist() == [1, 3, 4]


# ----------------------------------------------------------------------------- drift


def _drift_table() -> pd.DataFrame:
    # Student rows: entropy 0.2 before going off-support, 1.0 after 1 token, 2.0 after 2-3 tokens.
    since = [0, 0, 1, 2, 3, 0, 1]
    entropy = [0.2, 0.2, 1.0, 2.0, 2.0, 0.2, 1.0]
    student = table(tokens_since_off_support=since, teacher_entropy=entropy,
                    teacher_top1_prob=[0.9, 0.9, 0.5, 0.2, 0.2, 0.9, 0.5], teacher_rank=[1, 1, 2, 5, 7, 1, 2],
                    prefix_source=["student"] * 7, prefix_wrong=[False, False, True, True, True, False, True],
                    drift=[0.0, 0.1, 0.5, 1.0, 1.5, 0.05, 0.6])
    teacher = table(tokens_since_off_support=[0, 0, 0], teacher_entropy=[0.1, 0.3, 0.2],
                    teacher_top1_prob=[0.95, 0.85, 0.9], teacher_rank=[1, 1, 1], prefix_source=["teacher"] * 3,
                    prefix_wrong=[False] * 3, drift=[0.0, 0.0, 0.0], reference_only=[True] * 3)
    return pd.concat([student, teacher], ignore_index=True)


def test_teacher_stats_by_tokens_since_off_support_uses_power_of_two_bins():
    out = drift.teacher_stats_by_drift(_drift_table(), measure="tokens_since_off_support", bins=4)
    student = out[out["prefix_source"] == "student"].set_index("bin_label")
    assert student.index.tolist() == ["0", "1", "2-3"]
    assert student["teacher_entropy"].to_numpy() == pytest.approx([0.2, 1.0, 2.0])
    assert student["n"].tolist() == [3, 2, 2]
    assert student.loc["2-3", "teacher_rank"] == pytest.approx(6.0)
    teacher = out[out["prefix_source"] == "teacher"]
    assert teacher["bin_label"].tolist() == ["0"]
    assert teacher["teacher_entropy"].iloc[0] == pytest.approx(0.2)


def test_teacher_stats_by_prefix_wrong_has_two_bins():
    out = drift.teacher_stats_by_drift(_drift_table(), measure="prefix_wrong")
    student = out[out["prefix_source"] == "student"].set_index("bin_label")
    assert student.loc["prefix ok", "teacher_entropy"] == pytest.approx(0.2)
    assert student.loc["prefix wrong", "teacher_entropy"] == pytest.approx(1.5)
    assert student.loc["prefix wrong", "bin_mid"] == 1.0


def test_teacher_stats_by_cumulative_drift_rises_over_quantile_bins():
    out = drift.teacher_stats_by_drift(_drift_table(), measure="drift", bins=3)
    student = out[out["prefix_source"] == "student"]
    assert len(student) == 3
    assert student["n"].sum() == 7
    assert np.all(np.diff(student["teacher_entropy"].to_numpy()) > 0)
    assert np.all(np.diff(student["bin_mid"].to_numpy()) > 0)


def test_teacher_stats_by_drift_degrades_to_empty_when_the_measure_was_not_logged():
    t = _drift_table().drop(columns=["tokens_since_off_support"])
    out = drift.teacher_stats_by_drift(t, measure="tokens_since_off_support")
    assert out.empty and out.attrs["missing"] == "tokens_since_off_support"
    assert "tokens_since_off_support" not in drift.available_measures(t)


def test_teacher_stats_by_drift_rejects_an_unknown_measure_by_name():
    with pytest.raises(DiagnosticsError, match="unknown drift measure 'distance'"):
        drift.teacher_stats_by_drift(_drift_table(), measure="distance")


def test_reference_stats_are_the_teacher_prefix_means():
    ref = drift.reference_stats(_drift_table())
    assert ref["n"] == 3
    assert ref["teacher_entropy"] == pytest.approx(0.2)
    assert ref["teacher_top1_prob"] == pytest.approx(0.9)
    assert ref["teacher_rank"] == pytest.approx(1.0)


def test_reference_stats_without_teacher_rows_are_nan():
    ref = drift.reference_stats(_drift_table().query("prefix_source == 'student'"))
    assert ref["n"] == 0 and np.isnan(ref["teacher_entropy"])


def test_drift_summary_compares_drifted_undrifted_and_reference():
    s = drift.summary(_drift_table())
    assert s["measure"] == "tokens_since_off_support"
    assert s["n_drifted"] == 4 and s["n_undrifted"] == 3 and s["n_reference"] == 3
    assert s["drifted_share"] == pytest.approx(4 / 7)
    assert s["teacher_entropy_drifted"] == pytest.approx(1.5)
    assert s["entropy_ratio_drifted_undrifted"] == pytest.approx(1.5 / 0.2)
    assert s["entropy_ratio_drifted_reference"] == pytest.approx(1.5 / 0.2)


# ----------------------------------------------------------------------------- mismatch


def _eos_table(eos_teacher_logp: float = -58.71) -> pd.DataFrame:
    """Two responses of 3 ordinary tokens + EOS; the teacher scores EOS at ``eos_teacher_logp``."""
    tokens = ["1", "+", "2", "<|im_end|>"] * 2
    student_logp = np.array([-0.1, -0.2, -0.1, -0.004] * 2)
    teacher_logp = np.array([-0.2, -0.2, -0.3, eos_teacher_logp] * 2)
    ratio = teacher_logp - student_logp
    return pd.DataFrame({
        "step": [3] * 8, "sample": [0] * 4 + [1] * 4, "pos": [0, 1, 2, 3] * 2, "token": tokens,
        "teacher_token": ["1", "+", "2", "<"] * 2, "is_special": [False, False, False, True] * 2,
        "is_eos": [False, False, False, True] * 2, "student_logp": student_logp, "teacher_logp": teacher_logp,
        "log_ratio": ratio, "signal": ratio,
    })


def test_planted_eos_mismatch_carries_the_hand_computed_signal_share():
    t = _eos_table()
    eos_abs = abs(-58.71 + 0.004)
    total = 2 * (0.1 + 0.0 + 0.2 + eos_abs)
    assert mismatch.special_signal_share(t) == pytest.approx(2 * eos_abs / total)
    assert mismatch.eos_signal_share(t) == pytest.approx(2 * eos_abs / total)


def test_masked_eos_carries_no_signal_share():
    t = _eos_table()
    t["masked"] = t["is_eos"]
    assert mismatch.eos_signal_share(t) == 0.0


def test_eos_is_found_without_an_is_eos_column_as_the_special_token_ending_a_response():
    t = _eos_table().drop(columns=["is_eos"])
    assert mismatch.eos_mask(t).tolist() == [False, False, False, True] * 2


def test_largest_log_ratios_show_the_strings_each_side_read():
    out = mismatch.largest_log_ratios(_eos_table(), n=3)
    first = out.iloc[0]
    assert first["token"] == "<|im_end|>" and first["teacher_token"] == "<"
    assert first["teacher_logp"] == pytest.approx(-58.71)
    assert first["student_logp"] == pytest.approx(-0.004)
    assert out["token"].tolist()[:2] == ["<|im_end|>", "<|im_end|>"]
    assert len(out) == 3


def test_largest_log_ratios_use_the_student_token_when_no_teacher_token_was_logged():
    out = mismatch.largest_log_ratios(_eos_table().drop(columns=["teacher_token"]), n=1)
    assert out["teacher_token"].iloc[0] == "<|im_end|>"


def test_mismatch_summary_reports_eos_log_ratio_and_alignment_problems():
    alignment = {"eos_a": "<|im_end|>", "eos_b": "</s>", "differing_ids": [{"id": 5}, {"id": 9}]}
    s = mismatch.summary(_eos_table(), alignment)
    assert s["eos_mean_log_ratio"] == pytest.approx(-58.71 + 0.004)
    assert s["n_eos"] == 2
    assert s["eos_differs"] is True and s["n_differing_ids"] == 2
    assert s["largest_log_ratio_token"] == "<|im_end|>"


def test_alignment_of_a_matched_pair_shows_no_problem():
    same = {"eos_a": "<|im_end|>", "eos_b": "<|im_end|>", "differing_ids": [],
            "eos_maps_to": {"a": "<|im_end|>", "b": "<|im_end|>"}}
    assert mismatch.alignment_problems(same)["eos_differs"] is False
    misread = dict(same, eos_maps_to={"a": "<", "b": "<|im_end|>"})
    assert mismatch.alignment_problems(misread)["eos_differs"] is True


def test_load_alignment_reads_the_run_report_and_tolerates_its_absence(tmp_path):
    assert mismatch.load_alignment(tmp_path) is None
    (tmp_path / "alignment.json").write_text(json.dumps({"eos_a": "x", "eos_b": "y"}))
    assert mismatch.load_alignment(tmp_path) == {"eos_a": "x", "eos_b": "y"}


def test_response_length_trend_recovers_a_linear_slope():
    metrics = pd.DataFrame({"step": np.arange(20), "response_len": 10 + 2.0 * np.arange(20), "loss": 1.0})
    trend = mismatch.response_length_trend(metrics)
    assert trend.columns.tolist() == ["step", "response_len"]
    assert trend.attrs["slope"] == pytest.approx(2.0)
    assert trend.attrs["first_mean"] == pytest.approx(10 + 2.0 * 2)  # mean of steps 0..4
    assert trend.attrs["last_mean"] == pytest.approx(10 + 2.0 * 17)  # mean of steps 15..19


# ----------------------------------------------------------------------------- collapse


def test_planted_collapse_shows_in_support_mass_by_step():
    t = pd.DataFrame({"step": [0, 0, 10, 10, 20, 20], "student_support_mass": [0.9, 1.0, 0.6, 0.7, 0.2, 0.3],
                      "topk_overlap": [1.0, 1.0, 0.5, 0.5, 0.25, 0.25], "prefix_source": ["student"] * 6})
    by_step = collapse.support_by_step(t)
    assert by_step["step"].tolist() == [0, 10, 20]
    assert by_step["student_support_mass"].to_numpy() == pytest.approx([0.95, 0.65, 0.25])
    s = collapse.summary(t)
    assert s["support_mass_change"] == pytest.approx(-0.7)
    assert s["overlap_last"] == pytest.approx(0.25)


def test_support_is_estimated_from_topk_lists_when_the_columns_are_missing():
    t = pd.DataFrame({
        "step": [0, 1],
        "teacher_topk_ids": [np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4])],
        "student_topk_ids": [np.array([4, 3, 2, 1]), np.array([9, 8, 2, 7])],
        "student_topk_logps": [np.log([0.4, 0.3, 0.2, 0.1]), np.log([0.4, 0.3, 0.2, 0.1])],
    })
    by_step = collapse.support_by_step(t)
    assert by_step.attrs["estimated"] is True
    assert by_step["topk_overlap"].to_numpy() == pytest.approx([1.0, 0.25])
    assert by_step["student_support_mass"].to_numpy() == pytest.approx([1.0, 0.2])


# ----------------------------------------------------------------------------- input handling


def test_a_table_without_the_needed_column_gets_an_error_naming_it():
    with pytest.raises(DiagnosticsError, match=r"\['pos'\]"):
        imbalance.signal_by_position(pd.DataFrame({"signal": [1.0]}))
    with pytest.raises(DiagnosticsError, match="neither a 'signal' nor a 'log_ratio'"):
        imbalance.summary(pd.DataFrame({"step": [0]}))


def test_pick_steps_keeps_first_and_last_and_spreads_the_rest():
    assert pick_steps(list(range(0, 100, 5)), 3) == [0, 50, 95]
    assert pick_steps([4, 1, 9], None) == [1, 4, 9]
    assert pick_steps([1, 2], 8) == [1, 2]


def test_student_eos_for_teacher_reads_the_structured_report_of_both_shipped_pairs():
    import json

    from opd_core.diagnostics.mismatch import student_eos_for_teacher
    from opd_core.samples import default_samples_dir

    def report(name):
        return json.loads((default_samples_dir() / name / "alignment.json").read_text())

    verdict, detail = student_eos_for_teacher(report("baseline-sampled-token"))
    assert verdict == "not its EOS" and "'<|im_end|>' is not the other side's EOS" in detail
    assert student_eos_for_teacher(report("matched-sampled-token"))[0] == "its EOS too"
    assert student_eos_for_teacher(None) == ("–", "")
