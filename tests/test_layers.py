"""Layers point one way, checked on the source: the engine never reads the dashboard or the process manager,
and the training code never reads the diagnostics (which read the training code's records instead)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "opd_core"

DASHBOARD = re.compile(r"^(streamlit|app|pages)(\.|$)")
PROCESS_MANAGER = re.compile(r"^opd_core\.(launcher|launch|jobs)\w*(\.|$)")
DIAGNOSTICS = re.compile(r"^opd_core\.diagnostics(\.|$)")
# The training code: the loop and everything it runs or writes with (also the SDK and trainer bridges).
TRAINING = re.compile(r"^opd_core/(train\w*|loop\w*|stats\w*|run_writer|schema|scoring|rollout|logging_sdk|sdk_writer|"
                      r"token_records|progress|fast_paths|student_head|pairing|checkpoints|distributed)\.py$"
                      r"|^opd_core/(objectives|integrations|stats|loop|rescoring)/")
# The command line is the front end that starts the dashboard and the process manager; the process
# manager may import itself.
FRONT_ENDS = {"opd_core/cli.py", "opd_core/__main__.py"}
# Known exceptions, each to be removed by the work that fixes it.
KNOWN: set[tuple[str, str]] = set()


def imported_modules(source: str, module: str) -> set[str]:
    """Every module a source file imports (at any depth, relative imports resolved, `from X import y` as X.y)."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(rel_path: str, source: str) -> list[str]:
    """The layer rules a file of opd_core breaks, as readable lines (empty = clean)."""
    module = rel_path[:-3].replace("/", ".")
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")] + ".x"
    out = []
    for name in sorted(imported_modules(source, module)):
        if (rel_path, name) in KNOWN:
            continue
        if DASHBOARD.match(name) and rel_path not in FRONT_ENDS:
            out.append(f"{rel_path} imports the dashboard ({name})")
        if PROCESS_MANAGER.match(name) and rel_path not in FRONT_ENDS and not PROCESS_MANAGER.match(module):
            out.append(f"{rel_path} imports the process manager ({name})")
        if DIAGNOSTICS.match(name) and TRAINING.match(rel_path):
            out.append(f"{rel_path} (training code) imports the diagnostics ({name})")
    return out


def _sources() -> list[tuple[str, str]]:
    return [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]


def test_the_engine_respects_its_layers():
    problems = [line for rel, src in _sources() for line in violations(rel, src)]
    assert problems == []


def test_the_check_catches_the_training_code_importing_the_diagnostics():
    train = (PACKAGE / "train.py").read_text()
    assert violations("opd_core/train.py", train) == []
    for added in ("from opd_core.diagnostics import health\n", "import opd_core.diagnostics.imbalance\n",
                  "from opd_core.diagnostics.imbalance import gini\n", "def f():\n    from .diagnostics import x\n"):
        assert violations("opd_core/train.py", train + added), added
    assert violations("opd_core/stats.py", "from opd_core import diagnostics\n")
    assert violations("opd_core/objectives/kl.py", "from ..diagnostics import health\n")


def test_the_check_catches_the_engine_importing_the_dashboard_or_the_process_manager():
    assert violations("opd_core/runs.py", "import streamlit as st\n")
    assert violations("opd_core/runs.py", "from app.navigation import page\n")
    assert violations("opd_core/diagnostics/health.py", "from opd_core import launcher\n")
    assert violations("opd_core/stats.py", "from opd_core.jobs.queue import pump\n")
    assert violations("opd_core/launcher/queue.py", "from opd_core.launcher import processes\n") == []
    assert violations("opd_core/diagnostics/health.py", "from opd_core.stats import gini\n") == []
