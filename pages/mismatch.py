"""Tokenizer mismatch page (failure mode 3): do the two tokenizers and chat templates agree?"""

import streamlit as st

from app import charts, state, tables, widgets
from app.inert import md, plain_frame
from app.token_strip import pieces_html
from opd_core.diagnostics import mismatch
from opd_core.token_text import visible

widgets.header("Tokenizer mismatch", "Failure mode 3 — different vocabularies, special tokens or EOS: the teacher "
                                     "is asked about ids it reads as something else and answers with giant, wrong "
                                     "signals (often at the end of every response).")
refs = widgets.runs_or_notice()
run = widgets.pick_run(refs)
steps = widgets.guarded(run, state.token_steps, run.path)
if not steps:
    widgets.no_tokens_notice(run)
chosen = widgets.pick_step_window(run, steps, "mm_steps")
view = widgets.guarded(run, state.mismatch_view, run.path, chosen)
alignment = view["alignment"] if isinstance(view["alignment"], dict) else None

c = st.columns(4)
c[0].metric("|signal| on special tokens", widgets.fmt(view["special_share"], ".0%"),
            help="Share of the total |signal| carried by special tokens (EOS, template markers).")
c[1].metric("|signal| on EOS", widgets.fmt(view["eos_share"], ".0%"))
c[2].metric("vocabulary overlap", widgets.fmt((alignment or {}).get("overlap_ratio"), ".0%"))
eos_verdict, eos_detail = mismatch.student_eos_for_teacher(alignment)
c[3].metric("student EOS, to the teacher", md(eos_verdict), help=md(eos_detail, None) if eos_detail else None)

for warning in (alignment or {}).get("warnings") or []:  # no chat template; EOS vs end of turn (engine's words)
    st.warning(md(warning, None), icon=":material/warning:")

metrics = widgets.guarded(run, state.metrics, run.path)
if metrics is not None and all(c in metrics for c in charts.ALIGNMENT_SHARES):
    st.subheader("Alignment coverage")
    widgets.chart(charts.alignment_coverage_figure(metrics),
                  "How each student token was credited by the teacher: 1:1 (the teacher has the same token, full "
                  "distributions compared), inside a multi-token span (chain rule over the teacher's pieces), or "
                  "unaligned (no teacher token ends exactly there: masked, no teacher number). A large red share "
                  "means few tokens carry a trustworthy teacher signal.")

st.subheader("The two tokenizers")
if alignment is None:
    st.info("This run has no alignment.json (the tokenizer comparison is written by OPD Lab's engine). "
            "Compare two tokenizers with `opd-lab tokenizers compare A B`.", icon=":material/info:")
else:
    a, b = st.columns(2)
    for col, side, who in ((a, "a", "Student"), (b, "b", "Teacher")):
        turn = alignment.get(f"end_of_turn_{side}")
        col.markdown(f"**{who}** · vocabulary {md(alignment.get(f'vocab_size_{side}', '–'))} · EOS "
                     f"**{md(visible(str(alignment.get(f'eos_{side}'))))}**"
                     + (f" · end of turn **{md(visible(str(turn)))}**" if turn else ""))
    specials = alignment.get("special_tokens") if isinstance(alignment.get("special_tokens"), dict) else {}
    st.dataframe(plain_frame(tables.special_token_table(specials)), hide_index=True, width="stretch",
                 column_config={"same": st.column_config.TextColumn("same?", width="small")})
    st.caption("Special tokens side by side: a role whose strings differ (or that one side lacks) is a token the "
               "teacher reads as something else. Mask it, or map EOS by meaning.")
    samples = {who: (specials.get(who) or {}).get("chat_template_sample") for who in ("a", "b")
               if isinstance(specials.get(who), dict)}
    if any(isinstance(v, str) for v in samples.values()):
        st.markdown("**The chat template, rendered for one exchange**")
        a, b = st.columns(2)
        a.code(str(samples.get("a") or "–"), language=None, wrap_lines=True)
        b.code(str(samples.get("b") or "–"), language=None, wrap_lines=True)
    examples = alignment.get("examples")
    if isinstance(examples, list) and examples:
        with st.expander("Re-tokenisation examples: each side's pieces, one box each"):
            for ex in examples[:8]:
                if not isinstance(ex, dict):
                    continue
                st.caption(f"text: {md(ex.get('text', ''))}")
                ta, tb = list(ex.get("tokens_a") or []), list(ex.get("tokens_b") or [])
                st.html(pieces_html(ta, tb, "student") + pieces_html(tb, ta, "teacher"))
            st.caption("A red outline marks a piece the other tokenizer does not produce for this text.")

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
st.dataframe(plain_frame(tables.visible_tokens(view["largest"])), hide_index=True, width="stretch")
st.caption("Tokens with the most negative teacher-minus-student log-probability. Where `teacher_token` differs "
           "from `token`, the teacher read a different string at that position: a re-tokenisation diff.")
