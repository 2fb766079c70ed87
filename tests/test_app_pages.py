"""Every dashboard page, driven by Streamlit's AppTest: renders without exceptions on synthetic runs, on an
empty runs folder and on the shipped sample runs; its key widgets exist; selections change what is shown;
untrusted run ids and token text never become paths or live markup."""

from __future__ import annotations

import json
import re
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
    ("drift", {"Run", "Drift measured as", "Teacher statistic", "Bins (at most)"}),
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


# ----------------------------------------------------------------------------- damaged runs and hostile text

PAGES_READING_RUNS = ["runs", "inspector", "imbalance", "drift", "mismatch", "health", "compare", "live"]


def _damage(base: Path) -> list[str]:
    """A healthy run `good` beside runs that each have one damaged file; returns the damaged run ids."""
    write_synthetic_run(base / "good", steps=4, log_every=2, samples=2, length=8)

    def run(name: str) -> Path:
        return write_synthetic_run(base / name, steps=4, log_every=2, samples=2, length=8)

    run("zero-parquet")
    (base / "zero-parquet" / "tokens" / "step_000002.parquet").write_bytes(b"")
    run("garbage-parquet")
    (base / "garbage-parquet" / "tokens" / "step_000000.parquet").write_bytes(b"PAR1 not really" * 10)
    run("status-list")
    (base / "status-list" / "status.json").write_text("[1, 2, 3]")
    run("status-dir")
    (base / "status-dir" / "status.json").unlink()
    (base / "status-dir" / "status.json").mkdir()
    run("status-bad-pid")
    (base / "status-bad-pid" / "status.json").write_text('{"state": "running", "pid": "123abc"}')
    run("config-list")
    (base / "config-list" / "config.json").write_text('["objective", 1]')
    run("metrics-latin1")
    with open(base / "metrics-latin1" / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 9, "loss": "caf\xe9"}\n')
    run("metrics-mixed-steps")
    with open(base / "metrics-mixed-steps" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": "seven", "loss": 1.0}\n{"step": [1], "loss": {}}\n')
    run("metrics-dir")
    (base / "metrics-dir" / "metrics.jsonl").unlink()
    (base / "metrics-dir" / "metrics.jsonl").mkdir()
    run("alignment-garbage")
    (base / "alignment-garbage" / "alignment.json").write_text('{"special_tokens": [1], "examples": "x", "eos_a": {}}')
    run("tokens-file")
    import shutil

    shutil.rmtree(base / "tokens-file" / "tokens")
    (base / "tokens-file" / "tokens").write_text("not a folder")
    return sorted(p.name for p in base.iterdir() if p.name != "good")


@pytest.fixture(scope="module")
def damaged_runs_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    base = tmp_path_factory.mktemp("damaged")
    return base, _damage(base)


@pytest.mark.parametrize("page", PAGES_READING_RUNS)
def test_every_page_survives_each_damaged_run_and_still_shows_the_good_one(monkeypatch, damaged_runs_dir,
                                                                           page) -> None:
    base, damaged = damaged_runs_dir
    at = _app(monkeypatch, base)
    at.run()
    for run_id in [*damaged, "good"]:
        at.session_state["opd_run"] = f"runs:{run_id}"
        at.session_state["opd_runs"] = [f"runs:{d}" for d in [*damaged, "good"]]
        at.session_state["opd_live_runs"] = [run_id, "good"]
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, f"{page} on {run_id}: {[e.value for e in at.exception]}"
    if page == "runs":
        table = at.dataframe[0].value
        assert {"good", *damaged} <= set(table["run"])
        good = table[table["run"] == "good"].iloc[0]
        assert good["status"] == "finished" and good["loss"] is not None


def test_a_damaged_run_is_named_with_its_file_on_a_diagnosis_page(monkeypatch, damaged_runs_dir) -> None:
    base, _ = damaged_runs_dir
    at = _app(monkeypatch, base)
    at.query_params["run"] = "runs:metrics-dir"
    _open(at, "health")
    shown = " ".join(w.value for w in at.warning)
    assert "metrics" in shown and "metrics\\-dir" in shown, shown


HOSTILE = "![x](http://127.0.0.1:9/x.png) `tick` $$x^2$$ <img src=x onerror=alert(1)> \u202eevil\u202c \x00nul"


def write_hostile_run(base: Path) -> Path:
    """A run whose every string a page shows holds Markdown/HTML that would fetch or run something."""
    run = write_synthetic_run(base / "hostile", steps=2, log_every=1, samples=2, length=6)
    config = json.loads((run / "config.json").read_text())
    config.update(objective=HOSTILE, student=HOSTILE, teacher=HOSTILE)
    (run / "config.json").write_text(json.dumps(config))
    status = json.loads((run / "status.json").read_text())
    status.update(state="failed", error=HOSTILE)
    (run / "status.json").write_text(json.dumps(status))
    align = json.loads((run / "alignment.json").read_text()) if (run / "alignment.json").exists() else {}
    align.update(eos_a=HOSTILE, eos_b=HOSTILE, name_a=HOSTILE, name_b=HOSTILE,
                 special_tokens={"a": {"eos": {"token": HOSTILE, "id": 1}, "chat_template_sample": HOSTILE},
                                 "b": {"eos": {"token": HOSTILE, "id": 2}}},
                 examples=[{"text": HOSTILE, "tokens_a": [HOSTILE, "a"], "tokens_b": ["b", HOSTILE]}])
    (run / "alignment.json").write_text(json.dumps(align))
    for step in runs.token_steps(run):
        table = runs.read_tokens(run, steps=[step])
        for column in ("token", "teacher_token", "prompt", "response_text"):
            if column in table:
                table[column] = HOSTILE
        for column in ("teacher_topk_tokens", "student_topk_tokens"):
            if column in table:
                table[column] = [[HOSTILE] * len(v) for v in table[column]]
        runs.write_token_records(run, step, table)
    return run


def _markdown_bodies(at: AppTest) -> list[str]:
    bodies = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "warning", "error", "info", "success"):
        bodies += [str(e.value) for e in getattr(at, kind)]
    bodies += [str(m.label) + " " + str(m.value) for m in at.metric]
    bodies += [str(p.proto.text) for p in at.get("progress")]
    return bodies


