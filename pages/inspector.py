"""Token inspector: read one rollout token by token, coloured by any per-token column, with the teacher's
and the student's top-K candidates side by side at every position, and the teacher's own tokenization.

The view is addressable: ``?run=KEY&step=N&sample=I&pos=P&color=COLUMN`` opens it at that token, and the
URL follows every choice, so a copied link reopens the same token.
"""

import numpy as np
import pandas as pd
import streamlit as st

from app import state, tables, widgets
from app.inert import md, plain_frame
from app.token_strip import (
    candidates,
    colourable_columns,
    cross_tokenizer,
    own_candidates,
    teacher_reading,
    teacher_strip_html,
    token_strip_html,
)
from opd_core.diagnostics import mismatch
from opd_core.token_text import visible

URL_SEEN = "_insp_url_seen"  # the deep link last applied, so it selects once and then the user's choices win

widgets.header("Token inspector", "Which tokens carry this run's update? Hover a token (or pick its position "
                                  "below) to compare what the teacher and the student would have said there.")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
steps = widgets.guarded(run, state.token_steps, run.path)
if not steps:
    widgets.no_tokens_notice(run)


def _int_param(name: str) -> int | None:
    try:
        return int(st.query_params.get(name))
    except (TypeError, ValueError):
        return None


# A deep link (?step=&sample=&pos=&color=) selects its token once; widgets are keyed by run/step/sample.
link = tuple(st.query_params.get(k) for k in ("run", "step", "sample", "pos", "color"))
apply_link = any(v is not None for v in link[1:]) and st.session_state.get(URL_SEEN) != link
link_step, link_sample, link_pos = _int_param("step"), _int_param("sample"), _int_param("pos")
if apply_link:
    st.session_state[URL_SEEN] = link
    if link_step in steps:
        st.session_state[f"insp_step:{run.key}"] = link_step
    elif link_step is not None:
        st.warning(f"Step {link_step} has no token records in this run; showing another step.",
                   icon=":material/link_off:")
    if link[4] is not None:
        st.session_state["insp_colour_wanted"] = link[4]
    st.session_state["insp_filters"] = []

c_step, c_sample, c_jump = st.columns([1, 1.6, 1.6])  # room for "1 (student prefix · wrong · did not stop)"
if st.session_state.get(f"insp_step:{run.key}") not in steps:
    st.session_state[f"insp_step:{run.key}"] = state.readable_step(run.path, steps)
step = c_step.selectbox("Step", steps, key=f"insp_step:{run.key}")
widgets.stop_if_step_damaged(run, step)
index = widgets.guarded(run, state.tokens, run.path, [step],
                        ["sample", "pos", "prefix_source", "correct", "is_eos", "masked", "prefix_wrong"])
config = widgets.guarded(run, state.config, run.path)
flags = tables.sample_flags(index, config.get("max_new_tokens"))
sources = dict(zip(index["sample"].astype(int), index.get("prefix_source", pd.Series(dtype=str))))
sample_key = f"insp_sample:{run.key}:{step}"
top = widgets.guarded(run, state.top_tokens, run.path, [step], n=10)

linked_filters = widgets.url_list("filter")  # ?filter=wrong,did not stop from a shared link, once
if linked_filters is not None:
    st.session_state["insp_filters"] = [f for f in linked_filters if f in tables.SAMPLE_FILTERS]
wanted = st.pills("Show only samples that are", list(tables.SAMPLE_FILTERS), selection_mode="multi",
                  key="insp_filters", help="Filters combine: 'wrong' + 'did not stop' = wrong answers that ran on.")
widgets.keep_list_in_url("filter", wanted or [])
samples = tables.filter_samples(flags, wanted)
if apply_link and link_sample is not None:
    if link_sample in samples:
        st.session_state[sample_key] = link_sample
    else:
        st.warning(f"Sample {link_sample} is not logged at step {step}.", icon=":material/link_off:")
if not samples:
    st.info("No sample at this step meets every chosen filter. Clear a filter or pick another step.",
            icon=":material/filter_alt_off:")
    st.stop()
if st.session_state.get(sample_key) not in samples:
    st.session_state[sample_key] = samples[0]


def _jump() -> None:
    choice = st.session_state.get(f"insp_jump:{run.key}:{step}")
    if choice is not None:
        st.session_state[sample_key] = int(top.iloc[choice]["sample"])
        st.session_state["insp_pos_wanted"] = int(top.iloc[choice]["pos"])


c_jump.selectbox(
    "Jump to a token with large |signal|", list(range(len(top))), index=None, key=f"insp_jump:{run.key}:{step}",
    placeholder="the largest |signal| at this step…", on_change=_jump,
    format_func=lambda i: (f"sample {int(top.iloc[i]['sample'])}, pos {int(top.iloc[i]['pos'])}: "
                           f"{visible(str(top.iloc[i].get('token', '')))} (signal {top.iloc[i]['signal']:.3g})"),
)
flag_by_sample = flags.set_index("sample") if len(flags) else flags


