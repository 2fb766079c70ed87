"""Pins the Lab's figure builders (DataFrame in, plotly figure out) and the Lab page itself."""

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from app import charts_lab
from opd_core.lab import LabSetting, TrainSetting, run_study, train_curves


@pytest.fixture(scope="module")
def study():
    return run_study(LabSetting(vocab_size=3, horizon=4))


def test_bias_figure_plots_bias_against_sorted_gamma_and_marks_the_chosen_gamma(study):
    shuffled = study.by_gamma.sample(frac=1.0, random_state=0)
    fig = charts_lab.bias_vs_gamma_figure(shuffled, selected_gamma=0.5)
    assert isinstance(fig, go.Figure)
    assert list(fig.data[0].x) == sorted(study.by_gamma["gamma"])
    assert list(fig.data[0].y) == list(study.by_gamma.sort_values("gamma")["bias"])
    assert any("0.5" in (a.text or "") for a in fig.layout.annotations)


def test_variance_figure_uses_a_log_axis(study):
    fig = charts_lab.variance_vs_gamma_figure(study.by_gamma)
    assert fig.layout.yaxis.type == "log"
    assert list(fig.data[0].y) == list(study.by_gamma.sort_values("gamma")["variance"])


def test_horizon_figure_draws_one_log_log_line_per_estimator(study):
    fig = charts_lab.variance_vs_horizon_figure(study.by_horizon)
    assert [t.name for t in fig.data] == list(study.by_horizon["estimator"].unique())
    assert (fig.layout.xaxis.type, fig.layout.yaxis.type) == ("log", "log")
    assert list(fig.data[0].x) == [1, 2, 3, 4]


def test_objective_bias_figure_groups_both_targets(study):
    fig = charts_lab.objective_bias_figure(study.topk)
    assert len(fig.data) == 2 and fig.layout.barmode == "group"
    assert list(fig.data[1].y) == list(study.topk["bias_vs_token_kl"])


def test_training_figure_draws_one_line_per_run_and_skips_the_final_blank_proxy():
    curves = train_curves(LabSetting(vocab_size=3, horizon=3), TrainSetting(steps=5))
    fig = charts_lab.training_curves_figure(curves, "variance_proxy")
    assert len(fig.data) == curves["estimator"].nunique()
    assert len(fig.data[0].x) == 5  # steps 0..4 have a proxy; step 5 is the final KL only
    kl = charts_lab.training_curves_figure(curves, "sequence_kl", log_y=False)
    assert len(kl.data[0].x) == 6 and kl.layout.yaxis.type == "linear"


def test_builders_name_missing_columns_and_unknown_metrics():
    with pytest.raises(ValueError, match="bias"):
        charts_lab.bias_vs_gamma_figure(pd.DataFrame({"gamma": [0.0]}))
    with pytest.raises(ValueError, match="empty"):
        charts_lab.variance_vs_horizon_figure(pd.DataFrame(columns=["horizon", "estimator", "variance"]))
    with pytest.raises(ValueError, match="unknown metric"):
        charts_lab.training_curves_figure(pd.DataFrame(), "loss")


def test_lab_page_runs_and_reacts_to_its_sliders():
    page = Path(__file__).resolve().parents[1] / "pages" / "lab.py"
    app = AppTest.from_file(str(page), default_timeout=60).run()
    assert not app.exception
    assert len(app.get("plotly_chart")) == 6
    before = {m.label: m.value for m in app.metric}
    assert before["Sequences enumerated"] == "1,024"
    app.slider(key="lab_horizon").set_value(3).run()
    after = {m.label: m.value for m in app.metric}
    assert after["Sequences enumerated"] == "64"
    assert after["Exact KL_seq(p_S ‖ p_T)"] != before["Exact KL_seq(p_S ‖ p_T)"]
    app.slider(key="lab_vocab").set_value(6).run()
    app.slider(key="lab_horizon").set_value(10).run()
    assert not app.exception
    assert "too many to enumerate" in app.error[0].value