def test_hostile_strings_reach_markdown_escaped_on_every_page(monkeypatch, tmp_path) -> None:
    write_hostile_run(tmp_path)
    at = _app(monkeypatch, tmp_path)
    at.session_state["opd_live_runs"] = ["hostile"]
    for page in PAGES_READING_RUNS:
        _open(at, page)
        for body in _markdown_bodies(at):
            live = re.sub(r"\\.", "", body)  # what Markdown still interprets once backslash escapes are gone
            for active in ("![x](", "](http", "`tick`", "$$", "<img", "\x00", "\u202e"):
                assert active not in live, (page, active, body)
            assert "http://" not in re.sub(r"\\(.)", r"\1", body), (page, "autolink", body)
        for frame in at.dataframe:
            cells = frame.value.astype(str).to_numpy().ravel().tolist() + [str(i) for i in frame.value.index]
            assert not any("\u202e" in c or "\x00" in c for c in cells), (page, "bidi or NUL in a table")
        assert "<img" not in _html(at).replace("&lt;img", ""), page


def test_the_live_watch_list_keeps_the_users_edits(monkeypatch, runs_dir) -> None:
    at = _app(monkeypatch, runs_dir)
    _open(at, "live")
    box = at.multiselect(key="_w_live_runs")
    assert box.value == ["alpha"] or box.value == ["beta"]
    box.set_value(["alpha", "beta"]).run()
    assert at.multiselect(key="_w_live_runs").value == ["alpha", "beta"]
    at.run()  # a plain rerun (the auto-refresh) must not bring the old list back
    assert at.multiselect(key="_w_live_runs").value == ["alpha", "beta"]
    at.multiselect(key="_w_live_runs").set_value(["beta"]).run()
    assert at.multiselect(key="_w_live_runs").value == ["beta"]
    assert at.selectbox(key="live_focus").value == "beta"


def test_runs_and_compare_start_from_the_readme_baseline_and_a_cleared_selection_stays_cleared(monkeypatch,
                                                                                            tmp_path) -> None:
    at = _app(monkeypatch, tmp_path / "no-user-runs", REPO / "sample_runs")
    _open(at, "runs")
    assert at.selectbox(key="_w_run").value == "samples:baseline-sampled-token"
    _open(at, "compare")
    box = at.multiselect(key="_w_runs")
    assert "samples:baseline-sampled-token" in box.value
    box.set_value([]).run()
    assert at.multiselect(key="_w_runs").value == []
    _open(at, "compare")
    assert at.multiselect(key="_w_runs").value == []


