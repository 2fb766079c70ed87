"""A real browser (headless Debian chromium) on a running `opd-lab`, at 1440×900: the views an expert reaches for.

Each test leaves a screenshot in test-artifacts/screenshots/ (not committed) for review:
- live-watch-list.png: the Live page after the watch list was edited to two runs;
- deep-link-eos.png: ?run=baseline&step=200&sample=1&pos=34 opened at the student's <|im_end|>, the hover card
  saying the teacher scored it as literal text and naming its own EOS among its candidates;
- deep-link-eos-full.png: the same page whole, the teacher's own tokenization strip under the student's;
- side-by-side.png / side-by-side-diff.png: baseline and masked sample runs on the same prompt, one colour scale,
  then coloured by the per-token difference;
- sample-filter.png: the inspector with the "did not stop" filter on;
- launch-typed-param.png: a Launch whose objective parameter k was typed into a number widget;
- hostile-<page>.png: every page on a run whose strings hold Markdown/HTML that would fetch or run something.
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
from tests.browser_support import SCREENSHOTS, chromium_page, running_opd_lab

pytestmark = [pytest.mark.browser, pytest.mark.slow]

VIEWPORT = {"width": 1440, "height": 900}
HOSTILE_URL_PATH = "/x.png"
SETTLED = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


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


def _settle(page, extra_ms: int = 600) -> None:
    for _ in range(2):
        page.wait_for_timeout(extra_ms)
        page.wait_for_function(SETTLED, timeout=90_000)


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
    _settle(page, 1500)  # a rerun (the live refresh) must keep the edit
    bars = page.locator('[data-testid="stProgress"]')
    texts = " ".join(bars.nth(i).inner_text() for i in range(bars.count()))
    assert "watch-a" in texts and "watch-b" in texts, texts
    _shot(page, "live-watch-list.png")
    _no_exception(page)


def test_a_deep_link_opens_the_baseline_eos_token_with_both_tokenizations(server, page) -> None:
    url, _, _ = server
    _open(page, f"{url}/inspector?run=samples:baseline-sampled-token&step=200&sample=1&pos=34&color=log_ratio",
          "Token inspector")
    token = page.locator(".opd-tok.opd-selected").first
    token.wait_for(timeout=30_000)
    assert token.get_attribute("data-pos") == "34"
    assert page.locator(".opd-group").count() > 0, "the teacher's tokenization strip is missing"
    token.scroll_into_view_if_needed()
    token.hover()
    tip = token.locator(".opd-tip")
    tip.wait_for(state="visible", timeout=5_000)
    card = tip.inner_text()
    assert "literal text" in card and "</s>" in card and "scored as text" in card, card
    box = tip.bounding_box()
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"], "hover card is clipped"
    assert "pos=34" in page.url and "step=200" in page.url
    _shot(page, "deep-link-eos.png")
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
    for spec in available_specs():
        if spec.url_path in ("lab", "launch"):
            continue
        path = "" if spec.file == "runs.py" else spec.url_path
        page.goto(f"{url}/{path}?run=runs:hostile")
        page.locator("h1").first.wait_for(timeout=90_000)
        _settle(page)
        _shot(page, f"hostile-{spec.url_path}.png")
        _no_exception(page)
    assert not [u for u in fetched if u.endswith(HOSTILE_URL_PATH) or "127.0.0.1:9/" in u], fetched
    assert dialogs == []
    assert page.locator("img[src='x']").count() == 0
