"""A real browser launches a short toy run from the Launch page, sees its progress move on the Live page, stops
it, resumes it and forks it; screenshots go to test-artifacts/screenshots/ for review."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from opd_core import launcher, runs

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_SETTINGS = {"steps": "400", "eval_every": "0", "log_tokens_every": "5", "checkpoint_every": "5",
                "prompts_per_step": "2", "num_rollouts": "2", "eval_size": "4", "max_new_tokens": "12"}
STEP_TEXT = re.compile(r"step (\d+) / ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    runs_dir = tmp_path_factory.mktemp("runs")
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    exe = shutil.which("opd-lab")
    cmd = [exe] if exe else [sys.executable, "-m", "opd_core"]
    proc = subprocess.Popen([*cmd, "--runs-dir", str(runs_dir), "--port", str(port), "--no-samples"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"opd-lab exited early:\n{proc.stdout.read().decode(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        raise AssertionError("opd-lab did not answer on /_stcore/health within 90 s")
    yield url, runs_dir
    for summary in runs.list_runs(runs_dir):  # no trainer outlives the test
        if summary.state in runs.ACTIVE_STATES:
            launcher.stop(summary.path)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (CI does this in .ci/run)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport={"width": 1400, "height": 1100})
        yield context.new_page()
        context.close()


def _settled(page) -> None:
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)


def _set_text(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    _settled(page)


def _progress_text(page, run_id: str) -> str:
    bar = page.locator('[data-testid="stProgress"]').filter(has_text=run_id).first
    bar.wait_for(timeout=60_000)
    return bar.inner_text()


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


def test_launch_watch_stop_resume_and_fork_in_the_browser(server, page) -> None:
    url, runs_dir = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{url}/launch")
    page.get_by_role("heading", name="Launch", exact=True).wait_for(timeout=60_000)
    _settled(page)
    _set_text(page, "Run name (optional)", "browser-base")
    for label, value in RUN_SETTINGS.items():
        _set_text(page, label, value)
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

    page.get_by_role("button", name="Fork").first.click()
    page.get_by_label("Change settings (key=value, one per line)").fill("top_p=0.9\nmask_special_tokens=true")
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
