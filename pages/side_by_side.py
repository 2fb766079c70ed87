"""Side by side: two runs (or two steps of one run) answering the same prompt, as token strips coloured by
the same column on the same scale, or by their per-token difference."""

import pandas as pd
import streamlit as st

from app import state, tables, widgets
from app.inert import md, plain_frame
from app.token_strip import color_scale, colourable_columns, token_strip_html
from opd_core.token_text import visible

# What each side's selections are called in the URL (?run=&step=&sample= for A, *_b for B).
URL_NAMES = {"A": {"step": "step", "sample": "sample"}, "B": {"step": "step_b", "sample": "sample_b"}}

widgets.header("Side by side", "Did the fix change what the student writes? Two rollouts of the same prompt, "
                               "token by token, on one colour scale.")
refs = widgets.runs_or_notice()
by_key = {r.key: r for r in refs}
# Side A opens on the run picked on the other pages (the choice follows the user), else the default run.
picked = st.session_state.get(widgets.RUN_STATE)
first = by_key[picked] if picked in by_key else widgets.default_run(refs)
baseline_next = [r for r in refs if r.key != first.key]
widgets.url_choice("run", "sbs_a", list(by_key))
widgets.url_choice("run_b", "sbs_b", list(by_key))
st.session_state.setdefault("sbs_a", first.key)
st.session_state.setdefault("sbs_b", next((r.key for r in baseline_next if r.run_id == "masked-sampled-token"),
                                          (baseline_next or refs)[0].key))


def _side(column, name: str, run_key: str) -> tuple:
    """One side's run and step pickers; returns (run, step) or stops the page with the run's problem."""
    run_key = column.selectbox(f"Run {name}", list(by_key), key=f"sbs_{name.lower()}",
                               format_func=lambda k: by_key[k].label)
    run = by_key[run_key]
    steps = widgets.guarded(run, state.token_steps, run.path)
    if not steps:
        column.info(f"{md(run.label)} has no token records yet.", icon=":material/hourglass:")
        st.stop()
    key = f"sbs_step_{name.lower()}:{run.key}"
    if st.session_state.get(key) not in steps:
        st.session_state[key] = state.readable_step(run.path, steps)
    param = URL_NAMES[name]["step"]
    widgets.url_choice(param, key, steps)
    step = column.selectbox(f"Step {name}", steps, key=key)
    widgets.keep_in_url(param, step)
    return run, step


left, right = st.columns(2)
run_a, step_a = _side(left, "A", st.session_state["sbs_a"])
run_b, step_b = _side(right, "B", st.session_state["sbs_b"])
damaged = [widgets.step_damage_notice(run, step, where=column)  # both sides' pickers stay, to pick another step
           for run, step, column in ((run_a, step_a, left), (run_b, step_b, right))]
if any(damaged):
    st.stop()
widgets.keep_in_url("run", run_a.key)
widgets.keep_in_url("run_b", run_b.key)

index_a = widgets.guarded(run_a, state.tokens, run_a.path, [step_a], ["sample", "prompt", "prefix_source"])
index_b = widgets.guarded(run_b, state.tokens, run_b.path, [step_b], ["sample", "prompt", "prefix_source"])
prompts_a = index_a.drop_duplicates("sample") if "prompt" in index_a else pd.DataFrame(columns=["sample", "prompt"])
prompts_b = index_b.drop_duplicates("sample") if "prompt" in index_b else pd.DataFrame(columns=["sample", "prompt"])
common = [p for p in dict.fromkeys(prompts_a.get("prompt", [])) if p in set(prompts_b.get("prompt", []))]

if common:
    link_sample = st.query_params.get("sample")  # a shared link's sample A decides the prompt, once
    if link_sample is not None and st.session_state.get("_url_sample") != link_sample:
        linked = prompts_a.loc[prompts_a["sample"].astype(str) == link_sample, "prompt"]
        if len(linked) and linked.iloc[0] in common:
            st.session_state["sbs_prompt"] = linked.iloc[0]
    prompt = st.selectbox("Prompt (asked on both sides)", common, key="sbs_prompt",
                          format_func=lambda p: visible(str(p))[:120])
    samples_a = sorted(int(s) for s in prompts_a.loc[prompts_a["prompt"] == prompt, "sample"])
    samples_b = sorted(int(s) for s in prompts_b.loc[prompts_b["prompt"] == prompt, "sample"])
