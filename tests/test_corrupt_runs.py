"""Readers that cannot be taken down: every engine reader and `opd-lab report` on 69 damaged run dirs.

Each damaged run (see tests/corrupt_runs.py) must read without an exception, and the damage must be
named (file and what is wrong) where a reader can see it, while the other runs and files still read.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from opd_core import cli, runs
from opd_core.diagnostics import format_report, health
from tests.corrupt_runs import CASES, SPECIAL_CASES, make_corrupt_runs, make_valid_run

# Damage that is not a defect of the file a reader reads (or is the normal crash case), so not named.
NOT_NAMED = {
    "metrics-truncated",        # a half-written last line: what a kill leaves, skipped silently by design
    "status-other-host",        # a live run on another machine: "running elsewhere", not damage
    "status-error-dict",        # shown as text
    "alignment-wrong-types",    # read by the mismatch check, which tolerates it
    "log-garbage", "checkpoints-garbage",  # not read by these readers
    "tokens-wrong-types",       # named by read_tokens when the column is read (see its own test)
}


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> list[Path]:
    return make_corrupt_runs(tmp_path_factory.mktemp("corrupt"))


def _report(run_dir: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["report", str(run_dir)])
    return code, out.getvalue(), err.getvalue()


def test_the_generator_makes_at_least_50_distinct_damaged_runs(corrupt):
    assert len(corrupt) == len(CASES) + len(SPECIAL_CASES) >= 50
    assert len({p.name for p in corrupt}) == len(corrupt)


def test_a_valid_copy_has_no_problems(tmp_path):
    run = make_valid_run(tmp_path / "runs" / "valid")
    assert runs.summarize_run(run, run.parent).problems == []
    assert health(run).problems == []


def test_every_engine_reader_finishes_on_every_damaged_run(corrupt):
    failures = []
    for run in corrupt:
        problems: list[str] = []
        try:
            runs.read_status(run, problems)
            runs.read_config(run, problems)
            runs.read_metrics(run, problems)
            list(runs.iter_metric_records(run, problems=problems))
            runs.read_tokens(run, problems=problems)
            runs.read_tokens(run, columns=["step", "token_id", "signal"], problems=problems)
            runs.token_steps(run)
            runs.token_schema_columns(run)
            summary = runs.summarize_run(run, run.parent)
            runs.validate_run_dir(run)
            report = health(run)
            format_report(report)
            report.to_dict()
        except Exception as exc:  # noqa: BLE001 - collect them all, then fail naming each
            failures.append(f"{run.name}: {type(exc).__name__}: {exc}")
            continue
        assert summary.state in runs.STATES, run.name
    assert not failures, "\n".join(failures)


def test_listing_the_folder_of_damaged_runs_lists_every_one(corrupt):
    listed = {s.run_id for s in runs.list_runs(corrupt[0].parent)}
    assert listed == {p.name for p in corrupt}


@pytest.mark.parametrize("name", sorted(set(CASES) | set(SPECIAL_CASES)))
def test_opd_lab_report_finishes_on_each_damaged_run_and_names_the_damage(corrupt, name):
    run = next(p for p in corrupt if p.name == name)
    code, out, err = _report(run)
    assert code == 0, err
    assert "Traceback" not in out + err
    assert out.startswith("Health report:")
    if name in NOT_NAMED or name in SPECIAL_CASES:
        return
    rel = CASES[name][0].split("/")[0]
    summary = runs.summarize_run(run, run.parent)
    named = [*summary.problems, summary.error or "", out, *runs.validate_run_dir(run)]
    assert any(rel in line for line in named), (name, named)


def test_one_zero_byte_token_file_is_named_and_the_other_steps_still_read(corrupt):
    run = next(p for p in corrupt if p.name == "tokens-zero")
    problems: list[str] = []
    tokens = runs.read_tokens(run, problems=problems)
    assert sorted(tokens["step"].unique()) == [1, 40]
    assert problems == ["tokens/step_000020.parquet: not a Parquet file (0 bytes)"]
    assert runs.summarize_run(run).problems == problems


def test_a_token_file_with_a_column_of_another_type_is_skipped_and_named(corrupt):
    run = next(p for p in corrupt if p.name == "tokens-wrong-types")
    problems: list[str] = []
    tokens = runs.read_tokens(run, columns=["step", "token_id"], problems=problems)
    assert sorted(tokens["step"].unique()) == [1, 40]
    assert problems and problems[0].startswith("tokens/step_000020.parquet: column 'token_id'")


@pytest.mark.parametrize("name,step", [("tokens-few-columns", 20), ("tokens-first-few-columns", 1)])
def test_a_token_file_without_sample_and_pos_is_skipped_and_named(corrupt, name, step):
    """Optional columns may be missing (another trainer's narrower table), but not the ones that place a
    record: such a file is damaged, named, and the other steps still read with their full columns."""
    run = next(p for p in corrupt if p.name == name)
    problems: list[str] = []
    tokens = runs.read_tokens(run, problems=problems)
    assert sorted(tokens["step"].unique()) == sorted({1, 20, 40} - {step})
    assert tokens["sample"].notna().all()
    named = f"tokens/step_{step:06d}.parquet: lacks the column 'sample'"
    assert len(problems) == 1 and problems[0].startswith(named), problems
    assert str(runs.token_step_problem(run, step)).startswith(named)
    assert all(runs.token_step_problem(run, s) is None for s in {1, 20, 40} - {step})
    assert "sample" in runs.token_schema_columns(run)  # the run's columns come from a file that holds records
    assert any(p.startswith(named) for p in runs.validate_run_dir(run))


@pytest.mark.parametrize("name,expected", [
    ("status-list", "status.json: not a JSON object (list)"),
    ("status-dir", "status.json: a directory, not a file"),
    ("status-pid-text", "status.json: pid '123abc' is not a process id"),
    ("config-list", "config.json: not a JSON object (list)"),
    ("metrics-dir", "metrics.jsonl: a directory, not a file"),
    ("metrics-non-utf8-line", "metrics.jsonl: 1 line (4) is not a JSON object (garbage or not UTF-8); skipped"),
    ("metrics-mixed-steps", "metrics.jsonl: 5 lines (2, 3, 4, ...) are without a step that is a whole number"),
])
def test_issue17_defect2_cases_read_with_the_damage_named(corrupt, name, expected):
    run = next(p for p in corrupt if p.name == name)
    summary = runs.summarize_run(run)
    problems: list[str] = list(summary.problems)
    metrics = runs.read_metrics(run, problems)
    assert any(p.startswith(expected) for p in problems), problems
    if name in ("metrics-non-utf8-line", "metrics-mixed-steps"):
        assert len(metrics) > 0 and metrics["step"].is_monotonic_increasing  # the good lines still read


def test_a_damaged_status_reads_as_failed_with_the_reason(corrupt):
    summary = runs.summarize_run(next(p for p in corrupt if p.name == "status-garbage"))
    assert summary.state == "failed" and summary.error.startswith("status.json: not UTF-8")


def test_an_invalid_alignment_file_is_reported_as_invalid_not_missing(corrupt):
    report = health(next(p for p in corrupt if p.name == "alignment-list"))
    assert "alignment.json: not a JSON object (list)" in report.problems
    assert not any("absent" in note for note in report.skipped)


def test_a_run_folder_symlinked_from_outside_the_runs_folder_is_listed_with_a_problem(corrupt):
    summary = next(s for s in runs.list_runs(corrupt[0].parent) if s.run_id == "symlink-outside")
    assert summary.state == "finished"
    assert any("outside the runs folder" in p for p in summary.problems)
