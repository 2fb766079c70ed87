"""A real browser (headless Debian chromium) on a running `opd-lab`, at 1440×900: the views an expert reaches for.

Each test leaves a screenshot in test-artifacts/screenshots/ (not committed) for review:
- live-watch-list.png: the Live page after the watch list was edited to two runs;
- deep-link-eos.png: ?run=baseline&step=200&sample=S&pos=P opened at the student's <|im_end|> (the first
  cross-tokenizer EOS of step 200, sample 0 when it has one, found from the data), the hover card saying the
  teacher scored it as literal text it never uses and listing the teacher's own top-K in its own words;
- deep-link-eos-teacher.png: the same token's group in the teacher's tokenization strip, its card open;
- deep-link-eos-full.png: the same page whole, the teacher's own tokenization strip under the student's;
- runs-table.png: the Runs table at 1440 px, no sideways scrolling, settings behind the details view;
- url-round-trip.png: Compare reopened from the URL it wrote after its runs and metric were changed;
- side-by-side.png / side-by-side-diff.png: baseline and masked sample runs on the same prompt, one colour scale,
  then coloured by the per-token difference;
- sample-filter.png: the inspector with the "did not stop" filter on;
- launch-typed-param.png: a Launch whose objective parameter k was typed into a number widget;
- hostile-<page>.png: every page on a run whose strings hold Markdown/HTML that would fetch or run something;
- page-<url path>.png: every page the app registers, opened from its URL on a synthetic run, whole;
- inspector-hover.png: a token's hover card with both models' candidates.

(One dashboard and one chromium serve every test here: each costs seconds of CPU to start.)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from app import config_form
from app.navigation import available_specs
from opd_core import runs
from opd_core.synthetic_runs import write_synthetic_run
from tests.browser_support import NO_SCRIPT_RUNNING, SCREENSHOTS, chromium_page, running_opd_lab, settle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORT = {"width": 1440, "height": 900}
HOSTILE_URL_PATH = "/x.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from tests.test_app_pages import write_hostile_run
    from tests.test_launcher import FAKE_TRAINER

    base = tmp_path_factory.mktemp("views")
    runs_dir = base / "runs"
    write_synthetic_run(runs_dir / "watch-a", steps=4, log_every=2, samples=2, length=8)
    write_synthetic_run(runs_dir / "watch-b", steps=4, log_every=2, samples=2, length=8, seed=1)
    write_hostile_run(runs_dir)
    script = base / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    from opd_core.toy.presets import resolve_pair

    model = resolve_pair("toy:matched")[0]  # passes the pre-flight check; the fake trainer never loads it
    old = os.environ.get("OPD_LAB_TRAINER_CMD")
    os.environ["OPD_LAB_TRAINER_CMD"] = f"{sys.executable} {script}"  # the server's launches use the fake
    try:
        with running_opd_lab(runs_dir) as url:
            yield url, runs_dir, model
    finally:
        if old is None:
            os.environ.pop("OPD_LAB_TRAINER_CMD", None)
        else:
            os.environ["OPD_LAB_TRAINER_CMD"] = old


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), VIEWPORT) as pg:
        yield pg


# Every page the app registers, optional pages included. The default page (Runs) lives at the root URL;
# Streamlit answers its url_path with "page not found".
PAGES = [("" if spec.file == "runs.py" else spec.url_path, spec.title) for spec in available_specs()]
# Pages whose own URL other tests here open in a fresh load (the Runs page, at the root, opens first below).
LINKS_OPENED_ELSEWHERE = ("compare", "launch", "live", "inspector", "side-by-side")
CHARTS_DRAWN = """() => (""" + NO_SCRIPT_RUNNING + """)()
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('svg.main-svg'))"""


def _settle(page, quiet_ms: int = 400, after_ms: int = 0) -> None:
    settle(page, quiet_ms, after_ms=after_ms)


def _open(page, url: str, heading: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=heading, exact=True).wait_for(timeout=90_000)
    _settle(page)


def _shot(page, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _no_exception(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def _pick(page, widget_label: str, option: str) -> None:
    """Choose an option of a Streamlit selectbox by its label."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text=widget_label).first
    box.scroll_into_view_if_needed()
    box.click()
    page.keyboard.type(option)  # the option list is virtualised: filter it so the option is rendered
    page.get_by_role("option", name=option, exact=True).first.click()
    _settle(page)


