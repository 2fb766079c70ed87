"""How untrusted text (anything read from a run directory or produced by a model) reaches the page inert.

Run files come from other machines and other trainers; token text comes from a model. Streamlit renders
Markdown in titles, captions, ``st.markdown``, metric labels and alerts, and Markdown can fetch images
(``![x](http://...)``), open code spans, start LaTeX (``$$``) or draw coloured text. Every such string
goes through :func:`md` before it is put into a Markdown sink, and through :func:`html_text` before an
HTML sink; plain-text widgets (``st.text``, ``st.code``, dataframes) need only :func:`plain`.
"""

from __future__ import annotations

import html
import re

# Bidirectional overrides/isolates reorder what a reader sees (an "RTL override" attack); C0/C1 controls
# (NUL included) have no glyph. Each is replaced by a visible marker naming its code point.
_INVISIBLE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e"
                        "\u2066-\u2069\ufeff]")
# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping all of them is the
# only way to be sure none starts a link, image, code span, emphasis, heading, table, math or directive.
_AUTOLINK = re.compile(r"(?i)(?:\\:(?=\\/)|www(?=\\\.)|\\@)")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>$~:&\"'=^@%/;?,])")


def plain(text: object, limit: int | None = None) -> str:
    """The text as one safe line of plain text: control and bidi-override characters made visible.

    ``limit`` cuts very long strings (an error message of 10,000 characters) and says so.
    """
    s = "" if text is None else str(text)
    s = _INVISIBLE.sub(lambda m: f"⟨U+{ord(m.group()):04X}⟩", s)
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"… ({len(s) - limit} more characters)"
    return s


def md(text: object, limit: int | None = 300) -> str:
    """The text for a Markdown sink: shown literally, never a link, image, code span, formula or markup."""
    s = plain(text, limit)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    # GitHub-flavoured Markdown turns bare URLs and e-mail addresses into links even when their punctuation
    # is escaped; a zero-width space after the scheme, "www" or "@" keeps them plain text.
    s = _AUTOLINK.sub(lambda m: m.group() + "\u200b", s)
    # Newlines would start new Markdown blocks (headings, lists); a line break is enough to read them.
    return s.replace("\r", " ").replace("\n", " ⏎ ")


def html_text(text: object, limit: int | None = None) -> str:
    """The text for an HTML sink (``st.html``): escaped, quotes included."""
    return html.escape(plain(text, limit), quote=True)


TEXT_TABLE_CSS = ("<style>.opd-text-table{border-collapse:collapse;width:100%;font-size:0.85rem;}"
                  ".opd-text-table th,.opd-text-table td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;"
                  "vertical-align:top;overflow-wrap:anywhere;}.opd-text-table th{background:#f9fafb;}</style>")


def text_table_html(frame) -> str:  # noqa: ANN001 - a pandas DataFrame of text
    """A table of untrusted text for ``st.html`` that wraps inside its column (long paths and strings
    without spaces break anywhere), every cell escaped: no Markdown, math or markup is ever rendered."""
    head = "".join(f"<th>{html_text(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html_text(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"{TEXT_TABLE_CSS}<table class='opd-text-table'><tr>{head}</tr>{body}</table>"


def plain_frame(frame):  # noqa: ANN001, ANN201 - a pandas DataFrame in, a copy out
    """A table for a plain-text widget (``st.dataframe``): every string cell through :func:`plain`, so bidi
    overrides and control characters in run data cannot reorder or hide what a cell shows."""
    import pandas as pd

    out = frame.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_bool_dtype(out[column])):
            out[column] = out[column].map(lambda v: plain(v) if isinstance(v, str) else v).astype(object)
    if not pd.api.types.is_numeric_dtype(out.index):
        out.index = [plain(i) if isinstance(i, str) else i for i in out.index]
    return out
