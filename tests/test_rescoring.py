"""`opd-lab score`: saved rollouts of every shape -> a standard run directory with the loop's own numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opd_core import runs
from opd_core.cli import main
from opd_core.config import from_dict
from opd_core.models import load_model, resolve_model_path
from opd_core.pairing import TokenizerPair
from opd_core.rescoring import RolloutInputError, read_rollouts, score_rollouts
from opd_core.rescoring.score import Scorer, student_for_step
from opd_core.train import train

REPO = Path(__file__).resolve().parents[1]
ROLLOUTS = REPO / "examples" / "rollouts"
SHAPES = {"plain": "plain.jsonl", "chat": "chat.jsonl", "verl": "verl", "trl": "trl"}
KEY = ["step", "sample", "pos"]


def _direct_logps(model_dir: Path, prompt_ids: list[int], response_ids: list[int]) -> np.ndarray:
    """log p(response token t | prompt, earlier tokens) from one unpadded forward of one sequence, over the
    tokenizer's real vocabulary (embedding rows past it are padding, not tokens)."""
    model, vocab = _model(model_dir)
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1, :vocab].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response_ids)[:, None])[:, 0].numpy()


_MODELS: dict = {}


def _model(path: Path):
    if path not in _MODELS:
        loaded = load_model(path, device="cpu")
        _MODELS[path] = (loaded.model, loaded.vocab_size)
    return _MODELS[path]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shipped_shape_scores_into_a_valid_run_whose_logps_equal_a_direct_forward(tmp_path, shape, capsys):
    from opd_core.diagnostics import format_report, health

    code = main(["score", str(ROLLOUTS / SHAPES[shape]), "--teacher", "toy:matched", "--student", "toy:matched",
                 "--runs-dir", str(tmp_path), "--name", shape, "--batch-size", "3", "--no-progress"])
    out, err = capsys.readouterr()
    run = Path(out.strip())
    assert code == 0 and run == tmp_path / shape
    assert "scored 16 responses" in err and "tokens/s" in err  # the throughput line
    assert runs.validate_run_dir(run) == []
    assert runs.read_status(run)["state"] == "finished"
    assert runs.token_steps(run) == [1, 2] and runs.read_metrics(run)["step"].tolist() == [1, 2]
    assert "Health report" in format_report(health(run))
    tokens = runs.read_tokens(run)
    assert tokens.groupby("step")["sample"].nunique().tolist() == [8, 8]
    assert not tokens.duplicated(KEY).any()
    student_dir, teacher_dir = resolve_model_path("toy:matched", "student"), resolve_model_path("toy:matched",
                                                                                              "teacher")
    tok = load_model(student_dir, device="cpu").tokenizer
    pair = TokenizerPair(tok, tok)
    source = read_rollouts(ROLLOUTS / SHAPES[shape])
    for (step, _sample), g in tokens.groupby(["step", "sample"]):
        g = g.sort_values("pos")
        rollout = source.rollouts[int(g["rollout_index"].iloc[0])]
        assert rollout.step == step
        prompt = rollout.prompt if rollout.prompt is not None else rollout.messages[0]["content"]
        ids = g["token_id"].tolist()
        assert ids == tok(rollout.response, add_special_tokens=False)["input_ids"]
        p_ids = pair.student_prompt_ids(prompt)
        np.testing.assert_allclose(g["student_logp"], _direct_logps(student_dir, p_ids, ids), atol=1e-5)
        np.testing.assert_allclose(g["teacher_logp"], _direct_logps(teacher_dir, p_ids, ids), atol=1e-5)
    if shape in ("verl", "trl", "chat"):
        assert tokens["reward"].notna().all()  # verl's score, TRL's single reward function, chat's reward


