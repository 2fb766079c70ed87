"""Every dashboard page, driven by Streamlit's AppTest: renders without exceptions on synthetic runs, on an
empty runs folder and on the shipped sample runs; its key widgets exist; selections change what is shown;
untrusted run ids and token text never become paths or live markup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import server
from app.navigation import available_specs
from app.sources import ENV_RUNS_DIR, ENV_SAMPLE_RUNS, resolve_run_key
from opd_core import runs
from opd_core.synthetic_runs import synthetic_token_table, write_synthetic_run

REPO = Path(__file__).resolve().parents[1]
MAIN = str(REPO / "app" / "main.py")
MY_PAGES = ["runs", "inspector", "imbalance", "drift", "mismatch", "health", "compare"]
EVIL_TOKEN = "<script>alert('x')</script>"
EVIL_IMG = '<img src=x onerror="alert(1)">'


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("runs")
    write_synthetic_run(base / "alpha", steps=6, log_every=2, samples=4, length=12)
    write_synthetic_run(base / "beta", steps=6, log_every=2, samples=4, length=12, objective="topk_support",
                        eos_mismatch=False, collapse_by_end=0.8, seed=1)
    return base


@pytest.fixture(scope="module")
def evil_runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("evil")
    run = write_synthetic_run(base / "evil", steps=1, samples=2, length=6)
    table = synthetic_token_table(0, samples=2, length=6)
    table["token"] = [EVIL_TOKEN, EVIL_IMG] * 6
    table["teacher_topk_tokens"] = [[EVIL_IMG] * 8] * len(table)
    table["student_topk_tokens"] = [[EVIL_TOKEN] * 8] * len(table)
    table["prompt"] = EVIL_IMG
    runs.write_token_records(run, 0, table)
    return base


def _app(monkeypatch: pytest.MonkeyPatch, runs_dir: Path, samples: Path | str = "") -> AppTest:
    monkeypatch.setenv(ENV_RUNS_DIR, str(runs_dir))
    monkeypatch.setenv(ENV_SAMPLE_RUNS, str(samples))
    return AppTest.from_file(MAIN, default_timeout=60)


def _open(at: AppTest, page: str) -> AppTest:
    if not at._tree:  # noqa: SLF001 - AppTest needs one run before switching pages
        at.run()
    at.switch_page(f"../pages/{page}.py").run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    return at


def _labels(at: AppTest) -> set[str]:
    return {w.label for kind in ("selectbox", "multiselect", "slider", "select_slider", "toggle", "radio")
            for w in getattr(at, kind)}


def _html(at: AppTest) -> str:
    return "".join(h.proto.body for h in at.html)


def _chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


@pytest.mark.parametrize("page,widgets", [
    ("runs", {"Diagnose this run", "Compare these runs"}),
    ("inspector", {"Run", "Step", "Sample", "Colour tokens by", "Position", "Hide masked", "Hide special"}),
    ("imbalance", {"Run", "Logged steps analysed"}),
    ("drift", {"Run", "Drift measured as", "Teacher statistic", "Bins"}),
    ("mismatch", {"Run", "Logged steps analysed"}),
    ("health", {"Run"}),
    ("compare", {"Runs to compare", "Metric", "x axis", "Smoothing"}),
])
def test_page_renders_on_synthetic_runs_with_its_key_widgets(monkeypatch, runs_dir, page, widgets) -> None:
    at = _open(_app(monkeypatch, runs_dir), page)
    assert widgets <= _labels(at), f"missing {widgets - _labels(at)}"
    assert not at.error


@pytest.mark.parametrize("page", MY_PAGES)
def test_page_on_an_empty_runs_folder_says_how_to_get_runs(monkeypatch, tmp_path, page) -> None:
    at = _open(_app(monkeypatch, tmp_path / "nothing-here"), page)
    assert any("No runs found" in i.value for i in at.info)


def test_every_registered_page_renders_on_the_shipped_sample_runs(monkeypatch, tmp_path) -> None:
    samples = REPO / "sample_runs"
    assert runs.list_runs(samples), "sample_runs/ has no runs: build them with `opd-lab samples build`"
    at = _app(monkeypatch, tmp_path / "no-user-runs", samples)
    for spec in available_specs():
        if spec.file[:-3] in MY_PAGES:
            _open(at, spec.file[:-3])
            assert not at.error, spec.title


def test_choosing_a_run_changes_what_the_runs_page_shows(monkeypatch, runs_dir) -> None:
    at = _open(_app(monkeypatch, runs_dir), "runs")
    first = [s.value for s in at.subheader if s.value.startswith("Run ")]
    other = next(k for k in ("runs:alpha", "runs:beta") if k != at.selectbox(key="_w_run").value)
    at.selectbox(key="_w_run").set_value(other).run()
    second = [s.value for s in at.subheader if s.value.startswith("Run ")]
    assert first != second and other.split(":")[1] in second[0]
    assert at.query_params["run"] == [other] or at.query_params["run"] == other


def test_inspector_sample_and_colour_choices_change_the_strip(monkeypatch, runs_dir) -> None:
    at = _open(_app(monkeypatch, runs_dir), "inspector")
    strip = _html(at)
    assert "opd-tok" in strip and "<b>signal</b>" in strip
    at.selectbox(key="insp_colour").set_value("teacher_entropy").run()
    assert "<b>teacher_entropy</b>" in _html(at)
    sample_box = next(s for s in at.selectbox if s.label == "Sample")
    before = _html(at)
    sample_box.set_value(sample_box.options[-1] if isinstance(sample_box.options[-1], int) else 3).run()
    assert _html(at) != before


def test_inspector_hides_masked_tokens_on_request(monkeypatch, tmp_path) -> None:
    run = write_synthetic_run(tmp_path / "runs" / "masked", steps=1, samples=1, length=10)
    table = synthetic_token_table(0, samples=1, length=10)
    table["masked"] = [i % 2 == 0 for i in range(10)]
    runs.write_token_records(run, 0, table)
    at = _open(_app(monkeypatch, tmp_path / "runs"), "inspector")
    assert _html(at).count("data-pos=") == 10
    next(t for t in at.toggle if t.label == "Hide masked").set_value(True).run()
    assert _html(at).count("data-pos=") == 5


def test_inspector_jump_selects_the_sample_of_a_large_signal_token(monkeypatch, runs_dir) -> None:
    at = _open(_app(monkeypatch, runs_dir), "inspector")
    jump = next(s for s in at.selectbox if s.label.startswith("Jump to"))
    # Options read "sample S, pos P: ..."; pick one whose sample is not the one shown now.
    shown = next(s for s in at.selectbox if s.label == "Sample").value
    option, label = next((i, t) for i, t in enumerate(jump.options) if not t.startswith(f"sample {shown},"))
    jump.set_value(option).run()
    assert next(s for s in at.selectbox if s.label == "Sample").value == int(label.split(",")[0].split()[1])
    assert "opd-top" in _html(at)


def test_drift_measure_choice_changes_the_chart(monkeypatch, runs_dir) -> None:
    at = _open(_app(monkeypatch, runs_dir), "drift")
    before = at.get("plotly_chart")[0].proto.spec
    at.selectbox(key="drift_measure").set_value("prefix_wrong").run()
    assert at.get("plotly_chart")[0].proto.spec != before


def test_compare_metric_choice_changes_the_chart_and_the_csv(monkeypatch, runs_dir) -> None:
    at = _open(_app(monkeypatch, runs_dir), "compare")
    assert any("eval_accuracy" in t for t in _chart_titles(at))
    at.selectbox(key="cmp_metric").set_value("grad_norm").run()
    assert any("grad_norm" in t for t in _chart_titles(at))
    assert any("grad_norm" in b.proto.label for b in at.get("download_button"))
    summary = at.dataframe[0].value
    assert set(summary["run"]) == {"alpha", "beta"}


def test_health_page_lists_findings_with_links_to_their_evidence(monkeypatch, runs_dir) -> None:
    at = _open(_app(monkeypatch, runs_dir), "health")
    titles = [m.value for m in at.markdown if m.value.startswith("##### ")]
    assert titles, "the synthetic run has planted failure modes; the page should list them"
    links = at.get("page_link")
    assert links and all(json.loads(json.dumps(link.proto.query_string)) for link in links)
    assert all("run=runs" in link.proto.query_string for link in links)


def test_run_ids_from_the_url_never_leave_the_runs_folder(monkeypatch, runs_dir, tmp_path) -> None:
    monkeypatch.setenv(ENV_RUNS_DIR, str(runs_dir))
    monkeypatch.setenv(ENV_SAMPLE_RUNS, "")
    outside = tmp_path / "outside"
    write_synthetic_run(outside, steps=1)
    for key in ("runs:../outside", f"runs:{outside}", "runs:..", "samples:alpha", "nope", "runs:alpha/../beta"):
        assert resolve_run_key(key) is None, key
    assert resolve_run_key("runs:alpha").path == (runs_dir / "alpha").resolve()
    at = _app(monkeypatch, runs_dir)
    at.query_params["run"] = "runs:../../etc"
    at.run()  # the default page (Runs) reads the link
    assert not at.exception
    assert any("not available" in w.value for w in at.warning)
    assert at.selectbox(key="_w_run").value in ("runs:alpha", "runs:beta")


def test_a_run_link_selects_that_run(monkeypatch, runs_dir) -> None:
    at = _app(monkeypatch, runs_dir)
    at.query_params["run"] = "runs:beta"
    _open(at, "imbalance")
    assert at.selectbox(key="_w_run").value == "runs:beta"


def test_script_and_onerror_tokens_reach_the_page_escaped(monkeypatch, evil_runs_dir) -> None:
    at = _open(_app(monkeypatch, evil_runs_dir), "inspector")
    page_html = _html(at)
    assert "&lt;script&gt;" in page_html and "onerror=&quot;" in page_html
    assert "<script" not in page_html.lower() and "<img" not in page_html.lower()
    _open(at, "imbalance")
    _open(at, "mismatch")


def test_server_runs_streamlit_on_the_requested_address_with_the_runs_folders(tmp_path) -> None:
    cmd = server.streamlit_command("127.0.0.1", 8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app/main.py")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    env = server.server_env(tmp_path, show_samples=True)
    assert env[ENV_RUNS_DIR] == str(tmp_path.resolve())
    assert env[ENV_SAMPLE_RUNS] == str(REPO / "sample_runs")
    assert server.server_env(tmp_path, show_samples=False)[ENV_SAMPLE_RUNS] == ""
    with pytest.raises(ValueError, match="port"):
        server.serve(tmp_path, port=70000)
