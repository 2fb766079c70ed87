"""A generator of damaged run directories, for tests that every reader degrades per run and per file.

Usage::

    from tests.corrupt_runs import CASES, describe, make_corrupt_runs, make_valid_run

    dirs = make_corrupt_runs(tmp_path)          # >= 50 damaged run dirs under tmp_path / "runs"
    for run_dir in dirs:
        case = CASES[run_dir.name]              # one line: what was damaged and how

Each run starts as a copy of a small valid run (three logged steps of the shipped
``sample_runs/forward-kl-mixed-prefixes``) and gets exactly one kind of damage: a truncated, zeroed or
garbage file, a JSON document of the wrong type, a file that is not UTF-8, a directory where a file
belongs, a dangling symlink, or a run folder that is a symlink to somewhere outside the runs folder.
The run dir's name is the case name (a valid run id), so a failing test names the damage.
All run dirs share one parent, ``tmp_path / "runs"``, so a test can also list them all at once;
``make_valid_run`` writes the undamaged copy, for a control.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "sample_runs" / "forward-kl-mixed-prefixes"
KEEP_TOKEN_STEPS = (1, 20, 40)
GARBAGE = bytes(range(256)) * 4  # every byte value: not UTF-8, not JSON, not Parquet


def make_valid_run(run_dir: Path) -> Path:
    """A small valid run directory at ``run_dir``: config, status, alignment, 41 metric lines, 3 token files."""
    run_dir.mkdir(parents=True)
    for name in ("config.json", "status.json", "alignment.json"):
        shutil.copyfile(SOURCE / name, run_dir / name)
    lines = (SOURCE / "metrics.jsonl").read_text().splitlines(keepends=True)[:41]
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    (run_dir / "tokens").mkdir()
    for step in KEEP_TOKEN_STEPS:
        name = f"step_{step:06d}.parquet"
        shutil.copyfile(SOURCE / "tokens" / name, run_dir / "tokens" / name)
    (run_dir / "log.txt").write_text("step 1/200\nstep 20/200\n")
    return run_dir


# ----------------------------------------------------------------------------- kinds of damage


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) // 2)])


def _garbage(path: Path) -> None:
    path.write_bytes(GARBAGE)


def _json(value) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(value))


def _dir_instead(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.mkdir()
    (path / "inner.txt").write_text("a directory where a file belongs")


def _dangling(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(path.parent / "does-not-exist")


def _missing(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _latin1(path: Path) -> None:
    path.write_bytes(path.read_text().replace('"', '"\xe9', 1).encode("latin-1", errors="replace"))


def _patch_json(**fields) -> Callable[[Path], None]:
    def patch(path: Path) -> None:
        data = json.loads(path.read_text())
        data.update(fields)
        path.write_text(json.dumps(data))
    return patch


def _metrics_lines(transform: Callable[[list[bytes]], list[bytes]]) -> Callable[[Path], None]:
    def patch(path: Path) -> None:
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(transform(lines)))
    return patch


def _set_step(values: list) -> Callable[[list[bytes]], list[bytes]]:
    def transform(lines: list[bytes]) -> list[bytes]:
        out = []
        for i, raw in enumerate(lines):
            rec = json.loads(raw)
            if i < len(values):
                rec["step"] = values[i]
            out.append((json.dumps(rec) + "\n").encode())
        return out
    return transform


def _parquet_rewrite(change: Callable) -> Callable[[Path], None]:
    def patch(path: Path) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        pq.write_table(change(table), path)
    return patch


def _token_ids_as_text(table):
    import pyarrow as pa

    i = table.schema.get_field_index("token_id")
    return table.set_column(i, "token_id", pa.array([f"id{v}" for v in table.column(i).to_pylist()]))


def _drop_token_columns(table):
    return table.select(["step", "pos"])


_TOK = "tokens/step_000020.parquet"

# case name -> (file relative to the run dir, damage, one-line description)
CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # config.json
    "config-zero": ("config.json", _zero, "config.json is 0 bytes"),
    "config-truncated": ("config.json", _truncate, "config.json cut in half"),
    "config-garbage": ("config.json", _garbage, "config.json is binary garbage"),
    "config-list": ("config.json", _json([1, 2, 3]), "config.json is a JSON list"),
    "config-string": ("config.json", _json("hello"), "config.json is a JSON string"),
    "config-null": ("config.json", _json(None), "config.json is null"),
    "config-dir": ("config.json", _dir_instead, "config.json is a directory"),
    "config-dangling": ("config.json", _dangling, "config.json is a dangling symlink"),
    "config-latin1": ("config.json", _latin1, "config.json is not UTF-8"),
    "config-objective-dict": ("config.json", _patch_json(objective={"name": 5}), "objective is a dict"),
    "config-objective-int": ("config.json", _patch_json(objective=7), "objective is a number"),
    "config-steps-text": ("config.json", _patch_json(steps="many", max_new_tokens="x"), "steps is text"),
    "config-missing": ("config.json", _missing, "no config.json (status only)"),
    # status.json
    "status-zero": ("status.json", _zero, "status.json is 0 bytes"),
    "status-truncated": ("status.json", _truncate, "status.json cut in half"),
    "status-garbage": ("status.json", _garbage, "status.json is binary garbage"),
    "status-list": ("status.json", _json([1, 2, 3]), "status.json is a JSON list"),
    "status-number": ("status.json", _json(42), "status.json is a number"),
    "status-dir": ("status.json", _dir_instead, "status.json is a directory"),
    "status-dangling": ("status.json", _dangling, "status.json is a dangling symlink"),
    "status-latin1": ("status.json", _latin1, "status.json is not UTF-8"),
    "status-pid-text": ("status.json", _patch_json(state="running", pid="123abc"), "pid is '123abc'"),
    "status-pid-huge": ("status.json", _patch_json(state="running", pid=2**80), "pid is 2**80"),
    "status-pid-negative": ("status.json", _patch_json(state="running", pid=-5), "pid is negative"),
    "status-pid-float": ("status.json", _patch_json(state="running", pid=12.5, pid_start="x"), "pid is a float"),
    "status-other-host": ("status.json", _patch_json(state="running", pid=1, host="gpu-node-07"),
                          "running on another host"),
    "status-state-unknown": ("status.json", _patch_json(state="banana"), "state is not a known state"),
    "status-state-int": ("status.json", _patch_json(state=5), "state is a number"),
    "status-step-text": ("status.json", _patch_json(step="ten", total_steps=[1]), "step is text"),
    "status-times-text": ("status.json", _patch_json(started_at="yesterday", updated_at="now", finished_at={}),
                          "timestamps are text"),
    "status-error-dict": ("status.json", _patch_json(state="failed", error={"x": 1}), "error is a dict"),
    "status-missing": ("status.json", _missing, "no status.json"),
    # metrics.jsonl
    "metrics-zero": ("metrics.jsonl", _zero, "metrics.jsonl is 0 bytes"),
    "metrics-truncated": ("metrics.jsonl", _truncate, "metrics.jsonl cut mid-line"),
    "metrics-garbage": ("metrics.jsonl", _garbage, "metrics.jsonl is binary garbage"),
    "metrics-non-utf8-line": ("metrics.jsonl", _metrics_lines(lambda ls: ls[:3] + [b'{"step": 3, "x": "\xff\xfe"}\n']
                                                               + ls[4:]), "one line is not UTF-8"),
    "metrics-mixed-steps": ("metrics.jsonl", _metrics_lines(_set_step([0, "1", 2.5, None, [4], {"s": 5}])),
                            "step values of mixed types"),
    "metrics-no-step": ("metrics.jsonl", _metrics_lines(lambda ls: [b'{"loss": 1.0}\n'] * 5), "no step key"),
    "metrics-not-objects": ("metrics.jsonl", _metrics_lines(lambda ls: [b"[1, 2]\n", b'"x"\n', b"3\n", *ls[5:]]),
                            "lines that are not objects"),
    "metrics-duplicated": ("metrics.jsonl", _metrics_lines(lambda ls: ls + ls), "every step twice"),
    "metrics-negative-step": ("metrics.jsonl", _metrics_lines(_set_step([-3, -2, -1])), "negative steps"),
    "metrics-bool-step": ("metrics.jsonl", _metrics_lines(_set_step([True, False])), "steps that are booleans"),
    "metrics-text-values": ("metrics.jsonl", _metrics_lines(lambda ls: [
        b'{"step": %d, "loss": "high", "grad_norm": [1], "time_s": "x", "eval_accuracy": {}}\n' % i
        for i in range(12)]), "metric values of the wrong types"),
    "metrics-nan-literal": ("metrics.jsonl", _metrics_lines(lambda ls: [
        b'{"step": %d, "loss": NaN, "grad_norm": Infinity}\n' % i for i in range(12)]), "NaN literals"),
    "metrics-dir": ("metrics.jsonl", _dir_instead, "metrics.jsonl is a directory"),
    "metrics-dangling": ("metrics.jsonl", _dangling, "metrics.jsonl is a dangling symlink"),
    "metrics-missing": ("metrics.jsonl", _missing, "no metrics.jsonl"),
    # tokens/
    "tokens-zero": (_TOK, _zero, "one token file is 0 bytes"),
    "tokens-truncated": (_TOK, _truncate, "one token file cut in half"),
    "tokens-garbage": (_TOK, _garbage, "one token file is garbage"),
    "tokens-first-zero": ("tokens/step_000001.parquet", _zero, "the first token file is 0 bytes"),
    "tokens-file-dir": (_TOK, _dir_instead, "a token file is a directory"),
    "tokens-dangling": (_TOK, _dangling, "a token file is a dangling symlink"),
    "tokens-wrong-types": (_TOK, _parquet_rewrite(_token_ids_as_text), "token_id column holds text"),
    "tokens-few-columns": (_TOK, _parquet_rewrite(_drop_token_columns), "a token file with 2 columns"),
    "tokens-first-few-columns": ("tokens/step_000001.parquet", _parquet_rewrite(_drop_token_columns),
                                 "the first token file has 2 columns"),
    "tokens-is-file": ("tokens", lambda p: (shutil.rmtree(p), p.write_text("not a folder")), "tokens is a file"),
    "tokens-all-zero": ("tokens", lambda p: [_zero(f) for f in p.iterdir()], "every token file is 0 bytes"),
    # alignment.json
    "alignment-zero": ("alignment.json", _zero, "alignment.json is 0 bytes"),
    "alignment-garbage": ("alignment.json", _garbage, "alignment.json is garbage"),
    "alignment-list": ("alignment.json", _json([1, 2]), "alignment.json is a list"),
    "alignment-dir": ("alignment.json", _dir_instead, "alignment.json is a directory"),
    "alignment-wrong-types": ("alignment.json", _patch_json(special_tokens="x", vocab_size_a="big",
                                                            overlap_ratio=[1]), "alignment fields of wrong types"),
    # log and checkpoints
    "log-garbage": ("log.txt", _garbage, "log.txt is garbage"),
    "log-dir": ("log.txt", _dir_instead, "log.txt is a directory"),
    "checkpoints-file": ("checkpoints", lambda p: p.write_text("not a folder"), "checkpoints is a file"),
    "checkpoints-garbage": ("checkpoints/step_000020", lambda p: (p.mkdir(parents=True),
                                                                  (p / "state.json").write_bytes(GARBAGE)),
                            "a checkpoint folder with a garbage state"),
}


def _outside_symlink(runs_dir: Path, tmp_path: Path) -> Path:
    """A run folder that is a symlink to a valid run outside the runs folder."""
    target = make_valid_run(tmp_path / "outside" / "elsewhere")
    link = runs_dir / "symlink-outside"
    link.symlink_to(target, target_is_directory=True)
    return link


def _symlink_loop(runs_dir: Path, tmp_path: Path) -> Path:  # noqa: ARG001
    """A run folder whose config.json and status.json are symlinks to each other."""
    run = runs_dir / "symlink-loop"
    make_valid_run(run)
    for name in ("config.json", "status.json"):
        (run / name).unlink()
    (run / "config.json").symlink_to(run / "status.json")
    (run / "status.json").symlink_to(run / "config.json")
    return run


SPECIAL_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "symlink-outside": (_outside_symlink, "the run folder is a symlink to a folder outside the runs folder"),
    "symlink-loop": (_symlink_loop, "config.json and status.json are symlinks to each other"),
}


def describe(run_dir: Path) -> str:
    """The one-line description of the damage done to ``run_dir`` (by its name)."""
    name = Path(run_dir).name
    if name in CASES:
        return CASES[name][2]
    return SPECIAL_CASES[name][1]


def make_corrupt_runs(tmp_path: Path) -> list[Path]:
    """Write every damaged run under ``tmp_path / "runs"`` (one per case); returns their paths in case order."""
    runs_dir = Path(tmp_path) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name, (rel, damage, _) in CASES.items():
        run = make_valid_run(runs_dir / name)
        target = run / rel
        damage(target)
        made.append(run)
    for build, _ in SPECIAL_CASES.values():
        made.append(build(runs_dir, Path(tmp_path)))
    assert len({p.name for p in made}) == len(made) >= 50
    return made


if __name__ == "__main__":  # python tests/corrupt_runs.py OUT: write them for a look by hand
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corrupt-runs")
    for path in make_corrupt_runs(out):
        print(f"{path.name:<28} {describe(path)}")
