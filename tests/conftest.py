"""Suite-wide test settings: one torch thread per parallel worker, and tests that share an expensive
module fixture kept on one worker.

Why: ``scripts/test`` runs the suite with pytest-xdist (one worker per core). Two workers that each
let torch use every core fight over the same cores, so a worker runs torch on one thread (its child
processes inherit ``OMP_NUM_THREADS=1``; the engine already picks one thread for the toy models). A
module whose tests share a module-scoped fixture (a running dashboard, a chromium page, a benchmark
run) would build that fixture once per worker if its tests were spread out, so such modules form one
``xdist_group`` and run on one worker (``--dist loadgroup``); every other test is scheduled alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

# Modules whose tests share a module-scoped fixture that costs seconds to build (a server, chromium, a
# subprocess run, 69 damaged runs): kept together on one worker.
SHARED_FIXTURE_MODULES = {"test_browser", "test_browser_launch", "test_benchmarks_smoke", "test_corrupt_runs"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # noqa: ARG001
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SHARED_FIXTURE_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture(scope="session")
def ddp_single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process toy run that the torchrun and accelerate runs (test_distributed, test_accelerate_launch)
    must equal: trained once per worker, read only."""
    from tests.test_distributed import single_process_run

    return single_process_run(tmp_path_factory.mktemp("ddp-single"))