@pytest.mark.slow
def test_sigterm_to_opd_lab_stops_its_streamlit_server(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.browser_support import free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(REPO / "app" / "server.py"), "--runs-dir", str(tmp_path),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "opd-lab started no server"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        for child in children:
            assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_the_wheel_ships_the_dashboard_under_its_own_name_not_as_top_level_app_or_pages(tmp_path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, cwd=tmp_path, capture_output=True)
    wheel = next(tmp_path.glob("opd_lab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"opd_core", "opd_lab_dashboard"}, top
    for needed in ("opd_lab_dashboard/app/main.py", "opd_lab_dashboard/app/server.py",
                   "opd_lab_dashboard/app/static/favicon.png", "opd_lab_dashboard/pages/runs.py"):
        assert needed in names, needed
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode()


def test_no_code_patches_sys_path() -> None:
    offenders = [str(p.relative_to(REPO)) for folder in ("app", "pages", "opd_core")
                 for p in (REPO / folder).rglob("*.py") if "sys.path.insert" in p.read_text() or
                 "sys.path.append" in p.read_text()]
    assert offenders == []


def baseline_eos(step: int = 200) -> tuple[int, int, bool]:
    """(sample, pos) of the baseline sample run's cross-tokenizer EOS at ``step``: the student's <|im_end|>
    scored by the teacher as literal text (unmasked), sample 0 when it has one; and whether the run logged the
    teacher's own top-K. Found from the data, so a rebuilt sample run does not break the link."""
    run = runs.run_path(REPO / "sample_runs", "baseline-sampled-token")
    tokens = runs.read_tokens(run, steps=[step])
    eos = tokens[tokens["is_eos"] & ~tokens["masked"]].sort_values(["sample", "pos"])
    assert len(eos), f"the baseline logs no unmasked EOS at step {step}"
    first = eos[eos["sample"] == 0].iloc[0] if (eos["sample"] == 0).any() else eos.iloc[0]
    return int(first["sample"]), int(first["pos"]), "teacher_own_topk" in tokens.columns


def test_a_deep_link_opens_the_inspector_at_that_token_and_the_url_follows(monkeypatch, tmp_path) -> None:
    at = _app(monkeypatch, tmp_path / "no-user-runs", REPO / "sample_runs")
    # the baseline's step-200 EOS (sample 0 when it has one): the student's <|im_end|>, read as text
    sample, pos, own_logged = baseline_eos()
    at.query_params.update({"run": "samples:baseline-sampled-token", "step": "200", "sample": str(sample),
                            "pos": str(pos), "color": "log_ratio"})
    _open(at, "inspector")
    assert at.selectbox(key="insp_step:samples:baseline-sampled-token").value == 200
    assert next(s for s in at.selectbox if s.label == "Sample").value == sample
    assert next(s for s in at.selectbox if s.label == "Position").value == pos
    if own_logged:  # the teacher's own top-K at that token, in its own words (its end token first)
        own = next(d.value for d in at.dataframe if "teacher_piece" in d.value.columns)
        assert own["teacher_prob"].iloc[0] > 0.5, own
    assert at.selectbox(key="insp_colour").value == "log_ratio"
    assert "opd-selected" in _html(at) and "scored as text" in _html(at)
    assert any("literal text" in i.value for i in at.info)
    next(s for s in at.selectbox if s.label == "Position").set_value(3).run()
    assert at.query_params["pos"] in (["3"], "3")


def test_sample_filters_keep_only_matching_samples(monkeypatch, tmp_path) -> None:
    at = _app(monkeypatch, tmp_path / "no-user-runs", REPO / "sample_runs")
    at.query_params["run"] = "samples:baseline-sampled-token"
    _open(at, "inspector")
    every = next(s for s in at.selectbox if s.label == "Sample").options
    at.session_state["insp_filters"] = ["did not stop"]
    at.run()
    kept = next(s for s in at.selectbox if s.label == "Sample").options
    assert 0 < len(kept) < len(every) and all("did not stop" in k for k in kept)
    assert _qp(at, "filter") == "did not stop"  # the filter is part of the link too
    linked = _app(monkeypatch, tmp_path / "no-user-runs", REPO / "sample_runs")
    linked.query_params.update({"run": "samples:baseline-sampled-token", "filter": "did not stop"})
    _open(linked, "inspector")
    assert next(s for s in linked.selectbox if s.label == "Sample").options == kept


@pytest.fixture(scope="module")
def corrupt_runs_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The generated damaged runs (tests/corrupt_runs.py), made once for the page tests below (read-only)."""
    from tests.corrupt_runs import make_corrupt_runs

    dirs = make_corrupt_runs(tmp_path_factory.mktemp("corrupt"))
    assert len(dirs) >= 50
    base = dirs[0].parent
    return base, [d.name for d in dirs if (base / d.name).is_dir()]


# One test per page, so that the parallel workers share the 8 x 69 page runs.
@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_READING_RUNS)
def test_every_page_opens_on_every_generated_corrupt_run_without_an_exception(monkeypatch, corrupt_runs_dir,
                                                                              page) -> None:
    from tests.corrupt_runs import describe

    base, ids = corrupt_runs_dir
    at = _app(monkeypatch, base)
    _open(at, "runs")  # every run on one table, each damaged one with its problem
    table = at.dataframe[0].value
    assert len(table) >= 50
    if page == "runs":  # damage found by reading a file (not only by looking at it from outside) is counted too
        health = dict(zip(table["run"], table["health"]))
        assert all("1 damaged" in health[r] for r in ("tokens-zero", "tokens-few-columns")), health
    for run_id in ids:
        at.session_state["opd_run"] = f"runs:{run_id}"
        at.session_state["opd_runs"] = [f"runs:{run_id}"]
        at.session_state["opd_live_runs"] = [run_id]
        at.switch_page(f"../pages/{page}.py").run()
        assert not at.exception, f"{page} on {run_id} ({describe(base / run_id)}): {at.exception[0].value}"


@pytest.mark.parametrize("page", ["inspector", "side_by_side"])
def test_a_page_showing_one_step_names_a_damaged_step_and_opens_on_a_readable_one(monkeypatch, corrupt_runs_dir,
                                                                                   page) -> None:
    """The 69-run test opens each page at its default step; a user can pick (or link to) any other. A token
    file that is not Parquet, or holds no sample/pos columns, is named there instead of raising."""
    base, ids = corrupt_runs_dir
    for run_id, damaged in (("tokens-zero", 20), ("tokens-few-columns", 20), ("tokens-first-few-columns", 1)):
        at = _app(monkeypatch, base)
        at.query_params.update({"run": f"runs:{run_id}", "step": str(damaged)})
        _open(at, page)
        assert any(f"step_{damaged:06d}.parquet" in e.value.replace("\\", "") for e in at.error), (run_id, at.error)
        fresh = _app(monkeypatch, base)  # no step asked for: the newest readable step, no error
        fresh.query_params["run"] = f"runs:{run_id}"
        _open(fresh, page)
        assert not fresh.error, (run_id, [e.value for e in fresh.error])


def test_live_shows_the_runs_health_and_announces_findings_that_appear(monkeypatch, runs_dir) -> None:
    at = _app(monkeypatch, runs_dir)
    at.session_state["opd_live_runs"] = ["alpha"]
    _open(at, "live")
    labels = [e.label for e in at.expander]
    assert any(label.startswith("Health: ") and "critical" in label for label in labels), labels
    assert not at.toast  # the first look lists the findings without announcing them
    at.session_state["_live_health_seen"] = {"alpha": set()}  # as if they appeared since the last refresh
    at.run()
    assert at.toast and any("new critical finding" in t.value for t in at.toast)


def test_a_diagnosis_page_keeps_its_step_window_in_the_url(monkeypatch, runs_dir) -> None:
    at = _app(monkeypatch, runs_dir)
    at.query_params.update({"run": "runs:beta", "steps": "0-2"})
    _open(at, "imbalance")
    assert at.get("select_slider")[0].value == (0, 2)
    fresh = _open(_app(monkeypatch, runs_dir), "imbalance")  # no link: the default window is written to the URL
    window = fresh.get("select_slider")[0].value
    assert fresh.query_params["steps"] in ([f"{window[0]}-{window[1]}"], f"{window[0]}-{window[1]}")


def test_drift_and_compare_choices_live_in_the_url(monkeypatch, runs_dir) -> None:
    at = _app(monkeypatch, runs_dir)
    at.query_params.update({"run": "runs:alpha", "measure": "prefix_wrong", "stat": "teacher_rank"})
    _open(at, "drift")
    assert at.selectbox(key="drift_measure").value == "prefix_wrong"
    assert at.selectbox(key="drift_stat").value == "teacher_rank"
    at.selectbox(key="drift_stat").set_value("teacher_top1_prob").run()
    assert at.query_params["stat"] in (["teacher_top1_prob"], "teacher_top1_prob")
    other = _app(monkeypatch, runs_dir)
    other.query_params["metric"] = "grad_norm"
    _open(other, "compare")
    assert other.selectbox(key="cmp_metric").value == "grad_norm"


def test_mismatch_page_shows_the_pairs_warnings_end_of_turn_and_alignment_coverage(monkeypatch, tmp_path) -> None:
    """A cross-tokenizer run: the engine's warnings (no chat template), each side's end of turn, and the
    per-step alignment coverage chart (1:1 / multi-token span / unaligned)."""
    run = write_synthetic_run(tmp_path / "runs" / "cross", steps=4, log_every=2, samples=2, length=8)
    alignment = runs.read_json(run / "alignment.json") or {}
    alignment.update({"warnings": ["teacher has no chat template: the run used the plain template"],
                      "end_of_turn_a": "<|im_end|>", "end_of_turn_b": "<end_of_turn>"})
    runs.atomic_write_json(run / "alignment.json", alignment)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    shares = {"align_one_to_one_share": 0.5, "align_multi_token_share": 0.2, "align_unaligned_share": 0.3}
    (run / "metrics.jsonl").write_text("".join(json.dumps({**json.loads(line), **shares}) + "\n" for line in lines))
    at = _open(_app(monkeypatch, tmp_path / "runs"), "mismatch")
    assert any("no chat template" in w.value for w in at.warning)
    assert "Alignment coverage per step" in _chart_titles(at)
    assert "end\\_of\\_turn" in " ".join(m.value for m in at.markdown) or \
        "end_of_turn" in " ".join(m.value for m in at.markdown)


def test_alignment_coverage_figure_stacks_the_three_shares_per_step() -> None:
    import pandas as pd

    from app.charts import alignment_coverage_figure

    frame = pd.DataFrame({"step": [1, 2], "align_one_to_one_share": [0.5, 0.6],
                          "align_multi_token_share": [0.2, 0.1], "align_unaligned_share": [0.3, 0.3]})
    fig = alignment_coverage_figure(frame)
    assert [t.name for t in fig.data] == ["aligned 1:1", "inside a multi-token span",
                                          "unaligned (masked, no teacher number)"]
    assert fig.layout.barmode == "stack" and list(fig.data[2].y) == [0.3, 0.3]


@pytest.fixture(scope="module")
def cross_runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One logged step of the toy mismatched pair without masking: the student's EOS reaches the teacher as text."""
    from opd_core.config import from_dict
    from opd_core.train_entry import train

    base = tmp_path_factory.mktemp("cross")
    train(from_dict({"steps": 1, "prompts_per_step": 2, "num_rollouts": 2, "max_new_tokens": 24, "eval_every": 0,
                     "eval_size": 8, "log_tokens_every": 1, "checkpoint_every": 0, "temperature": 0.7,
                     "reference_rollouts": False}), base, name="cross")
    return base


def test_inspector_shows_the_teachers_own_topk_at_a_literal_eos_of_a_real_cross_tokenizer_run(
        monkeypatch, cross_runs_dir) -> None:
    tokens = runs.read_tokens(cross_runs_dir / "cross")
    eos = tokens[tokens["is_eos"]].sort_values(["sample", "pos"]).iloc[0]
    at = _app(monkeypatch, cross_runs_dir)
    at.query_params.update({"run": "runs:cross", "step": str(int(eos["step"])), "sample": str(int(eos["sample"])),
                            "pos": str(int(eos["pos"]))})
    _open(at, "inspector")
    assert next(s for s in at.selectbox if s.label == "Position").value == int(eos["pos"])
    note = next(i.value for i in at.info if "literal text" in i.value)
    assert "never uses" in note and "its own vocabulary" in note
    own = next(d.value for d in at.dataframe if "teacher_piece" in d.value.columns)
    assert own["teacher_piece"].iloc[0] == "</s>" and own["teacher_prob"].iloc[0] > 0.5  # its own end, unmapped
    html = _html(at)
    assert html.count("Teacher's own top-") >= 2  # the hover card and the teacher strip's card
    assert "opd-selected" in html.split("opd-pieces'>")[-1]  # the teacher strip marks the same token
    values = next(d.value for d in at.dataframe if list(d.value.columns) == ["value"])["value"]
    assert values["masked"] == "no" and values["teacher_rank"] == "n/a (scored as text)"
    assert len(values["teacher_logp"]) <= 6 and len(values["drift"]) <= 6  # 3 significant digits, not float32 reprs


def _qp(at: AppTest, name: str) -> str | None:
    value = at.query_params.get(name)
    return value[0] if isinstance(value, list) else value


# page, the link's query, {widget key: the value the link must select}
URL_VIEWS = [
    ("health", {"run": "runs:beta"}, {"_w_run": "runs:beta"}),
    ("runs", {"run": "runs:beta", "runs": "runs:beta"}, {"_w_run": "runs:beta", "_w_runs": ["runs:beta"]}),
    ("compare", {"runs": "runs:beta,runs:alpha", "metric": "grad_norm", "x": "tokens seen", "smooth": "0.3"},
     {"_w_runs": ["runs:beta", "runs:alpha"], "cmp_metric": "grad_norm", "cmp_x": "tokens seen", "cmp_smooth": 0.3}),
    ("imbalance", {"run": "runs:beta", "steps": "0-2", "step": "2"},
     {"_w_run": "runs:beta", "imb_steps:runs:beta": (0, 2), "imb_scatter_step": 2}),
    ("drift", {"run": "runs:alpha", "steps": "2-4", "measure": "drift", "stat": "teacher_rank", "bins": "5"},
     {"drift_steps:runs:alpha": (2, 4), "drift_measure": "drift", "drift_stat": "teacher_rank", "drift_bins": 5}),
    ("mismatch", {"run": "runs:beta", "steps": "2-4"}, {"_w_run": "runs:beta", "mm_steps:runs:beta": (2, 4)}),
    ("side_by_side", {"run": "runs:beta", "run_b": "runs:alpha", "step": "2", "step_b": "4", "sample": "1",
                      "sample_b": "1", "color": "log_ratio", "diff": "1"},
     {"sbs_a": "runs:beta", "sbs_b": "runs:alpha", "sbs_step_a:runs:beta": 2, "sbs_step_b:runs:alpha": 4,
      "sbs_sample_a:runs:beta:2": 1, "sbs_sample_b:runs:alpha:4": 1, "sbs_colour": "log_ratio", "sbs_diff": True}),
    ("inspector", {"run": "runs:beta", "step": "2", "sample": "1", "pos": "3", "color": "log_ratio"},
     {"insp_step:runs:beta": 2, "insp_sample:runs:beta:2": 1, "insp_pos:runs:beta:2:1": 3, "insp_colour": "log_ratio"}),
    ("live", {"watch": "alpha,beta", "focus": "alpha", "metric": "grad_norm"},
     {"_w_live_runs": ["alpha", "beta"], "live_focus": "alpha", "live_metric": "grad_norm"}),
]


@pytest.mark.parametrize("page,query,selected", URL_VIEWS, ids=[v[0] for v in URL_VIEWS])
def test_a_pasted_link_reopens_every_page_on_its_run_and_main_selections(monkeypatch, runs_dir, page, query,
                                                                         selected) -> None:
    """Each page reads ``?run=`` and its main selections from the URL, and writes them back, so a link pasted
    into a chat reopens the same view; a second user's fresh session given the written URL sees the same."""
    at = _app(monkeypatch, runs_dir)
    at.query_params.update(query)
    _open(at, page)
    for key, value in selected.items():
        assert at.session_state[key] == value, (page, key)
    for name, value in query.items():
        assert _qp(at, name) == value, (page, name, at.query_params)
    again = _app(monkeypatch, runs_dir)  # the URL the page wrote, opened in a new session
    again.query_params.update({k: _qp(at, k) for k in at.query_params})
    _open(again, page)
    for key, value in selected.items():
        assert again.session_state[key] == value, (page, key)


def test_a_changed_selection_and_an_emptied_compare_list_are_written_to_the_url(monkeypatch, runs_dir) -> None:
    at = _app(monkeypatch, runs_dir)
    _open(at, "compare")
    at.multiselect(key="_w_runs").set_value(["runs:alpha"]).run()
    assert _qp(at, "runs") == "runs:alpha"
    at.multiselect(key="_w_runs").set_value([]).run()
    assert _qp(at, "runs") == ""
    fresh = _app(monkeypatch, runs_dir)
    fresh.query_params["runs"] = ""
    _open(fresh, "compare")
    assert fresh.multiselect(key="_w_runs").value == []  # an emptied selection in a link stays empty
    live = _open(_app(monkeypatch, runs_dir), "live")
    live.multiselect(key="_w_live_runs").set_value(["beta"]).run()
    assert _qp(live, "watch") == "beta" and _qp(live, "focus") == "beta"