def _sample_label(s: int) -> str:
    verdict = ""
    if s in flag_by_sample.index:
        f = flag_by_sample.loc[s]
        verdict = " · correct" if f["correct"] else (" · wrong" if f["wrong"] else "")
        verdict += " · did not stop" if f["did not stop"] else ""
    return f"{s} ({sources.get(s, 'student')} prefix{verdict})"


sample = c_sample.selectbox("Sample", samples, key=sample_key, format_func=_sample_label)

rows = widgets.guarded(run, state.tokens, run.path, [step], state.INSPECTOR_COLUMNS,
                       filters=[("sample", "in", [int(sample)])])
rows = rows.sort_values("pos").reset_index(drop=True)
colour_options = colourable_columns(rows.columns)
if rows.empty or not colour_options:
    st.info("This sample has no token records to show.", icon=":material/info:")
    st.stop()
alignment = widgets.guarded(run, mismatch.load_alignment, run.path)

first = rows.iloc[0]
with st.container(border=True):
    if "prompt" in rows and isinstance(first.get("prompt"), str):
        st.markdown("**Prompt**")
        st.code(first["prompt"], language=None, wrap_lines=True)
    verdict = []
    if "correct" in rows and pd.notna(first.get("correct")):
        verdict.append(":green[:material/check_circle: correct]" if bool(first["correct"])
                       else ":red[:material/cancel: wrong]")
    if "reward" in rows and pd.notna(first.get("reward")):
        verdict.append(f"reward {widgets.fmt(first['reward'])}")
    if "format_ok" in rows and pd.notna(first.get("format_ok")):
        verdict.append("format ok" if bool(first["format_ok"]) else "format broken")
    st.markdown("**Grader's verdict:** " + (" · ".join(verdict) if verdict else "not graded"))

positions = rows["pos"].astype(int).tolist()
pos_key = f"insp_pos:{run.key}:{step}:{sample}"
wanted_pos = st.session_state.pop("insp_pos_wanted", None)
if apply_link and link_pos is not None:
    wanted_pos = link_pos
    if link_pos not in positions:
        st.warning(f"Position {link_pos} is not in sample {sample}.", icon=":material/link_off:")
if wanted_pos in positions:
    st.session_state[pos_key] = wanted_pos
wrong_pos = flag_by_sample.loc[sample, "first_wrong_pos"] if sample in flag_by_sample.index else None

o1, o2, o3, o4, o5 = st.columns([2, 1, 1, 1, 1.4], vertical_alignment="bottom")
wanted_colour = st.session_state.pop("insp_colour_wanted", None)
if wanted_colour in colour_options:
    st.session_state["insp_colour"] = wanted_colour
if st.session_state.get("insp_colour") not in colour_options:
    st.session_state["insp_colour"] = colour_options[0]
colour_by = o1.selectbox("Colour tokens by", colour_options, key="insp_colour")
top_k = o2.slider("Candidates on hover", 1, 20, 5, key="insp_topk")
hide_masked = o3.toggle("Hide masked", key="insp_hide_masked")
hide_special = o4.toggle("Hide special", key="insp_hide_special")
has_wrong = wrong_pos is not None and not pd.isna(wrong_pos) and int(wrong_pos) in positions
if has_wrong and o5.button("First wrong token", icon=":material/my_location:", key="insp_first_wrong",
                           help="Select the token after which the graded answer is already wrong."):
    st.session_state[pos_key] = int(wrong_pos)
if st.session_state.get(pos_key) not in positions:
    marked_here = top[top["sample"] == sample]["pos"].astype(int).tolist() if len(top) else []
    st.session_state[pos_key] = marked_here[0] if marked_here and marked_here[0] in positions else positions[0]
marked = top[top["sample"] == sample]["pos"].astype(int).tolist() if len(top) else []
selected_pos = int(st.session_state[pos_key])

st.html(token_strip_html(rows, colour_by, top_k=top_k, highlight=marked, hide_masked=hide_masked,
                         hide_special=hide_special, alignment=alignment, selected=selected_pos))
st.caption("Each box is one response token; its colour is the chosen column (diverging around 0 for signed "
           "columns). Struck-through tokens are masked (no signal), dashed ones are special tokens, purple "
           "outlines mark this step's largest |signal| and the black outline the selected position. Hover or "
           "focus a token for both models' candidates (the card docks at the top right of the window).")
cross = cross_tokenizer(alignment)
if cross and st.toggle("Show the teacher's tokenization of this response", value=True, key="insp_teacher_strip"):
    st.html(teacher_strip_html(rows, alignment, top_k=top_k, selected=selected_pos))
    st.caption("The teacher's own tokens for the same text, one box each, grouped under the student token they "
               "are credited to; a yellow group is where the two tokenizations differ (several teacher tokens, "
               "a different string, or none). Hover a group for the teacher's own top-K there, in its own "
               "vocabulary.")

st.subheader("Candidates at one position")
pos = st.selectbox("Position", positions, key=pos_key,
                   format_func=lambda p: f"{p}: {visible(str(rows.loc[rows['pos'] == p, 'token'].iloc[0]))}")
