"""The Runs page's "Score rollouts" action: a bad request says why inline; a good one becomes a background run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from opd_core import launcher, runs

REPO = Path(__file__).resolve().parents[1]
K = "score_rollouts:"


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[AppTest, Path]:
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("OPD_LAB_RUNS_DIR", str(d))
    monkeypatch.setenv("OPD_LAB_SAMPLE_RUNS", str(REPO / "sample_runs"))  # the page needs a run to list
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv(launcher.ENV_TRAINER_CMD, raising=False)
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "pages" / "runs.py"), default_timeout=90)
    at.run()
    assert not at.exception
    return at, d


def _submit(at: AppTest, **values: str) -> None:
    for name, value in values.items():
        widget = at.text_area(key=K + name) if name == "student_at" else at.text_input(key=K + name)
        widget.set_value(value)
    at.button(key=K + "go").click().run()


def test_a_file_without_a_response_column_is_refused_inline_and_makes_no_run(page, tmp_path):
    at, runs_dir = page
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1"}\n')
    _submit(at, source=str(bad))
    assert any("no response column" in e.value for e in at.error)
    assert list(runs_dir.iterdir()) == []


@pytest.mark.slow
def test_scoring_shipped_rollouts_runs_in_the_background_to_a_valid_run(page):
    at, runs_dir = page
    _submit(at, source=str(REPO / "examples" / "rollouts" / "chat.jsonl"), name="page-score")
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert any("page" in s.value and "score" in s.value for s in at.success), [s.value for s in at.success]
    run = runs_dir / "page-score"
    deadline = time.time() + 240
    while runs.read_status(run)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
        launcher.pump(runs_dir)
    status = runs.read_status(run)
    assert status["state"] == "finished", (status, (run / runs.LOG_FILE).read_text()[-2000:])
    assert runs.validate_run_dir(run) == [] and runs.token_steps(run) == [1, 2]
    assert "score" in (run / runs.LOG_FILE).read_text()  # the launcher started `opd_core score --resume`


@pytest.mark.slow
def test_a_background_scoring_stops_on_sigterm_and_resumes_without_duplicates(tmp_path):
    import json

    from opd_core.rescoring import prepare_job

    rows = [json.loads(line) for line in (REPO / "examples" / "rollouts" / "plain.jsonl").read_text().splitlines()]
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({**r, "step": 1 + i // 64}) + "\n" for i, r in
                           enumerate(rows[i % len(rows)] for i in range(256))))
    runs_dir = tmp_path / "runs"
    run = prepare_job(big, teacher="toy:matched", student="toy:matched", runs_dir=runs_dir, name="bg",
                      batch_size=1)
    launcher.pump(runs_dir)
    deadline = time.time() + 240
    while not runs.token_steps(run) and time.time() < deadline:  # step 1 done, steps 2-4 to go
        time.sleep(0.2)
    launcher.stop(run)
    while runs.read_status(run)["state"] == "running" and time.time() < deadline:
        time.sleep(0.5)
        launcher.pump(runs_dir)
    assert runs.read_status(run)["state"] == "stopped", (run / runs.LOG_FILE).read_text()[-2000:]
    assert len(runs.token_steps(run)) < 4
    launcher.resume(run)
    while runs.read_status(run)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
        launcher.pump(runs_dir)
    assert runs.read_status(run)["state"] == "finished", (run / runs.LOG_FILE).read_text()[-2000:]
    tokens = runs.read_tokens(run)
    assert runs.validate_run_dir(run) == [] and runs.token_steps(run) == [1, 2, 3, 4]
    assert not tokens.duplicated(["step", "sample", "pos"]).any()
    assert tokens.groupby("step")["sample"].nunique().tolist() == [64] * 4
    assert [r["step"] for r, _ in runs.iter_metric_records(run)] == [1, 2, 3, 4]
