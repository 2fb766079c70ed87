"""Rescue-rate planning and summaries (no model: the teacher-driven part is pinned in test_toy_v2_world)."""

import math

import pandas as pd
import pytest

from opd_core import rescue


def _roll(sample, n, source="student", top1=0.95):
    return rescue.Rollout(step=1, sample=sample, prompt=f"p{sample}", response_ids=list(range(n)) + [99],
                          source=source, ended=True, teacher_top1=[top1] * (n + 1), in_nucleus=[True] * (n + 1))


def test_plan_cycles_distances_and_matches_positions():
    rollouts = [_roll(i, 30) for i in range(10)] + [_roll(10 + i, 30) for i in range(3)] + \
        [_roll(20 + i, 30, "teacher") for i in range(3)]
    wrong = {(1, i): 5 for i in range(10)}
    cuts = rescue.plan_cuts(rollouts, wrong, budget=None)
    errs = [c for c in cuts if c.kind in ("before_error", "after_error")]
    assert [c.since_error for c in errs[:len(rescue.SINCE_ERROR_GRID)]] == list(rescue.SINCE_ERROR_GRID)
    assert all(c.length == 5 + 1 + c.since_error for c in errs)
    assert {c.kind for c in cuts} == {"before_error", "after_error", "on_support", "teacher_own"}
    positions = {c.length for c in errs}
    assert all(c.length in positions for c in cuts if c.kind in ("on_support", "teacher_own"))


def test_plan_respects_budget_and_response_length():
    rollouts = [_roll(i, 8) for i in range(40)] + [_roll(100 + i, 8, "teacher") for i in range(40)]
    wrong = {(1, i): 3 for i in range(40)}
    cuts = rescue.plan_cuts(rollouts, wrong, budget=16)
    assert len(cuts) == 16
    assert all(c.length <= 8 for c in cuts)
    every = rescue.plan_cuts(rollouts[:1], wrong, budget=None, every_cut=True)
    assert sorted(c.since_error for c in every) == [-1, 0, 1, 2, 4]  # 3 + 1 + 8 > 8 tokens: cut off


def test_summary_rates_and_confidently_wrong():
    rows = pd.DataFrame({
        "kind": ["after_error"] * 4 + ["before_error", "teacher_own"],
        "since_error": [0, 1, 8, 16, -1, None],
        "teacher_top1": [0.5, 0.95, 0.95, 0.99, 0.9, 0.99],
        "rescued_greedy": [True, True, False, False, True, True],
        "rescued_sampled": [True, False, False, False, True, True],
        "pos": [4, 5, 12, 20, 3, 12], "step": 1, "sample": 0,
    })
    s = rescue.summarize(rows)
    assert s["rescue_rate_drifted"] == 0.5 and s["rescue_rate_mild"] == 1.0 and s["rescue_rate_far"] == 0.0
    assert s["rescue_rate_teacher_own"] == 1.0 and s["rescue_rate_before_error"] == 1.0
    assert s["rescue_rate_drifted_sampled"] == 0.25
    assert s["confidently_wrong_share"] == 0.5  # two of four drifted cuts: top-1 >= 0.9 and not rescued
    by = rescue.by_since_error(rows)
    assert list(by["since_error"]) == [-1, 0, 1, 8, 16]
    assert by["ci_low"].between(0, 1).all() and (by["ci_low"] <= by["rescue_rate_greedy"]).all()
    assert (by["rescue_rate_greedy"] <= by["ci_high"]).all()
    # the same response cut mild (rescued) and far (not): one pair, a fall of 1, no standard error from one
    assert s["rescue_fall_mild_far"] == 1.0 and s["rescue_fall_pairs"] == 1 and s["rescue_fall_mild_far_se"] is None
    assert s["n_mild"] == 2 and s["n_far"] == 1 and s["rescue_rate_far_ci"][0] == 0.0
    assert rescue.summarize(rows.iloc[0:0]) == {"n_cuts": 0}
    assert math.isclose(rescue.step_metrics(rows)["rescue_rate_on_support"], 1.0)


