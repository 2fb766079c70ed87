"""What both real-browser tests need: a running `opd-lab` on a free port and a headless Debian chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
# Without the background-networking flags chromium keeps dialling hosts this sandbox cannot reach.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_opd_lab(runs_dir: Path, *extra: str) -> Iterator[str]:
    """Start `opd-lab` (the installed console script when there is one) and yield its URL once healthy."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    exe = shutil.which("opd-lab")
    cmd = [exe] if exe else [sys.executable, "-m", "opd_core"]
    proc = subprocess.Popen([*cmd, "--runs-dir", str(runs_dir), "--port", str(port), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
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
            raise AssertionError("opd-lab did not answer on /_stcore/health within 90 s")
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """Stop `opd-lab` (which stops its Streamlit server), then make sure nothing of its session is left."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # The server runs in opd-lab's session: anything still there is killed with the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def chromium_page(profile: Path, viewport: dict[str, int]) -> Iterator[object]:
    """A Playwright page in Debian's chromium; fails (not skips) when chromium is missing, as CI installs it."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (scripts/test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                       headless=True, viewport=viewport)
        try:
            yield context.new_page()
        finally:
            context.close()


# Streamlit writes its script state on the app root at once (the status widget shows only after a delay, so a
# run that has just started can look finished to a check of the widget alone).
NO_SCRIPT_RUNNING = """() => document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state')
    === 'notRunning' && !document.querySelector('[data-testid="stStatusWidget"]')"""


def settle(page, quiet_ms: int = 400, settled_js: str = NO_SCRIPT_RUNNING, after_ms: int = 0,
           timeout_s: float = 90) -> None:
    """Wait until ``settled_js`` has held for ``quiet_ms`` on end, checked every 100 ms: a widget's rerun (or the
    rerun a rerun triggers) starts within a few hundred ms of the click. A fixed pause before each check costs
    its whole length on every call; this costs ``quiet_ms`` when the page is already still. ``after_ms``: a
    pause first, for a rerun that comes on a timer (the Live page's refresh)."""
    if after_ms:
        page.wait_for_timeout(after_ms)
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if not page.evaluate(settled_js):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif (now - quiet_since) * 1000 >= quiet_ms:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"the page never stayed settled for {quiet_ms} ms within {timeout_s:.0f} s")
