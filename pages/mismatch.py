"""Tokenizer mismatch page (failure mode 3): do the two tokenizers and chat templates agree?"""

import pandas as pd
import streamlit as st

from app import charts, state, widgets
from opd_core.diagnostics import mismatch

widgets.header("Tokenizer mismatch", "Failure mode 3 — different vocabularies, special tokens or EOS: the teacher "
                                     "is asked about ids it reads as something else and answers with giant, wrong "
                                     "signals (often at the end of every response).")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
steps = state.token_steps(run.path)
if not steps:
    widgets.no_tokens_notice(run)
chosen = widgets.pick_step_window(run, steps, "mm_steps")
view = state.mismatch_view(run.path, chosen)
alignment = view["alignment"]

c = st.columns(4)
c[0].metric("|signal| on special tokens", widgets.fmt(view["special_share"], ".0%"),
            help="Share of the total |signal| carried by special tokens (EOS, template markers).")
c[1].metric("|signal| on EOS", widgets.fmt(view["eos_share"], ".0%"))
c[2].metric("vocabulary overlap", widgets.fmt((alignment or {}).get("overlap_ratio"), ".0%"))
eos_verdict, eos_detail = mismatch.student_eos_for_teacher(alignment)
c[3].metric("student EOS, to the teacher", eos_verdict, help=eos_detail or None)

st.subheader("The two tokenizers")
if alignment is None:
    st.info("This run has no alignment.json (the tokenizer comparison is written by OPD Lab's engine). "
            "Compare two tokenizers with `opd-lab tokenizers compare A B`.", icon=":material/info:")
else:
    a, b = st.columns(2)
    a.markdown(f"**Student** · vocabulary {alignment.get('vocab_size_a', '–')} · EOS `{alignment.get('eos_a')}`")
    b.markdown(f"**Teacher** · vocabulary {alignment.get('vocab_size_b', '–')} · EOS `{alignment.get('eos_b')}`")
    specials = alignment.get("special_tokens") or {}
    names = sorted(set(specials.get("a", {})) | set(specials.get("b", {})))
    table = pd.DataFrame({"role": names,
                          "student": [str(specials.get("a", {}).get(n, "")) for n in names],
                          "teacher": [str(specials.get("b", {}).get(n, "")) for n in names]})
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption("Special tokens side by side: a role whose strings differ (or that one side lacks) is a token the "
               "teacher reads as something else. Mask it, or map EOS by meaning.")
    examples = alignment.get("examples")
    if examples:
        with st.expander("Re-tokenisation examples"):
            st.dataframe(pd.DataFrame(examples).astype(str), hide_index=True, width="stretch")

left, right = st.columns(2)
with left:
    widgets.chart(charts.signal_by_kind_figure(view["by_kind"]),
                  "If the red 'special' bar towers over its tick (its share of tokens), a few special tokens carry "
                  "most of the update: the signature of a tokenizer or template mismatch.")
with right:
    trend = view["length_trend"]
    if trend is not None and len(trend) and "response_len" in trend:
        widgets.chart(charts.response_length_figure(trend),
                      "Mean response length per step. A steady climb means the student is learning not to stop, "
                      "often because the teacher gives its EOS a tiny probability.")
    else:
        st.info("No response_len metric logged.", icon=":material/info:")

st.subheader("Largest log-ratios: what the student wrote vs what the teacher read")
st.dataframe(view["largest"], hide_index=True, width="stretch")
st.caption("Tokens with the most negative teacher-minus-student log-probability. Where `teacher_token` differs "
           "from `token`, the teacher read a different string at that position: a re-tokenisation diff.")
