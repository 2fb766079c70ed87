"""Token inspector: read one rollout token by token, coloured by any per-token column, with the teacher's
and the student's top-K candidates side by side at every position."""

import pandas as pd
import streamlit as st

from app import state, widgets
from app.token_strip import candidates, colourable_columns, token_strip_html

widgets.header("Token inspector", "Which tokens carry this run's update? Hover a token (or pick its position "
                                  "below) to compare what the teacher and the student would have said there.")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
steps = widgets.guarded(run, state.token_steps, run.path)
if not steps:
    widgets.no_tokens_notice(run)

c_step, c_sample, c_jump = st.columns([1, 1, 2])
step = c_step.selectbox("Step", steps, index=len(steps) - 1, key=f"insp_step:{run.key}")
index = widgets.guarded(run, state.tokens, run.path, [step], ["sample", "prefix_source", "correct"])
index = index.drop_duplicates("sample")
samples = sorted(int(s) for s in index["sample"])
sources = dict(zip(index["sample"].astype(int), index.get("prefix_source", pd.Series(dtype=str))))
sample_key = f"insp_sample:{run.key}:{step}"
top = widgets.guarded(run, state.top_tokens, run.path, [step], n=10)


def _jump() -> None:
    choice = st.session_state.get(f"insp_jump:{run.key}:{step}")
    if choice is not None:
        st.session_state[sample_key] = int(top.iloc[choice]["sample"])


c_jump.selectbox(
    "Jump to a token with large |signal|", list(range(len(top))), index=None, key=f"insp_jump:{run.key}:{step}",
    placeholder="the largest |signal| at this step…", on_change=_jump,
    format_func=lambda i: (f"sample {int(top.iloc[i]['sample'])}, pos {int(top.iloc[i]['pos'])}: "
                           f"{top.iloc[i].get('token', '')!r} (signal {top.iloc[i]['signal']:.3g})"),
)
sample = c_sample.selectbox("Sample", samples, key=sample_key,
                            format_func=lambda s: f"{s} ({sources.get(s, 'student')} prefix)")

rows = widgets.guarded(run, state.tokens, run.path, [step], state.INSPECTOR_COLUMNS,
                       filters=[("sample", "in", [int(sample)])])
rows = rows.sort_values("pos").reset_index(drop=True)
colour_options = colourable_columns(rows.columns)
if rows.empty or not colour_options:
    st.info("This sample has no token records to show.", icon=":material/info:")
    st.stop()

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

o1, o2, o3, o4 = st.columns([2, 1, 1, 1])
colour_by = o1.selectbox("Colour tokens by", colour_options, key="insp_colour")
top_k = o2.slider("Candidates on hover", 1, 20, 5, key="insp_topk")
hide_masked = o3.toggle("Hide masked", key="insp_hide_masked")
hide_special = o4.toggle("Hide special", key="insp_hide_special")
marked = top[top["sample"] == sample]["pos"].astype(int).tolist() if len(top) else []
st.html(token_strip_html(rows, colour_by, top_k=top_k, highlight=marked, hide_masked=hide_masked,
                         hide_special=hide_special))
st.caption("Each box is one response token; its colour is the chosen column (diverging around 0 for signed "
           "columns). Struck-through tokens are masked (no signal), dashed ones are special tokens, and purple "
           "outlines mark this step's largest |signal|. Hover or focus a token for both models' candidates.")

st.subheader("Candidates at one position")
positions = rows["pos"].astype(int).tolist()
default_pos = marked[0] if marked and marked[0] in positions else positions[0]
pos = st.selectbox("Position", positions, index=positions.index(default_pos), key=f"insp_pos:{run.key}:{step}:{sample}",
                   format_func=lambda p: f"{p}: {rows.loc[rows['pos'] == p, 'token'].iloc[0]!r}")
row = rows[rows["pos"] == pos].iloc[0]
left, right = st.columns([3, 2])
with left:
    table = candidates(row)
    st.dataframe(table.drop(columns=["teacher_id", "student_id"]), hide_index=True, width="stretch",
                 column_config={"teacher_prob": st.column_config.ProgressColumn("teacher p", min_value=0.0,
                                                                                max_value=1.0, format="%.3f"),
                                "student_prob": st.column_config.ProgressColumn("student p", min_value=0.0,
                                                                                max_value=1.0, format="%.3f")})
with right:
    details = {c: row[c] for c in ("token", "teacher_token", "signal", "log_ratio", "student_logp", "teacher_logp",
                                   "teacher_entropy", "teacher_rank", "drift", "masked", "is_special") if c in row}
    st.dataframe(pd.DataFrame({"value": [str(v) for v in details.values()]}, index=list(details)), width="stretch")
st.caption("Left: the teacher's and the student's K most likely next tokens at this prefix, with probabilities; "
           "the sampled token is what the student actually wrote. Right: the logged values at this position.")

with st.expander("All token records of this sample"):
    scalar = [c for c in rows.columns if not c.endswith(("_ids", "_logps", "_tokens")) and c not in ("prompt",
                                                                                                      "response_text")]
    st.dataframe(rows[scalar], hide_index=True, width="stretch")
