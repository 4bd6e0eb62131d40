"""Attribution: is the sample attributable (the candidate test), then the training images that
most influenced it, vs the noise floor."""

import numpy as np
import streamlit as st
from scipy.stats import spearmanr

from tda import views
from tda.attribution import METHODS
from ui import render, state

HELP = {
    "exact": "One chain per training image with the members that never saw it (exact, O(N)).",
    "jacobian": "Linearise the sample in the member weights (n + 1 chains), then every "
    "counterfactual is one matrix product.",
    "last-step": "Full ensemble until the last step; drop the image's members only there.",
    "individual": "Each member alone; residuals mixed with the centred weights u_-x − u0.",
    "individual-paper": "Each member alone; the paper's −Σ r_i / (n − h) over the image's members.",
    "nearest": "Not influence: the training images nearest to the sample in pixel space.",
}

CONTROLS = 16  # random training images ablated in the candidate test

ctx = state.sidebar("Attribution")
run = ctx.run
key, seed, rule = ctx.key, ctx.seed, ctx.combine

st.title("Attribution")

# -- is this sample attributable? the candidate-first test ---------------------------------
st.subheader("Is this sample attributable?")
test = state.candidate(key, seed, rule, CONTROLS)
near_after = int(test.nearest_after)
c = st.columns([4, 3])
with c[0]:  # one picture, not four: every image is a request and an element per visitor
    render.sheet([test.sample, run.images[test.candidate], test.counterfactual,
                  run.images[near_after]],
                 # short captions (the font has no x̂): the sheet keeps its natural size
                 [f"sample (seed {seed})", f"candidate: #{test.candidate}",
                  f"without #{test.candidate}", f"its nearest: #{near_after}"], cols=4,
                 size=128)
with c[1]:
    verdict = test.verdict
    R = len(test.control_rows)
    flips = int(round(test.flip_rate * R))
    said = (
        f"Removing x̂ (training image #{test.candidate}, distance {test.candidate_distance:.2f}) "
        f"{'**changes**' if test.changed else 'does **not** change'} the sample's nearest "
        f"training image. Removing a random training image instead changes it in {flips} of "
        f"{R} tries (flip rate {test.flip_rate:.0%}); p = {test.p_value:.2g}."
    )
    if verdict == "attributable":
        st.success(f"**Attributable to #{test.candidate}.** " + said, icon=":material/check_circle:")
    elif verdict == "unclear":
        st.info(f"**Needs #{test.candidate}, but fragile.** " + said + " Random ablations "
                "also move it, so on its own this sample is weak evidence; the run's true "
                "attribution rate (Home, Diagnostics) says how often x̂ is the reason.",
                icon=":material/info:")
    else:
        st.warning("**Not attributable to its nearest image.** " + said,
                   icon=":material/warning:")
    st.caption(
        f"The candidate-first test of Dai & Gifford (2024): the candidate is chosen before any "
        f"counterfactual, so there is one hypothesis per sample. Rule: **{rule}**."
    )
render.chart("Show how far each ablation moved the sample",
             lambda: views.candidate_figure(test), "candidate")

st.subheader("Which training images influenced it most?")
method = state.choice("Method", METHODS, key="method", on_change=state.keep("method", "jacobian"),
                      help="How each training image's influence is scored.",
                      most=len(METHODS), longest=max(map(len, METHODS)))
c1, c2 = st.columns([2, 6], vertical_alignment="bottom")
kmax = min(ctx.limits.top_k, run.N)
k = c1.slider("Top k", 1, kmax, key="topk", on_change=state.keep("topk", 8, (1, kmax)))
c2.caption(f"**{method}**: {HELP.get(method, '')}")

base = state.cached_attribution(key, seed, method, rule)
if base is None:
    if method == "exact" and not st.button(
        f"Compute exact scores ({run.N} training images + phantoms, one chain each)",
        type="primary",
    ):
        st.info(
            "Exact attribution runs one full chain per training image and per phantom "
            "code. Press the button to start; the result is cached for this seed."
        )
        st.stop()
    base = state.attribution(key, seed, method, rule)

m = min(ctx.limits.verify, run.N)
vflag = f"verified|{key}|{seed}|{method}|{rule}"
att = base
if not base.exact:
    if not st.session_state.get(vflag) and st.button(
        f"Verify exactly: rescore the top {m} with exact chains",
        icon=":material/fact_check:",
        help="Re-runs the top images and up to 128 phantoms as exact counterfactual "
        "chains and re-ranks them.",
    ):
        state.verified(key, seed, method, m, rule)
        st.session_state[vflag] = True
    if st.session_state.get(vflag):
        att = state.verified(key, seed, method, m, rule)
verified_m = m if att is not base else 0