row = rows[rows["pos"] == pos].iloc[0]
reading = teacher_reading(row.to_dict(), alignment)
if reading.note:
    st.info(md(reading.note, None), icon=":material/translate:")
left, right = st.columns([3, 2])
with left:
    table = candidates(row)
    if reading.eos_pair is not None:
        table["teacher_token"] = [f"{visible(reading.eos_pair[1])} (as {visible(t)})" if t == reading.eos_pair[0]
                                  else visible(str(t)) for t in table["teacher_token"]]
    else:
        table["teacher_token"] = [visible(str(t)) if i is not None else "" for t, i in zip(table["teacher_token"],
                                                                                         table["teacher_id"])]
    table["student_token"] = [visible(str(t)) for t in table["student_token"]]
    st.dataframe(plain_frame(table.drop(columns=["teacher_id", "student_id"])), hide_index=True, width="stretch",
                 # widths that fit the left column at 1440 px with "</s> (as <|im_end|>)" whole
                 column_config={"rank": st.column_config.NumberColumn("#", width=36),
                                "teacher_token": st.column_config.TextColumn("teacher", width=165),
                                "student_token": st.column_config.TextColumn("student", width=90),
                                "teacher_prob": st.column_config.ProgressColumn("teacher p", min_value=0.0,
                                                                                max_value=1.0, format="%.3f",
                                                                                width=110),
                                "student_prob": st.column_config.ProgressColumn("student p", min_value=0.0,
                                                                                max_value=1.0, format="%.3f",
                                                                                width=110)})
    own = own_candidates(row)
    if len(own):
        st.markdown(f"**The teacher's own top-{len(own)}**, in its own vocabulary (unmapped), at the teacher "
                    f"position that scores this token" + (f" (its token {md(visible(reading.pieces[0]), None)})"
                                                          if reading.pieces else "") + ":")
        own["teacher_piece"] = [visible(str(t)) for t in own["teacher_piece"]]
        st.dataframe(plain_frame(own), hide_index=True, width="stretch",
                     column_config={"teacher_piece": "teacher's piece",
                                    "teacher_prob": st.column_config.ProgressColumn(
                                        "teacher p", min_value=0.0, max_value=1.0, format="%.3f")})
    elif cross:
        st.caption("This run did not log the teacher's own top-K (`teacher_own_topk`; written by runs made "
                   "since it was added).")
with right:
    details = {c: row[c] for c in ("token", "teacher_token", "signal", "log_ratio", "student_logp", "teacher_logp",
                                   "teacher_entropy", "teacher_rank", "drift", "masked", "is_special") if c in row}
    shown = [visible(str(v)) if k in ("token", "teacher_token") else ("yes" if v else "no") if isinstance(
        v, bool | np.bool_) else widgets.fmt(v) if isinstance(v, float | np.floating) else str(v)
        for k, v in details.items()]
    if reading.literal and "teacher_rank" in details:
        shown[list(details).index("teacher_rank")] = "n/a (scored as text)"
    st.dataframe(plain_frame(pd.DataFrame({"value": shown}, index=list(details))), width="stretch")
    if st.toggle("Raw vocabulary strings", key="insp_raw",
                 help="The token as the vocabulary spells it (byte-level markers and all), not as text reads."):
        raw = {c: repr(row[c]) for c in ("token_raw", "token", "teacher_token") if c in row}
        st.dataframe(plain_frame(pd.DataFrame({"raw": list(raw.values())}, index=list(raw))), width="stretch")
st.caption("Left: the teacher's and the student's K most likely next tokens at this prefix, with probabilities; "
           "the sampled token is what the student actually wrote (on a cross-tokenizer run the first table's "
           "teacher column is mapped onto the student's vocabulary; the second lists the teacher's own pieces). "
           "Right: the logged values at this position.")

# The URL follows the view, so the link below (or the address bar) reopens exactly this token.
st.query_params.update({"run": run.key, "step": str(step), "sample": str(sample), "pos": str(pos),
                        "color": colour_by})
st.session_state[URL_SEEN] = (run.key, str(step), str(sample), str(pos), colour_by)
with st.popover("Copy a link to this token", icon=":material/link:"):
    query = f"?run={run.key}&step={step}&sample={sample}&pos={pos}&color={colour_by}"
    base = getattr(getattr(st, "context", None), "url", None) or ""
    st.code((base.split("?")[0] if base else "") + query, language=None)
    st.caption("Use the copy button of the box; the link opens the Token inspector at this token.")

with st.expander("All token records of this sample"):
    scalar = [c for c in rows.columns if not c.endswith(("_ids", "_logps", "_tokens", "_pieces", "_topk"))
              and c not in ("prompt", "response_text")]
    shown_rows = rows[scalar].copy()
    for c in ("token", "teacher_token"):
        if c in shown_rows:
            shown_rows[c] = shown_rows[c].map(lambda v: visible(str(v)))
    st.dataframe(plain_frame(shown_rows), hide_index=True, width="stretch")