def test_editing_the_live_watch_list_in_the_browser(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/live", "Live")
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Runs to watch").first
    for run_id in ("watch-a", "watch-b"):
        if run_id in box.inner_text():
            continue
        box.click()
        page.get_by_role("option", name=re.compile(rf"^{run_id}")).first.click()
        page.keyboard.press("Escape")
        _settle(page)
    _settle(page, after_ms=1500)  # a rerun (the live refresh) must keep the edit
    bars = page.locator('[data-testid="stProgress"]')
    texts = " ".join(bars.nth(i).inner_text() for i in range(bars.count()))
    assert "watch-a" in texts and "watch-b" in texts, texts
    _shot(page, "live-watch-list.png")
    _no_exception(page)


def test_a_deep_link_opens_the_baseline_eos_token_with_both_tokenizations(server, page) -> None:
    from tests.test_app_pages import baseline_eos

    url, _, _ = server
    sample, pos, own_logged = baseline_eos()
    _open(page, f"{url}/inspector?run=samples:baseline-sampled-token&step=200&sample={sample}&pos={pos}"
                "&color=log_ratio", "Token inspector")
    token = page.locator(".opd-tok.opd-selected").first
    token.wait_for(timeout=30_000)
    assert token.get_attribute("data-pos") == str(pos)
    assert page.locator(".opd-group").count() > 0, "the teacher's tokenization strip is missing"
    token.scroll_into_view_if_needed()
    token.hover()
    tip = token.locator(".opd-tip")
    tip.wait_for(state="visible", timeout=5_000)
    card = tip.inner_text()
    assert "literal text" in card and "never uses" in card and "</s>" in card and "scored as text" in card, card
    if own_logged:  # runs built since the engine logs it: the teacher's own top-K, in its own vocabulary
        assert "Teacher's own top-" in card and "teacher piece" in card, card
    box = tip.bounding_box()
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"], "hover card is clipped"
    assert f"pos={pos}" in page.url and "step=200" in page.url and f"sample={sample}" in page.url
    _shot(page, "deep-link-eos.png")
    group = page.locator(f".opd-group[data-pos='{pos}']").first  # the same token in the teacher's strip
    group.scroll_into_view_if_needed()
    group.hover()
    group_tip = group.locator(".opd-tip")
    group_tip.wait_for(state="visible", timeout=5_000)
    text = group_tip.inner_text()
    assert "literal text" in text and ("Teacher's own top-" in text if own_logged else "not logged" in text), text
    _shot(page, "deep-link-eos-teacher.png")
    page.mouse.move(5, 5)
    _shot(page, "deep-link-eos-full.png", full_page=True)  # the teacher's tokenization strip under the student's
    _no_exception(page)


def test_two_sample_runs_side_by_side_on_the_same_prompt(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/side-by-side?run=samples:baseline-sampled-token&run_b=samples:masked-sampled-token",
          "Side by side")
    a = page.locator(".st-key-sbs_strip_a .opd-tok")
    b = page.locator(".st-key-sbs_strip_b .opd-tok")
    assert a.count() > 0 and b.count() > 0
    assert "baseline-sampled-token" in page.locator(".st-key-sbs_strip_a").inner_text()
    assert "masked-sampled-token" in page.locator(".st-key-sbs_strip_b").inner_text()
    _shot(page, "side-by-side.png")
    page.get_by_text("Colour by the difference B − A").click()
    _settle(page)
    assert "signal_diff" in page.locator(".st-key-sbs_strip_a").inner_text()
    _shot(page, "side-by-side-diff.png")
    _no_exception(page)


def test_a_sample_filter_keeps_only_matching_samples(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/inspector?run=samples:baseline-sampled-token", "Token inspector")
    page.get_by_role("button", name="did not stop", exact=True).first.click()
    _settle(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Sample").first.click()
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert options and all("did not stop" in o for o in options), options
    sample_box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Sample").first
    cut = sample_box.evaluate("e => [...e.querySelectorAll('*')].filter(x => x.scrollWidth > x.clientWidth + 1)"
                              ".map(x => x.value || x.innerText || '').filter(t => t.includes('did not stop'))")
    assert not cut, f"the chosen sample's label is cut: {cut}"
    _shot(page, "sample-filter.png")
    _no_exception(page)


def test_launch_with_a_typed_objective_parameter(server, page) -> None:
    url, runs_dir, model = server
    _open(page, f"{url}/launch", "Launch")
    _pick(page, config_form.label("objective"), "topk_support")
    k = page.get_by_role("spinbutton", name=re.compile(r"^k · "))
    k.fill("16")
    k.press("Enter")
    _settle(page)
    settings = {"student": str(model), "teacher": str(model), "steps": "3", "eval_every": "0",
                "log_tokens_every": "1", "checkpoint_every": "0"}
    for name, value in settings.items():
        box = page.get_by_label(config_form.label(name), exact=True)
        box.fill(value)
        box.press("Enter")
        _settle(page, 300)
    name_box = page.get_by_role("textbox", name="Run name (optional)")
    name_box.fill("typed-k")
    name_box.press("Enter")
    _settle(page)
    go = page.locator(".st-key-launch_bar").get_by_role("button", name="Launch")
    assert go.is_visible() and go.bounding_box()["y"] < VIEWPORT["height"], "Launch must be in reach"
    go.click()
    page.get_by_text(re.compile(r"Run\s*typed-k\s*is")).first.wait_for(timeout=30_000)
    _shot(page, "launch-typed-param.png")
    deadline = time.time() + 30
    while not (runs_dir / "typed-k" / runs.CONFIG_FILE).exists() and time.time() < deadline:
        time.sleep(0.2)
    config = json.loads((runs_dir / "typed-k" / runs.CONFIG_FILE).read_text())
    assert config["objective"] == "topk_support" and config["objective_params"]["k"] == 16
    _no_exception(page)


def test_hostile_run_strings_fetch_nothing_and_open_no_dialog(server, page) -> None:
    url, _, _ = server
    fetched: list[str] = []
    dialogs: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    # Live watches a list of runs (?watch=), not the picked run, and moves the pick to what it watches: last.
    shown = sorted((spec for spec in available_specs() if spec.url_path not in ("lab", "launch")),
                   key=lambda spec: spec.url_path == "live")
    for i, spec in enumerate(shown):
        path = "" if spec.file == "runs.py" else spec.url_path
        # A link opens the hostile run; the sidebar then moves between pages within the app, as a user does (a
        # whole page load costs chromium ~1 CPU s).
        if i == 0:
            page.goto(f"{url}/{path}?run=runs:hostile")
        elif spec.url_path == "live":
            page.goto(f"{url}/live?watch=hostile&focus=hostile")
        else:
            page.locator(f'[data-testid="stSidebarNavLink"][href="{url}/{path}"]').first.click()
            page.wait_for_url(re.compile(rf"^{re.escape(url)}/{re.escape(path)}(\\?|$)"), timeout=90_000)
        page.locator("h1").first.wait_for(timeout=90_000)
        _settle(page)
        assert "hostile" in page.url, page.url  # still the hostile run
        _shot(page, f"hostile-{spec.url_path}.png")
        _no_exception(page)
    assert not [u for u in fetched if u.endswith(HOSTILE_URL_PATH) or "127.0.0.1:9/" in u], fetched
    assert dialogs == []
    assert page.locator("img[src='x']").count() == 0


def test_the_runs_table_fits_a_1440_px_window_without_scrolling_sideways(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/", "Runs")
    grid = page.locator('[data-testid="stDataFrame"] .dvn-scroller').first
    grid.wait_for(timeout=60_000)
    scroll, client = grid.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert scroll <= client, f"the Runs table scrolls sideways: {scroll} px of columns in {client} px"
    assert page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    header = page.locator('[data-testid="stDataFrame"]').first.inner_text()
    _shot(page, "runs-table.png")
    page.get_by_text("Settings, health flags and models of every run").first.click()
    _settle(page)
    details = page.locator("table.opd-text-table").first
    details.wait_for(timeout=30_000)
    assert "settings" in details.inner_text() and "health flags" in details.inner_text(), header
    wide = details.evaluate("e => [e, ...e.querySelectorAll('*')].filter(x => x.scrollWidth > x.clientWidth + 1)"
                            ".map(x => [x.tagName, x.className, x.scrollWidth, x.clientWidth, x.innerText.slice(0, 60)])")
    assert not wide, f"the details view scrolls sideways: {wide}"
    _no_exception(page)


def test_a_compare_link_copied_from_the_address_bar_reopens_the_same_view(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/compare?runs=samples:baseline-sampled-token,samples:topk-support&metric=grad_norm",
          "Compare")
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Runs to compare").first
    assert "baseline-sampled-token" in box.inner_text() and "topk-support" in box.inner_text()
    _pick(page, "Metric", "response_len")
    page.get_by_text("tokens seen", exact=True).first.click()
    _settle(page)
    copied = page.url
    assert "metric=response_len" in copied and "x=tokens+seen" in copied.replace("%20", "+"), copied
    page.goto("about:blank")
    _open(page, copied, "Compare")  # the link pasted into a fresh tab
    box = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Runs to compare").first
    chosen = box.inner_text()
    assert "baseline-sampled-token" in chosen and "topk-support" in chosen and "masked" not in chosen, chosen
    # the chosen metric drives the curves' download button, and the page writes back what it shows
    assert page.get_by_role("button", name="Download response_len curves (CSV)").count() == 1
    assert "metric=response_len" in page.url and "samples%3Atopk-support" in page.url, page.url
    assert page.get_by_role("radio", name="tokens seen").is_checked()
    _shot(page, "url-round-trip.png")
    _no_exception(page)


def test_every_page_opens_without_an_error_box(server, page) -> None:
    url, _, _ = server
    # Live moves the pick to the runs it watches: last. Each page opens on a run with token records (the newest
    # has none), from its own link where no other test opens that link; the others through the sidebar, as a
    # user moves (a whole page load costs chromium ~1 CPU s, a page change ~0.5 s).
    for url_path, title in sorted(PAGES, key=lambda p: p[0] == "live"):
        if url_path not in LINKS_OPENED_ELSEWHERE:
            page.goto(f"{url}/{url_path}?run=runs:watch-a")
        else:
            page.locator(f'[data-testid="stSidebarNavLink"][href="{url}/{url_path}"]').first.click()
            page.wait_for_url(re.compile(rf"^{re.escape(url)}/{re.escape(url_path)}(\\?|$)"), timeout=90_000)
        page.locator("h1").first.wait_for(timeout=60_000)  # the page's own title: its script has started
        settle(page, settled_js=CHARTS_DRAWN)  # the run is over and every chart has drawn, and stays so
        if url_path not in ("launch", "lab", "live"):  # the pages that show the picked run still show it
            assert "watch-a" in page.url, (title, page.url)
        # page-<name>.png: never the name of a Done-when screenshot above (side-by-side.png)
        _shot(page, f"page-{url_path}.png", full_page=True)
        errors = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
        assert errors.count() == 0, f"page {title!r} shows an error: {errors.first.inner_text()}"
        assert page.get_by_text("Page not found").count() == 0, f"page {title!r} is not registered"


def test_hovering_a_token_shows_both_models_candidates(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/inspector?run=runs:watch-a", "Token inspector")
    token = page.locator(".opd-tok").nth(3)
    tip = token.locator(".opd-tip")
    assert not tip.is_visible()
    token.hover()
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert "teacher" in text and "student" in text
    assert text.count("0.") >= 2  # probabilities of candidates are listed
    _shot(page, "inspector-hover.png")
