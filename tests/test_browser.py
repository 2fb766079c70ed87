"""A real browser opens every page of a running `opd-lab`, sees no error box, hovers a token and reads its
candidates; a screenshot of each page is kept in test-artifacts/screenshots/ for review."""

from __future__ import annotations

import pytest

from app.navigation import available_specs
from opd_core.synthetic_runs import write_synthetic_run
from tests.browser_support import NO_SCRIPT_RUNNING, SCREENSHOTS, chromium_page, running_opd_lab, settle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every page the app registers, optional pages other helpers add (Launch, Live, Lab) included once they exist.
# The default page (Runs) lives at the root URL; Streamlit answers its url_path with "page not found".
PAGES = [("" if spec.file == "runs.py" else spec.url_path, spec.title) for spec in available_specs()]
PAGE_SETTLED = """() => (""" + NO_SCRIPT_RUNNING + """)()
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('svg.main-svg'))"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    runs_dir = tmp_path_factory.mktemp("runs")
    write_synthetic_run(runs_dir / "browser-run", steps=6, log_every=2, samples=4, length=16)
    with running_opd_lab(runs_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory: pytest.TempPathFactory):
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), {"width": 1400, "height": 1000}) as page:
        yield page


def _open(page, url: str) -> None:
    page.goto(url)
    # Wait for the page's own title (h1), so we know its script has started rendering.
    page.locator("h1").first.wait_for(timeout=60_000)
    # Then until the script run is over and every chart has drawn, and stays so (reruns can follow).
    settle(page, settled_js=PAGE_SETTLED)


def test_every_page_opens_without_an_error_box(server: str, browser_page) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for url_path, title in PAGES:
        _open(browser_page, f"{server}/{url_path}")
        # page-<name>.png: never the name of a Done-when screenshot of test_browser_views (side-by-side.png)
        browser_page.screenshot(path=str(SCREENSHOTS / f"page-{url_path}.png"), full_page=True)
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