else:
    st.caption("These two steps asked different prompts: pick a sample on each side.")
    samples_a = sorted(int(s) for s in index_a["sample"].unique())
    samples_b = sorted(int(s) for s in index_b["sample"].unique())
c1, c2 = st.columns(2)
widgets.url_choice("sample", f"sbs_sample_a:{run_a.key}:{step_a}", samples_a)
widgets.url_choice("sample_b", f"sbs_sample_b:{run_b.key}:{step_b}", samples_b)
sample_a = c1.selectbox("Sample A", samples_a, key=f"sbs_sample_a:{run_a.key}:{step_a}",
                        help="Rollouts of this prompt on side A (several when num_rollouts > 1).")
sample_b = c2.selectbox("Sample B", samples_b, key=f"sbs_sample_b:{run_b.key}:{step_b}")
widgets.keep_in_url("sample", sample_a)
widgets.keep_in_url("sample_b", sample_b)

rows_a = widgets.guarded(run_a, state.tokens, run_a.path, [step_a], state.INSPECTOR_COLUMNS,
                         filters=[("sample", "in", [int(sample_a)])]).sort_values("pos")
rows_b = widgets.guarded(run_b, state.tokens, run_b.path, [step_b], state.INSPECTOR_COLUMNS,
                         filters=[("sample", "in", [int(sample_b)])]).sort_values("pos")
options = [c for c in colourable_columns(rows_a.columns) if c in set(rows_b.columns)]
if rows_a.empty or rows_b.empty or not options:
    st.info("One of the two rollouts has no token records to colour.", icon=":material/info:")
    st.stop()
o1, o2 = st.columns([2, 1], vertical_alignment="bottom")
widgets.url_choice("color", "sbs_colour", options)
widgets.url_choice("diff", "sbs_diff", ["1", "0"])
if isinstance(st.session_state.get("sbs_diff"), str):
    st.session_state["sbs_diff"] = st.session_state["sbs_diff"] == "1"
colour = o1.selectbox("Colour both by", options, key="sbs_colour")
difference = o2.toggle("Colour by the difference B − A", key="sbs_diff",
                       help="Each token takes the colour of B's value minus A's at the same position.")
widgets.keep_in_url("color", colour)
widgets.keep_in_url("diff", int(difference))
if difference:
    rows_a, rows_b = tables.position_difference(rows_a, rows_b, colour)
    shown = f"{colour}_diff"
else:
    shown = colour
# One scale for both strips, so the same colour means the same value on either side.
scale = color_scale(pd.concat([rows_a[shown], rows_b[shown]], ignore_index=True), shown)
alignment_a = widgets.guarded(run_a, state.alignment, run_a.path)
alignment_b = widgets.guarded(run_b, state.alignment, run_b.path)
for side, run, step, rows, alignment in (("A", run_a, step_a, rows_a, alignment_a),
                                         ("B", run_b, step_b, rows_b, alignment_b)):
    with st.container(border=True, key=f"sbs_strip_{side.lower()}"):
        verdict = ""
        if "correct" in rows and pd.notna(rows["correct"].iloc[0]):
            verdict = " · :green[correct]" if bool(rows["correct"].iloc[0]) else " · :red[wrong]"
        st.markdown(f"**{side}: {md(run.label)}** · step {step} · {len(rows)} tokens{verdict}")
        st.html(token_strip_html(rows, shown, scale=scale, legend=side == "A", alignment=alignment))
st.caption("Both strips share one colour scale (legend above A). With the difference on, a token is coloured by "
           "B's value minus A's at the same position: where the two rollouts diverge, the colours say by how much.")
summary = pd.DataFrame({
    "side": ["A", "B"],
    "run": [run_a.label, run_b.label],
    "tokens": [len(rows_a), len(rows_b)],
    f"mean {colour}": [pd.to_numeric(rows_a[colour], errors="coerce").mean(),
                       pd.to_numeric(rows_b[colour], errors="coerce").mean()],
})
st.dataframe(plain_frame(summary), hide_index=True, width="stretch")
