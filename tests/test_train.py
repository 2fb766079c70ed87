"""The training engine end to end on the toy world: run directory, objectives, stop/crash/resume, NaN, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from opd_core import checkpoints, runs
from opd_core.config import from_dict
from opd_core.train import Trainer
from opd_core.train_entry import run_in_dir, train

REPO = Path(__file__).resolve().parents[1]
FAST = {"steps": 3, "prompts_per_step": 2, "num_rollouts": 2, "max_new_tokens": 24, "eval_every": 0,
        "eval_size": 8, "log_tokens_every": 1, "checkpoint_every": 0}


def _cfg(**over):
    return from_dict({**FAST, **over})


def _cli(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "opd_core", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=kw.get("cwd", REPO))


def test_few_step_toy_run_writes_a_contract_valid_run_directory(tmp_path):
    run = train(_cfg(), tmp_path)
    assert runs.validate_run_dir(run) == []
    status = runs.read_status(run)
    assert status["state"] == "finished" and status["step"] == 3
    metrics = runs.read_metrics(run)
    assert metrics["step"].tolist() == [1, 2, 3]
    for col in runs.METRIC_COLUMNS:
        assert col in metrics.columns, col
    assert metrics["eval_accuracy"].notna().iloc[-1]  # eval at the last step
    tokens = runs.read_tokens(run)
    assert set(tokens["prefix_source"]) == {"student", "teacher"}  # teacher reference rollouts logged too
    trained = tokens[~tokens["reference_only"]]
    assert (trained["log_ratio"] - (trained["teacher_logp"] - trained["student_logp"])).abs().max() < 1e-4
    assert trained["is_eos"].any()
    # The drift of a response's first token is 0: nothing came before it.
    assert (tokens.loc[tokens["pos"] == 0, "drift"] == 0).all()
    assert json.loads((run / "config.json").read_text())["objective"] == "sampled_token"


@pytest.mark.parametrize("objective,params", [
    ("sampled_token", {"gamma": 0.5}), ("reverse_kl", {}), ("forward_kl", {}), ("jsd", {"beta": 0.5}),
    ("kl_mix", {"alpha": 0.3}), ("topk_support", {"k": 8}), ("topk_support", {"k": 8, "renormalize": False}),
    ("topk_support", {"k": 8, "tail_bucket": True, "support": "teacher_topk_plus_sampled"}),
])
def test_each_objective_trains_a_few_steps_on_the_mismatched_pair(tmp_path, objective, params):
    run = train(_cfg(objective=objective, objective_params=params, steps=2, mask_special_tokens=True,
                     reference_rollouts=False), tmp_path)
    metrics = runs.read_metrics(run)
    assert runs.read_status(run)["state"] == "finished"
    assert all(math.isfinite(x) for x in metrics["loss"]) and all(math.isfinite(x) for x in metrics["grad_norm"])
    assert metrics["grad_norm"].max() > 0


def test_student_equal_to_teacher_gives_zero_loss_and_zero_signal(tmp_path):
    from opd_core.toy.presets import resolve_pair

    student_dir, _ = resolve_pair("toy:matched")
    for objective in ("sampled_token", "reverse_kl", "topk_support"):
        run = train(_cfg(student=str(student_dir), teacher=str(student_dir), objective=objective, steps=1,
                         reference_rollouts=False), tmp_path)
        metrics = runs.read_metrics(run)
        assert abs(metrics["loss"].iloc[0]) < 1e-5, objective
        assert metrics["grad_norm"].iloc[0] < 1e-5, objective
        tokens = runs.read_tokens(run, columns=["signal", "log_ratio"])
        assert tokens["signal"].abs().max() < 1e-5
        assert tokens["log_ratio"].abs().max() < 1e-5


def test_mismatched_pair_without_masking_shows_the_eos_signal_and_masking_removes_it(tmp_path):
    base = train(_cfg(steps=1, reference_rollouts=False, temperature=0.7), tmp_path)
    fixed = train(_cfg(steps=1, reference_rollouts=False, temperature=0.7, mask_special_tokens=True), tmp_path)
    b = runs.read_tokens(base)
    f = runs.read_tokens(fixed)
    b_eos = b[b["is_eos"]]
    f_eos = f[f["is_eos"]]
    assert len(b_eos) and len(f_eos)
    # The teacher never used <|im_end|>: read literally, the student's EOS is very unlikely to it.
    assert b_eos["teacher_logp"].median() < -5
    assert b_eos["student_logp"].median() > b_eos["teacher_logp"].median() + 4
    # Mapped by meaning (the fix), the teacher's own EOS is likely, and masked tokens carry no signal.
    assert f_eos["teacher_logp"].median() > b_eos["teacher_logp"].median() + 4
    assert (f.loc[f["masked"], "signal"] == 0).all()


def test_non_finite_logits_stop_the_run_as_failed_naming_step_and_tensor(tmp_path, monkeypatch):
    cfg = _cfg(steps=4, reference_rollouts=False)
    run_dir = runs.create_run_dir(tmp_path, "nan-run")
    runs.write_config(run_dir, cfg.to_dict())
    original = Trainer.score

    def poisoned(self, prompts, responses, *, grad, **kw):
        sc = original(self, prompts, responses, grad=grad, **kw)
        if grad and self._poison_step():
            sc.student_logits = sc.student_logits * float("nan")
        return sc

    calls = {"n": 0}

    def _poison_step(self):
        calls["n"] += 1
        return calls["n"] == 3

    monkeypatch.setattr(Trainer, "score", poisoned)
    monkeypatch.setattr(Trainer, "_poison_step", _poison_step, raising=False)
    assert run_in_dir(run_dir, progress=False) == "failed"
    status = runs.read_status(run_dir)
    assert status["state"] == "failed"
    assert "step 3" in status["error"] and "student logits" in status["error"]
    assert runs.read_metrics(run_dir)["step"].tolist() == [1, 2]  # nothing logged before is lost
    assert runs.token_steps(run_dir) == [1, 2]


def _resume_in_process(run: Path) -> int:
    """`opd-lab train --resume RUN` in this process: the stop and the kill need a process of their own, the
    resume does not (one interpreter and torch import less per test)."""
    from opd_core import cli

    return cli.main(["train", "--resume", str(run), "--no-progress"])


@pytest.mark.slow
def test_sigterm_stops_after_the_step_and_resume_continues_without_gaps(tmp_path):
    over = ["--set", "steps=20", "--set", "checkpoint_every=5", "--set", "log_tokens_every=10",
            "--set", "prompts_per_step=2", "--set", "num_rollouts=2", "--set", "eval_every=0"]
    proc = subprocess.Popen([sys.executable, "-m", "opd_core", "train", "baseline", *over, "--runs-dir",
                             str(tmp_path), "--name", "sig", "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "sig"
    _wait_for_step(run, 7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    status = runs.read_status(run)
    assert status["state"] == "stopped"
    stopped_at = status["step"]
    assert checkpoints.list_checkpoints(run)[-1] == stopped_at  # checkpointed where it stopped
    assert _resume_in_process(run) == 0
    steps = runs.read_metrics(run)["step"].tolist()
    raw = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21)) and raw == steps


@pytest.mark.slow
def test_kill_9_shows_failed_and_resume_restarts_from_the_last_checkpoint(tmp_path):
    over = ["--set", "steps=20", "--set", "checkpoint_every=4", "--set", "prompts_per_step=2",
            "--set", "num_rollouts=2", "--set", "eval_every=0", "--set", "log_tokens_every=5"]
    proc = subprocess.Popen([sys.executable, "-m", "opd_core", "train", "baseline", *over, "--runs-dir",
                             str(tmp_path), "--name", "k9", "--no-progress"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "k9"
    _wait_for_step(run, 10)
    proc.kill()
    proc.wait()
    status = runs.read_status(run)
    assert status["state"] == "failed" and status["stale"]
    logged_before = runs.read_metrics(run)["step"].tolist()
    assert logged_before[:10] == list(range(1, 11))
    last_ckpt = checkpoints.list_checkpoints(run)[-1]
    assert _resume_in_process(run) == 0
    raw = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert raw == list(range(1, 21))
    assert last_ckpt >= 8


def test_resumed_run_reproduces_the_uninterrupted_run(tmp_path):
    full = train(_cfg(steps=4, checkpoint_every=2, log_tokens_every=0, reference_rollouts=False), tmp_path, "full")
    part_dir = runs.create_run_dir(tmp_path, "part")
    runs.write_config(part_dir, _cfg(steps=4, checkpoint_every=2, log_tokens_every=0,
                                     reference_rollouts=False).to_dict())
    # Simulate a crash after step 3: keep checkpoint 2 and metrics up to 3, then resume.
    run_in_dir(part_dir, progress=False)
    runs.truncate_metrics_after(part_dir, 3)
    for s in checkpoints.list_checkpoints(part_dir):
        if s > 2:
            import shutil
            shutil.rmtree(checkpoints.checkpoint_dir(part_dir, s))
    assert run_in_dir(part_dir, resume=True, progress=False) == "finished"
    a = runs.read_metrics(full)["loss"].tolist()
    b = runs.read_metrics(part_dir)["loss"].tolist()
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("args,needle", [
    (["--set", "tmeperature=1"], "'tmeperature' is not a known field"),
    (["--set", "top_p=abc"], "'top_p': 'abc' is not a number"),
    (["--set", "top_p=3"], "'top_p': 3.0 is out of range"),
    (["--set", "objective=nope"], "unknown objective 'nope'"),
    (["--set", "student=/missing/model"], "'student': '/missing/model' is not a directory"),
])
def test_bad_config_exits_2_with_one_line_and_creates_no_run_dir(tmp_path, capsys, args, needle):
    # In-process (the CLI's own main): a python+torch process per case cost 5-10 s each; the next test
    # checks that `python -m opd_core` turns the same return value into the process's exit status.
    from opd_core import cli

    assert cli.main(["train", "baseline", *args, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_config_from_the_command_line_exits_2_with_one_line(tmp_path):
    result = _cli("train", "baseline", "--set", "tmeperature=1", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2
    assert "'tmeperature' is not a known field" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_runs_started_at_once_both_finish_in_separate_directories(tmp_path):
    cmd = [sys.executable, "-m", "opd_core", "train", "baseline", "--runs-dir", str(tmp_path), "--no-progress",
           "--set", "steps=3", "--set", "prompts_per_step=2", "--set", "num_rollouts=2", "--set", "eval_every=0"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    dirs = {Path(o[0].strip().splitlines()[0]) for o in outs}
    assert len(dirs) == 2
    for d in dirs:
        assert runs.read_status(d)["state"] == "finished"
        assert runs.read_metrics(d)["step"].tolist() == [1, 2, 3]


def _wait_for_step(run: Path, step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = runs.read_metrics(run) if run.exists() else None
        if m is not None and len(m) and m["step"].max() >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run} did not reach step {step} in {timeout}s")


def test_torch_is_cpu_here_and_engine_runs_on_the_resolved_device():
    from opd_core.models import resolve_device

    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_bfloat16_weights_train_with_float32_losses(tmp_path):
    run = train(_cfg(steps=2, dtype="bfloat16", objective="topk_support", objective_params={"k": 8},
                     reference_rollouts=False), tmp_path)
    metrics = runs.read_metrics(run)
    assert runs.read_status(run)["state"] == "finished"
    assert all(math.isfinite(x) for x in metrics["loss"])
    assert runs.read_tokens(run, columns=["student_logp"])["student_logp"].dtype == "float32"


def test_greedy_rollouts_with_reference_rollouts_log_both_sources(tmp_path):
    run = train(_cfg(steps=1, temperature=0), tmp_path)
    tokens = runs.read_tokens(run, columns=["prefix_source"])
    assert runs.read_status(run)["state"] == "finished"
    assert set(tokens["prefix_source"]) == {"student", "teacher"}


def test_a_checkpoint_this_project_did_not_make_trains_on_a_jsonl_task(tmp_path):
    """The same engine path on local Hugging Face checkpoints (Qwen2-style student, padded teacher) and
    a JSONL prompt file: byte-level BPE, ChatML template, an embedding table padded past the tokenizer."""
    from tests.test_models_loading import byte_level_tokenizer, save_qwen2

    tok = byte_level_tokenizer()
    save_qwen2(tmp_path / "student", tok)
    save_qwen2(tmp_path / "teacher", tok, extra_rows=9)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"hello {i} + {i}", "answer": str(2 * i)})
                                 for i in range(12)) + "\n")
    for objective in ("sampled_token", "topk_support"):
        run = train(_cfg(student=str(tmp_path / "student"), teacher=str(tmp_path / "teacher"), task=str(prompts),
                         objective=objective, objective_params={"k": 8} if objective == "topk_support" else {},
                         steps=2, max_new_tokens=6, eval_every=1, eval_size=4), tmp_path / "runs")
        assert runs.read_status(run)["state"] == "finished", runs.read_status(run).get("error")
        assert runs.validate_run_dir(run) == []
        assert json.loads((run / "alignment.json").read_text())["shared_vocabulary"] is True


def test_bf16_autocast_runs_forwards_in_bfloat16_and_keeps_float32_weights_and_losses(tmp_path, monkeypatch):
    seen = []
    original = Trainer.objective

    def spy(self, sc):
        seen.append(sc.student_logits.dtype)
        return original(self, sc)

    monkeypatch.setattr(Trainer, "objective", spy)
    run = train(_cfg(steps=2, autocast=True, objective="reverse_kl", reference_rollouts=False), tmp_path)
    assert runs.read_status(run)["state"] == "finished"
    assert torch.bfloat16 in seen  # the forward really ran under autocast
    assert all(math.isfinite(x) for x in runs.read_metrics(run)["loss"])
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(run / "checkpoints" / "step_000002" / "student.safetensors")).values()} \
        == {torch.float32}


def test_cross_tokenizer_run_logs_the_teachers_own_topk_at_the_literal_eos(tmp_path):
    """The toy teacher never ends with <|im_end|>: at the position that scores it, its own top-1 is its own
    end token (unmapped), while teacher_logp scores the literal text; a 1:1 token's own top-K holds its piece."""
    run = train(_cfg(steps=1, reference_rollouts=False, temperature=0.7), tmp_path)
    t = runs.read_tokens(run)
    assert "teacher_own_topk" in t.columns
    eos = t[t["is_eos"]]
    assert len(eos)
    for rec in eos.to_dict("records"):
        own = list(rec["teacher_own_topk"])
        assert own and own[0]["text"] == "</s>" and own[0]["logp"] > -0.5   # the teacher's own end, unmapped
        assert rec["teacher_logp"] < own[0]["logp"] - 4                    # the literal text scored far lower
    one = t[(t["aligned"]) & ~t["is_eos"]].iloc[0]
    own = {e["text"]: e["logp"] for e in one["teacher_own_topk"]}
    if one["teacher_pieces"][0] in own:
        assert math.isclose(own[one["teacher_pieces"][0]], one["teacher_logp"], abs_tol=1e-3)