@pytest.mark.parametrize("budget", [None, 3, 0])
def test_loop_logs_rescue_metrics_with_their_own_timing(tmp_path, budget):
    """A logging step runs the rescue phase (at most ``rescue_budget`` cuts) and logs its rates and t_rescue;
    a budget of 0 turns the phase off and trains the same."""
    from opd_core import runs
    from opd_core.config import load_config
    from opd_core.train_entry import run_in_dir

    sets = ["steps=1", "prompts_per_step=4", "num_rollouts=2", "eval_every=0", "eval_size=4", "log_tokens_every=1",
            "checkpoint_every=0", "max_new_tokens=24"] + ([] if budget is None else [f"rescue_budget={budget}"])
    cfg = load_config("matched", sets)
    run = tmp_path / "r"
    run.mkdir()
    runs.write_config(run, cfg.to_dict())
    runs.write_status(run, state="queued", step=0, total_steps=1)
    assert run_in_dir(run, progress=False) == "finished"
    m = runs.read_metrics(run)
    row = m[m["step"] == 1].iloc[0]
    if budget == 0:
        assert "rescue_cuts" not in m.columns and "t_rescue" not in m.columns
        return
    assert 0 < row["rescue_cuts"] <= (budget or rescue.DEFAULT_LOOP_CUTS)
    assert row["t_rescue"] > 0
    assert "rescue_rate_on_support" in m.columns and "confidently_wrong_share" in m.columns


def test_wilson_interval_stays_in_range_and_is_honest_at_the_ends():
    lo, hi = rescue.wilson_interval(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    assert rescue.wilson_interval(0, 10)[0] == 0.0 and 0.2 < rescue.wilson_interval(0, 10)[1] < 0.35
    assert rescue.wilson_interval(10, 10)[1] == 1.0 and 0.65 < rescue.wilson_interval(10, 10)[0] < 0.8
    assert all(math.isnan(x) for x in rescue.wilson_interval(0, 0))


def test_paired_fall_compares_each_response_with_itself():
    # Response 0 is rescued near the error and not far from it; response 1 neither; response 2 has no far cut.
    rows = pd.DataFrame({"step": 1, "sample": [0, 0, 1, 1, 2], "since_error": [0, 16, 1, 20, 0],
                         "rescued_greedy": [True, False, False, False, True]})
    fall = rescue.paired_fall(rows)
    assert fall["rescue_fall_pairs"] == 2 and fall["rescue_fall_mild_far"] == 0.5
    assert math.isclose(fall["rescue_fall_mild_far_se"], 0.5)


def test_continuations_stop_once_their_grade_is_settled_and_no_rescue_verdict_changes(tmp_path, monkeypatch):
    """A greedy continuation that can no longer be graded correct (toy:addition: no longer a prefix of the chain
    grammar) stops there: the rescue table's verdicts (greedy, and sampled, which run in full) are those of the
    full continuations, for fewer teacher tokens."""
    from opd_core import runs
    from opd_core.config import load_config
    from opd_core.rescue_runs import rescue_run
    from opd_core.train_entry import run_in_dir

    cfg = load_config("matched", ["steps=1", "prompts_per_step=4", "num_rollouts=2", "eval_every=0",
                                  "log_tokens_every=1", "checkpoint_every=0", "max_new_tokens=24",
                                  "rescue_budget=0", "temperature=1.5"])
    run = tmp_path / "r"
    run.mkdir()
    runs.write_config(run, cfg.to_dict())
    runs.write_status(run, state="queued", step=0, total_steps=1)
    assert run_in_dir(run, progress=False) == "finished"

    written: list[int] = []
    real = rescue.sample_responses

    def counting(*args, **kwargs):
        responses, ended = real(*args, **kwargs)
        written[-1] += sum(len(r) for r in responses)
        return responses, ended

    monkeypatch.setattr(rescue, "sample_responses", counting)
    written.append(0)
    stopped = rescue_run(run, budget=24, write=False)
    monkeypatch.setattr(rescue, "cannot_pass", lambda *a: False)  # every continuation runs to EOS or the limit
    written.append(0)
    full = rescue_run(run, budget=24, write=False)

    def verdicts(result):
        return [(c["sample"], c["pos"], c["rescued_greedy"], c["rescued_sampled"]) for c in result["cuts"]]

    assert len(stopped["cuts"]) > 4 and verdicts(stopped) == verdicts(full)  # sampled ones run in full
    assert written[0] < written[1], written
