"""A real browser launches a short toy run from the Launch page, sees its progress move on the Live page, stops
it, resumes it and forks it; screenshots go to test-artifacts/screenshots/ for review."""

from __future__ import annotations

import re
import time

import pytest

from app import config_form
from opd_core import launcher, runs
from tests.browser_support import SCREENSHOTS, chromium_page, running_opd_lab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_SETTINGS = {"steps": "400", "eval_every": "0", "log_tokens_every": "5", "checkpoint_every": "5",
                "prompts_per_step": "2", "num_rollouts": "2", "eval_size": "4", "max_new_tokens": "12"}
STEP_TEXT = re.compile(r"step (\d+) / ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    runs_dir = tmp_path_factory.mktemp("runs")
    with running_opd_lab(runs_dir, "--no-samples") as url:
        try:
            yield url, runs_dir
        finally:
            for summary in runs.list_runs(runs_dir):  # no trainer outlives the test
                if summary.state in runs.ACTIVE_STATES:
                    launcher.stop(summary.path)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), {"width": 1400, "height": 1100}) as pg:
        yield pg


def _settled(page) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def _set_text(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    _settled(page)


def _progress_text(page, run_id: str) -> str:
    bar = page.locator('[data-testid="stProgress"]').filter(has_text=run_id).first
    try:
        bar.wait_for(timeout=60_000)
        return bar.inner_text(timeout=30_000)
    except Exception:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "live-no-progress.png"), full_page=True)  # what the page showed
        raise


def _wait_text(page, run_id: str, predicate, what: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = _progress_text(page, run_id)
        if predicate(text):
            return text
        page.wait_for_timeout(500)
    raise AssertionError(f"{run_id}: never {what}; last progress text {text!r}")


def _button(page, name: str):
    """A button of the page itself (not Streamlit's own "Stop" in the running-script indicator)."""
    return page.get_by_test_id("stHorizontalBlock").get_by_role("button", name=name).first


def _step(text: str) -> int:
    m = STEP_TEXT.search(text)
    return int(m.group(1)) if m else -1


def _no_error_box(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def _open_popover(page, button: str, field: str):
    """Open a popover and return its ``field``. A click that lands while the page reruns (the run's state just
    changed, so the Live page redraws) can be lost with the old button; click again rather than wait 30 s."""
    for _ in range(3):
        _settled(page)
        page.get_by_role("button", name=button).first.click()
        box = page.get_by_label(field)
        try:
            box.wait_for(state="visible", timeout=10_000)
            return box
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: try the click once more
            continue
    raise AssertionError(f"the {button!r} popover never showed {field!r}")


def test_launch_watch_stop_resume_and_fork_in_the_browser(server, page) -> None:
    url, runs_dir = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{url}/launch")
    page.get_by_role("heading", name="Launch", exact=True).wait_for(timeout=60_000)
    _settled(page)
    _set_text(page, "Run name (optional)", "browser-base")
    for name, value in RUN_SETTINGS.items():
        _set_text(page, config_form.label(name), value)
    _no_error_box(page)
    page.get_by_role("button", name="Launch").click()
    page.get_by_text(re.compile(r"Run\s*browser-base\s*is (running|queued)")).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "launch.png"), full_page=True)

    page.get_by_role("link", name="Watch it on the Live page").click()
    page.get_by_role("heading", name="Live", exact=True).wait_for(timeout=60_000)
    first = _step(_wait_text(page, "browser-base", lambda t: _step(t) >= 1, "started training"))
    moved = _step(_wait_text(page, "browser-base", lambda t: _step(t) > first + 2, "moved"))
    assert "ETA" in _progress_text(page, "browser-base")
    page.screenshot(path=str(SCREENSHOTS / "live-running.png"), full_page=True)

    _button(page, "Stop").click()
    stopped = _step(_wait_text(page, "browser-base", lambda t: "· stopped ·" in t, "stopped"))
    assert stopped >= moved
    assert runs.read_status(runs_dir / "browser-base")["state"] == "stopped"

    _button(page, "Resume").click()
    _wait_text(page, "browser-base", lambda t: "· running ·" in t and _step(t) > stopped, "resumed past the stop")
    _button(page, "Stop").click()
    _wait_text(page, "browser-base", lambda t: "· stopped ·" in t, "stopped again")

    _open_popover(page, "Fork", "Change settings (key=value, one per line)").fill(
        "top_p=0.9\nmask_special_tokens=true")
    page.get_by_role("button", name="Fork").last.click()
    page.get_by_text("Forked into", exact=False).wait_for(timeout=30_000)
    forks = [s for s in runs.list_runs(runs_dir) if s.parent == "browser-base"]
    assert len(forks) == 1
    fork_cfg = runs.read_config(forks[0].path)
    assert fork_cfg["top_p"] == 0.9 and fork_cfg["mask_special_tokens"] is True
    assert fork_cfg["fork_step"] >= stopped
    _wait_text(page, forks[0].run_id, lambda t: _step(t) > fork_cfg["fork_step"], "trained past its fork step")
    page.screenshot(path=str(SCREENSHOTS / "live-fork.png"), full_page=True)
    _no_error_box(page)
