"""`python -m benchmarks --quick` prints every row of the table, none failed; the sweep maths is right."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.loss_memory import INPUT_COPIES, VIRTUAL_OVERHEAD, fitting_batch
from benchmarks.scaling import describe, exponent

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_ROWS = [
    "step time, reverse KL full vocabulary: ours `reverse_kl` vs TRL GKDTrainer",
    "step time: ours `topk_support` (k=32) vs TRL GKDTrainer",
    "step time: ours `topk_support` (k=32) vs TRL DistillationTrainer",
    "peak memory, one loss fwd+bwd",
    "per-token logging share of step time",
    "default toy run wall time",
    "dashboard server time, slowest page, run with 160 logged tokens",
    "dashboard server time, slowest page, run with 240 logged tokens",
    "growth with T",
    "growth with V",
]


DEFAULT_SECTIONS = ["step", "memory", "logging", "pages", "scaling"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick run of every section (the default ones, then ``vocab``): one interpreter and one TRL import
    for the whole module instead of one per section set."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", *DEFAULT_SECTIONS, "vocab",
                           "--cache-dir", str(out / "cache"), "--json", str(out / "rows.json")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "rows.json").read_text())
    vocab = [r for r in data["rows"] if "random weights" in r["measurement"]]
    default = [r for r in data["rows"] if "random weights" not in r["measurement"]]
    return proc.stdout, {**data, "rows": default}, vocab, out / "cache"


def test_quick_run_prints_one_table_row_per_measurement_and_none_failed(quick_run):
    stdout = quick_run[0]
    table = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| measurement")
             and "random weights" not in line]
    assert len(table) == len(EXPECTED_ROWS), stdout
    for line, expected in zip(table, EXPECTED_ROWS):
        assert line.startswith(f"| {expected}"), (expected, line)
        assert "failed:" not in line, line
        assert len(line.split(" | ")) == 6, line  # measurement, ours, anchor, ratio, goal, met


def test_quick_run_writes_a_ratio_for_every_row_that_has_an_anchor(quick_run):
    data = quick_run[1]
    assert data["quick"] is True and len(data["rows"]) == len(EXPECTED_ROWS)
    for row in data["rows"]:
        assert row["met"] is None  # smoke sizes never claim a goal
        assert row["ratio"] is not None, row
        if row["measurement"].startswith("step time"):
            assert row["ratio"] > 0, row
        elif not row["measurement"].startswith("growth"):
            assert row["ratio"] >= 0, row  # a tiny loss can peak below the resident-set resolution


def test_growth_exponent_is_the_power_of_the_law():
    xs = [256, 512, 1024, 2048]
    assert exponent(xs, [3.0 * x for x in xs]) == pytest.approx(1.0)
    assert exponent(xs, [0.5 * x * x for x in xs]) == pytest.approx(2.0)
    assert exponent(xs, [7.0] * 4) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(exponent(xs, [1.0, 0.0, 1.0, 2.0]))  # a zero peak (below RSS resolution) has no power
    assert [describe(0.1), describe(1.05), describe(2.0), describe(math.nan)] == ["flat", "linear", "super-linear",
                                                                                   "n/a"]


def test_memory_case_is_shrunk_to_the_largest_batch_that_fits():
    seq, vocab, copies = 1024, 151_936, 7.0
    one = seq * vocab * 4  # bytes of one float32 [1, T, V] tensor
    need = lambda b: (copies + INPUT_COPIES + 0.5) * b * one + VIRTUAL_OVERHEAD  # noqa: E731
    assert fitting_batch(copies, 4, seq, vocab, int(need(4))) == 4
    assert fitting_batch(copies, 4, seq, vocab, int(need(4)) - 1) == 3
    assert fitting_batch(copies, 4, seq, vocab, int(need(2)) + 10) == 2
    assert fitting_batch(copies, 4, seq, vocab, int(need(1)) - 1) == 0


def test_quick_vocab_section_prints_the_three_step_rows_at_the_larger_vocabulary(quick_run):
    rows, cache = quick_run[2], quick_run[3]
    assert len(rows) == 5, rows  # three step-time rows, then peak RSS against each TRL trainer
    assert [r["measurement"].startswith("peak RSS of the training process") for r in rows] == [False] * 3 + [True] * 2
    for row, expected in zip(rows, EXPECTED_ROWS[:3] + ["peak RSS"] * 2):
        assert row["measurement"].startswith(expected), (expected, row)
        assert "V=4,096, random weights" in row["measurement"], row
        assert not row["ours"].startswith("failed"), row
        assert row["ratio"] is not None and row["ratio"] > 0, row
    assert (cache / "vocab-4096-v2" / "COMPLETE").exists()  # built under --cache-dir, not the repo


def test_synthetic_tokenizer_has_exactly_the_requested_size_and_a_working_chat_template():
    from benchmarks.realistic_vocab import synthetic_tokenizer

    tok = synthetic_tokenizer(1000)
    assert len(tok) == 1000
    assert None not in (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    ids = tok.apply_chat_template([{"role": "user", "content": "47+38"}], add_generation_prompt=True, tokenize=False)
    assert tok.decode(tok(ids, add_special_tokens=False)["input_ids"]) == ids
    with pytest.raises(ValueError, match="too small"):
        synthetic_tokenizer(20)
