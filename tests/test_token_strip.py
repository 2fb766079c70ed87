"""The token strip: untrusted token text is escaped, colours follow the column's sign, and the hover card
holds both models' top-K candidates with probabilities exp(log-prob)."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from app.token_strip import candidates, color_scale, colourable_columns, token_strip_html

SCRIPT = "<script>alert('x')</script>"
IMG = '<img src=x onerror="alert(1)">'


def _rows(tokens: list[str], signal: list[float] | None = None, **extra) -> pd.DataFrame:
    n = len(tokens)
    df = pd.DataFrame({
        "pos": range(n), "token": tokens, "token_id": range(10, 10 + n),
        "signal": signal if signal is not None else [0.0] * n,
        "masked": [False] * n, "is_special": [False] * n,
        "teacher_topk_ids": [[10 + i, 99] for i in range(n)],
        "teacher_topk_logps": [[math.log(0.7), math.log(0.2)] for _ in range(n)],
        "student_topk_ids": [[99, 10 + i] for i in range(n)],
        "student_topk_logps": [[math.log(0.6), math.log(0.3)] for _ in range(n)],
    })
    for key, values in extra.items():
        df[key] = values
    return df


def test_script_and_onerror_tokens_are_escaped_not_live_markup() -> None:
    rows = _rows([SCRIPT, IMG, "ok"], teacher_topk_tokens=[[SCRIPT, IMG]] * 3, student_topk_tokens=[[IMG, "a"]] * 3,
                 teacher_token=[IMG, "b", "ok"])
    html = token_strip_html(rows, "signal")
    assert "<script" not in html.lower()
    assert "<img" not in html.lower()
    assert "&lt;script&gt;" in html and "&lt;img·src=x·onerror=&quot;alert(1)&quot;&gt;" in html  # spaces shown as ·
    # Only our own tags appear: every tag name in the output is one the renderer writes.
    assert set(re.findall(r"<([a-zA-Z]+)", html)) <= {"style", "div", "span", "b", "br", "table", "tr", "th", "td", "i"}


def test_signed_column_gets_a_diverging_scale_centred_on_zero() -> None:
    scale = color_scale(pd.Series([-2.0, -1.0, 0.0, 1.0, 2.0]), "signal", clip_quantile=1.0)
    assert scale.kind == "diverging"
    assert scale.lo == -scale.hi == -2.0
    neg, mid, pos = scale.colours(pd.Series([-2.0, 0.0, 2.0]))

    def rgb(c: str) -> tuple[float, ...]:
        return tuple(float(v) for v in c[c.index("(") + 1:-1].split(","))

    assert rgb(neg)[0] > rgb(neg)[2]  # negative: red
    assert rgb(pos)[2] > rgb(pos)[0]  # positive: blue
    assert min(rgb(mid)) > 200  # zero: near white


def test_unsigned_column_is_sequential_and_boolean_column_two_colours() -> None:
    assert color_scale(pd.Series([0.1, 0.5, 2.0]), "teacher_entropy").kind == "sequential"
    masked = color_scale(pd.Series([True, False]), "masked")
    assert masked.kind == "boolean"
    yes, no = masked.colours(pd.Series([True, False]))
    assert yes != no


def test_one_huge_value_does_not_wash_out_the_rest_of_the_scale() -> None:
    values = pd.Series([0.1 * i for i in range(-50, 50)] + [-58.7])
    scale = color_scale(values, "log_ratio")
    assert scale.hi < 10  # clipped at a quantile, not at the -58.7 outlier


def test_candidates_are_side_by_side_with_probabilities_from_logps_and_ids_without_strings() -> None:
    row = _rows(["a"]).iloc[0]
    table = candidates(row)
    assert list(table["teacher_token"]) == ["#10", "#99"]
    assert list(table["student_token"]) == ["#99", "#10"]
    assert table["teacher_prob"].tolist() == pytest.approx([0.7, 0.2])
    assert table["student_prob"].tolist() == pytest.approx([0.6, 0.3])
    assert len(candidates(row, k=1)) == 1


def test_candidates_show_decoded_strings_when_logged() -> None:
    row = _rows(["a"], teacher_topk_tokens=[["x", "y"]], student_topk_tokens=[["y", "x"]]).iloc[0]
    table = candidates(row)
    assert list(table["teacher_token"]) == ["x", "y"] and list(table["student_token"]) == ["y", "x"]


def test_hover_card_lists_candidates_for_every_token() -> None:
    html = token_strip_html(_rows(["a", "b"]), "signal", top_k=2)
    assert html.count("class='opd-tip'") == 2
    assert "0.7" in html and "0.6" in html


def test_masked_and_special_tokens_can_be_hidden_and_are_marked_otherwise() -> None:
    rows = _rows(["a", "b", "c"], masked=[False, True, False], is_special=[False, False, True])
    shown = token_strip_html(rows, "signal")
    assert len(re.findall(r"data-pos='(\d+)'", shown)) == 3
    assert "opd-masked" in shown and "opd-special" in shown
    hidden = token_strip_html(rows, "signal", hide_masked=True, hide_special=True)
    assert len(re.findall(r"data-pos='(\d+)'", hidden)) == 1


def test_highlighted_positions_are_outlined() -> None:
    html = token_strip_html(_rows(["a", "b", "c"]), "signal", highlight=[1])
    marked = re.findall(r"<span class='([^']*)' tabindex='0' data-pos='(\d+)'", html)
    assert [pos for classes, pos in marked if "opd-top" in classes] == ["1"]


def test_whitespace_tokens_stay_visible() -> None:
    html = token_strip_html(_rows(["\n", ""]), "signal")
    assert "⏎" in html and "∅" in html


def test_unknown_colour_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not_a_column"):
        token_strip_html(_rows(["a"]), "not_a_column")


def test_colourable_columns_keeps_only_present_ones_in_order() -> None:
    assert colourable_columns(["masked", "teacher_entropy", "signal", "zzz"]) == ["signal", "teacher_entropy", "masked"]


def test_a_student_eos_the_teacher_never_uses_is_called_a_literal_string_not_rank_1() -> None:
    from app.token_strip import teacher_reading

    alignment = {"eos_a": "<|im_end|>", "eos_b": "</s>", "shared_vocabulary": False}
    rows = _rows(["4", "<|im_end|>", "x"], teacher_token=["4", "<|im_end|>", "x"], is_special=[False, True, False],
                 is_eos=[False, True, False], teacher_rank=[1, 1, 1],
                 teacher_topk_tokens=[["<|im_end|>", ";"]] * 3)
    reading = teacher_reading(rows.iloc[1].to_dict(), alignment)
    assert reading.literal and "literal text" in reading.note and "</s>" in reading.note
    html = token_strip_html(rows, "signal", alignment=alignment)
    card = html.split("data-pos='1'")[1].split("data-pos='2'")[0]
    assert "teacher rank n/a (scored as text)" in card
    assert "&lt;/s&gt; <i>(as &lt;|im_end|&gt;)</i>" in card  # the teacher's own EOS, not its mapped name
    assert not teacher_reading(rows.iloc[0].to_dict(), alignment).literal
    assert teacher_reading(rows.iloc[1].to_dict(), None).note == ""  # same tokenizer: nothing to warn about


def test_pieces_are_separate_boxes_even_when_a_piece_is_a_separator() -> None:
    from app.token_strip import pieces_html

    out = pieces_html(["a", " | ", "b"], ["a", "b"])
    assert out.count("<span class='opd-piece") == 3 and "·|·" in out
    assert out.count("opd-piece opd-piece-diff") == 1  # " | " is the only piece the other side lacks


def test_teacher_pieces_and_retokenisation_boxes_escape_hostile_text() -> None:
    """The teacher strip and the re-tokenisation boxes render untrusted pieces as text, never as markup."""
    from app.token_strip import pieces_html, teacher_strip_html

    evil = [SCRIPT, '<img src=x onerror="alert(1)">']
    strip = teacher_strip_html(pd.DataFrame({"pos": [0, 1], "token": evil,
                                             "teacher_pieces": [[SCRIPT], ["<img", ' src=x onerror="alert(1)">']]}))
    boxes = pieces_html(evil, [SCRIPT])
    for out in (strip, boxes):
        assert "<script>" not in out and "<img" not in out
        assert "&lt;script&gt;" in out and "&lt;img" in out


def _own(*pairs: tuple[str, float]) -> list[dict]:
    return [{"id": i, "text": t, "logp": math.log(p)} for i, (t, p) in enumerate(pairs)]


def test_the_hover_card_and_teacher_strip_show_the_teachers_own_unmapped_topk_at_a_literal_eos() -> None:
    """Cross-tokenizer: the card lists the teacher's own pieces (its vocabulary) with p, and says plainly that
    the student's EOS was scored as a literal string the teacher never uses."""
    from app.token_strip import own_candidates, teacher_reading, teacher_strip_html

    alignment = {"eos_a": "<|im_end|>", "eos_b": "</s>", "shared_vocabulary": False}
    pieces = [["4"], ["<", "|", "im", "_end", "|", ">"], ["x"]]
    rows = _rows(["4", "<|im_end|>", "x"], teacher_pieces=pieces, is_special=[False, True, False],
                 is_eos=[False, True, False], teacher_logp=[-0.1, -21.5, -1.0],
                 teacher_own_topk=[_own(("4", 0.9), ("5", 0.05)), _own(("</s>", 0.97), ("<", 0.01), (IMG, 0.005)),
                                   []])
    reading = teacher_reading(rows.iloc[1].to_dict(), alignment)
    assert reading.literal and "literal text" in reading.note and "never uses" in reading.note
    assert "What the teacher expected there, in its own vocabulary: </s> p 0.97" in reading.note
    card = token_strip_html(rows, "signal", alignment=alignment).split("data-pos='1'")[1].split("data-pos='2'")[0]
    assert "Teacher's own top-3" in card and "before its token &lt;" in card
    own_rows = re.findall(r"<tr class='(opd-hit)?'><td>\d</td><td>([^<]*)</td><td class='num'>([^<]*)</td></tr>",
                          card.split("opd-own")[1])
    assert [(t, p) for _, t, p in own_rows] == [("&lt;/s&gt;", "0.97"), ("&lt;", "0.01"),
                                                ("&lt;img·src=x·onerror=&quot;alert(1)&quot;&gt;", "0.005")]
    assert own_rows[1][0] == "opd-hit"  # the piece it actually scored, in bold
    assert "<img" not in card and "teacher (mapped)" in card
    strip = teacher_strip_html(rows, alignment, top_k=2, selected=1)
    group = strip.split("data-pos='1'")[1].split("data-pos='2'")[0]
    assert "Teacher's own top-2" in group and "&lt;/s&gt;" in group and "literal text" in group
    assert "opd-selected" in strip.split("data-pos='1'")[0].rsplit("<span", 1)[1]
    assert "not logged here" in strip.split("data-pos='2'")[1]  # no teacher position: said, not invented
    table = own_candidates(rows.iloc[1], k=2)
    assert table["teacher_piece"].tolist() == ["</s>", "<"] and table["teacher_prob"].round(2).tolist() == [0.97, 0.01]
    assert own_candidates(rows.iloc[2]).empty and own_candidates({"token": "a"}).empty


