"""Tokens are shown as text with visible markers, never as raw vocabulary strings or empty boxes."""

from opd_core.token_text import EMPTY_MARKER, visible


def test_leading_space_newline_tab_and_nbsp_are_visible():
    assert visible(" do") == "·do"
    assert visible("a\nb\tc\u00a0d") == "a⏎b⇥c⍽d"


def test_space_only_and_empty_tokens_are_not_blank():
    assert visible("    ") == "····"
    assert visible("") == EMPTY_MARKER
    assert visible(None) == EMPTY_MARKER


def test_ordinary_text_is_unchanged():
    assert visible("<|im_end|>") == "<|im_end|>"
