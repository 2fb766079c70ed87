"""Figure builders and table shaping: DataFrame in, figure (or table) out, with the data drawn as given."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from app import charts, tables
from opd_core.diagnostics import drift, imbalance
from opd_core.synthetic_runs import synthetic_token_table


def test_lorenz_figure_draws_the_curve_against_the_equality_line() -> None:
    lorenz = pd.DataFrame({"token_share": [0, 0.5, 1], "signal_share": [0, 0.1, 1]})
    fig = charts.lorenz_figure(lorenz, gini=0.6)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    # The equality line shares the curve's x points (a 2-point diagonal filled against a 200-point curve
    # drew the gap as a staircase).
    assert list(fig.data[0].x) == list(fig.data[1].x) and list(fig.data[0].y) == [0, 0.5, 1]
    assert list(fig.data[1].y) == [0, 0.1, 1]
    assert "0.60" in fig.data[1].name


def test_figures_accept_what_diagnostics_return() -> None:
    tok = synthetic_token_table(0)
    figs = [
        charts.lorenz_figure(imbalance.lorenz_curve(tok["signal"].to_numpy()), imbalance.gini(tok["signal"])),
        charts.signal_by_position_figure(imbalance.signal_by_position(tok)),
        charts.signal_by_kind_figure(imbalance.signal_by_kind(tok)),
        charts.negative_share_figure(imbalance.negative_reward_share_by_step(tok)),
        charts.teacher_vs_drift_figure(drift.teacher_stats_by_drift(tok), "teacher_entropy", drift.reference_stats(tok)),
    ]
    assert all(isinstance(f, go.Figure) and len(f.data) >= 1 for f in figs)


def test_signal_by_kind_shows_signal_share_and_token_share() -> None:
    by_kind = pd.DataFrame({"kind": ["digit", "special"], "share": [0.2, 0.8], "n": [90, 10],
                            "mean_abs_signal": [0.1, 5.0]})
    fig = charts.signal_by_kind_figure(by_kind)
    bars = [t for t in fig.data if t.type == "bar"]
    # One bar trace per kind, so each colour has its own legend key.
    assert [list(t.y) for t in bars] == [[0.2], [0.8]] and [t.name.split(":")[0] for t in bars] == ["digit", "special"]
    assert bars[1].marker.color == charts.KIND_COLOURS["special"]
    ticks = next(t for t in fig.data if t.type == "scatter")
    assert list(ticks.y) == pytest.approx([0.9, 0.1])
    assert not fig.layout.xaxis.title.text  # the legend below the bars would cover an x title (seen at 1440 px)


def test_teacher_vs_drift_has_one_line_per_prefix_source_and_the_reference_line() -> None:
    by_drift = pd.DataFrame({"bin_label": ["0-1", "1-2", "0-1"], "bin_mid": [0.5, 1.5, 0.5],
                             "prefix_source": ["student", "student", "teacher"], "n": [5, 5, 3],
                             "teacher_entropy": [0.2, 0.9, 0.1]})
    fig = charts.teacher_vs_drift_figure(by_drift, "teacher_entropy", {"teacher_entropy": 0.15})
    assert sorted(t.name for t in fig.data) == ["student prefixes", "teacher prefixes"]
    student = next(t for t in fig.data if t.name == "student prefixes")
    assert list(student.y) == [0.2, 0.9]
    assert [s.y0 for s in fig.layout.shapes] == [0.15]


def test_teacher_vs_drift_without_reference_draws_no_reference_line() -> None:
    by_drift = pd.DataFrame({"bin_label": ["a"], "bin_mid": [0.0], "prefix_source": ["student"], "n": [1],
                             "teacher_entropy": [0.3]})
    fig = charts.teacher_vs_drift_figure(by_drift, "teacher_entropy", {"teacher_entropy": float("nan")})
    assert len(fig.layout.shapes) == 0


def test_support_and_length_figures_plot_their_columns() -> None:
    support = pd.DataFrame({"step": [0, 1], "student_support_mass": [0.9, 0.3], "topk_overlap": [0.8, 0.2]})
    assert [list(t.y) for t in charts.support_figure(support).data] == [[0.9, 0.3], [0.8, 0.2]]
    trend = pd.DataFrame({"step": [0, 1, 2], "response_len": [10, 20, 30]})
    trend.attrs["slope"] = 10.0
    fig = charts.response_length_figure(trend)
    assert list(fig.data[0].y) == [10, 20, 30] and "+10.00" in fig.layout.title.text


def test_compare_figure_draws_one_line_per_run() -> None:
    long = pd.DataFrame({"run": ["a", "a", "b"], "x": [0, 1, 0], "value": [1.0, 2.0, 3.0]})
    fig = charts.compare_figure(long, "loss")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == [1.0, 2.0]


def test_metrics_overview_has_a_panel_per_logged_metric_and_says_when_there_are_none() -> None:
    metrics = pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5], "eval_accuracy": [None, None]})
    assert len(charts.metrics_overview_figure(metrics, ["loss", "eval_accuracy"]).data) == 1
    empty = charts.metrics_overview_figure(pd.DataFrame({"step": []}), ["loss"])
    assert "no metrics" in empty.layout.annotations[0].text


def test_builders_name_missing_columns() -> None:
    with pytest.raises(ValueError, match="signal_share"):
        charts.lorenz_figure(pd.DataFrame({"token_share": [0, 1]}))


def test_metric_series_smooths_like_an_ema_and_counts_tokens_seen() -> None:
    metrics = pd.DataFrame({"step": [0, 1, 2], "loss": [0.0, 2.0, 2.0], "tokens": [10, 10, 20]})
    raw = tables.metric_series(metrics, "loss")
    assert raw["value"].tolist() == [0.0, 2.0, 2.0]
    smooth = tables.metric_series(metrics, "loss", smoothing=0.5)
    assert smooth["value"].tolist() == pytest.approx([0.0, 1.0, 1.5])
    assert tables.metric_series(metrics, "loss", x="tokens")["x"].tolist() == [10, 20, 40]
    with pytest.raises(ValueError, match="smoothing"):
        tables.metric_series(metrics, "loss", smoothing=1.0)


def test_compare_summary_reports_final_and_best_accuracy_and_mean_grad_norm() -> None:
    a = pd.DataFrame({"step": [0, 1, 2], "eval_accuracy": [0.2, 0.6, 0.4], "grad_norm": [1.0, 2.0, 3.0],
                      "response_len": [30.0, 20.0, 10.0]})
    b = pd.DataFrame({"step": [0], "loss": [1.0]})
    summary = tables.compare_summary({"a": a, "b": b}, {"a": "⚠️ something"}).set_index("run")
    assert summary.loc["a", "final_eval_accuracy"] == 0.4
    assert summary.loc["a", "best_eval_accuracy"] == 0.6
    assert summary.loc["a", "mean_grad_norm"] == 2.0
    assert summary.loc["a", "final_response_len"] == 10.0
    assert summary.loc["a", "flags"] == "⚠️ something"
    assert pd.isna(summary.loc["b", "best_eval_accuracy"]) and summary.loc["b", "steps"] == 1


def test_key_settings_and_flags_summarise_a_run() -> None:
    text = tables.key_settings({"objective_params": {"k": 32}, "top_p": 0.9, "unrelated": 1})
    assert text == "k=32, top_p=0.9"

    class F:
        def __init__(self, severity: str, title: str) -> None:
            self.severity, self.title = severity, title

    class R:
        findings = [F("info", "fine"), F("warning", "w"), F("critical", "c")]

    assert tables.flags_text(R()) == "[critical] c; [warning] w"
    assert tables.health_summary(R()) == "1 critical · 1 warning"
    R.findings = [*R.findings, F("warning", "w2")]
    assert tables.health_summary(R(), damaged=2) == "2 damaged · 1 critical · 2 warnings"
    assert tables.health_summary(None) == "ok"
    assert tables.key_settings({"objective_params": {"clip_log_ratio": None}, "top_k": None}) == (
        "clip_log_ratio=–, top_k=–")  # no Python None on the page


def test_every_figure_carries_an_unshared_copy_of_the_plotly_white_template():
    import plotly.io as pio

    white = pio.templates["plotly_white"].to_plotly_json()
    lorenz = charts.lorenz_figure(pd.DataFrame({"token_share": [0.0, 1.0], "signal_share": [0.0, 1.0]}))
    for fig in (lorenz, charts.empty_figure("nothing"), charts.metrics_overview_figure(pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}), ["loss"])):
        assert fig.to_dict()["layout"]["template"] == white
    lorenz.layout.template.layout.font.size = 30  # one figure restyled: the registered template stays
    assert pio.templates["plotly_white"].to_plotly_json() == white


def test_the_runs_tables_last_metrics_are_the_last_logged_values_and_follow_new_records(tmp_path) -> None:
    import json

    from app import state
    from opd_core import runs
    from opd_core.synthetic_runs import write_synthetic_run

    run = write_synthetic_run(tmp_path / "r", steps=4, log_every=2, samples=1, length=4)
    metrics = runs.read_metrics(run)
    last = state.last_metrics(run, tables.LAST_METRICS)
    assert last == {c: tables.last_value(metrics, c) for c in tables.LAST_METRICS}
    assert last["loss"] == float(metrics["loss"].dropna().iloc[-1])
    with open(run / runs.METRICS_FILE, "a") as fh:  # a live run logs one more step
        fh.write(json.dumps({"step": 99, "loss": 12.5}) + "\n")
    assert state.last_metrics(run, tables.LAST_METRICS)["loss"] == 12.5
