"""The toy world: worked-chain task and grader, the tokenizer pair, the shipped presets, the build."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from opd_core.tasks import Example, load_task
from opd_core.toy import recipes
from opd_core.toy.build import build_all
from opd_core.toy.presets import PRESETS, resolve_pair
from opd_core.toy.task import AdditionTask, worked_chain
from opd_core.toy.tokenizers import mismatched_teacher_tokenizer, student_tokenizer

# The README states: teacher greedy eval accuracy above this threshold, student below it.
ACCURACY_THRESHOLD = 0.8


def _example(a: int, b: int) -> Example:
    return Example(prompt=f"{a}+{b}", answer=str(a + b), meta={"a": a, "b": b})


@pytest.mark.parametrize(("a", "b", "chain"), [
    (47, 38, "7+8=15;4+3+1=8;=85"),
    (347, 85, "7+5=12;4+8+1=13;3+0+1=4;=432"),
    (999, 999, "9+9=18;9+9+1=19;9+9+1=19;=1998"),
    (10, 10, "0+0=0;1+1=2;=20"),
])
def test_worked_chain_writes_one_step_per_column_with_carries(a, b, chain):
    assert worked_chain(a, b) == chain


@given(st.integers(10, 999), st.integers(10, 999))
@settings(max_examples=200, deadline=None)
def test_canonical_chain_grades_correct_and_ends_in_the_true_sum(a, b):
    chain = worked_chain(a, b)
    grade = AdditionTask().grade(_example(a, b), chain)
    assert grade.correct and grade.format_ok and grade.first_error_char is None
    assert int(chain.rsplit("=", 1)[1]) == a + b


def test_grader_ignores_a_trailing_end_of_turn_token():
    grade = AdditionTask().grade(_example(47, 38), "7+8=15;4+3+1=8;=85<|im_end|>")
    assert grade.correct and grade.format_ok and grade.first_error_char is None


def test_grader_points_at_the_first_wrong_character_of_an_early_error():
    # forgot the carry: "4+3=7" instead of "4+3+1=8" -> the text departs at offset 10 ('=' vs '+')
    grade = AdditionTask().grade(_example(47, 38), "7+8=15;4+3=7;=75")
    assert not grade.correct and grade.format_ok and grade.first_error_char == 10


def test_grader_flags_bad_format_and_truncation():
    task = AdditionTask()
    garbage = task.grade(_example(47, 38), "85 is the answer")
    assert not garbage.correct and not garbage.format_ok and garbage.first_error_char == 0
    truncated = task.grade(_example(47, 38), "7+8=15;4+3")
    assert not truncated.format_ok and truncated.first_error_char == len("7+8=15;4+3")


def test_examples_are_seeded_and_splits_are_disjoint():
    task = load_task("toy")
    assert task.examples("train", 50, seed=3) == task.examples("train", 50, seed=3)
    assert task.examples("train", 50, seed=3) != task.examples("train", 50, seed=4)
    train = {e.prompt for e in task.examples("train", 2000, seed=0)}
    evals = {e.prompt for e in task.examples("eval", 500, seed=0)}
    assert not train & evals
    for e in task.examples("eval", 200, seed=1):
        a, b = (int(x) for x in e.prompt.split("+"))
        assert 10 <= a <= 999 and 10 <= b <= 999 and e.answer == str(a + b)


def test_unknown_split_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="train, eval"):
        AdditionTask().examples("test", 3, seed=0)


def test_teacher_tokenizer_b_is_identical_and_c_differs_like_real_pairs():
    student, same, other = student_tokenizer(), student_tokenizer(), mismatched_teacher_tokenizer()
    assert student.get_vocab() == same.get_vocab() and student.chat_template == same.chat_template
    assert (student.eos_token, other.eos_token) == ("<|im_end|>", "</s>")
    messages = [{"role": "user", "content": "47+38"}, {"role": "assistant", "content": worked_chain(47, 38)}]
    assert "<|im_end|>" not in other.apply_chat_template(messages, tokenize=False)
    assert other.apply_chat_template(messages, tokenize=False).endswith("</s>")
    assert abs(len(student) - len(other)) <= 2
    swapped = [i for i in range(6, 80) if student.convert_ids_to_tokens(i) != other.convert_ids_to_tokens(i)]
    assert swapped  # some ordinary ids read as different strings
    text = "4+3+1=8;"
    assert student.tokenize(text) != other.tokenize(text)  # a merge present on one side only


def test_shipped_assets_record_their_metrics():
    student_dir, teacher_dir = resolve_pair("toy:matched")
    metrics = json.loads((student_dir.parent / "metrics.json").read_text())
    assert set(metrics["models"]) == {"student", "teacher", "teacher_mismatched"}
    assert metrics["models"]["teacher"]["eval_accuracy"] > ACCURACY_THRESHOLD
    assert metrics["models"]["student"]["eval_accuracy"] < ACCURACY_THRESHOLD
    assert set(PRESETS) == {"toy:matched", "toy:mismatched", "toy:matched-v2", "toy:mismatched-v2"}
    assert resolve_pair("gpt2") is None


@pytest.fixture(scope="module")
def toy_models():
    from opd_core.models import load_pair

    student, teacher = load_pair("toy:matched", "toy:matched", device="cpu")
    _, mismatched = load_pair("toy:mismatched", "toy:mismatched", device="cpu")
    return student, teacher, mismatched


def test_presets_generate_valid_task_text_with_generate(toy_models):
    _, teacher, mismatched = toy_models
    task = AdditionTask()
    examples = task.examples("eval", 16, seed=7)
    for loaded in (teacher, mismatched):
        responses = recipes.greedy_responses(loaded.model, loaded.tokenizer, [e.prompt for e in examples])
        assert sum(task.grade(e, r).format_ok for e, r in zip(examples, responses)) >= 15


def test_manual_kv_cache_loop_matches_generate(toy_models):
    student = toy_models[0]
    model, tok = student.model, student.tokenizer
    prompt = recipes.render(tok, "47+38")
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    reference = model.generate(ids, max_new_tokens=30, do_sample=False)[0, ids.shape[1]:].tolist()
    out, past, step_ids = [], None, ids
    with torch.no_grad():
        for _ in range(30):
            res = model(input_ids=step_ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1, : student.vocab_size].argmax())
            out.append(nxt)
            if nxt == model.generation_config.eos_token_id:
                break
            step_ids = torch.tensor([[nxt]])
    assert out == reference[: len(out)] and out[-1] == tok.eos_token_id


def test_teacher_grades_above_and_student_below_the_stated_threshold(toy_models):
    student, teacher, _ = toy_models
    task = AdditionTask()
    examples = task.examples("eval", 200, seed=99)
    assert recipes.greedy_accuracy(teacher.model, teacher.tokenizer, task, examples) > ACCURACY_THRESHOLD
    assert recipes.greedy_accuracy(student.model, student.tokenizer, task, examples) < ACCURACY_THRESHOLD


def test_mismatched_teacher_gives_the_students_eos_a_tiny_probability(toy_models):
    student, _, mismatched = toy_models
    tok = mismatched.tokenizer
    text = recipes.render(tok, "47+38") + worked_chain(47, 38)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(mismatched.model(input_ids=ids).logits[0, -1, : mismatched.vocab_size], -1)
    own_eos = logp[tok.eos_token_id].item()
    student_eos = logp[tok.convert_tokens_to_ids(student.tokenizer.eos_token)].item()
    assert own_eos > -0.5 and student_eos < -5.0


def test_build_all_writes_complete_assets_and_replaces_old_ones(tmp_path):
    out = tmp_path / "assets"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    tiny = recipes.Recipe(steps=2, eval_examples=4)
    metrics = build_all(out, teacher_recipe=tiny, student_recipe=tiny, eval_examples=4, log=lambda _: None)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assets"]  # no staging or backup left behind
    for name in ("student", "teacher", "teacher_mismatched"):
        assert (out / name / "model.safetensors").is_file() and (out / name / "tokenizer.json").is_file()
        assert metrics["models"][name]["params"] > 0
    assert json.loads((out / "metrics.json").read_text())["models"].keys() == metrics["models"].keys()


def test_failed_build_leaves_existing_assets_untouched(tmp_path, monkeypatch):
    out = tmp_path / "assets"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def boom(*args, **kwargs):
        raise RuntimeError("training exploded")

    monkeypatch.setattr(recipes, "train_sft", boom)
    with pytest.raises(RuntimeError):
        build_all(out, log=lambda _: None)
    assert (out / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assets"]


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_task_grades_the_final_answer_by_exact_match(tmp_path):
    spec = _write_jsonl(tmp_path / "t.jsonl", ['{"prompt": "2+2?", "answer": "4"}', '{"prompt": "open"}'])
    task = load_task(spec)
    with_answer = Example(prompt="2+2?", answer="4")
    assert task.grade(with_answer, "Let me think.\nThe answer is: 4 ").correct
    assert task.grade(with_answer, "so \\boxed{4}</s>").correct
    assert not task.grade(with_answer, "The answer is: 5").correct
    assert task.grade(Example(prompt="open"), "anything") == task.grade(Example(prompt="open"), "")
    assert not task.grade(Example(prompt="open"), "x").correct and task.grade(Example(prompt="open"), "x").format_ok
    assert len(task.examples("eval", 5, seed=0)) == 5


def test_jsonl_task_names_the_bad_line_and_the_missing_file(tmp_path):
    spec = _write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "ok"}', '{"prompt": 3}'])
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_task(spec)
    spec = _write_jsonl(tmp_path / "broken.jsonl", ['{"prompt": "ok"', ])
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        load_task(spec)
    with pytest.raises(ValueError, match="not found"):
        load_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="toy:addition"):
        load_task("toy:multiplication")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789+=; x\n<|im_end>", max_size=40),
       suffixes=st.lists(st.text(alphabet="0123456789+=; x<|im_end>", max_size=30), min_size=1, max_size=5))
def test_a_response_that_cannot_pass_is_graded_wrong_whatever_follows(text, suffixes):
    task = AdditionTask()
    example = task.examples("train", 1, 0)[0]
    chain = worked_chain(example.meta["a"], example.meta["b"])
    if task.cannot_pass(example, text):
        assert not task.grade(example, text).correct
        assert not any(task.grade(example, text + s).correct for s in [*suffixes, chain[len(text):]])


def test_every_prefix_of_a_correct_response_can_still_pass():
    task = AdditionTask()
    example = task.examples("train", 1, 0)[0]
    chain = worked_chain(example.meta["a"], example.meta["b"])
    for full in (chain, chain + "<|im_end|>", " " + chain + " <|im_end|>\n", chain + "</s>"):
        assert task.grade(example, full).correct
        assert not any(task.cannot_pass(example, full[:i]) for i in range(len(full) + 1))
