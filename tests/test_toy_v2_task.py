"""Toy world v2's task: free surface styles are all correct, '!' restarts, the first error is located."""

import random

from opd_core.tasks import Example, load_task
from opd_core.toy.task_v2 import (
    CorrectableAdditionTask,
    Style,
    canonical_chain,
    chain,
    columns,
    teacher_target,
)

TASK = CorrectableAdditionTask()
EX = Example("47+38", "85", {"a": 47, "b": 38})


def test_canonical_chain_is_v1_chain():
    from opd_core.toy.task import worked_chain

    for a, b in [(47, 38), (999, 10), (123, 877)]:
        assert canonical_chain(a, b) == worked_chain(a, b)


def test_every_style_grades_correct_without_error():
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        n = len(columns(a, b))
        styles = [Style(rng.random() < .5, rng.choice("=:"), rng.choice(";,")) for _ in range(n)]
        text = chain(a, b, styles, Style(eq=rng.choice("=:")))
        g = TASK.grade(Example(f"{a}+{b}", str(a + b), {"a": a, "b": b}), text + "<|im_end|>")
        assert g.correct and g.format_ok and g.first_error_char is None, text


def test_first_error_points_at_the_wrong_character():
    g = TASK.grade(EX, "7+8=14;4+3+1=8;=84")
    assert not g.correct and g.first_error_char == 5
    assert TASK.grade(EX, "8+7:16").first_error_char == 5
    assert TASK.grade(EX, "8+7:15,3+4+1=8;:85").correct


def test_correction_marker_restarts_and_last_attempt_counts():
    g = TASK.grade(EX, "7+8=14!7+8=15;4+3+1=8;=85")
    assert g.correct and g.format_ok and g.first_error_char == 5
    assert not TASK.grade(EX, "7+8=15;4+3+1=8;=85!7+8=14").correct


def test_teacher_targets_are_correct_and_mask_only_the_wrong_text():
    rng = random.Random(1)
    with_error = 0
    for _ in range(300):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        t = teacher_target(a, b, rng)
        ex = Example(f"{a}+{b}", str(a + b), {"a": a, "b": b})
        g = TASK.grade(ex, t.text)
        assert g.correct, t.text
        if t.no_loss:
            with_error += 1
            (start, end), = t.no_loss
            assert g.first_error_char == start
            assert t.text[end] == "!"
    assert 110 < with_error < 190  # error_rate 0.5


def test_task_is_registered_and_shares_v1_problems():
    from opd_core.toy.task import AdditionTask

    task = load_task("toy:addition-v2")
    assert [e.prompt for e in task.examples("eval", 20, 3)] == [e.prompt for e in AdditionTask().examples("eval", 20, 3)]
