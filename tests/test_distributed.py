"""Data-parallel training (torchrun, gloo on CPU) matches one process training the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opd_core import runs

REPO = Path(__file__).resolve().parents[1]
# Greedy rollouts make both runs see the same responses, so any difference is the distribution itself.
SETTINGS = ["steps=3", "prompts_per_step=4", "num_rollouts=1", "temperature=0", "eval_every=0", "eval_size=8",
            "log_tokens_every=3", "checkpoint_every=0", "objective=reverse_kl", "reference_rollouts=false"]


def _args(tmp: Path, name: str) -> list[str]:
    args = ["train", "matched", "--runs-dir", str(tmp), "--name", name, "--no-progress"]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def single_process_run(tmp: Path) -> Path:
    """The one-process run the two-process ones must equal: the same `opd-lab train`, in this process (only the
    two-process launches need processes of their own). Shared by this module and test_accelerate_launch."""
    from opd_core.cli import main

    assert main(_args(tmp, "single")) == 0
    return tmp / "single"


def _train(tmp: Path, name: str, launcher: list[str]) -> Path:
    args = [*launcher, "-m", "opd_core", *_args(tmp, name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return tmp / name


@pytest.mark.slow
def test_two_process_data_parallel_run_equals_single_process_run(tmp_path, ddp_single_run):
    single = ddp_single_run
    ddp = _train(tmp_path, "ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node", "2"])
    assert sorted(r.run_id for r in runs.list_runs(tmp_path)) == ["ddp"]  # rank 0 alone made one
    assert runs.validate_run_dir(ddp) == []
    assert runs.read_status(ddp)["world_size"] == 2
    a = runs.read_metrics(single)
    b = runs.read_metrics(ddp)
    assert b["step"].tolist() == [1, 2, 3]
    assert b["tokens"].tolist() == a["tokens"].tolist()  # global token count, not rank 0's
    assert b["loss"].tolist() == pytest.approx(a["loss"].tolist(), rel=1e-4, abs=1e-6)
    assert b["grad_norm"].tolist() == pytest.approx(a["grad_norm"].tolist(), rel=1e-4, abs=1e-6)
