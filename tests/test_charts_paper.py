"""The paper's views: diagnostics tables (position-matched drift, reward scatter) and their figures."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import charts_paper
from opd_core.diagnostics import drift, rewards


def _tokens(n_samples=40, length=24, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for step in (1, 200):
        for s in range(n_samples):
            teacher = s >= n_samples - 8
            err = None if teacher else int(rng.integers(4, 30))
            for pos in range(length):
                drifted = err is not None and pos > err
                rows.append({"step": step, "sample": s, "pos": pos, "masked": False, "reference_only": teacher,
                             "prefix_source": "teacher" if teacher else "student",
                             "tokens_since_off_support": max(0, pos - err) if drifted else 0,
                             "prefix_wrong": drifted,
                             "teacher_entropy": 0.1 + 0.01 * pos + (0.5 if drifted else 0.0),
                             "teacher_top1_prob": 0.95 - (0.3 if drifted else 0.0),
                             "log_ratio": rng.normal(-0.2 - 0.05 * pos, 0.5), "student_logp": -0.1,
                             "teacher_logp": -0.1 + rng.normal(-0.2, 0.5), "token": "7", "is_eos": False,
                             "overlap_mass_student": 0.98, "overlap_mass_teacher": 0.97, "teachability": 0.5})
    return pd.DataFrame(rows)


def test_position_matched_gap_removes_the_position_effect():
    t = _tokens()
    exact = drift.position_matched_gap(t, bucket=1)
    assert abs(exact["entropy_gap"] - 0.5) < 1e-6  # the planted drift effect, not the 0.01/position trend
    assert abs(exact["top1_drop"] - 0.3) < 1e-6
    coarse = drift.position_matched_gap(t, bucket=8)
    assert abs(coarse["entropy_gap"] - 0.5) < 0.02 and coarse["buckets"] >= 2
    student = t[t["prefix_source"] == "student"]
    naive = (student[student["prefix_wrong"]]["teacher_entropy"].mean()
             - student[~student["prefix_wrong"]]["teacher_entropy"].mean())
    assert naive - 0.5 > 0.05  # unmatched, position inflates the gap


def test_stats_by_position_has_three_groups_and_gap_quantiles_order():
    t = _tokens()
    by = drift.stats_by_position(t, bucket=8)
    assert set(by["group"]) == {"teacher rollouts", "student (first step)", "student (now)"}
    q = drift.gap_quantiles_by_position(t, bucket=4)
    assert (q["q05"] <= q["q25"]).all() and (q["q25"] <= q["q50"]).all() and (q["q75"] <= q["q95"]).all()
    assert q["negative_share"].between(0, 1).all()


def test_reward_scatter_share_below_diagonal():
    t = pd.DataFrame({"step": 1, "masked": [False, False, False, True], "prefix_source": "student",
                      "reference_only": False, "student_logp": np.log([0.9, 0.5, 0.2, 0.9]),
                      "teacher_logp": np.log([0.3, 0.6, 0.1, 0.99]), "token": "x"})
    t["log_ratio"] = t["teacher_logp"] - t["student_logp"]
    points, share = rewards.reward_scatter(t, 1)
    assert len(points) == 3 and abs(share - 2 / 3) < 1e-9
    assert abs(rewards.negative_reward_share(t, 1) - 2 / 3) < 1e-9


def test_every_paper_figure_builds_and_handles_empty_input():
    t = _tokens()
    points, share = rewards.reward_scatter(t, 1)
    figs = [charts_paper.reward_scatter_figure(points, share),
            charts_paper.gap_by_position_figure(drift.gap_quantiles_by_position(t)),
            charts_paper.position_entropy_figure(drift.stats_by_position(t)),
            charts_paper.drifted_by_position_figure(drift.drifted_by_position(t)),
            charts_paper.overlap_by_position_figure(drift.overlap_by_position(t)),
            charts_paper.rescue_figure(pd.DataFrame({"since_error": [-1, 0, 8], "n": [5, 5, 5],
                                                     "rescue_rate_greedy": [1.0, 0.8, 0.1],
                                                     "rescue_rate_sampled": [0.9, 0.7, 0.1]}),
                                       {"rescue_rate_teacher_own": 0.97})]
    assert all(isinstance(f, go.Figure) and f.data for f in figs)
    assert "below y = x" in figs[0].layout.title.text
    assert len(figs[3].data) == 3  # teacher, on support, drifted
    empty = charts_paper.overlap_by_position_figure(drift.overlap_by_position(t.drop(
        columns=["overlap_mass_student", "overlap_mass_teacher", "teachability"])))
    assert not empty.data
    assert not charts_paper.rescue_figure(pd.DataFrame(columns=["since_error", "n", "rescue_rate_greedy",
                                                                "rescue_rate_sampled"])).data
