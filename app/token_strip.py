"""Render a response as a strip of coloured tokens whose hover card shows both models' top-K candidates.

Token text is untrusted (a model can emit ``<script>``), so every string that reaches the HTML goes
through :func:`html.escape`; the hover cards are pure CSS (``:hover`` / ``:focus``), so no script is
needed and none is allowed. Output is a plain HTML string for ``st.html``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from plotly.colors import sample_colorscale

from app.inert import html_text
from opd_core.token_text import visible

# Columns whose sign means something (positive = the teacher likes the token more than the student).
SIGNED_COLUMNS = frozenset({"signal", "log_ratio", "token_loss", "drift", "reward"})
BOOLEAN_COLOURS = {True: "#f28e2b", False: "#e8eaed"}
MISSING_COLOUR = "#ffffff"
PIECES_CSS = """
<style>
.opd-pieces{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.88rem;line-height:2;}
.opd-piece{display:inline-block;white-space:pre;padding:0 3px;margin:1px 2px 1px 0;border:1px solid #d1d5db;
  border-radius:3px;background:#f9fafb;}
.opd-piece-diff{border-color:#d62728;border-width:2px;}
.opd-piece-label{display:inline-block;min-width:5.5rem;color:#374151;font-family:sans-serif;font-size:0.8rem;}
</style>
"""

STRIP_CSS = """
<style>
.opd-strip{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.92rem;line-height:2.1;
  padding:0.4rem 0.2rem;}
.opd-tok{position:relative;display:inline-block;white-space:pre;padding:0 2px;margin:1px 1px;border-radius:3px;
  cursor:pointer;outline:none;border:1px solid transparent;}
.opd-tok:hover,.opd-tok:focus{border-color:#1f2937;}
.opd-tok.opd-masked .opd-txt{opacity:0.45;text-decoration:line-through;}
.opd-tok.opd-special{border-style:dashed;border-color:#6b7280;}
.opd-tok.opd-top{box-shadow:0 0 0 2px #7c3aed;}
.opd-tok.opd-selected{outline:3px solid #111827;outline-offset:1px;}
.opd-tip{visibility:hidden;opacity:0;position:fixed;z-index:1000;right:1rem;top:4rem;min-width:21rem;
  max-width:34rem;max-height:80vh;overflow:auto;
  background:#ffffff;color:#111827;border:1px solid #d1d5db;border-radius:6px;padding:0.45rem 0.55rem;
  box-shadow:0 6px 18px rgba(0,0,0,0.18);font-size:0.78rem;line-height:1.35;white-space:normal;}
.opd-tip .opd-note{margin-top:0.3rem;padding:0.25rem 0.4rem;background:#fef3c7;border-radius:4px;}
.opd-tip .opd-pieces-inline span{display:inline-block;border:1px solid #9ca3af;border-radius:3px;padding:0 3px;
  margin-right:2px;white-space:pre;}
.opd-tok:hover .opd-tip,.opd-tok:focus .opd-tip{visibility:visible;opacity:1;}
.opd-tip table{border-collapse:collapse;width:100%;margin-top:0.3rem;}
.opd-tip th,.opd-tip td{padding:1px 6px;text-align:left;border-bottom:1px solid #f3f4f6;white-space:pre;}
.opd-tip td.num{text-align:right;font-variant-numeric:tabular-nums;}
.opd-tip tr.opd-hit td{font-weight:700;}
.opd-tip .opd-own{margin-top:0.35rem;padding-top:0.25rem;border-top:1px solid #d1d5db;}
.opd-legend{display:flex;align-items:center;gap:0.5rem;font-size:0.8rem;color:#374151;margin:0.2rem 0 0.4rem;}
.opd-legend .bar{height:0.7rem;width:14rem;border-radius:3px;border:1px solid #d1d5db;}
.opd-legend .chip{display:inline-block;width:0.9rem;height:0.9rem;border-radius:3px;vertical-align:middle;
  border:1px solid #d1d5db;margin-right:0.2rem;}
</style>
"""


@dataclass(frozen=True)
class ColorScale:
    """How values of one column become colours: kind is 'diverging', 'sequential' or 'boolean'."""

    column: str
    kind: str
    lo: float = 0.0
    hi: float = 1.0
    colorscale: str = "YlOrRd"

    def colours(self, values: pd.Series) -> list[str]:
        """One CSS colour per value (white for missing values)."""
        if self.kind == "boolean":
            return [MISSING_COLOUR if pd.isna(v) else BOOLEAN_COLOURS[bool(v)] for v in values]
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        span = self.hi - self.lo if self.hi > self.lo else 1.0
        t = np.clip((x - self.lo) / span, 0.0, 1.0)
        ok = np.isfinite(t)
        sampled = sample_colorscale(self.colorscale, t[ok].tolist()) if ok.any() else []
        out = [MISSING_COLOUR] * len(t)
        for i, colour in zip(np.flatnonzero(ok), sampled):
            out[i] = colour
        return out


def color_scale(values: pd.Series, column: str, clip_quantile: float = 0.95) -> ColorScale:
    """Choose a legend for a column: diverging around 0 when it has a sign, robust to a few huge values.

    The range is clipped at the ``clip_quantile`` of |value| so one -58 at EOS does not wash every
    other token out to white; clipped tokens show the extreme colour and their exact value on hover.
    """
    if values.dtype == bool or column.startswith(("is_", "in_")) or column in ("masked", "prefix_wrong", "correct"):
        return ColorScale(column, "boolean")
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return ColorScale(column, "sequential")
    signed = column in SIGNED_COLUMNS or (x.min() < 0 < x.max())
    if signed:
        m = float(np.quantile(np.abs(x), clip_quantile)) or float(np.abs(x).max()) or 1.0
        return ColorScale(column, "diverging", -m, m, "RdBu")
    lo, hi = float(np.quantile(x, 1 - clip_quantile)), float(np.quantile(x, clip_quantile))
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1.0
    return ColorScale(column, "sequential", lo, hi, "YlOrRd")


def _text_colour(background: str) -> str:
    """Black or white text, whichever reads better on the background."""
    if background.startswith("#"):
        r, g, b = (int(background[i:i + 2], 16) for i in (1, 3, 5))
    else:
        r, g, b = (float(v) for v in background[background.index("(") + 1:-1].split(","))
    return "#111827" if (0.299 * r + 0.587 * g + 0.114 * b) > 140 else "#ffffff"


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return str(value)


def display_token(text: object) -> str:
    """A token's text as people read it (``opd_core.token_text.visible``), control characters named, escaped."""
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return html_text(visible(s))


def pieces_html(pieces: Sequence[object], other: Sequence[object] | None = None, label: str = "") -> str:
    """One tokenization as a row of separate boxes (never joined with a separator, so a piece that is
    itself " | " reads as one box); pieces absent from ``other`` (the other side's tokenization) are
    outlined, which is where the two tokenizers cut the text differently."""
    others = {str(o) for o in other} if other is not None else None
    boxes = []
    for piece in pieces:
        differs = others is not None and str(piece) not in others
        boxes.append(f"<span class='opd-piece{' opd-piece-diff' if differs else ''}'>{display_token(piece)}</span>")
    head = f"<span class='opd-piece-label'>{html.escape(label)}</span>" if label else ""
    return f"{PIECES_CSS}<div class='opd-pieces'>{head}{''.join(boxes) or '<i>none</i>'}</div>"


def _as_list(value: object) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def _candidate_rows(row: dict | pd.Series, k: int | None) -> list[tuple]:
    """(rank, teacher token, teacher p, student token, student p, teacher id, student id) rows."""
    get = row.get
    cols = {}
    for who in ("teacher", "student"):
        ids = _as_list(get(f"{who}_topk_ids"))
        logps = _as_list(get(f"{who}_topk_logps"))
        names = _as_list(get(f"{who}_topk_tokens")) or [f"#{int(i)}" for i in ids]
        n = min(len(names), len(logps)) if logps else len(names)
        cols[who] = (names[:n], [math.exp(float(lp)) for lp in logps[:n]], ids[:n])
    depth = max(len(cols["teacher"][0]), len(cols["student"][0]))
    if k is not None:
        depth = min(depth, k)

    def at(seq: list, i: int, fill: object) -> object:
        return seq[i] if i < len(seq) else fill

    t_names, t_probs, t_ids = cols["teacher"]
    s_names, s_probs, s_ids = cols["student"]
    nan = float("nan")
    return [(i + 1, at(t_names, i, ""), at(t_probs, i, nan), at(s_names, i, ""), at(s_probs, i, nan),
             at(t_ids, i, None), at(s_ids, i, None)) for i in range(depth)]


CANDIDATE_COLUMNS = ["rank", "teacher_token", "teacher_prob", "student_token", "student_prob", "teacher_id",
                     "student_id"]


def candidates(row: pd.Series | dict, k: int | None = None) -> pd.DataFrame:
    """The teacher's and the student's top-K candidates at one position, side by side, with probabilities.

    Candidate strings come from ``*_topk_tokens`` when the engine logged them, ids otherwise;
    probabilities are exp(log-prob).
    """
    return pd.DataFrame(_candidate_rows(row, k), columns=CANDIDATE_COLUMNS)


def own_topk(row: dict | pd.Series) -> list[tuple[str, float]]:
    """The teacher's own top-K at a token (``teacher_own_topk``: its vocabulary, never mapped onto the
    student's) as (its piece's text, probability) pairs, best first; [] when the run did not log it."""
    entries = row.get("teacher_own_topk")
    if entries is None or isinstance(entries, str | float | bytes):
        return []
    out = []
    for e in entries:
        if isinstance(e, dict) and e.get("logp") is not None and math.isfinite(float(e["logp"])):
            out.append((str(e.get("text") or ""), math.exp(float(e["logp"]))))
    return out


def own_candidates(row: dict | pd.Series, k: int | None = None) -> pd.DataFrame:
    """The teacher's own top-K at one position as a table (rank, the teacher's piece, p), in its own words."""
    pairs = own_topk(row)[:k]
    return pd.DataFrame([(i + 1, text, p) for i, (text, p) in enumerate(pairs)],
                        columns=["rank", "teacher_piece", "teacher_prob"])


@dataclass(frozen=True)
class TeacherReading:
    """How the teacher saw one student token: its own pieces of the same text, and whether the number it
    gave is the score of a literal string (a special token it never uses) rather than a comparable one."""

    pieces: tuple[str, ...]
    literal: bool  # the student's special token reached the teacher as plain text it never emits
    note: str  # plain text, for the hover card and the candidates panel ('' when nothing to say)
    eos_pair: tuple[str, str] | None  # (student EOS, teacher EOS) when they differ: candidates are mapped
    own: tuple[tuple[str, float], ...] = ()  # the teacher's own top-K there, in its words (own_topk)


def cross_tokenizer(alignment: dict | None) -> bool:
    """True when the run's two tokenizers differ (different vocabularies, or different EOS strings)."""
    if not isinstance(alignment, dict):
        return False
    if alignment.get("shared_vocabulary") is False:
        return True
    return alignment.get("eos_a") is not None and alignment.get("eos_a") != alignment.get("eos_b")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _pieces(row: dict) -> tuple[str, ...]:
    pieces = row.get("teacher_pieces")
    if pieces is not None and not isinstance(pieces, str | float):
        return tuple(str(p) for p in pieces)
    teacher_read = row.get("teacher_token")
    return (teacher_read,) if isinstance(teacher_read, str) and teacher_read else ()


def teacher_reading(row: dict, alignment: dict | None) -> TeacherReading:
    """What the teacher did with this token (see :class:`TeacherReading`); plain facts, no markup."""
    pieces = _pieces(row)
    if not cross_tokenizer(alignment):
        return TeacherReading(pieces, False, "", None)
    eos_a, eos_b = alignment.get("eos_a"), alignment.get("eos_b")
    eos_pair = (str(eos_a), str(eos_b)) if eos_a is not None and eos_a != eos_b else None
    token = row.get("token")
    special = bool(row.get("is_special", False)) or bool(row.get("is_eos", False))
    masked = bool(row.get("masked", False))
    own = tuple(own_topk(row))
    eos_literal = eos_pair is not None and token == eos_pair[0] and (
        not pieces or pieces[0] == token or len(pieces) > 1)
    literal = special and not masked and (eos_literal or len(pieces) > 1)
    text = ' + '.join(visible(p) for p in pieces) or visible(str(token))
    notes = []
    if literal:
        if eos_literal:
            notes.append(f"The teacher never ends a reply with {visible(str(token))} (its end token is "
                         f"{visible(eos_pair[1])}):")
        notes.append(f"it scored the student's special token {visible(str(token))} as the literal text "
                     f"{text}, a string this teacher never uses, log p "
                     f"{_fmt(row.get('teacher_logp'))}. That number is not comparable with the student's.")
        if own:
            notes.append("What the teacher expected there, in its own vocabulary: " + ", ".join(
                f"{visible(t)} p {_fmt(p)}" for t, p in own[:3]) + ".")
        notes[0] = notes[0][0].upper() + notes[0][1:]
    elif row.get("masked_reason") == "unaligned" or (row.get("aligned") is False and _missing(row.get("teacher_logp"))):
        notes.append("No teacher token ends exactly where this token ends (the teacher's pieces cross its edge), "
                     "so the teacher gives it no number and it is masked.")
    elif len(pieces) > 1:
        notes.append(f"The teacher reads this text as {len(pieces)} tokens of its own; its log p is their sum.")
    elif pieces and pieces[0] != token:
        notes.append(f"The teacher read a different string here: {visible(pieces[0])}.")
    if eos_pair is not None:
        notes.append(f"The teacher column of the candidates is its distribution mapped onto the student's "
                     f"vocabulary by meaning (its {visible(eos_pair[1])} is listed as {visible(eos_pair[0])})"
                     + ("; its own top-K, unmapped, is listed separately." if own else "."))
    return TeacherReading(pieces, literal, " ".join(notes), eos_pair, own)


def own_topk_html(reading: TeacherReading, k: int) -> str:
    """The teacher's own top-K as a small table for a hover card: its pieces as text, with p; the piece it
    actually scored (the first of this token's teacher pieces) in bold."""
    if not reading.own:
        return ""
    scored = reading.pieces[0] if reading.pieces else None
    rows = "".join(
        f"<tr class='{'opd-hit' if text == scored else ''}'><td>{i + 1}</td><td>{display_token(text)}</td>"
        f"<td class='num'>{_fmt(p)}</td></tr>" for i, (text, p) in enumerate(reading.own[:k]))
    at = f" before its token {display_token(scored)}" if scored is not None else ""
    return (f"<div class='opd-own'><b>Teacher's own top-{min(k, len(reading.own))}</b> (its vocabulary, unmapped"
            f"{at})<table><tr><th>#</th><th>teacher piece</th><th>p</th></tr>{rows}</table></div>")


def _tooltip(row: dict, column: str, k: int, alignment: dict | None = None) -> str:
    sampled_id = row.get("token_id")
    reading = teacher_reading(row, alignment)
    rank = row.get("teacher_rank")
    rank = ("n/a (scored as text)" if reading.literal else
            "n/a" if _missing(rank) or rank == 0 else _fmt(rank))  # 0 = unknown (no 1:1 teacher position)
    head = (f"<b>pos {_fmt(row.get('pos'))}</b> · token <b>{display_token(row.get('token'))}</b>"
            f" · {html.escape(column)} = <b>{_fmt(row.get(column))}</b><br>"
            f"log p student {_fmt(row.get('student_logp'))} · teacher {_fmt(row.get('teacher_logp'))}"
            f" · teacher rank {rank}")
    if reading.pieces and (len(reading.pieces) > 1 or reading.pieces[0] != row.get("token")
                           or reading.literal):
        head += ("<br>teacher's tokens: <span class='opd-pieces-inline'>"
                 + "".join(f"<span>{display_token(p)}</span>" for p in reading.pieces) + "</span>")
    if reading.note:
        head += f"<div class='opd-note'>{html_text(reading.note)}</div>"
    flags = [name for name in ("masked", "is_special") if bool(row.get(name, False))]
    if flags:
        head += "<br>" + ", ".join(html.escape(f) for f in flags)
    own = own_topk_html(reading, k)
    cand = _candidate_rows(row, k)
    if not cand:
        return head + (own or "<br><i>no top-K candidates logged</i>")
    body = []
    any_teacher = any(t_id is not None for _, _, _, _, _, t_id, _ in cand)
    for rank, t_tok, t_p, s_tok, s_p, t_id, s_id in cand:
        hit = sampled_id is not None and (t_id == sampled_id or s_id == sampled_id)
        t_text = display_token(t_tok) if any_teacher else ""  # none logged here: blank, not a column of ∅
        if reading.eos_pair is not None and t_tok == reading.eos_pair[0]:
            t_text = f"{display_token(reading.eos_pair[1])} <i>(as {display_token(t_tok)})</i>"
        body.append(
            f"<tr class='{'opd-hit' if hit else ''}'><td>{rank}</td>"
            f"<td>{t_text}</td><td class='num'>{_fmt(t_p, 2) if any_teacher else ''}</td>"
            f"<td>{display_token(s_tok)}</td><td class='num'>{_fmt(s_p, 2)}</td></tr>"
        )
    teacher_head = ("teacher (mapped)" if any_teacher else "teacher (none: not 1:1)") if own else "teacher"
    return (head + f"<table><tr><th>#</th><th>{teacher_head}</th><th>p</th><th>student</th><th>p</th></tr>"
            + "".join(body) + "</table>" + own)


def legend_html(scale: ColorScale) -> str:
    """A small legend for a colour scale (a gradient bar with its ends, or two chips for yes/no)."""
    name = html.escape(scale.column)
    if scale.kind == "boolean":
        return (f"<div class='opd-legend'><b>{name}</b>"
                f"<span><span class='chip' style='background:{BOOLEAN_COLOURS[True]}'></span>yes</span>"
                f"<span><span class='chip' style='background:{BOOLEAN_COLOURS[False]}'></span>no</span></div>")
    stops = sample_colorscale(scale.colorscale, [i / 8 for i in range(9)])
    gradient = f"linear-gradient(to right,{','.join(stops)})"
    middle = "0" if scale.kind == "diverging" else _fmt((scale.lo + scale.hi) / 2)
    note = " red: teacher gives the token less than the student; blue: more" if scale.column in (
        "signal", "log_ratio") else ""
    return (f"<div class='opd-legend'><b>{name}</b><span>{_fmt(scale.lo)}</span>"
            f"<span class='bar' style='background:{gradient}'></span><span>{_fmt(scale.hi)}</span>"
            f"<span>(centre {middle}; values beyond the ends are clipped){html.escape(note)}</span></div>")


def token_strip_html(
    tokens: pd.DataFrame,
    color_by: str,
    *,
    top_k: int = 5,
    highlight: Iterable[int] = (),
    hide_masked: bool = False,
    hide_special: bool = False,
    scale: ColorScale | None = None,
    legend: bool = True,
    alignment: dict | None = None,
    selected: int | None = None,
) -> str:
    """HTML for one response: tokens in ``pos`` order, coloured by ``color_by``, each with a hover card.

    ``highlight`` marks positions (e.g. the largest |signal|) with an outline; masked and special
    tokens are struck through / dashed, or left out with ``hide_masked`` / ``hide_special``.
    """
    if color_by not in tokens.columns:
        raise ValueError(f"column {color_by!r} is not in the token records; pick one of {sorted(tokens.columns)}")
    df = tokens.sort_values("pos") if "pos" in tokens else tokens
    if hide_masked and "masked" in df:
        df = df[~df["masked"].astype(bool)]
    if hide_special and "is_special" in df:
        df = df[~df["is_special"].astype(bool)]
    scale = scale or color_scale(tokens[color_by], color_by)
    colours = scale.colours(df[color_by])
    marked = {int(p) for p in highlight}
    spans = []
    for row, colour in zip(df.to_dict("records"), colours):
        classes = ["opd-tok"]
        if bool(row.get("masked", False)):
            classes.append("opd-masked")
        if bool(row.get("is_special", False)):
            classes.append("opd-special")
        pos = int(row["pos"]) if pd.notna(row.get("pos")) else -1
        if pos in marked:
            classes.append("opd-top")
        if selected is not None and pos == selected:
            classes.append("opd-selected")
        spans.append(
            f"<span class='{' '.join(classes)}' tabindex='0' data-pos='{pos}' "
            f"style='background:{colour};color:{_text_colour(colour)}'><span class='opd-txt'>"
            f"{display_token(row.get('token'))}</span>"
            f"<span class='opd-tip'>{_tooltip(row, color_by, top_k, alignment)}</span></span>"
        )
    parts = [STRIP_CSS]
    if legend:
        parts.append(legend_html(scale))
    parts.append(f"<div class='opd-strip'>{''.join(spans) or '<i>no tokens to show</i>'}</div>")
    return "".join(parts)


def colourable_columns(columns: Sequence[str]) -> list[str]:
    """Per-token columns worth colouring by, in a sensible order, limited to those present."""
    preferred = ["signal", "log_ratio", "teacher_entropy", "teacher_rank", "teacher_top1_prob", "drift",
                 "tokens_since_off_support", "student_logp", "teacher_logp", "student_entropy", "token_loss",
                 "student_support_mass", "topk_overlap", "masked", "is_special", "in_teacher_topk",
                 "in_student_topp", "prefix_wrong"]
    present = set(columns)
    return [c for c in preferred if c in present]


def _teacher_tip(row: dict, alignment: dict | None, k: int) -> str:
    """The hover card of one group of the teacher strip: the student token, the teacher's pieces and number,
    the plain note (literal string?) and the teacher's own top-K in its own words."""
    reading = teacher_reading(row, alignment)
    head = (f"<b>pos {_fmt(row.get('pos'))}</b> · student token <b>{display_token(row.get('token'))}</b><br>"
            "teacher's tokens: <span class='opd-pieces-inline'>"
            + ("".join(f"<span>{display_token(p)}</span>" for p in reading.pieces) or "<i>none</i>")
            + f"</span> · teacher log p {_fmt(row.get('teacher_logp'))}")
    if reading.note:
        head += f"<div class='opd-note'>{html_text(reading.note)}</div>"
    return head + (own_topk_html(reading, k) or "<br><i>the teacher's own top-K was not logged here</i>")


def teacher_strip_html(tokens: pd.DataFrame, alignment: dict | None = None, top_k: int = 5,
                       selected: int | None = None) -> str:
    """The teacher's own tokenization of the same response: its pieces per student token, one box each,
    grouped under the student token they are credited to (a group of several = a multi-token span). Each
    group's hover card shows the teacher's own top-K (its vocabulary) at the position scoring that token."""
    df = tokens.sort_values("pos") if "pos" in tokens else tokens
    groups = []
    for row in df.to_dict("records"):
        pieces = _pieces(row)
        boxes = "".join(f"<span class='opd-piece'>{display_token(p)}</span>" for p in pieces) or (
            "<span class='opd-piece opd-piece-diff'>∅</span>")
        differs = len(pieces) != 1 or pieces[0] != row.get("token")
        pos = int(row["pos"]) if pd.notna(row.get("pos")) else -1
        classes = "opd-group" + (" opd-group-diff" if differs else "") + (
            " opd-selected" if selected is not None and pos == selected else "")
        groups.append(f"<span class='{classes}' tabindex='0' data-pos='{pos}'>{boxes}"
                      f"<span class='opd-tip'>{_teacher_tip(row, alignment, top_k)}</span></span>")
    css = ("<style>.opd-group{position:relative;display:inline-block;margin:1px 3px 1px 0;padding:1px;"
           "border-radius:4px;cursor:pointer;outline:none;border:1px solid transparent;}"
           ".opd-group:hover,.opd-group:focus{border-color:#1f2937;}"
           ".opd-group.opd-selected{outline:3px solid #111827;outline-offset:1px;}"
           ".opd-group:hover .opd-tip,.opd-group:focus .opd-tip{visibility:visible;opacity:1;}"
           ".opd-group-diff{background:#fde68a;}</style>")
    body = ''.join(groups) or '<i>no teacher tokenization logged</i>'
    return f"{STRIP_CSS}{PIECES_CSS}{css}<div class='opd-pieces'>{body}</div>"