def test_rescoring_a_loop_run_reproduces_the_loop_per_token_columns(tmp_path):
    cfg = from_dict({"student": "toy:matched", "teacher": "toy:matched", "steps": 2, "prompts_per_step": 2,
                     "num_rollouts": 2, "max_new_tokens": 16, "eval_every": 0, "eval_size": 4,
                     "log_tokens_every": 1, "checkpoint_every": 1, "reference_rollouts": False,
                     "learning_rate": 1e-3})
    loop = train(cfg, tmp_path, "loop")
    # Step s was scored by the weights before its update: the base student at 1, checkpoint 1 at step 2.
    result = score_rollouts(loop, teacher="toy:matched", student="toy:matched",
                            student_at=[f"2={loop}/checkpoints/step_000001"], runs_dir=tmp_path, name="again",
                            log=lambda _: None)
    a = runs.read_tokens(loop).sort_values(KEY).reset_index(drop=True)
    b = runs.read_tokens(result.run_dir).sort_values(KEY).reset_index(drop=True)
    assert len(a) == len(b) and (a[KEY + ["token_id", "masked"]] == b[KEY + ["token_id", "masked"]]).all().all()
    for col in ("student_logp", "teacher_logp", "log_ratio", "signal", "token_loss", "token_value",
                "student_entropy", "teacher_entropy", "teacher_top1_prob", "drift", "student_support_mass"):
        np.testing.assert_allclose(b[col], a[col], atol=1e-5, err_msg=col)
    for col in ("teacher_rank", "in_teacher_topk", "in_teacher_nucleus", "tokens_since_off_support"):
        assert (a[col] == b[col]).all(), col
    # The logged loss means the same in both: the objective's value (sampled-token: mean -r_t), not the
    # surrogate -A log p_S that is differentiated.
    loop_m = runs.read_metrics(loop).set_index("step")
    again_m = runs.read_metrics(result.run_dir).set_index("step")
    for step in (1, 2):
        trained = b[(b["step"] == step) & ~b["masked"]]
        assert again_m.loc[step, "loss"] == pytest.approx(float((-trained["log_ratio"]).mean()), abs=1e-5)
        assert again_m.loc[step, "loss"] == pytest.approx(loop_m.loc[step, "loss"], abs=1e-5)
    # The weights really changed between the steps, so the checkpoint mapping is what made them equal.
    other = score_rollouts(loop, teacher="toy:matched", student="toy:matched", runs_dir=tmp_path, name="base",
                           log=lambda _: None)
    c = runs.read_tokens(other.run_dir).sort_values(KEY).reset_index(drop=True)
    assert np.abs(c.loc[c["step"] == 2, "student_logp"].to_numpy()
                  - a.loc[a["step"] == 2, "student_logp"].to_numpy()).max() > 1e-4


def test_cross_tokenizer_scoring_sums_the_teachers_own_tokens_by_the_chain_rule(tmp_path):
    result = score_rollouts(ROLLOUTS / "plain.jsonl", teacher="toy:mismatched", student="toy:mismatched",
                            runs_dir=tmp_path, name="x", log=lambda _: None)
    assert runs.validate_run_dir(result.run_dir) == []
    tokens = runs.read_tokens(result.run_dir)
    assert (runs.read_json(result.run_dir / "alignment.json") or {}).get("shared_vocabulary") is False
    teacher_dir = resolve_model_path("toy:mismatched", "teacher")
    t_tok = load_model(teacher_dir, device="cpu").tokenizer
    s_tok = load_model(resolve_model_path("toy:mismatched", "student"), device="cpu").tokenizer
    source = read_rollouts(ROLLOUTS / "plain.jsonl")
    pair = TokenizerPair(s_tok, t_tok)
    for _, g in list(tokens.groupby(["step", "sample"]))[:6]:
        g = g.sort_values("pos")
        rollout = source.rollouts[int(g["rollout_index"].iloc[0])]
        view = pair.teacher_view(rollout.prompt, g["token_id"].tolist())
        direct = _direct_logps(teacher_dir, pair.teacher_prompt_ids(rollout.prompt), view.response_ids)
        per_student = np.zeros(len(g))
        np.add.at(per_student, view.owner, direct)
        kinds = np.asarray(view.kinds)
        got = g["teacher_logp"].to_numpy()
        # Exact tilings carry the chain-rule sum of the teacher's own tokens; the rest carry no number.
        np.testing.assert_allclose(got[kinds > 0], per_student[kinds > 0], atol=1e-4)
        assert np.isnan(got[kinds == 0]).all() and g["masked"].to_numpy()[kinds == 0].all()


