"""One writer: the built-in loop's path and the SDK's path give the same token table and metrics for the same tensors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from opd_core import runs
from opd_core.config import from_dict
from opd_core.logging_sdk import OPDLogger
from opd_core.loop_tokens import TokenLog
from opd_core.objectives import TeacherNeeds, per_token_loss
from opd_core.run_writer import TokenRows, masked_reason, token_table
from opd_core.schema import ALIGNMENT_METRICS
from opd_core.scoring import TeacherScores, build_batch
from opd_core.stats import STEP_METRICS, dense_token_stats, step_metrics, step_stats
from opd_core.train import Scored, Trainer

V, K, EOS, SPECIAL = 40, 5, 2, (1, 2)


def _tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    responses = [[5, 6, 7, EOS, 9, 10], [11, 12, EOS], [13, 1, 14, 15, 16]]
    batch = build_batch([[3, 4], [3], [4, 4, 3]], responses, 0, torch.device("cpu"))
    B, T = batch.response_ids.shape
    s_logits = torch.randn(B, T, V, generator=g) * 2
    t_logits = torch.randn(B, T, V, generator=g) * 2
    return responses, batch, s_logits, t_logits


def _loop_side(tmp_path, responses, batch, s_logits, t_logits):
    """What Trainer.observe does with a scored batch: the full record, the token rows and the step metrics."""
    cfg = from_dict({"top_p": 0.9, "temperature": 1.0, "log_top_k": K, "nucleus_p": 0.8})
    trainer = Trainer.__new__(Trainer)  # the loop's own methods, without loading models
    trainer.cfg, trainer.support_k, trainer.needs = cfg, K, TeacherNeeds.TOPK
    trainer.pair = SimpleNamespace(student_strings=[str(i) for i in range(V)], shared=True)
    trainer.tokens = TokenLog(tmp_path, trainer.pair)
    ids, real = batch.response_ids, batch.response_mask
    eos = (ids == EOS) & real
    special = torch.isin(ids, torch.tensor(SPECIAL)) & real
    masks = {"after_eos": (eos.long().cumsum(-1) - eos.long() > 0) & real, "special": (ids == 1) & real}
    mask = real & ~masks["after_eos"] & ~masks["special"]
    t_lp = t_logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
    sc = Scored(["p"] * 3, responses, batch, s_logits, TeacherScores(t_lp, t_logits, real.clone()), [], mask,
                special, eos, masks)
    out = per_token_loss("sampled_token", s_logits, t_logits, ids, mask)
    record = trainer.token_record(sc, out)
    table = token_table(7, record, trainer.tokens.token_rows(sc, [0, 1, 2], "student", reference=False, offset=0,
                                                      infos=None))
    logging_step = trainer.step_metrics(sc, out, "student", [], record)
    every_step = trainer.step_metrics(sc, out, "student", [])  # the cheap fused pass of the other steps
    assert set(every_step) == set(logging_step)
    # every name declared in the schema
    assert set(logging_step) - {"train_accuracy"} <= set(STEP_METRICS) | set(ALIGNMENT_METRICS)
    for key, value in every_step.items():
        assert (value is None) == (logging_step[key] is None), key
        if value is not None:
            assert value == pytest.approx(logging_step[key], rel=1e-5, abs=1e-6), key
    return table, logging_step, mask, special, out


def test_loop_and_sdk_write_identical_token_columns_and_step_metrics(tmp_path):
    responses, batch, s_logits, t_logits = _tensors()
    loop_table, loop_metrics, mask, special, out = _loop_side(tmp_path, responses, batch, s_logits, t_logits)
    with OPDLogger(tmp_path / "sdk", top_k=K, nucleus_top_p=0.8, config={"top_p": 0.9}, special_ids=list(SPECIAL),
                   eos_ids=[EOS], every=1, max_samples=8) as opd:
        opd.log_logits(7, token_ids=batch.response_ids, mask=batch.response_mask, loss_mask=mask,
                       student_logits=s_logits, teacher_logits=t_logits, signal=out.signal, token_loss=out.loss,
                       token_value=out.value,
                       metrics={"loss": 0.0, "grad_norm": 0.0, "lr": 0.0})
    sdk = pq.read_table(runs.token_file(tmp_path / "sdk", 7))
    loop = loop_table
    # Without a tokenizer the SDK has no candidate strings; it cannot know why a trainer masked a token.
    # Everything else is the same column with the same values.
    assert set(loop.column_names) - set(sdk.column_names) == {"student_topk_tokens", "teacher_topk_tokens"}
    assert set(sdk.column_names) <= set(loop.column_names)
    for name in sorted(set(sdk.column_names) - {"masked_reason"}):
        a, b = loop.column(name).to_pylist(), sdk.column(name).to_pylist()
        if loop.schema.field(name).type in (sdk.schema.field(name).type,) and isinstance(a[0], float):
            np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        else:
            assert a == b, name
    assert set(sdk.column("masked_reason").to_pylist()) == {"", "loss_mask"}
    assert set(loop.column("masked_reason").to_pylist()) == {"", "after_eos", "special"}
    line = json.loads((tmp_path / "sdk" / "metrics.jsonl").read_text().splitlines()[0])
    for key in STEP_METRICS:
        if key in loop_metrics or key in line:
            want, got = loop_metrics.get(key), line.get(key)
            assert (want is None) == (got is None), key
            if want is not None:
                assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key


def test_masked_reason_names_the_first_applying_mask_and_is_empty_on_trained_tokens():
    masks = {"after_eos": np.array([0, 1, 1, 0], bool), "special": np.array([0, 0, 1, 0], bool),
             "my_new_gate": np.array([1, 0, 0, 0], bool)}
    assert masked_reason(masks, 4).tolist() == ["my_new_gate", "after_eos", "special", ""]


def test_special_token_signal_share_counts_special_or_eos_over_trained_signal():
    ids = torch.tensor([[5, 1, 2, 6]])
    real = torch.ones(1, 4, dtype=torch.bool)
    trained = torch.tensor([[True, True, True, False]])
    rec = step_stats(torch.zeros(1, 4, 8), torch.zeros(1, 4, 8), ids, signal=torch.tensor([[1.0, -2.0, 3.0, 50.0]]))
    m = step_metrics(rec, trained=trained, real=real, special=ids == 1, eos=ids == 2)
    assert m["special_token_signal_share"] == pytest.approx(5 / 6)
    assert m["negative_reward_share"] == 0 and m["not_in_topk_ratio"] is None


def test_a_sparse_view_gives_the_dense_record_where_the_lists_reach():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 4, 12, generator=g), torch.randn(2, 4, 12, generator=g)
    ids = torch.randint(0, 12, (2, 4), generator=g)
    dense = dense_token_stats(s, t, ids, support_k=12, log_top_k=12, nucleus_p=0.9, rollout_top_p=0.8)
    from opd_core.stats import sparse_token_stats

    sparse = sparse_token_stats(ids, dense.student_logp, dense.teacher_logp, teacher_topk_ids=dense.teacher_topk_ids,
                                teacher_topk_logps=dense.teacher_topk_logps, student_topk_ids=dense.student_topk_ids,
                                student_topk_logps=dense.student_topk_logps, rollout_top_p=0.8, nucleus_p=0.9)
    for name in ("in_teacher_topk", "in_student_topp", "in_teacher_nucleus", "teacher_rank"):
        assert torch.equal(getattr(sparse, name), getattr(dense, name)), name
    for name in ("topk_overlap", "overlap_mass_student", "overlap_mass_teacher", "teacher_top1_prob"):
        assert torch.allclose(getattr(sparse, name), getattr(dense, name), atol=1e-5), name
    assert sparse.teachability is None and not sparse.teacher_rank_exact
    assert math.isclose(float(dense.overlap_mass_student.mean()), 1.0, rel_tol=1e-5)  # K = V: every id shared
    table = token_table(0, sparse, TokenRows(ids, torch.ones(2, 4, dtype=torch.bool), ids == 0, ids == 1))
    assert "teachability" not in table.column_names and "overlap_mass_student" in table.column_names


def test_teacher_own_topk_is_written_in_the_teachers_words_and_empty_where_no_teacher_position():
    """The cross-tokenizer column: per token a list of {id, text, logp} from the teacher's own vocabulary."""
    responses, batch, s_logits, t_logits = _tensors()
    B, T = batch.response_ids.shape
    stats = dense_token_stats(s_logits, t_logits, batch.response_ids)
    own_ids = torch.full((B, T, 3), -1, dtype=torch.long)
    own_lps = torch.full((B, T, 3), float("nan"))
    own_ids[0, 0] = torch.tensor([7, 3, 9])
    own_lps[0, 0] = torch.tensor([-0.1, -2.5, -4.0])
    stats.teacher_own_topk_ids, stats.teacher_own_topk_logps = own_ids, own_lps
    teacher_words = {7: "</s>", 3: "<", 9: "Ġdo"}
    rows = TokenRows(token_ids=batch.response_ids, real=batch.response_mask, special=batch.response_mask & False,
                     eos=batch.response_ids == EOS, teacher_id_to_string=teacher_words)
    table = token_table(4, stats, rows).to_pandas()
    first = table[(table["sample"] == 0) & (table["pos"] == 0)].iloc[0]["teacher_own_topk"]
    assert [(e["id"], e["text"]) for e in first] == [(7, "</s>"), (3, "<"), (9, "Ġdo")]
    assert [round(float(e["logp"]), 3) for e in first] == [-0.1, -2.5, -4.0]
    others = table[~((table["sample"] == 0) & (table["pos"] == 0))]["teacher_own_topk"]
    assert len(others) == int(batch.response_mask.sum()) - 1 and all(len(x) == 0 for x in others)
    # a run with one tokenizer never gets the column
    assert "teacher_own_topk" not in token_table(4, dense_token_stats(s_logits, t_logits, batch.response_ids),
                                                 rows).column_names
