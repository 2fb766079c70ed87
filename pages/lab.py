"""Lab page: the paper's two theoretical claims about sampled-token OPD, computed exactly on a tiny policy."""

import streamlit as st

from app import charts_lab
from opd_core.lab import (
    DEFAULT_GAMMAS,
    LabSetting,
    TrainSetting,
    default_training_estimators,
    headline,
    run_study,
    train_curves,
)

TRAIN = TrainSetting()

st.title("Bias/variance lab")
st.caption(
    "On a tiny vocabulary and a short horizon every sequence can be enumerated, so the bias and the variance of "
    "each OPD gradient estimator are computed exactly, not estimated. Student and teacher are softmax tables "
    "indexed by (position, previous token); the teacher prefers to copy or mirror the previous token."
)

with st.sidebar:
    st.subheader("Lab setting")
    vocab = st.slider("Vocabulary size V", 2, 6, 4, key="lab_vocab")
    horizon = st.slider("Horizon T", 1, 10, 5, key="lab_horizon")
    gamma = st.slider("Discount γ (future-reward coupling)", 0.0, 1.0, 0.5, 0.05, key="lab_gamma")
    k = st.slider("Teacher top-K support size K", 1, vocab, min(2, vocab), key="lab_k")
    sharpness = st.slider("Teacher sharpness (inverse temperature)", 0.0, 5.0, 2.0, 0.25, key="lab_sharpness")
    task = st.selectbox("Teacher's mirror task", ["copy", "mirror"], key="lab_task")
    st.subheader("Training")
    steps = st.slider("SGD steps", 10, 200, TRAIN.steps, 10, key="lab_steps")
    lr = st.select_slider("Learning rate", [0.05, 0.1, 0.3, 1.0, 3.0], TRAIN.lr, key="lab_lr")


@st.cache_data(show_spinner="Enumerating every sequence…", max_entries=32)
def _study(vocab: int, horizon: int, task: str, sharpness: float, k: int, gammas: tuple[float, ...]):
    return run_study(LabSetting(vocab, horizon, task, sharpness, k, gammas))


@st.cache_data(show_spinner="Training one student per estimator…", max_entries=32)
def _training(vocab: int, horizon: int, task: str, sharpness: float, k: int, gamma: float, steps: int, lr: float):
    setting = LabSetting(vocab, horizon, task, sharpness, k)
    train = TrainSetting(steps=steps, lr=lr)
    return train_curves(setting, train, default_training_estimators(setting, gamma))


gammas = tuple(sorted(set(DEFAULT_GAMMAS) | {gamma}))
try:
    result = _study(vocab, horizon, task, sharpness, k, gammas)
except ValueError as err:
    st.error(str(err))
    st.stop()
numbers = headline(result)
at_gamma = result.by_gamma.set_index("gamma").loc[gamma]

cols = st.columns(4)
cols[0].metric("Sequences enumerated", f"{vocab**horizon:,}")
cols[1].metric("Exact KL_seq(p_S ‖ p_T)", f"{at_gamma['sequence_kl']:.4g}")
cols[2].metric(f"Bias at γ = {gamma:g}", f"{at_gamma['bias']:.3g}")
cols[3].metric(f"Variance at γ = {gamma:g}", f"{at_gamma['variance']:.4g}")

st.header("Claim 1: token-level OPD is biased; coupling removes the bias")
st.plotly_chart(charts_lab.bias_vs_gamma_figure(result.by_gamma, gamma), width="stretch")
st.markdown(
    "**The paper:** the token-level estimator (γ = 0) is biased relative to the gradient of the sequence-level "
    "reverse KL; the fully coupled one (γ = 1) is unbiased.  \n"
    f"**This computation:** ‖E[g_γ] − ∇KL_seq‖ is {numbers['bias_gamma0']:.3g} at γ = 0 "
    f"({numbers['relative_bias_gamma0']:.0%} of ‖∇KL_seq‖) and {numbers['bias_gamma1']:.1e} at γ = 1 "
    "(zero up to float64 rounding), falling steadily in between. At T = 1 every γ gives the same estimator."
)

st.header("Claim 2: coupling pays for the bias in variance")
st.plotly_chart(charts_lab.variance_vs_gamma_figure(result.by_gamma, gamma), width="stretch")
st.markdown(
    "**The paper:** gradient variance is one to several orders of magnitude higher at γ = 0.75–1 than at γ = 0.  \n"
    f"**This computation:** the exact per-sample variance (trace of the covariance) at γ = 1 is "
    f"{numbers['variance_ratio']:.3g}× the one at γ = 0 here; raise T or the teacher's sharpness to widen the gap."
)

st.plotly_chart(charts_lab.variance_vs_horizon_figure(result.by_horizon), width="stretch")
exponents = ", ".join(
    f"{name.removeprefix('exponent:')}: T^{value:.2f}" for name, value in numbers.items() if name.startswith("exponent:")
)
st.markdown(
    "**The paper:** the worst-case variance grows as O(T²) for the token-level estimator and O(T⁴) for the "
    "sequence-level one.  \n"
    f"**This computation:** the exact variance on this policy grows as {exponents or 'n/a (needs T ≥ 3)'} "
    "(log-log slope over the last three horizons). Typical growth sits below the worst-case bounds, but the "
    "sequence-level exponent is about twice the token-level one, as the bounds predict."
)

st.header("The fix: teacher top-K support matching")
st.plotly_chart(charts_lab.objective_bias_figure(result.topk), width="stretch")
st.dataframe(
    result.topk[["estimator", "bias", "bias_vs_token_kl", "cosine", "variance"]],
    hide_index=True,
    width="stretch",
    # Three significant digits: a float64 rounding residue reads 7e-16, not 0.0000000000000007.
    column_config={c: st.column_config.NumberColumn(c.replace("_", " "), format="%.3g")
                   for c in ("bias", "bias_vs_token_kl", "cosine", "variance")},
)
dense = result.topk[result.topk["kind"] != "sampled_token"].sort_values("bias_vs_token_kl")
st.markdown(
    "**The paper:** top-K support matching gives dense, bounded, low-variance supervision; without the "
    "renormalisation training collapses.  \n"
    f"**This computation:** with K = {k} of V = {vocab}, the dense objectives' variance is "
    f"{dense['variance'].min():.3g}–{dense['variance'].max():.3g} against {numbers['variance_gamma0']:.3g} for "
    "sampled-token OPD at γ = 0. Their bias against the dense full-vocabulary reverse KL (the truncation, and "
    "the missing renormalisation, on top of dropping the future coupling) ranks: "
    + " < ".join(f"{row.estimator} ({row.bias_vs_token_kl:.3g})" for row in dense.itertuples())
    + ". At K = V the renormalised objective is the dense reverse KL exactly."
)

st.header("Training curves")
curves = _training(vocab, horizon, task, sharpness, k, gamma, steps, lr)
left, right = st.columns(2)
left.plotly_chart(charts_lab.training_curves_figure(curves, "sequence_kl"), width="stretch")
right.plotly_chart(charts_lab.training_curves_figure(curves, "variance_proxy"), width="stretch")
st.markdown(
    "**The paper:** stronger future-reward coupling raises gradient variance and destabilises training; "
    "top-K matching without renormalisation collapses.  \n"
    "**This computation:** each run starts from the same student with the same seed and plain SGD "
    f"({TRAIN.micro_batches} micro-batches of {TRAIN.micro_batch_size} sequences per step); the left plot is the "
    "exact KL_seq after every step, the right one the paper's variance proxy, the spread of the micro-batch "
    "gradients."
)
