"""The background-run manager: queue limits, stop/resume/fork, recovery after kill -9, and the CLI.

Children here are a small fake trainer (written to a temp file) that follows the engine's run-directory
contract (status running -> finished/stopped, one metrics line and one checkpoint per step, SIGTERM
finishes the step), so the queue logic is tested quickly and independently of model training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from opd_core import checkpoints, launcher, runs
from opd_core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAINER = r'''
import json, os, signal, sys, time
from pathlib import Path
from opd_core import runs  # not opd_core.checkpoints: importing torch would slow every fake start

run_dir = Path(sys.argv[-1])
cfg = runs.read_config(run_dir)
if os.environ.get("FAKE_FAIL"):
    print("RuntimeError: fake trainer failed on purpose", flush=True)
    sys.exit(3)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
ckpts = run_dir / "checkpoints"
saved = sorted(int(p.name[5:]) for p in ckpts.glob("step_*")) if ckpts.is_dir() else []
start = saved[-1] if saved else int(cfg.get("fork_step") or 0)
if not saved and cfg.get("init_checkpoint"):
    assert Path(cfg["init_checkpoint"], "state.json").exists(), "missing init checkpoint"
runs.truncate_metrics_after(run_dir, start)
t0 = time.time()
runs.write_status(run_dir, state="running", step=start, total_steps=cfg["steps"], started_at=t0)
runs.mark_process(run_dir)
journal = os.environ.get("FAKE_JOURNAL")
if journal:
    with open(journal, "a") as fh:
        fh.write(json.dumps({"run": run_dir.name, "event": "start", "t": time.time()}) + "\n")
delay = float(os.environ.get("FAKE_STEP_S", "0.05"))
state = "finished"
step = start
with runs.MetricsWriter(run_dir) as out:
    for step in range(start + 1, cfg["steps"] + 1):
        time.sleep(delay)
        out.append({"step": step, "loss": 1.0 / step, "time_s": time.time() - t0, "step_time_s": delay,
                    "lr": cfg["learning_rate"]})
        ck = ckpts / f"step_{step:06d}"
        ck.mkdir(parents=True, exist_ok=True)
        (ck / "state.json").write_text(json.dumps({"step": step}))
        runs.write_status(run_dir, step=step)
        print(f"step {step}/{cfg['steps']}", flush=True)
        if stop and step < cfg["steps"]:
            state = "stopped"
            break
if journal:
    with open(journal, "a") as fh:
        fh.write(json.dumps({"run": run_dir.name, "event": "end", "t": time.time()}) + "\n")
runs.write_status(run_dir, state=state, step=step, finished_at=time.time())
'''


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A checkpoint folder that passes the pre-flight check (the fake trainer never loads it)."""
    from opd_core.toy.presets import resolve_pair

    return resolve_pair("toy:matched")[0]


@pytest.fixture
def fake_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setenv(launcher.ENV_TRAINER_CMD, f"{sys.executable} {script}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv(launcher.ENV_MAX_CONCURRENT, raising=False)
    return script


def _config(model_dir: Path, **changes) -> dict:
    return {"student": str(model_dir), "teacher": str(model_dir), "steps": 5, "eval_every": 0,
            "log_tokens_every": 1, "checkpoint_every": 1, **changes}


def _wait(run_dir: Path, states: tuple[str, ...], timeout: float = 30.0, pump: bool = True) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pump:
            launcher.pump(run_dir.parent)
        status = runs.read_status(run_dir)
        if status["state"] in states:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{run_dir.name} did not reach {states}; status {runs.read_status(run_dir)}\n"
                         f"log:\n{launcher.log_tail(run_dir)}")


def _wait_step(run_dir: Path, step: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (runs.read_status(run_dir).get("step") or 0) >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"{run_dir.name} never reached step {step}: {runs.read_status(run_dir)}")


# ----------------------------------------------------------------------------- launch and queue


