"""Suite-wide test settings: one torch thread per parallel worker, and tests that share an expensive
module fixture kept on one worker.

Why: ``scripts/test`` runs the suite with pytest-xdist (one worker per core). Two workers that each
let torch use every core fight over the same cores, so a worker runs torch on one thread (its child
processes inherit ``OMP_NUM_THREADS=1``; the engine already picks one thread for the toy models). A
module whose tests share a module-scoped fixture (a running dashboard, a chromium page, a benchmark
run) would build that fixture once per worker if its tests were spread out, so such modules form one
``xdist_group`` and run on one worker (``--dist loadgroup``); every other test is scheduled alone.

The suite's wall time on two workers is at least its longest test, and a long test started last keeps one
worker busy while the other idles: the longest tests and groups are therefore handed out first
(``LONGEST_FIRST``; xdist's own reordering by group size is turned off so that this order is kept).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _patch_apptest_wait() -> None:
    """AppTest waits for each script run by polling every millisecond whether the runner's event list (one entry
    per element drawn) holds a SHUTDOWN: a scan of hundreds of events 1,000 times a second, on the thread that
    competes for the GIL with the script it waits for (a fifth of the CPU of the AppTest-driven page tests).
    Waiting on the script thread itself ends at the same moment and costs nothing. Same contract: returns
    once the run stopped, else stops the runner and raises the same timeout error."""
    try:
        from streamlit.testing.v1 import local_script_runner as lsr
    except ImportError:
        return
    original = getattr(lsr, "require_widgets_deltas", None)
    if original is None or getattr(original, "_opd_patched", False):
        return

    def require_widgets_deltas(runner, timeout: float = 3) -> None:
        thread = getattr(runner, "_script_thread", None)
        if thread is None:  # not the runner this patch knows: keep Streamlit's own wait
            return original(runner, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if runner.script_stopped():
                return None
            thread.join(min(0.05, max(0.0, deadline - time.monotonic())))
        if runner.script_stopped():
            return None
        runner.request_stop()
        runner.join()
        raise RuntimeError(f"AppTest script run timed out after {timeout}(s)")

    require_widgets_deltas._opd_patched = True
    lsr.require_widgets_deltas = require_widgets_deltas


_patch_apptest_wait()


def _share_apptest_script_cache() -> None:
    """AppTest makes a new ScriptCache for every run, so each run parses, rewrites ("magic") and compiles
    app/main.py again; the server keeps one for its life (and clears it when a file changes, which no test
    does to the dashboard's own files). One cache for the session, as the server has."""
    try:
        from streamlit.runtime.scriptrunner.script_cache import ScriptCache
        from streamlit.testing.v1 import app_test
    except ImportError:
        return
    if isinstance(getattr(app_test, "ScriptCache", None), type):
        shared = ScriptCache()
        app_test.ScriptCache = lambda: shared


_share_apptest_script_cache()

# Modules whose tests share a module-scoped fixture that costs seconds to build (a server, chromium, a
# subprocess run, 69 damaged runs, a live measurement of the v2 toy pair, real tokenizers): kept together on
# one worker.
SHARED_FIXTURE_MODULES = {"test_browser_launch", "test_browser_views", "test_benchmarks_smoke",
                          "test_corrupt_runs", "test_toy_v2_world", "test_tokenizer_families"}

# Node-id prefixes of the longest tests and groups, longest first (CPU seconds of each, one file at a time on
# this 2-core machine, 2026-11-29): the real Gemma -> SmolLM2 run, the GGUF load, the eight 69-run page tests,
# the browser modules, the two-process launches. Everything else keeps its collection order after them.
LONGEST_FIRST = (
    "tests/test_real_models.py::test_gemma_teaches",
    "tests/test_real_models.py::test_a_gguf_file_loads",
    "tests/test_app_pages.py::test_every_page_opens_on_every_generated_corrupt_run",
    "tests/test_browser_views.py",
    "tests/test_browser_launch.py",
    "tests/test_distributed.py",
    "tests/test_accelerate_launch.py",
    "tests/test_rescoring.py::test_scoring_shards_over_two_ranks",
    "tests/test_benchmarks_smoke.py",
    "tests/test_tokenizer_families.py",
    "tests/test_corrupt_runs.py",
    "tests/test_toy_v2_world.py",
    "tests/test_train.py::test_two_runs_started_at_once",
    "tests/test_train.py::test_sigterm_stops",
    "tests/test_train.py::test_kill_9",
    "tests/test_score_page.py::test_a_background_scoring_stops_on_sigterm",
)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep LONGEST_FIRST, not "biggest group first"
        config.option.loadscopereorder = False


def _rank(item: pytest.Item) -> int:
    return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))


