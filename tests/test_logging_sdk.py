"""The logger SDK writes a valid, report-readable run directory from a trainer's own tensors, sampled and off-thread."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from opd_core import runs
from opd_core.logging_sdk import OPDLogger, OPDLoggerError, token_stats_from_logits

ROOT = Path(__file__).resolve().parents[1]


def _batch(b: int = 6, t: int = 10, v: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, v, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[:, t - 3 :] = False  # right padding
    return {"token_ids": ids, "mask": mask,
            "student_logp": -torch.rand(b, t, generator=g) * 2, "teacher_logp": -torch.rand(b, t, generator=g) * 3}


def _toy_tokenizer():
    from transformers import AutoTokenizer

    from opd_core.toy.presets import resolve_pair

    return AutoTokenizer.from_pretrained(resolve_pair("toy:matched")[0])


def test_sdk_run_passes_the_validator_and_opd_lab_report_reads_it(tmp_path, capsys):
    with OPDLogger(runs_dir=tmp_path, name="sdk-run", config={"objective": "sampled_token"}, every=2,
                   max_samples=4, total_steps=6) as opd:
        for step in range(6):
            opd.log_step(step, **_batch(seed=step))
            opd.log_metrics(step, {"loss": 0.5, "grad_norm": 1.0, "lr": 1e-4})
    run_dir = tmp_path / "sdk-run"
    assert runs.validate_run_dir(run_dir) == []
    assert runs.read_status(run_dir)["state"] == "finished"
    # `opd-lab report` in-process (the CLI's own main; a process per call would re-import torch)
    from opd_core.cli import main as opd_lab

    capsys.readouterr()
    assert opd_lab(["report", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["objective"] == "sampled_token" and "findings" in report


def test_every_and_max_samples_choose_which_steps_and_responses_are_written(tmp_path):
    with OPDLogger(tmp_path / "r", every=3, max_samples=2) as opd:
        written = [opd.log_step(step, **_batch(b=5)) for step in range(1, 8)]
    # the first step seen is always logged, then every 3rd
    assert written == [True, False, True, False, False, True, False]
    assert runs.token_steps(tmp_path / "r") == [1, 3, 6]
    tokens = runs.read_tokens(tmp_path / "r", steps=[3])
    assert sorted(tokens["sample"].unique()) == [0, 1]
    assert tokens.groupby("sample")["pos"].apply(list).tolist() == [list(range(7))] * 2  # padding dropped


def test_derived_columns_match_a_hand_computation(tmp_path):
    s = torch.tensor([[-0.1, -2.0, -0.5, -1.0]])
    t = torch.tensor([[-0.3, -0.5, -4.0, -1.0]])
    mask = torch.tensor([[True, True, True, False]])
    with OPDLogger(tmp_path / "r") as opd:
        opd.log_step(0, token_ids=torch.tensor([[5, 6, 7, 0]]), mask=mask, student_logp=s, teacher_logp=t)
    df = runs.read_tokens(tmp_path / "r").sort_values("pos")
    np.testing.assert_allclose(df["log_ratio"], [-0.2, 1.5, -3.5], rtol=1e-6)
    np.testing.assert_allclose(df["signal"], [-0.2, 1.5, -3.5], rtol=1e-6)  # default: the sampled log-ratio
    np.testing.assert_allclose(df["token_loss"], [0.2 * -0.1, -1.5 * -2.0, 3.5 * -0.5], rtol=1e-6)
    # drift: cumulative (student - teacher) over the earlier tokens only
    np.testing.assert_allclose(df["drift"], [0.0, 0.2, 0.2 - 1.5], rtol=1e-6, atol=1e-7)
    assert not df["masked"].any() and set(df["prefix_source"]) == {"student"}


def test_topk_columns_give_rank_membership_and_top1_and_neutral_values_without_them(tmp_path):
    ids = torch.tensor([[4, 9]])
    topk_ids = torch.tensor([[[7, 4, 1], [1, 2, 3]]])
    topk_lp = torch.log(torch.tensor([[[0.5, 0.3, 0.1], [0.6, 0.2, 0.1]]]))
    base = {"token_ids": ids, "mask": torch.ones(1, 2, dtype=torch.bool),
            "student_logp": torch.tensor([[-1.0, -1.0]]), "teacher_logp": torch.tensor([[-1.2, -3.0]])}
    with OPDLogger(tmp_path / "a") as opd:
        opd.log_step(0, **base, teacher_topk_ids=topk_ids, teacher_topk_logps=topk_lp)
    df = runs.read_tokens(tmp_path / "a").sort_values("pos")
    assert df["teacher_rank"].tolist() == [2, 4]  # 4 is second; 9 lies outside the top-3 -> K+1
    assert df["in_teacher_topk"].tolist() == [True, False]
    np.testing.assert_allclose(df["teacher_top1_prob"], [0.5, 0.6], rtol=1e-5)
    # nucleus 0.9: mass above token 4 is 0.5 (inside); token 9 sits below 0.9 of mass (outside)
    assert df["in_teacher_nucleus"].tolist() == [True, False]
    assert df["tokens_since_off_support"].tolist() == [0, 0]  # counts tokens *after* the first one off support
    assert df["teacher_topk_ids"].map(list).tolist() == [[7, 4, 1], [1, 2, 3]]
    with OPDLogger(tmp_path / "b") as opd:
        opd.log_step(0, **base)
    bare = runs.read_tokens(tmp_path / "b")
    assert bare["teacher_rank"].isna().all() and bare["in_teacher_topk"].isna().all()
    assert bare["teacher_entropy"].isna().all() and bare["teacher_topk_ids"].map(len).eq(0).all()
    assert "tokens_since_off_support" not in bare.columns
    assert runs.validate_run_dir(tmp_path / "b") == []


def test_log_logits_signal_is_the_objectives_per_token_value_and_rank_is_exact(tmp_path):
    g = torch.Generator().manual_seed(1)
    s_logits, t_logits = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    with OPDLogger(tmp_path / "r", top_k=4) as opd:
        opd.log_logits(0, token_ids=ids, mask=mask, student_logits=s_logits, teacher_logits=t_logits,
                       objective="reverse_kl")
    df = runs.read_tokens(tmp_path / "r").sort_values(["sample", "pos"])
    ls, lt = s_logits.log_softmax(-1), t_logits.log_softmax(-1)
    kl = (ls.exp() * (ls - lt)).sum(-1)  # reverse KL per token, independently
    np.testing.assert_allclose(df["signal"], kl.reshape(-1).numpy(), rtol=1e-4, atol=1e-6)
    rank = (t_logits > t_logits.gather(-1, ids[..., None])).sum(-1) + 1
    assert df["teacher_rank"].tolist() == rank.reshape(-1).tolist()
    np.testing.assert_allclose(df["teacher_entropy"], -(lt.exp() * lt).sum(-1).reshape(-1).numpy(), rtol=1e-4)
    mass = ls.exp().gather(-1, lt.topk(4, -1).indices).sum(-1)
    np.testing.assert_allclose(df["student_support_mass"], mass.reshape(-1).numpy(), rtol=1e-4)


def test_token_stats_from_logits_refuses_different_vocabularies():
    with pytest.raises(OPDLoggerError, match="same"):
        token_stats_from_logits(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6), torch.zeros(1, 2, dtype=torch.long))


def test_metrics_of_one_step_merge_into_one_line_with_the_required_keys(tmp_path):
    with OPDLogger(tmp_path / "r", every=100) as opd:
        opd.log_step(1, **_batch(), metrics={"loss": 2.0})
        opd.log_metrics(1, {"grad_norm": 3.0, "lr": 0.1})
        opd.log_metrics(2, {"loss": 1.0})
        with pytest.raises(OPDLoggerError, match="backwards"):
            opd.log_metrics(1, {"loss": 9.0})
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert lines[0]["loss"] == 2.0 and lines[0]["grad_norm"] == 3.0 and lines[0]["tokens"] == 6 * 7
    assert "signal_gini" in lines[0] and lines[1]["grad_norm"] is None
    assert all({"step", "time_s", "loss", "grad_norm", "lr", "tokens"} <= set(x) for x in lines)


def test_disabled_logger_and_non_zero_ranks_write_nothing(tmp_path, monkeypatch):
    off = OPDLogger(tmp_path / "off", enabled=False)
    assert off.log_step(0, **_batch()) is False and not off.should_log(0)
    off.log_metrics(0, {"loss": 1.0})
    off.close()
    monkeypatch.setenv("RANK", "1")
    other = OPDLogger(tmp_path / "rank1")
    assert other.enabled is False and other.log_step(0, **_batch()) is False
    other.close()
    assert not (tmp_path / "off").exists() and not (tmp_path / "rank1").exists()


def test_disk_writes_happen_off_the_training_thread_and_close_drains_them(tmp_path, monkeypatch):
    release = threading.Event()
    writer_threads: list[str] = []
    real_write = runs.write_token_records

    def slow_write(run_dir, step, table):
        writer_threads.append(threading.current_thread().name)
        release.wait(10)
        return real_write(run_dir, step, table)

    monkeypatch.setattr(runs, "write_token_records", slow_write)
    opd = OPDLogger(tmp_path / "r", every=1, max_pending=8)
    for step in range(3):
        assert opd.log_step(step, **_batch(seed=step)) is True  # returns although the disk is "stuck"
    assert runs.token_steps(tmp_path / "r") == []
    release.set()
    opd.close()
    assert runs.token_steps(tmp_path / "r") == [0, 1, 2]
    assert set(writer_threads) == {"opd-lab-writer"}


def test_a_failing_training_loop_marks_the_run_failed_with_its_error(tmp_path):
    with pytest.raises(RuntimeError), OPDLogger(tmp_path / "r") as opd:
        opd.log_step(0, **_batch())
        raise RuntimeError("CUDA out of memory")
    status = runs.read_status(tmp_path / "r")
    assert status["state"] == "failed" and "CUDA out of memory" in status["error"]
    assert runs.token_steps(tmp_path / "r") == [0]


def test_bad_input_raises_errors_that_name_the_argument(tmp_path):
    with OPDLogger(tmp_path / "r") as opd:
        bad = _batch()
        bad["teacher_logp"] = bad["teacher_logp"][:, :4]
        with pytest.raises(OPDLoggerError, match="teacher_logp"):
            opd.log_step(0, **bad)
        with pytest.raises(OPDLoggerError, match="teacher_topk_ids and teacher_topk_logps"):
            opd.log_step(0, **_batch(), teacher_topk_ids=torch.zeros(6, 10, 2, dtype=torch.long))
        with pytest.raises(OPDLoggerError, match="prefix_source"):
            opd.log_step(0, **_batch(), prefix_source="dataset")
        opd.log_step(0, **_batch())
    with pytest.raises(OPDLoggerError, match="every"):
        OPDLogger(tmp_path / "x", every=0)
    with pytest.raises(runs.RunDirError, match="already holds a run"):
        OPDLogger(tmp_path / "r")
    with pytest.raises(runs.RunDirError, match="not allowed"):
        OPDLogger(tmp_path / "bad name!")


def test_tokenizer_gives_token_strings_special_flags_and_alignment_report(tmp_path):
    tok = _toy_tokenizer()
    text_ids = tok("12+34", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([text_ids])
    n = ids.shape[1]
    with OPDLogger(tmp_path / "r", tokenizer=tok, teacher_tokenizer=tok) as opd:
        opd.log_step(0, token_ids=ids, mask=torch.ones(1, n, dtype=torch.bool), student_logp=torch.zeros(1, n),
                     teacher_logp=torch.zeros(1, n), prompts=["what is 12+34?"])
    df = runs.read_tokens(tmp_path / "r").sort_values("pos")
    assert "".join(df["token"].iloc[:-1]) == "12+34"
    assert df["is_eos"].tolist() == [False] * (n - 1) + [True]
    assert df["is_special"].iloc[-1] and not df["is_special"].iloc[0]
    assert df["response_text"].iloc[0] == "12+34" + tok.eos_token and df["prompt"].iloc[0] == "what is 12+34?"
    alignment = json.loads((tmp_path / "r" / "alignment.json").read_text())
    assert alignment["eos_a"] == alignment["eos_b"] == tok.eos_token
