"""`accelerate launch -m opd_core train` is the torchrun path under another launcher: same run dir, same numbers."""

from __future__ import annotations

import socket
import sys

import pytest

from opd_core import runs
from tests.test_distributed import _train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_accelerate_two_process_run_equals_single_process_run(tmp_path, ddp_single_run):
    pytest.importorskip("accelerate")
    single = ddp_single_run
    # On a machine without GPUs, --multi_gpu is accelerate's torch.distributed launcher; the engine picks gloo.
    acc = _train(tmp_path, "acc", [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                   "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                                   "--dynamo_backend", "no", "--main_process_port", str(_free_port())])
    assert sorted(r.run_id for r in runs.list_runs(tmp_path)) == ["acc"]  # rank 0 alone made one
    assert runs.validate_run_dir(acc) == []
    assert runs.read_status(acc)["world_size"] == 2
    a = runs.read_metrics(single)
    b = runs.read_metrics(acc)
    assert b["step"].tolist() == [1, 2, 3]
    assert b["tokens"].tolist() == a["tokens"].tolist()
    assert b["loss"].tolist() == pytest.approx(a["loss"].tolist(), rel=1e-4, abs=1e-6)
    assert b["grad_norm"].tolist() == pytest.approx(a["grad_norm"].tolist(), rel=1e-4, abs=1e-6)