# Tests of different modules (or some tests of one) that share a session-wide cost, by node-id prefix: the
# torchrun and accelerate runs compare with one single-process run (``ddp_single_run``, trained once per
# worker); the eight 69-run page tests read the same 69 health reports (cached once per worker).
SHARED_COST_GROUPS = {
    "tests/test_distributed.py": "single-process-reference",
    "tests/test_accelerate_launch.py": "single-process-reference",
    "tests/test_app_pages.py::test_every_page_opens_on_every_generated_corrupt_run": "corrupt-run-pages",
    "tests/test_app_pages.py::test_a_page_showing_one_step_names_a_damaged_step": "corrupt-run-pages",
}


def _shared_fixture_scope(nodeid: str) -> str | None:
    group = next((name for prefix, name in SHARED_COST_GROUPS.items() if nodeid.startswith(prefix)), None)
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return group or (module if module in SHARED_FIXTURE_MODULES else None)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: without xdist installed the suite runs in one process
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201
    """``--dist loadgroup`` with the groups named here: xdist reads ``xdist_group`` markers into node ids, which
    pytest 9 no longer lets a plugin rewrite, so its own grouping silently sent a module's tests to both
    workers and built each shared fixture twice."""
    if config.getoption("dist", None) != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _shared_fixture_scope(nodeid) or nodeid

    return SharedFixtureScheduling(config, log)


# Modules whose tests mostly wait (on a trainer or scorer subprocess, a launcher's queue, a timer) rather than
# compute. Collected together they run last and side by side, and both cores idle; spread through the rest of
# the queue, each wait overlaps the other worker's computing.
WAITING_MODULES = ("tests/test_launcher.py", "tests/test_launch_page.py", "tests/test_score_page.py",
                   "tests/test_run_processes.py")


def _spread_waiting(items: list[pytest.Item]) -> list[pytest.Item]:
    waiting = [item for item in items if item.nodeid.startswith(WAITING_MODULES)]
    others = [item for item in items if not item.nodeid.startswith(WAITING_MODULES)]
    if not waiting or not others:
        return items
    every = max(1, int(0.8 * len(others)) // len(waiting))  # done before the last fifth: no waiting at the end
    out: list[pytest.Item] = []
    for i, item in enumerate(others):
        if i % every == 0 and waiting:
            out.append(waiting.pop(0))
        out.append(item)
    return out + waiting


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:  # noqa: ARG001
    """Every test module is imported now: keep the collector off what the worker holds until it exits (its
    full collections were 9-12 CPU s a run, and ~2 s passed at the end while the workers' interpreters
    collected on exit). See opd_core/collector.py."""
    from opd_core.collector import freeze_long_lived_once, skip_collection_at_exit

    freeze_long_lived_once()
    skip_collection_at_exit()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # noqa: ARG001
    items.sort(key=_rank)  # stable: the rest keep their order
    first = next((i for i, item in enumerate(items) if _rank(item) == len(LONGEST_FIRST)), len(items))
    items[first:] = _spread_waiting(items[first:])
    # xdist queues a second unit behind the one a worker is running: the worker that takes the longest test
    # also gets the third unit, which waits for it. Make that one short (the first test of the rest).
    rest = next((i for i, item in enumerate(items) if _rank(item) == len(LONGEST_FIRST)), None)
    if rest is not None and rest > 2 and _rank(items[0]) == 0:
        items.insert(2, items.pop(rest))


@pytest.fixture(scope="session")
def ddp_single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process toy run that the torchrun and accelerate runs (test_distributed, test_accelerate_launch)
    must equal: trained once per worker, read only."""
    from tests.test_distributed import single_process_run

    return single_process_run(tmp_path_factory.mktemp("ddp-single"))