def test_a_special_token_split_into_teacher_pieces_is_literal_even_when_it_is_not_the_eos() -> None:
    from app.token_strip import teacher_reading

    alignment = {"eos_a": "<|im_end|>", "eos_b": "</s>", "shared_vocabulary": False}
    row = {"token": "<think>", "is_special": True, "masked": False, "teacher_pieces": ["<", "think", ">"],
           "teacher_logp": -17.0}
    reading = teacher_reading(row, alignment)
    assert reading.literal and reading.note.startswith("It scored the student's special token <think>")
    assert not teacher_reading({**row, "masked": True}, alignment).literal  # masked: no number is used


def test_an_unaligned_token_is_said_to_have_no_teacher_number_not_a_sum_of_pieces() -> None:
    from app.token_strip import teacher_reading

    alignment = {"eos_a": "<|im_end|>", "eos_b": "<eos>", "shared_vocabulary": False}
    row = {"token": "<|im_end|>", "is_special": True, "is_eos": True, "masked": True, "masked_reason": "unaligned",
           "aligned": False, "teacher_logp": float("nan"), "teacher_pieces": [".<", "|", "im", "_", "end", "|>"]}
    note = teacher_reading(row, alignment).note
    assert "no number" in note and "sum" not in note


def test_text_tables_escape_markup_and_markdown_and_wrap() -> None:
    from app.inert import text_table_html

    out = text_table_html(pd.DataFrame({"run": [SCRIPT], "settings": ["$x^2$ ![i](http://h/x.png)"]}))
    assert "<script>" not in out and "&lt;script&gt;" in out and "overflow-wrap:anywhere" in out
    assert "<img" not in out and "$x^2$" in out  # st.html renders no Markdown or math: the text stays text


def test_an_unknown_teacher_rank_and_missing_teacher_candidates_read_as_such_not_as_0_or_empty_boxes() -> None:
    alignment = {"eos_a": "<|im_end|>", "eos_b": "<eos>", "shared_vocabulary": False}
    rows = _rows(["a", "b"], teacher_rank=[0, 2], teacher_pieces=[[".<", "a"], ["b"]],
                 teacher_topk_ids=[[], [10, 99]], teacher_topk_logps=[[], [-0.1, -2.0]],
                 teacher_own_topk=[_own((".", 0.5)), _own(("b", 0.9))])
    html = token_strip_html(rows, "signal", alignment=alignment)
    first, second = html.split("data-pos='1'")
    assert "teacher rank n/a" in first and "teacher (none: not 1:1)" in first and "∅" not in first.split("opd-own")[0]
    assert "teacher rank 2" in second and "teacher (mapped)" in second