def test_interrupted_scoring_resumes_without_duplicated_or_missing_rows(tmp_path, monkeypatch):
    clean = score_rollouts(ROLLOUTS / "plain.jsonl", teacher="toy:matched", student="toy:matched",
                           runs_dir=tmp_path, name="clean", batch_size=2, log=lambda _: None)
    real = Scorer.score
    calls = {"n": 0}

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # inside step 2, after step 1 finished and one of step 2's parts was written
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Scorer, "score", flaky)
    out = tmp_path / "resumed"
    kw = dict(teacher="toy:matched", student="toy:matched", out=out, batch_size=2, log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        score_rollouts(ROLLOUTS / "plain.jsonl", **kw)
    assert runs.read_status(out)["state"] == "stopped"
    assert runs.token_steps(out) == [1]
    leftover = out / ".scoring" / "step_000002" / ".part_000003.parquet.99999.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"PAR1 half a part")  # what a writer killed mid-part leaves (the resume failed on it)
    again = score_rollouts(ROLLOUTS / "plain.jsonl", **kw)
    assert again.skipped_responses == 8 + 2 and again.responses == 6
    assert runs.validate_run_dir(out) == [] and not (out / ".scoring").exists()
    a = runs.read_tokens(clean.run_dir).sort_values(KEY).reset_index(drop=True)
    b = runs.read_tokens(out).sort_values(KEY).reset_index(drop=True)
    assert not b.duplicated(KEY).any() and len(a) == len(b)
    np.testing.assert_allclose(b["student_logp"], a["student_logp"], atol=1e-6)
    assert runs.read_metrics(out)["step"].tolist() == [1, 2]
    assert [r["step"] for r, _ in runs.iter_metric_records(out)] == [1, 2]
    done = score_rollouts(ROLLOUTS / "plain.jsonl", **kw)  # a finished scoring re-run is a no-op
    assert done.responses == 0 and done.skipped_responses == 16 and len(runs.read_tokens(out)) == len(a)


@pytest.mark.parametrize("content,expect", [
    ('{"prompt": "1+1", "answer": "2"}\n', "no response column (columns found: prompt, answer); name it with --map"),
    ("", "no rollouts (empty file)"),
    ('{"prompt": "1+1", "response": "2"}\n{"prompt": "1+2", "response": \n', "line 2 is not valid JSON"),
    (b"\x00\x01PK\x03\x04\xff\xfe binary", "binary content"),
])
def test_malformed_rollouts_fail_with_one_line_exit_2_and_no_run_dir(tmp_path, capsys, content, expect):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    runs_dir = tmp_path / "runs"
    code = main(["score", str(path), "--teacher", "toy:matched", "--student", "toy:matched", "--runs-dir",
                 str(runs_dir)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expect in err and str(path) in err
    assert not runs_dir.exists()


def test_readers_map_verl_trl_and_custom_columns(tmp_path):
    verl = read_rollouts(ROLLOUTS / "verl")
    assert verl.shape == "verl" and verl.steps == [1, 2] and verl.columns["reward"] == "score"
    assert all(r.correct is not None and r.reward is not None for r in verl.rollouts)
    trl = read_rollouts(ROLLOUTS / "trl")
    assert trl.shape == "trl" and trl.columns["reward"] == "accuracy_reward"
    custom = tmp_path / "mine.jsonl"
    custom.write_text(json.dumps({"question": "1+1", "answer_text": "=2", "iteration": 7}) + "\n")
    with pytest.raises(RolloutInputError, match="no response column"):
        read_rollouts(custom)
    got = read_rollouts(custom, {"prompt": "question", "response": "answer_text", "step": "iteration"})
    assert got.rollouts[0].prompt == "1+1" and got.rollouts[0].step == 7
    with pytest.raises(RolloutInputError, match="'nope' given to --map is not in the file"):
        read_rollouts(custom, {"prompt": "nope", "response": "answer_text"})
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"prompt": [{"role": "user", "content": "1+1"}],
                                "completion": [{"role": "assistant", "content": "=2"}]}) + "\n")
    r = read_rollouts(conv).rollouts[0]
    assert r.messages == ({"role": "user", "content": "1+1"},) and r.response == "=2" and r.step == 1
    wandb = tmp_path / "completions.table.json"  # TRL's W&B completions table, exported
    wandb.write_text(json.dumps({"_type": "table", "columns": ["step", "prompt", "completion", "reward_len",
                                                               "advantage"],
                                 "data": [[3, "1+1", "=2", 0.5, 0.1], [3, "2+2", "=4", 1.0, -0.1]]}))
    got = read_rollouts(wandb)
    assert got.shape == "trl" and [r.reward for r in got.rollouts] == [0.5, 1.0] and got.steps == [3]


