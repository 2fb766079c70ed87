"""The Launch and Live pages under Streamlit's AppTest: inline config errors, launching, watching, recovery."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from opd_core import launcher, runs

REPO = Path(__file__).resolve().parents[1]
TOY_ASSETS = REPO / "opd_core" / "toy" / "assets"
TOY_RUN = {"steps": "5", "eval_every": "0", "log_tokens_every": "1", "checkpoint_every": "1",
           "prompts_per_step": "2", "num_rollouts": "2", "eval_size": "4", "max_new_tokens": "12"}


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("OPD_LAB_RUNS_DIR", str(d))
    monkeypatch.setenv("OPD_LAB_SAMPLE_RUNS", "")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv(launcher.ENV_MAX_CONCURRENT, raising=False)
    monkeypatch.chdir(REPO)
    return d


@pytest.fixture
def fake_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake trainer of test_launcher (same contract as the engine's), for page tests that need no model."""
    from tests.test_launcher import FAKE_TRAINER

    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setenv(launcher.ENV_TRAINER_CMD, f"{sys.executable} {script}")
    from opd_core.toy.presets import resolve_pair

    return resolve_pair("toy:matched")[0]  # passes the pre-flight check; the fake trainer never loads it


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / name), default_timeout=60)
    return at


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _fill(at: AppTest, values: dict[str, str]) -> None:
    for name, value in values.items():
        at.text_input(key=f"launch:{name}").set_value(value)
    at.run()


def test_a_bad_value_shows_the_fields_own_error_and_blocks_launch(runs_dir: Path) -> None:
    at = _page("launch.py")
    at.run()
    assert not at.exception
    assert not at.button(key="launch_go").disabled
    _fill(at, {"top_p": "1.5"})
    assert any("config field 'top_p'" in e and "<= 1.0" in e for e in _errors(at))
    assert at.button(key="launch_go").disabled
    _fill(at, {"top_p": "0.9", "steps": "many"})
    assert _errors(at) == ["config field 'steps': 'many' is not an integer"]
    _fill(at, {"steps": "5"})
    assert not _errors(at) and not at.button(key="launch_go").disabled


def test_choosing_a_preset_fills_the_form_with_its_settings(runs_dir: Path) -> None:
    at = _page("launch.py")
    at.run()
    at.selectbox(key="launch_source").select("preset:top_p").run()
    assert at.text_input(key="launch:top_p").value == "0.9"
    at.selectbox(key="launch_source").select("preset:masked").run()
    assert at.checkbox(key="launch:mask_special_tokens").value is True


def _watch_until(run_id: str, states: tuple[str, ...], timeout: float = 120) -> AppTest:
    live = _page("live.py")
    live.session_state["opd_live_runs"] = [run_id]
    deadline = time.time() + timeout
    while time.time() < deadline:
        live.run()
        assert not live.exception, live.exception
        text = " ".join(str(p.proto.text) for p in live.get("progress")).replace("**", "").replace("\\", "")
        if any(f"{run_id} · {s}" in text for s in states):
            return live
        time.sleep(0.3)
    raise AssertionError(f"{run_id} never reached {states}: {runs.read_status(runs_dir_of(run_id))}")


def runs_dir_of(run_id: str) -> Path:
    return Path(os.environ["OPD_LAB_RUNS_DIR"]) / run_id


def test_launching_from_the_form_trains_and_the_live_page_shows_it_finish(runs_dir: Path, fake_trainer: Path) -> None:
    at = _page("launch.py")
    at.run()
    at.text_input(key="launch_name").set_value("page-run")
    _fill(at, {**TOY_RUN, "student": str(fake_trainer), "teacher": str(fake_trainer)})
    at.button(key="launch_go").click().run()
    assert not _errors(at)
    assert (runs_dir / "page-run" / runs.CONFIG_FILE).exists()
    live = _watch_until("page-run", ("finished",))
    assert any("finished (5 steps)" in s.value for s in live.success)
    assert "step 5 / 5" in " ".join(str(p.proto.text) for p in live.get("progress"))