# -- how attributable is this sample? ------------------------------------------------
a = att.attributability
ratio = a["top1_ratio"]
P = len(att.null_scores)
p_top = float(att.pvalues[att.order[0]])
left, right = st.columns([1, 4])
render.show(att.sample, f"sample of seed {seed}", 192, container=left)
with right:
    # figures as a markdown table: no metric widget JavaScript for every visitor to load
    st.markdown(render.table([{
        "Top-1 / phantom p99": "n/a" if np.isnan(ratio) else f"{ratio:.2f}",
        "Above phantom p99": a["n_above"],
        "Chance expects": "n/a" if np.isnan(a["expected_above"]) else
        f"{a['expected_above']:.1f}",
        "Time": f"{att.seconds:.2f} s",
    }]))
    scored = "exact" if att.exact else f"exact for the top {m}" if verified_m else "approximate"
    st.caption(f"Method **{att.method}** · scores {scored} · {P} phantom codes. Top-1 / "
               "phantom p99: the highest real score over the 99th percentile of phantom "
               "scores; above it by chance alone: 1% of the training images.")
    if np.isnan(ratio):
        st.info(
            "Nearest neighbours measure pixel similarity, not influence: there is no "
            "noise floor to compare with. Verify exactly to score them as counterfactuals."
        )
    elif ratio < 1:
        st.warning(
            "**The top-k is indistinguishable from member noise at this scale.** The highest "
            f"score is {ratio:.2f}× the 99th percentile of phantom scores (codes owned by no "
            "image), so switching off the members of *any* image moves the sample this much. "
            "Read the images below as what the method ranks first, not as evidence.",
            icon=":material/warning:",
        )
    elif p_top < render.NOISE_ALPHA:
        st.success(
            f"The top image scores {ratio:.2f}× the phantom p99 (p = {p_top:.3f}): "
            "above the noise floor.",
            icon=":material/check_circle:",
        )
    else:
        st.info(
            f"The top image scores {ratio:.2f}× the phantom p99, but its p-value is "
            f"{p_top:.2f}: not clearly above the noise floor.",
            icon=":material/info:",
        )
    if 0 < P < 100:
        st.caption(
            f"Only {P} phantom codes were scored: no p-value can go below {1 / (P + 1):.2f}."
        )

# -- the top-k -------------------------------------------------------------------------
rows = att.order[:k]
in_verified = verified_m and np.isin(rows, att.verified_rows).all()
exact_cf = st.toggle(
    "Exact counterfactual chains",
    value=bool(att.exact or in_verified or method == "nearest"),
    disabled=bool(att.exact or method == "nearest"),
    help="Off: the method's own approximation of each counterfactual.",
)
cfs = state.counterfactuals(
    key,
    seed,
    method,
    verified_m,
    tuple(int(r) for r in rows),
    bool(exact_cf or att.exact or method == "nearest"),
    rule,
)
residuals = cfs - att.sample.numpy()[None]
vmax = views.residual_scale(residuals)
st.subheader(f"Top {k} training images")
st.caption(render.residual_legend(vmax) + " Same scale for every row.")
for r, j in enumerate(rows):
    with st.container(border=True):
        c = st.columns([1, 1], vertical_alignment="center")
        with c[0]:
            render.sheet([run.images[j], cfs[r], views.residual_image(residuals[r], 128, vmax)],
                         ["training image", "sample without it", "residual"], cols=3, size=128)
        with c[1]:
            exact_score = att.exact or j in att.verified_rows
            st.markdown(f"**#{r + 1} · training image {j}** · label {int(run.labels[j])}")
            st.markdown(
                f"score **{att.scores[j]:.4f}** ({'exact' if exact_score else 'approximate'})"
            )
            render.pvalue_badge(float(att.pvalues[j]))
            st.markdown(
                f"code `{views.bits(run.codes[j])}` · seen by members "
                f"{', '.join(map(str, views.members_of(run.codes[j])))}"
            )

# -- distributions -----------------------------------------------------------------------
st.subheader("Scores against the noise floor")
h, s = st.columns(2)
with h:
    if len(att.null_scores):
        real = att.scores[att.verified_rows] if verified_m else att.scores
        render.chart("Show the histogram of real vs phantom scores",
                     lambda: views.score_histogram(real, att.null_scores, att.method), "hist")
    else:
        st.caption("This method scores no phantom codes.")
with s:
    exact = None if method == "exact" else state.cached_attribution(key, seed, "exact", rule)
    if exact is not None:
        rho = float(spearmanr(base.scores, exact.scores).statistic)
        top = len(set(base.order[:k]) & set(exact.order[:k]))
        render.chart(f"Show {method} against exact scores", lambda: views.scatter_figure(
            exact.scores, base.scores, "exact score", f"{method} score",
            f"{method} vs exact (Spearman ρ = {rho:.2f})", highlight=base.order[:k],
        ), "scatter")
        st.markdown(render.table([{"Spearman ρ vs exact": f"{rho:.2f}",
                                   f"Top-{k} overlap with exact": f"{top}/{k}"}]))
    elif method != "exact":
        st.caption("How does this approximation rank against the exact scores for this seed?")
        if st.button("Compute exact scores to compare", icon=":material/compare_arrows:"):
            state.attribution(key, seed, "exact", rule)
            st.rerun()
