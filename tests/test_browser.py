"""A real browser opens every page of a running `opd-lab`, sees no error box, hovers a token and reads its
candidates; a screenshot of each page is kept in test-artifacts/screenshots/ for review."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.navigation import available_specs
from opd_core.synthetic_runs import write_synthetic_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Every page the app registers, optional pages other helpers add (Launch, Live, Lab) included once they exist.
# The default page (Runs) lives at the root URL; Streamlit answers its url_path with "page not found".
PAGES = [("" if spec.file == "runs.py" else spec.url_path, spec.title) for spec in available_specs()]
PAGE_SETTLED = """() => !document.querySelector('[data-testid="stStatusWidget"]')
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('svg.main-svg'))"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _opd_lab_command() -> list[str]:
    exe = shutil.which("opd-lab")
    return [exe] if exe else [sys.executable, "-m", "opd_core"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    runs_dir = tmp_path_factory.mktemp("runs")
    write_synthetic_run(runs_dir / "browser-run", steps=6, log_every=2, samples=4, length=16)
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([*_opd_lab_command(), "--runs-dir", str(runs_dir), "--port", str(port)], cwd=REPO,
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
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (CI does this in .ci/run)")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        yield page
        context.close()


def _open(page, url: str) -> None:
    page.goto(url)
    # Wait for the page's own title (h1), so we know its script has started rendering.
    page.locator("h1").first.wait_for(timeout=60_000)
    # Then until the script run is over and every chart has drawn, twice in a row (reruns can follow).
    for _ in range(2):
        page.wait_for_timeout(400)
        page.wait_for_function(PAGE_SETTLED, timeout=60_000)


def test_every_page_opens_without_an_error_box(server: str, browser_page) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for url_path, title in PAGES:
        _open(browser_page, f"{server}/{url_path}")
        browser_page.screenshot(path=str(SCREENSHOTS / f"{url_path}.png"), full_page=True)
        errors = browser_page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
        assert errors.count() == 0, f"page {title!r} shows an error: {errors.first.inner_text()}"
        assert browser_page.get_by_text("Page not found").count() == 0, f"page {title!r} is not registered"


def test_hovering_a_token_shows_both_models_candidates(server: str, browser_page) -> None:
    _open(browser_page, f"{server}/inspector")
    token = browser_page.locator(".opd-tok").nth(3)
    tip = token.locator(".opd-tip")
    assert not tip.is_visible()
    token.hover()
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert "teacher" in text and "student" in text
    assert text.count("0.") >= 2  # probabilities of candidates are listed
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser_page.screenshot(path=str(SCREENSHOTS / "inspector-hover.png"))