def test_a_trainer_killed_with_sigkill_shows_as_failed_with_last_seen(runs_dir: Path, fake_trainer: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    cfg = {"student": str(fake_trainer), "teacher": str(fake_trainer), "steps": 100}
    run_dir = launcher.launch(cfg, runs_dir, "doomed")
    _watch_until("doomed", ("running",))
    os.kill(runs.read_status(run_dir)["pid"], signal.SIGKILL)
    live = _watch_until("doomed", ("failed",))
    assert any("doomed failed" in e and "last seen" in e for e in _errors(live))


def test_stop_and_resume_buttons_on_the_live_page(runs_dir: Path, fake_trainer: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    launcher.launch({"student": str(fake_trainer), "teacher": str(fake_trainer), "steps": 40}, runs_dir, "ctl")
    live = _watch_until("ctl", ("running",))
    live.button(key="live_stop:ctl").click().run()
    live = _watch_until("ctl", ("stopped",))
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    live.button(key="live_resume:ctl").click().run()
    _watch_until("ctl", ("finished",))
    assert list(runs.read_metrics(runs_dir / "ctl")["step"]) == list(range(1, 41))


def test_launch_a_five_step_toy_run_and_see_it_finish(runs_dir: Path) -> None:
    """The real engine on the shipped toy pair (needs `opd-lab toy build` to have filled the assets)."""
    assert any(TOY_ASSETS.iterdir()), "toy assets are missing: run `opd-lab toy build` first"
    at = _page("launch.py")
    at.run()
    at.text_input(key="launch_name").set_value("toy-five")
    _fill(at, TOY_RUN)
    assert not _errors(at)
    at.button(key="launch_go").click().run()
    assert not _errors(at)
    live = _watch_until("toy-five", ("finished", "failed"), timeout=240)
    assert runs.read_status(runs_dir / "toy-five")["state"] == "finished", launcher.log_tail(runs_dir / "toy-five")
    assert list(runs.read_metrics(runs_dir / "toy-five")["step"]) == [1, 2, 3, 4, 5]
    assert not live.exception


def test_objective_parameters_are_typed_widgets_from_the_registry_and_reach_the_config(
        runs_dir: Path, fake_trainer: Path) -> None:
    from opd_core.objectives import get_objective

    at = _page("launch.py")
    at.run()
    at.selectbox(key="launch:objective").set_value("topk_support").run()
    specs = get_objective("topk_support").param_specs
    keys = [w.key for kind in ("number_input", "checkbox", "selectbox") for w in getattr(at, kind) if w.key]
    drawn = {k.split(":")[3] for k in keys if k.startswith("launch:param:topk_support:")}  # nullable: name:off
    assert set(specs) <= drawn, drawn  # every declared parameter gets a widget (none hard-coded in the page)
    at.number_input(key="launch:param:topk_support:k").set_value(16).run()
    at.checkbox(key="launch:param:topk_support:tail_bucket").set_value(True).run()
    at.text_input(key="launch_name").set_value("typed-k")
    _fill(at, {**TOY_RUN, "student": str(fake_trainer), "teacher": str(fake_trainer)})
    assert not _errors(at)
    labels = {w.label for w in at.text_input} | {w.label for w in at.selectbox}
    assert "Teacher-prefix share λ · lmbda" in labels and "Training steps · steps" in labels
    at.button(key="launch_go").click().run()
    assert not _errors(at), _errors(at)
    config = runs.read_config(runs_dir / "typed-k")
    assert config["objective"] == "topk_support"
    assert config["objective_params"]["k"] == 16 and config["objective_params"]["tail_bucket"] is True


def test_live_page_says_which_critical_finding_stopped_a_run(runs_dir: Path) -> None:
    """A run stopped by stop_on_critical: Live names the finding and the fix (run-file text stays inert)."""
    run = runs.create_run_dir(runs_dir, "guarded")
    runs.write_config(run, {"objective": "sampled_token", "steps": 40, "stop_on_critical": True})
    runs.write_status(run, state="stopped", step=6, total_steps=40,
                      stopped_by={"reason": "stop_on_critical", "step": 6, "mode": "mismatch",
                                  "finding": "EOS carries `41%` of the signal", "fix": "mask_special_tokens=true"})
    live = _page("live.py")
    live.session_state["opd_live_runs"] = ["guarded"]
    live.run()
    assert not live.exception, live.exception
    text = " ".join(w.value for w in live.warning)
    plain = text.replace("\\", "")
    assert "stop_on_critical" in plain and "mask_special_tokens=true" in plain and "EOS carries `41%`" in plain
    assert "\\`41" in text  # the backticks from the run file are escaped, not a code span