def test_bad_config_raises_the_config_error_and_writes_no_run_dir(tmp_path: Path, model_dir: Path) -> None:
    runs_dir = tmp_path / "runs"
    with pytest.raises(ConfigError, match="top_p"):
        launcher.launch(_config(model_dir, top_p=1.5), runs_dir)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_launched_run_trains_to_finished_in_its_own_session(tmp_path: Path, model_dir: Path, fake_trainer) -> None:
    run_dir = launcher.launch(_config(model_dir), tmp_path / "runs", max_concurrent=1)
    status = runs.read_status(run_dir)
    assert status["state"] == "running" and status["pid"]
    assert os.getsid(status["pid"]) == status["pid"]  # its own session: survives the dashboard
    assert _wait(run_dir, ("finished",))["step"] == 5
    assert list(runs.read_metrics(run_dir)["step"]) == [1, 2, 3, 4, 5]
    assert "step 5/5" in launcher.log_tail(run_dir)


def test_launches_beyond_the_limit_wait_queued_and_start_in_order(tmp_path: Path, model_dir: Path,
                                                                   fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    runs_dir = tmp_path / "runs"
    launcher.set_queue_limit(runs_dir, 1)
    first = launcher.launch(_config(model_dir), runs_dir, "a-first")
    second = launcher.launch(_config(model_dir), runs_dir, "b-second")
    third = launcher.launch(_config(model_dir), runs_dir, "c-third")
    assert [runs.read_status(d)["state"] for d in (first, second, third)] == ["running", "queued", "queued"]
    _wait(first, ("finished",))
    _wait(second, ("running", "finished"))
    assert runs.read_status(third)["state"] == "queued"
    _wait(third, ("finished",))
    assert runs.read_status(second)["finished_at"] <= runs.read_status(third)["started_at"]


def test_eight_quick_launches_on_a_queue_of_two_all_finish_with_complete_metrics(
        tmp_path: Path, model_dir: Path, fake_trainer, monkeypatch) -> None:
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("FAKE_JOURNAL", str(journal))
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    runs_dir = tmp_path / "runs"
    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda i: launcher.launch(_config(model_dir, seed=i), runs_dir, max_concurrent=2),
                             range(8)))
    assert len({d.resolve() for d in dirs}) == 8
    deadline = time.time() + 90
    while time.time() < deadline:
        launcher.pump(runs_dir, 2)
        states = [runs.read_status(d)["state"] for d in dirs]
        assert states.count("running") <= 2
        if all(s == "finished" for s in states):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"not all finished: {states}")
    for i, d in enumerate(dirs):
        assert runs.read_config(d)["seed"] == i  # nothing merged: each dir holds its own config
        assert list(runs.read_metrics(d)["step"]) == [1, 2, 3, 4, 5]
    # The trainers' own journal: at no moment were more than two training.
    events = sorted((json.loads(line) for line in journal.read_text().splitlines()), key=lambda e: e["t"])
    active = peak = 0
    for e in events:
        active += 1 if e["event"] == "start" else -1
        peak = max(peak, active)
    assert peak <= 2 and sum(e["event"] == "start" for e in events) == 8


def test_concurrent_pumps_from_many_threads_start_each_queued_run_once(tmp_path: Path, model_dir: Path,
                                                                       fake_trainer, monkeypatch) -> None:
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("FAKE_JOURNAL", str(journal))
    runs_dir = tmp_path / "runs"
    launcher.set_queue_limit(runs_dir, 3)
    # Write three queued runs without pumping, then let many pumps race for them.
    dirs = []
    for i in range(3):
        d = runs.create_run_dir(runs_dir, f"r{i}")
        runs.write_config(d, {**_config(model_dir), "learning_rate": 1e-3, "steps": 3})
        launcher._enqueue(d, step=0, total_steps=3)
        dirs.append(d)
    barrier = threading.Barrier(8)

    def racer() -> int:
        barrier.wait()
        return len(launcher.pump(runs_dir))

    with ThreadPoolExecutor(8) as pool:
        started = sum(pool.map(lambda _: racer(), range(8)))
    assert started == 3
    for d in dirs:
        _wait(d, ("finished",))
    starts = [json.loads(x)["run"] for x in journal.read_text().splitlines() if '"start"' in x]
    assert sorted(starts) == ["r0", "r1", "r2"]


