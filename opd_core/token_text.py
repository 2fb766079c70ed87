"""How a token's text is shown to a person: decoded text with visible markers for invisible characters.

Vocabulary strings are an encoding detail (byte-level BPE writes a space as ``Ġ`` and a newline as
``Ċ``; SentencePiece writes ``▁``): users read text. Every place that shows a token (the inspector,
hover cards, tables, ``opd-lab report``) passes the token's *decoded* text through :func:`visible`,
so a leading space reads ``·do`` everywhere and a space-only token is never an empty box. The raw
vocabulary string stays in the data (``token_raw`` where a producer records it) for those who ask.

This module only formats; it does not escape. HTML sinks still ``html.escape`` the result.
"""

from __future__ import annotations

# One marker per invisible character. Chosen to be single-width and absent from normal prose.
VISIBLE_MARKERS: dict[str, str] = {
    " ": "·",
    "\n": "⏎",
    "\t": "⇥",
    "\r": "␍",
    "\u00a0": "⍽",   # no-break space
    "\u200b": "␣",   # zero-width space
    "\u3000": "□",   # ideographic space
}
_TABLE = str.maketrans(VISIBLE_MARKERS)
EMPTY_MARKER = "∅"


def visible(text: str | None) -> str:
    """The token's text with spaces, newlines, tabs and no-break spaces drawn as visible markers.

    An empty string (a token that decodes to nothing, e.g. half of a multi-byte character) is shown
    as ``∅`` so it is never an invisible box.
    """
    if text is None:
        return EMPTY_MARKER
    return text.translate(_TABLE) or EMPTY_MARKER
