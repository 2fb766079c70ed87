"""A TRL distillation run, hooked with one call, becomes an OPD Lab run the validator and the report accept."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from opd_core import runs
from opd_core.integrations.trl import TRLIntegrationError, _left_align, attach_opd_lab, objective_of

ROOT = Path(__file__).resolve().parents[1]
NEEDS_TRL = "trl is not installed: install the optional extra with `pip install -e '.[trl]'` (CI installs it)"


@pytest.fixture(autouse=True)
def _quiet_trl(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")


def test_gkd_example_writes_a_valid_run_that_opd_lab_report_reads(tmp_path, capsys):
    pytest.importorskip("trl", reason=NEEDS_TRL)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from trl_gkd_with_opd_lab import main
    finally:
        sys.path.remove(str(ROOT / "examples"))
    run_dir = main(["--steps", "2", "--every", "1", "--runs-dir", str(tmp_path), "--name", "gkd",
                    "--output-dir", str(tmp_path / "trl_out")])
    assert run_dir == tmp_path / "gkd"
    assert runs.validate_run_dir(run_dir) == []
    status, config = runs.read_status(run_dir), runs.read_config(run_dir)
    assert status["state"] == "finished" and status["total_steps"] == 2
    assert config["trainer"] == "trl.GKDTrainer" and config["objective"] == "jsd"
    assert config["objective_params"] == {"beta": 0.5}
    metrics = runs.read_metrics(run_dir)
    assert metrics["step"].tolist() == [1, 2]
    assert metrics["loss"].notna().all() and metrics["grad_norm"].notna().all() and metrics["lr"].notna().all()
    assert runs.token_steps(run_dir) == [1, 2]
    tokens = runs.read_tokens(run_dir)
    assert set(tokens["prefix_source"]) == {"student"}  # lmbda=1: every step is an on-policy rollout
    assert tokens["signal"].ge(-1e-6).all()  # a divergence per token is never negative
    assert tokens.groupby(["step", "sample"])["pos"].min().eq(0).all()  # positions count from the response start
    # `opd-lab report` in-process (the CLI's own main; a process per call would re-import torch)
    from opd_core.cli import main as opd_lab

    capsys.readouterr()
    assert opd_lab(["report", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["objective"] == "jsd"


def test_gkd_steps_on_dataset_completions_are_logged_as_teacher_prefixes(tmp_path):
    pytest.importorskip("trl", reason=NEEDS_TRL)
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from trl_gkd_with_opd_lab import build_trainer
    finally:
        sys.path.remove(str(ROOT / "examples"))
    trainer = build_trainer("toy:matched", "toy:matched", str(tmp_path / "out"), steps=1, lmbda=0.0)
    logger = attach_opd_lab(trainer, runs_dir=tmp_path, name="offpolicy", every=1)
    trainer.train()
    tokens = runs.read_tokens(logger.run_dir)
    assert set(tokens["prefix_source"]) == {"teacher"} and runs.read_config(logger.run_dir)["lmbda"] == 0.0


def test_distillation_trainer_run_is_logged_with_reverse_kl_signal(tmp_path):
    trl = pytest.importorskip("trl", reason=NEEDS_TRL)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_core.diagnostics import health
    from opd_core.toy.presets import resolve_pair
    from opd_core.toy.task import AdditionTask

    student_dir, teacher_dir = resolve_pair("toy:matched")
    tok = AutoTokenizer.from_pretrained(student_dir)
    student, teacher = AutoModelForCausalLM.from_pretrained(student_dir), AutoModelForCausalLM.from_pretrained(teacher_dir)
    teacher.resize_token_embeddings(student.get_input_embeddings().weight.shape[0])  # drop padding rows
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.prompt}]}
                              for ex in AdditionTask().examples("train", 4, 0)])
    args = trl.DistillationConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=4,
                                  max_completion_length=12, beta=1.0, logging_steps=1, save_strategy="no",
                                  report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = trl.DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                      processing_class=tok)
    logger = attach_opd_lab(trainer, runs_dir=tmp_path, name="dist", every=1, max_samples=2)
    trainer.train()
    assert runs.validate_run_dir(logger.run_dir) == []
    assert runs.read_config(logger.run_dir)["objective"] == "reverse_kl"
    tokens = runs.read_tokens(logger.run_dir)
    assert sorted(tokens["sample"].unique()) == [0, 1] and set(tokens["prefix_source"]) == {"student"}
    metrics = runs.read_metrics(logger.run_dir)
    assert metrics["tokens"].iloc[0] > metrics["logged_tokens"].iloc[0]  # the batch's 4 responses, not the 2 logged
    assert health(logger.run_dir).run_dir is not None


def test_left_align_moves_each_response_to_column_zero():
    mask = torch.tensor([[False, False, True, True, False], [False, True, True, True, True]])
    ids = torch.tensor([[9, 9, 1, 2, 0], [9, 3, 4, 5, 6]])
    aligned, (out,) = _left_align(mask, ids)
    assert aligned.tolist() == [[True, True, False, False], [True, True, True, True]]
    assert out[0, :2].tolist() == [1, 2] and out[1].tolist() == [3, 4, 5, 6]


def test_beta_maps_to_the_same_objective_convention_as_trl():
    assert objective_of(0.0) == ("forward_kl", {})
    assert objective_of(1.0) == ("reverse_kl", {})
    assert objective_of(0.3) == ("jsd", {"beta": 0.3})


class _FakeTrainer:
    """Just the surface attach_opd_lab touches, so its error handling is tested without TRL."""

    def __init__(self, teacher: bool = True):
        self.args = SimpleNamespace(learning_rate=1e-3, max_steps=4, temperature=1.0)
        self.state = SimpleNamespace(global_step=0, max_steps=4)
        self.model = torch.nn.Linear(1, 1)
        self.teacher_model = torch.nn.Linear(1, 1) if teacher else None
        self.callbacks: list = []

    def compute_loss(self, model, inputs, **kwargs):
        return torch.zeros(())

    def training_step(self, *args, **kwargs):
        return torch.zeros(())

    def train(self):
        raise RuntimeError("NCCL timeout")

    def add_callback(self, callback):
        self.callbacks.append(callback)


def test_a_trainer_without_a_teacher_is_refused_with_the_trl_version():
    with pytest.raises(TRLIntegrationError, match=r"teacher_model.*trl|trl.*teacher_model"):
        attach_opd_lab(_FakeTrainer(teacher=False))


def test_a_crashing_train_marks_the_run_failed_and_attaching_twice_is_refused(tmp_path):
    trainer = _FakeTrainer()
    logger = attach_opd_lab(trainer, runs_dir=tmp_path, name="crash")
    with pytest.raises(TRLIntegrationError, match="already"):
        attach_opd_lab(trainer, runs_dir=tmp_path, name="again")
    with pytest.raises(RuntimeError, match="NCCL"):
        trainer.train()
    status = runs.read_status(logger.run_dir)
    assert status["state"] == "failed" and "NCCL timeout" in status["error"]