def test_a_prepared_job_is_queued_then_scored_by_score_resume(tmp_path, capsys):
    from opd_core.rescoring import is_scoring_run, prepare_job

    run = prepare_job(ROLLOUTS / "chat.jsonl", teacher="toy:matched", student="toy:matched", runs_dir=tmp_path,
                      name="job", settings=["k=8"], objective="topk_support")
    assert is_scoring_run(run) and runs.read_status(run)["state"] == "queued" and not runs.token_steps(run)
    assert main(["score", "--resume", str(run), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(run)
    assert runs.validate_run_dir(run) == [] and runs.read_status(run)["state"] == "finished"
    assert runs.read_config(run)["objective"] == "topk_support"
    assert main(["score", "--resume", str(tmp_path)]) == 2  # not a scoring run: one line, exit 2


def test_student_checkpoint_for_a_step_is_the_latest_given_at_or_before_it():
    at = {10: "a", 20: "b"}
    assert [student_for_step(s, at) for s in (5, 10, 15, 20, 99)] == [None, "a", "a", "b", "b"]


def test_bad_student_checkpoint_fails_before_any_run_dir(tmp_path, capsys):
    code = main(["score", str(ROLLOUTS / "plain.jsonl"), "--teacher", "toy:matched", "--student", "toy:matched",
                 "--student-at", f"3={tmp_path}/missing", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "no such checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


SHARD_ARGS = ["score", str(ROLLOUTS / "plain.jsonl"), "--teacher", "toy:matched", "--student", "toy:matched",
              "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def one_rank_scoring(tmp_path_factory) -> Path:
    """The single-process scoring the two-rank ones are compared with: run once, in this process (the same
    `opd-lab score` entry point; only the two-rank runs need their own processes)."""
    runs_dir = tmp_path_factory.mktemp("one-rank")
    assert main([*SHARD_ARGS, "--runs-dir", str(runs_dir), "--name", "one"]) == 0
    return runs_dir / "one"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_scoring_shards_over_two_ranks_and_rank0_writes_the_same_rows(tmp_path, launcher, one_rank_scoring):
    from tests.test_accelerate_launch import _free_port

    args = ["-m", "opd_core", *SHARD_ARGS, "--runs-dir", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
             if launcher == "torchrun" else
             [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())])
    two = subprocess.run([*start, *args, "--name", "two"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(r.run_id for r in runs.list_runs(tmp_path)) == ["two"]  # rank 0 alone made one
    assert runs.read_status(tmp_path / "two")["world_size"] == 2
    a = runs.read_tokens(one_rank_scoring).sort_values(KEY).reset_index(drop=True)
    b = runs.read_tokens(tmp_path / "two").sort_values(KEY).reset_index(drop=True)
    assert len(a) == len(b) and not b.duplicated(KEY).any()
    np.testing.assert_allclose(b["teacher_logp"], a["teacher_logp"], atol=1e-5)


def test_throughput_benchmark_quick_mode_prints_its_table(tmp_path, capsys):
    from benchmarks import score_speed

    assert score_speed.main(["--quick", "--threads", "1", "--cache-dir", str(tmp_path),
                             "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["pair"] for r in rows] == ["toy-matched", "toy-mismatched"]
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert "| toy-matched | 16 |" in capsys.readouterr().out