# ----------------------------------------------------------------------------- stop, resume, fork


def test_stop_finishes_the_step_and_resume_continues_from_the_checkpoint(tmp_path: Path, model_dir: Path,
                                                                         fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.25")
    run_dir = launcher.launch(_config(model_dir, steps=30), tmp_path / "runs")
    _wait_step(run_dir, 2)
    launcher.stop(run_dir)
    status = _wait(run_dir, ("stopped",))
    stopped_at = status["step"]
    assert 2 <= stopped_at < 30
    assert checkpoints.list_checkpoints(run_dir)[-1] == stopped_at
    with pytest.raises(launcher.LauncherError, match="nothing to stop"):
        launcher.stop(run_dir)
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    launcher.resume(run_dir)
    assert _wait(run_dir, ("finished",))["step"] == 30
    steps = list(runs.read_metrics(run_dir)["step"])
    assert steps == list(range(1, 31))


def test_stopping_a_queued_run_takes_it_off_the_queue(tmp_path: Path, model_dir: Path, fake_trainer,
                                                      monkeypatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    runs_dir = tmp_path / "runs"
    first = launcher.launch(_config(model_dir), runs_dir, max_concurrent=1)
    waiting = launcher.launch(_config(model_dir), runs_dir, max_concurrent=1)
    assert launcher.stop(waiting)["state"] == "stopped"
    _wait(first, ("finished",))
    launcher.pump(runs_dir, 1)
    assert runs.read_status(waiting)["state"] == "stopped"
    assert not (waiting / runs.METRICS_FILE).exists()


def test_resume_refuses_running_and_finished_runs(tmp_path: Path, model_dir: Path, fake_trainer) -> None:
    run_dir = launcher.launch(_config(model_dir), tmp_path / "runs")
    with pytest.raises(launcher.LauncherError, match="running"):
        launcher.resume(run_dir)
    _wait(run_dir, ("finished",))
    with pytest.raises(launcher.LauncherError, match="fork it with more steps"):
        launcher.resume(run_dir)


def test_fork_records_parent_and_step_and_its_metrics_start_after_the_fork_step(
        tmp_path: Path, model_dir: Path, fake_trainer) -> None:
    runs_dir = tmp_path / "runs"
    parent = launcher.launch(_config(model_dir, steps=6), runs_dir)
    _wait(parent, ("finished",))
    child = launcher.fork(parent, 3, ["top_p=0.9", "steps=8"])
    cfg = runs.read_config(child)
    assert (cfg["parent_run"], cfg["fork_step"], cfg["top_p"], cfg["steps"]) == (parent.name, 3, 0.9, 8)
    assert Path(cfg["init_checkpoint"]) == checkpoints.checkpoint_dir(parent, 3).resolve()
    assert runs.read_config(parent)["top_p"] == 1.0  # the parent is untouched
    _wait(child, ("finished",))
    assert list(runs.read_metrics(child)["step"]) == [4, 5, 6, 7, 8]
    summary = runs.summarize_run(child)
    assert (summary.parent, summary.fork_step) == (parent.name, 3)


def test_fork_errors_name_the_saved_steps_and_the_bad_field(tmp_path: Path, model_dir: Path, fake_trainer) -> None:
    parent = launcher.launch(_config(model_dir, steps=4), tmp_path / "runs")
    _wait(parent, ("finished",))
    with pytest.raises(launcher.LauncherError, match="saved steps: 1, 2, 3, 4"):
        launcher.fork(parent, 9)
    with pytest.raises(ConfigError, match="'top_p'"):
        launcher.fork(parent, 2, {"top_p": 3})
    with pytest.raises(ConfigError, match="steps"):
        launcher.fork(parent, 4)  # a fork of the last step needs more steps
    with pytest.raises(ConfigError, match="set by fork"):
        launcher.fork(parent, 2, {"init_checkpoint": "/elsewhere"})


# ----------------------------------------------------------------------------- recovery


def test_a_trainer_killed_with_sigkill_reads_as_failed_with_when_it_was_last_seen(
        tmp_path: Path, model_dir: Path, fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.2")
    run_dir = launcher.launch(_config(model_dir, steps=100), tmp_path / "runs")
    _wait_step(run_dir, 1)
    os.kill(runs.read_status(run_dir)["pid"], signal.SIGKILL)
    status = _wait(run_dir, ("failed",))
    # Either the reader saw the pid gone (stale, "last seen ...") or a pump in this process settled it
    # first from the child's last output ("... is gone; its last output: ..."): both say why it failed.
    assert (status.get("stale") and "last seen" in status["error"]) or "is gone" in status["error"], status
    assert launcher.progress(run_dir).state == "failed"


def test_a_child_that_crashes_at_start_up_reports_its_last_output_line(
        tmp_path: Path, model_dir: Path, fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    run_dir = launcher.launch(_config(model_dir), tmp_path / "runs")
    _wait(run_dir, ("failed",))
    launcher.pump(run_dir.parent)  # the pump (every page refresh) settles what the crash left behind
    status = runs.read_status(run_dir)
    # The exit code when this process could collect it; the child's last output line in any case.
    assert "failed on purpose" in status["error"], status["error"]


def test_runs_are_found_again_by_a_fresh_process_after_a_restart(tmp_path: Path, model_dir: Path,
                                                                 fake_trainer, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "1.0")  # still running after a slow `runs list` on a loaded machine
    runs_dir = tmp_path / "runs"
    run_dir = launcher.launch(_config(model_dir, steps=60), runs_dir)
    out = subprocess.run([sys.executable, "-m", "opd_core", "runs", "list", "--runs-dir", str(runs_dir),
                          "--json"], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    listed = {r["run_id"]: r for r in json.loads(out.stdout)}
    assert listed[run_dir.name]["state"] == "running"
    launcher.stop(run_dir)
    _wait(run_dir, ("stopped",))


def test_metrics_tail_reads_only_new_lines_and_restarts_after_a_rewrite(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with runs.MetricsWriter(run_dir) as w:
        for s in (1, 2):
            w.append({"step": s, "loss": float(s)})
    tail = launcher.MetricsTail(run_dir)
    assert tail.update() == 2
    assert tail.update() == 0
    with runs.MetricsWriter(run_dir) as w:
        w.append({"step": 3, "loss": 3.0})
    with open(run_dir / runs.METRICS_FILE, "a") as fh:
        fh.write('{"step": 4, "lo')  # half-written line: not read yet
    assert tail.update() == 1 and list(tail.frame()["step"]) == [1, 2, 3]
    runs.truncate_metrics_after(run_dir, 1)  # what a resume from step 1 does
    tail.update()
    assert list(tail.frame()["step"]) == [1]


def test_progress_reports_step_total_and_an_eta_from_step_times(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    runs.write_config(run_dir, {"steps": 10})
    runs.write_status(run_dir, state="running", step=4, total_steps=10, started_at=time.time() - 8)
    runs.mark_process(run_dir)
    metrics = runs.read_metrics(run_dir)
    p = launcher.progress(run_dir, metrics)
    assert (p.state, p.step, p.total_steps, p.fraction) == ("running", 4, 10, 0.4)
    assert p.eta_s == pytest.approx(12, rel=0.1)  # 2 s per step so far, 6 steps to go
    assert p.elapsed_s == pytest.approx(8, abs=1)
    with runs.MetricsWriter(run_dir) as w:  # a resumed run: the trainer's clock says 30 s of training so far
        for s in range(1, 5):
            w.append({"step": s, "time_s": 7.5 * s, "step_time_s": 3.0})
    p = launcher.progress(run_dir, runs.read_metrics(run_dir))
    assert p.elapsed_s == pytest.approx(30) and p.eta_s == pytest.approx(18)


def test_queue_limit_comes_from_env_then_saved_setting_then_cores(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(launcher.ENV_MAX_CONCURRENT, raising=False)
    assert launcher.queue_limit(tmp_path) == max(1, (os.cpu_count() or 2) - 1)
    launcher.set_queue_limit(tmp_path, 3)
    assert launcher.queue_limit(tmp_path) == 3
    monkeypatch.setenv(launcher.ENV_MAX_CONCURRENT, "5")
    assert launcher.queue_limit(tmp_path) == 5
    monkeypatch.setenv(launcher.ENV_MAX_CONCURRENT, "zero")
    with pytest.raises(launcher.LauncherError, match=launcher.ENV_MAX_CONCURRENT):
        launcher.queue_limit(tmp_path)
    with pytest.raises(launcher.LauncherError, match=">= 1"):
        launcher.set_queue_limit(tmp_path, 0)


# ----------------------------------------------------------------------------- command line


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """The real `opd-lab` parser and handler, in-process (a subprocess per call would re-import torch)."""
    from opd_core.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_launch_list_stop_resume_fork(tmp_path: Path, model_dir: Path, fake_trainer, monkeypatch,
                                         capsys) -> None:
    monkeypatch.setenv("FAKE_STEP_S", "0.3")
    runs_dir = tmp_path / "runs"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(_config(model_dir, steps=40)))
    code, _, err = _cli(capsys, "runs", "launch", str(cfg), "--runs-dir", str(runs_dir), "--name", "cli-run",
                        "--set", "seed=3")
    assert code == 0, err
    run_dir = runs_dir / "cli-run"
    assert runs.read_config(run_dir)["seed"] == 3
    _wait_step(run_dir, 1)
    code, listed, _ = _cli(capsys, "runs", "list", "--runs-dir", str(runs_dir))
    assert code == 0 and "cli-run" in listed and "running" in listed
    assert _cli(capsys, "runs", "stop", "cli-run", "--runs-dir", str(runs_dir))[0] == 0
    _wait(run_dir, ("stopped",), pump=False)
    monkeypatch.setenv("FAKE_STEP_S", "0.01")
    assert _cli(capsys, "runs", "resume", str(run_dir), "--runs-dir", str(runs_dir))[0] == 0
    _wait(run_dir, ("finished",), pump=False)
    code, _, err = _cli(capsys, "runs", "fork", "cli-run", "--step", "2", "--set", "steps=4", "--runs-dir",
                        str(runs_dir), "--name", "cli-fork")
    assert code == 0, err
    assert runs.read_config(runs_dir / "cli-fork")["fork_step"] == 2


def test_cli_bad_input_exits_2_with_one_line_naming_the_problem(tmp_path: Path, model_dir: Path,
                                                                fake_trainer, capsys) -> None:
    runs_dir = tmp_path / "runs"
    code, _, err = _cli(capsys, "runs", "stop", "no-such-run", "--runs-dir", str(runs_dir))
    assert code == 2 and "no run 'no-such-run'" in err
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(_config(model_dir)))
    code, _, err = _cli(capsys, "runs", "launch", str(cfg), "--set", "top_p=2", "--runs-dir", str(runs_dir))
    assert code == 2 and "'top_p'" in err and len(err.strip().splitlines()) == 1


def test_listing_runs_never_starts_a_queued_run(tmp_path: Path, model_dir: Path, fake_trainer) -> None:
    runs_dir = tmp_path / "runs"
    d = runs.create_run_dir(runs_dir, "waiting")
    runs.write_config(d, {**_config(model_dir), "learning_rate": 1e-3, "steps": 2})
    launcher._enqueue(d, step=0, total_steps=2)
    for _ in range(3):
        assert [s.state for s in launcher.list_runs(runs_dir)] == ["queued"]
    time.sleep(0.3)
    assert runs.read_status(d)["state"] == "queued"  # a page listing runs on every rerun starts nothing
    assert launcher.pump(runs_dir) == [d]  # the explicit pump, called by whoever launches, does
    _wait(d, ("finished",))


def test_the_trainer_never_imports_the_process_manager() -> None:
    import ast

    for module in ("train.py", "train_entry.py"):
        tree = ast.parse((REPO / "opd_core" / module).read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not [n for n in names if "launcher" in n], (module, names)
