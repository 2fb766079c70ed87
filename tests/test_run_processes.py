"""Issue 17's process defects, each reproduced first: stop, resume, one writer, early kills, names, NaN, CLI.

Defect numbers refer to issue 17. Runs that train use the toy world and a few steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opd_core import checkpoints, cli, launcher, process_identity, runs
from opd_core.config import from_dict
from opd_core.toy.presets import resolve_pair

REPO = Path(__file__).resolve().parents[1]
FAST = {"steps": 3, "prompts_per_step": 2, "num_rollouts": 2, "max_new_tokens": 12, "eval_every": 1,
        "eval_size": 4, "log_tokens_every": 1, "checkpoint_every": 0, "reference_rollouts": False}


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _fake_run(runs_dir: Path, name: str, **status) -> Path:
    run = runs.create_run_dir(runs_dir, name)
    model = str(resolve_pair("toy:matched")[0])
    runs.write_config(run, {**FAST, "student": model, "teacher": model})
    runs.write_status(run, step=1, total_steps=3, **status)
    return run


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


# ----------------------------------------------------------------------------- 1: stop signals only our trainer


def test_defect1_stop_never_signals_a_pid_recorded_on_another_host(tmp_path, sleeper):
    run = _fake_run(tmp_path, "copied", state="running", pid=sleeper.pid, host="gpu-node-07",
                    pid_start=process_identity.start_ticks(sleeper.pid))
    summary = runs.summarize_run(run)
    assert summary.state == "running" and summary.elsewhere == "gpu-node-07"
    with pytest.raises(launcher.LauncherError, match=r"running elsewhere \(host gpu-node-07\)"):
        launcher.stop(run)
    code, _, err = _run(["runs", "stop", "copied", "--runs-dir", str(tmp_path)])
    assert code == 2 and "elsewhere (host gpu-node-07)" in err
    time.sleep(0.2)
    assert sleeper.poll() is None  # the unrelated process is untouched


def test_defect1_stop_never_signals_a_recycled_pid_on_this_host(tmp_path, sleeper):
    run = _fake_run(tmp_path, "recycled", state="running", pid=sleeper.pid, host=socket.gethostname(),
                    pid_start=1)  # the recorded trainer started at another time: the pid was reused
    assert runs.read_status(run)["state"] == "failed"  # not our trainer: it is gone
    with pytest.raises(launcher.LauncherError):
        launcher.stop(run)
    assert process_identity.may_signal(runs.read_json(run / runs.STATUS_FILE))[0] is None
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_defect1_stop_signals_the_recorded_trainer_when_it_is_provably_ours(tmp_path, sleeper):
    run = _fake_run(tmp_path, "ours", state="running", **process_identity.identity(sleeper.pid))
    launcher.stop(run)
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


# ----------------------------------------------------------------------------- 7: killed before "running"


def test_defect7_a_trainer_killed_before_it_reports_running_reads_failed_and_resumes(tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = _fake_run(tmp_path, "early", state="queued", pid=dead.pid, host=socket.gethostname(), pid_start=1)
    status = runs.read_status(run)
    assert status["state"] == "failed" and status["stale"]
    assert "before it reported running" in status["error"]
    monkeypatch.setenv(launcher.ENV_TRAINER_CMD, f"{sys.executable} -c pass")
    launcher.resume(run, max_concurrent=1)  # accepted (it used to say "is queued... wait for it")


def test_a_run_queued_by_the_launcher_without_a_process_stays_queued(tmp_path):
    run = _fake_run(tmp_path, "waiting", state="running", pid=12345, host="x")
    launcher.enqueue(run)
    assert runs.read_status(run)["state"] == "queued"  # the old pid is cleared, so it is not "killed"


# ----------------------------------------------------------------------------- 8: reserved names


def test_defect8_queue_file_names_cannot_be_runs_and_a_stray_folder_breaks_nothing(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    for name in (".queue.lock", ".queue.json"):
        code, _, err = _run(["runs", "launch", "--name", name, "--runs-dir", str(runs_dir)])
        assert code == 2 and "may not start with '.'" in err
    (runs_dir / ".queue.json").mkdir(parents=True)  # left by an older version, or by hand
    (runs_dir / ".queue.json" / "config.json").write_text("{}")
    monkeypatch.setenv(launcher.ENV_TRAINER_CMD, f"{sys.executable} -c pass")
    assert launcher.queue_limit(runs_dir) >= 1
    run = launcher.launch(from_dict({**FAST}), runs_dir, "fine")
    assert [s.run_id for s in launcher.list_runs(runs_dir)] == ["fine"]
    assert run.name == "fine"


# ----------------------------------------------------------------------------- 3 and 4: resume and one writer


def _killed_run_without_checkpoint(tmp_path: Path) -> Path:
    """What `kill -9` at step 2 of a run without a checkpoint leaves: records of steps 0-2, no checkpoint."""
    from opd_core.train_entry import train

    run = train(from_dict({**FAST, "steps": 2}), tmp_path / "runs", "early2")
    runs.write_status(run, state="failed", step=2, total_steps=4)
    config = runs.read_config(run)
    runs.write_config(run, {**config, "steps": 4})
    for path in (run / runs.CHECKPOINTS_DIR).glob("step_*"):
        import shutil

        shutil.rmtree(path)
    (run / runs.CHECKPOINTS_DIR / ".step_000003.abcd").mkdir()  # a save a kill interrupted
    assert [r["step"] for r, _ in runs.iter_metric_records(run)] == [0, 1, 2]
    return run


def test_defect3_resume_without_a_checkpoint_starts_over_without_duplicating_steps(tmp_path):
    run = _killed_run_without_checkpoint(tmp_path)
    code, _, err = _run(["train", "--resume", str(run), "--no-progress"])
    assert code == 0, err
    steps = [r["step"] for r, _ in runs.iter_metric_records(run)]
    assert steps == [0, 1, 2, 3, 4]  # step 0 once, no duplicate of 1-2
    assert "metrics.jsonl has duplicated steps" not in runs.validate_run_dir(run)
    assert not list((run / runs.CHECKPOINTS_DIR).glob(".step_*"))  # defect 11: temp folders removed


def test_defect3_the_launchers_child_also_truncates_before_it_trains(tmp_path):
    from opd_core.distributed import DistInfo
    from opd_core.train_entry import _prepare_run_dir, run_in_dir

    run = _killed_run_without_checkpoint(tmp_path)
    run_dir, resume = _prepare_run_dir(str(run), [], str(run.parent), None, None, DistInfo())
    assert run_in_dir(run_dir, resume=resume, progress=False) == "finished"
    assert [r["step"] for r, _ in runs.iter_metric_records(run)] == [0, 1, 2, 3, 4]


def test_defect3_resume_from_a_checkpoint_keeps_records_up_to_it(tmp_path):
    from opd_core.train_entry import run_in_dir, train

    run = train(from_dict({**FAST, "steps": 2, "checkpoint_every": 1}), tmp_path / "runs", "ck")
    runs.write_config(run, {**runs.read_config(run), "steps": 3})
    with runs.MetricsWriter(run) as out:  # what a killed process logged after its last checkpoint
        out.append({"step": 3, "loss": 9.0})
    runs.write_status(run, state="failed")
    import shutil

    shutil.rmtree(checkpoints.checkpoint_dir(run, 2))
    assert run_in_dir(run, resume=True, progress=False) == "finished"
    assert [r["step"] for r, _ in runs.iter_metric_records(run)] == [0, 1, 2, 3]


def test_defect4_train_resume_of_a_run_another_trainer_writes_is_refused_and_changes_nothing(tmp_path):
    run = _fake_run(tmp_path, "live", state="failed")
    with runs.MetricsWriter(run) as out:
        out.append({"step": 1, "loss": 1.0})
    before = (run / runs.METRICS_FILE).stat()
    with process_identity.WriterLock(run):  # trainer A holds the run
        code, _, err = _run(["train", "--resume", str(run)])
        assert code == 2 and "still being trained" in err and len(err.strip().splitlines()) == 1
        from opd_core.train_entry import run_in_dir

        with pytest.raises(process_identity.RunBusyError):
            run_in_dir(run, resume=True, progress=False)
        with pytest.raises(launcher.LauncherError, match="still being written"):
            launcher.resume(run)
    after = (run / runs.METRICS_FILE).stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)


def test_defect4_a_live_run_in_its_status_is_refused_by_train_resume(tmp_path, sleeper):
    run = _fake_run(tmp_path, "live2", state="running", **process_identity.identity(sleeper.pid))
    code, _, err = _run(["train", "--resume", str(run)])
    assert code == 2 and f"process {sleeper.pid}" in err


def test_the_writer_lock_is_released_when_its_holder_dies(tmp_path):
    run = _fake_run(tmp_path, "held", state="running")
    code = ("import sys, time; from opd_core import process_identity as p; "
            "p.WriterLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "held"
        assert process_identity.writer_pid(run) == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert process_identity.writer_pid(run) is None
    finally:
        proc.kill()


# ----------------------------------------------------------------------------- 10: NaN in the student


def test_defect10_a_nan_weight_is_named_instead_of_the_samplers_message():
    import torch

    from opd_core.models import load_model
    from opd_core.rollout import NonFiniteSamplingError, Sampling, sample_responses

    loaded = load_model(resolve_pair("toy:matched")[0], device="cpu")
    with torch.no_grad():
        next(loaded.model.parameters()).view(-1)[0] = float("nan")
    ids = [loaded.tokenizer("1+1=").input_ids]
    with pytest.raises(NonFiniteSamplingError) as info:
        sample_responses(loaded.model, ids, Sampling(max_new_tokens=4), eos_ids=[loaded.tokenizer.eos_token_id],
                         pad_id=loaded.tokenizer.eos_token_id)
    message = str(info.value)
    assert "parameter '" in message and "learning_rate" in message
    assert "probability tensor contains" not in message


def test_defect10_a_checkpoint_with_a_nan_weight_fails_the_run_with_the_step_and_cause(tmp_path):
    from safetensors.torch import load_file, save_file

    from opd_core.train_entry import run_in_dir, train

    parent = train(from_dict({**FAST, "steps": 1, "eval_every": 0}), tmp_path / "runs", "parent")
    ckpt = checkpoints.checkpoint_dir(parent, 1)
    weights = load_file(str(ckpt / "student.safetensors"))
    name = next(iter(weights))
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(ckpt / "student.safetensors"))
    child = runs.create_run_dir(tmp_path / "runs", "child")
    runs.write_config(child, from_dict({**FAST, "steps": 3, "eval_every": 0, "init_checkpoint": str(ckpt),
                                        "fork_step": 1}).to_dict())
    assert run_in_dir(child, progress=False) == "failed"
    error = runs.read_status(child)["error"]
    assert error.startswith("step 2: ") and "NaN/inf" in error and "probability tensor" not in error


# ----------------------------------------------------------------------------- 11 and CLI polish


def test_defect11_a_checkpoint_of_another_shape_fails_in_one_line(tmp_path):
    from opd_core.models import load_model
    from opd_core.train_entry import train

    parent = train(from_dict({**FAST, "steps": 1, "eval_every": 0}), tmp_path / "runs", "p")
    other = load_model(resolve_pair("toy:mismatched")[1], device="cpu")  # a teacher: another vocabulary
    with pytest.raises(ValueError) as info:
        checkpoints.load(checkpoints.checkpoint_dir(parent, 1), other.model)
    assert "\n" not in str(info.value) and "does not fit this student" in str(info.value)


def test_runs_list_shows_one_line_of_a_long_error(tmp_path):
    _fake_run(tmp_path, "dump", state="failed", error="RuntimeError: size mismatch\n" + "\tline\n" * 22)
    code, out, _ = _run(["runs", "list", "--runs-dir", str(tmp_path)])
    assert code == 0 and "line" not in out and "size mismatch" in out


def test_report_accepts_a_sample_runs_name():
    code, out, err = _run(["report", "baseline-sampled-token", "--runs-dir", "/no/such/runs"])
    assert code == 0, err
    assert out.startswith("Health report:") and "baseline-sampled-token" in out


def test_no_broken_pipe_traceback_when_the_reader_goes_away():
    proc = subprocess.run(f"{sys.executable} -m opd_core report baseline-sampled-token --json | head -c 10",
                          shell=True, capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert json.dumps is not None


# ----------------------------------------------------------------------------- stop on a critical finding


def test_stop_on_critical_stops_the_mismatched_baseline_with_a_checkpoint_and_names_the_finding(tmp_path):
    """The baseline (mismatched pair, no masking) shows a critical mismatch finding from its first logged
    steps: with stop_on_critical the run stops well before its last step, keeps a checkpoint to fork
    from, and its status says which finding stopped it."""
    from opd_core import checkpoints, cli

    sets = ["steps=60", "prompts_per_step=4", "num_rollouts=4", "max_new_tokens=24", "eval_every=0",
            "eval_size=4", "log_tokens_every=1", "checkpoint_every=0", "reference_rollouts=false",
            "stop_on_critical=true"]
    argv = ["train", "baseline", "--no-progress", "--runs-dir", str(tmp_path / "runs"), "--name", "watched"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    run = tmp_path / "runs" / "watched"
    status = runs.read_status(run)
    assert status["state"] == "stopped" and status["step"] < 60
    assert status["stopped_by"]["reason"] == "stop_on_critical" and status["stopped_by"]["finding"]
    assert checkpoints.latest(run) is not None


def test_without_stop_on_critical_the_same_run_is_not_stopped(tmp_path):
    from opd_core import cli

    argv = ["train", "baseline", "--no-progress", "--runs-dir", str(tmp_path / "runs"), "--name", "free"]
    for s in ["steps=3", "prompts_per_step=2", "num_rollouts=2", "max_new_tokens=12", "eval_every=0",
              "eval_size=4", "log_tokens_every=1", "reference_rollouts=false"]:
        argv += ["--set", s]
    assert cli.main(argv) == 0
    status = runs.read_status(tmp_path / "runs" / "free")
    assert status["state"] == "finished" and "stopped_by" not in status
