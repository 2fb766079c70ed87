"""The run-directory contract: atomic writes, tolerant readers, stale-process detection, safe ids."""

import json
import os
import subprocess
import sys

import pytest

from opd_core import runs
from opd_core.synthetic_runs import write_synthetic_run


def test_synthetic_run_passes_the_validator(tmp_path):
    run = write_synthetic_run(tmp_path / "r1", steps=6, log_every=2)
    assert runs.validate_run_dir(run) == []
    assert runs.token_steps(run) == [0, 2, 4, 5]


def test_validator_names_what_is_missing(tmp_path):
    run = write_synthetic_run(tmp_path / "r1", steps=3, log_every=1)
    (run / "config.json").unlink()
    for f in (run / "tokens").iterdir():
        f.unlink()
    problems = runs.validate_run_dir(run)
    assert any("config.json" in p for p in problems)
    assert any("tokens/" in p for p in problems)


def test_metrics_reader_tolerates_a_half_written_last_line(tmp_path):
    run = tmp_path / "r"
    with runs.MetricsWriter(run) as mw:
        mw.append({"step": 1, "loss": 1.0})
        mw.append({"step": 2, "loss": float("nan")})
    with open(run / runs.METRICS_FILE, "a") as fh:
        fh.write('{"step": 3, "lo')
    df = runs.read_metrics(run)
    assert df["step"].tolist() == [1, 2]
    assert df["loss"].isna().tolist() == [False, True]  # NaN written as null, read back as missing
    # A writer opened later (resume) repairs the torn tail before appending.
    with runs.MetricsWriter(run) as mw:
        mw.append({"step": 3, "loss": 0.5})
    assert runs.read_metrics(run)["step"].tolist() == [1, 2, 3]


def test_truncate_metrics_after_drops_later_steps(tmp_path):
    run = tmp_path / "r"
    with runs.MetricsWriter(run) as mw:
        for s in range(1, 6):
            mw.append({"step": s})
    runs.truncate_metrics_after(run, 3)
    assert runs.read_metrics(run)["step"].tolist() == [1, 2, 3]


def test_running_status_with_a_dead_pid_reads_as_failed_with_last_seen(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    runs.write_status(run, state="running", step=4, total_steps=10, pid=proc.pid)
    status = runs.read_status(run)
    assert status["state"] == "failed" and status["stale"] is True
    assert "last seen" in status["error"]
    runs.write_status(run, state="running", pid=os.getpid(), pid_start=None)
    assert runs.read_status(run)["state"] == "running"


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".", "..", "x" * 65, "semi;colon", "/abs"])
def test_run_ids_that_are_paths_are_refused(tmp_path, bad):
    with pytest.raises(runs.RunDirError):
        runs.run_path(tmp_path, bad)


def test_concurrent_create_run_dir_never_shares_a_directory(tmp_path):
    made = {runs.create_run_dir(tmp_path, prefix="same") for _ in range(50)}
    assert len(made) == 50
    runs.create_run_dir(tmp_path, "named")
    with pytest.raises(runs.RunDirError, match="already exists"):
        runs.create_run_dir(tmp_path, "named")


def test_atomic_json_write_replaces_whole_file(tmp_path):
    path = tmp_path / "s.json"
    runs.atomic_write_json(path, {"a": 1})
    runs.atomic_write_json(path, {"b": [1, 2], "nan": float("inf")})
    assert json.loads(path.read_text()) == {"b": [1, 2], "nan": None}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_read_tokens_reads_only_requested_columns_and_steps(tmp_path):
    run = write_synthetic_run(tmp_path / "r", steps=10, log_every=3)
    df = runs.read_tokens(run, steps=[3, 6], columns=["step", "signal", "not_a_column"])
    assert list(df.columns) == ["step", "signal"]
    assert sorted(df["step"].unique()) == [3, 6]
    listed = runs.list_runs(tmp_path, tmp_path / "missing")
    assert [r.run_id for r in listed] == ["r"]
    assert listed[0].state == "finished"


def test_read_tokens_filters_by_equality_and_membership(tmp_path):
    run = write_synthetic_run(tmp_path / "r", steps=4, log_every=1, samples=4)
    one = runs.read_tokens(run, steps=[1], columns=["sample"], filters=[("sample", "==", 3)])
    assert set(one["sample"]) == {3}
    two = runs.read_tokens(run, steps=[1], columns=["sample"], filters=[("sample", "in", [0, 2])])
    assert set(two["sample"]) == {0, 2}


def test_the_run_pickers_listing_is_list_runs_order_without_summarising(tmp_path):
    from tests.corrupt_runs import make_corrupt_runs

    base = make_corrupt_runs(tmp_path)[0].parent  # every kind of damage, status.json's included
    for i, started in enumerate([4e9, 2e9, 3e9, 3e9]):  # after every other run
        run = write_synthetic_run(base / f"dated-{i}", steps=2, samples=1, length=4)
        status = json.loads((run / runs.STATUS_FILE).read_text())
        (run / runs.STATUS_FILE).write_text(json.dumps({**status, "started_at": started}))
    (base / "link-to-dated-0").symlink_to(base / "dated-0")  # one run under two names is listed once
    expected = [(s.run_id, s.path) for s in runs.list_runs(base)]
    assert runs.list_run_paths(base) == expected
    assert len(expected) > 60 and [r for r, _ in expected[:4]] == ["dated-0", "dated-3", "dated-2", "dated-1"]
    assert runs.list_run_paths(tmp_path / "missing") == []


def test_concurrent_status_writers_never_lose_each_others_fields(tmp_path):
    """The trainer's step updates and the health watch's ``stopped_by`` come from two threads (and the
    dashboard's launcher from another process): each write merges into the file, none undoes another's."""
    import subprocess
    import sys
    import threading

    run = tmp_path / "run"
    run.mkdir()
    runs.write_status(run, state="running", step=0, total_steps=1)

    def write(prefix: str) -> None:
        for i in range(150):
            runs.write_status(run, **{f"{prefix}{i}": i})

    code = ("import sys; from opd_core import runs\n"
            "for i in range(150): runs.write_status(sys.argv[1], **{f'p{i}': i})")
    other = subprocess.Popen([sys.executable, "-c", code, str(run)])
    threads = [threading.Thread(target=write, args=(prefix,)) for prefix in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other.wait(timeout=120) == 0
    status = runs.read_status(run)
    missing = [f"{p}{i}" for p in "abp" for i in range(150) if f"{p}{i}" not in status]
    assert not missing, missing[:10]
