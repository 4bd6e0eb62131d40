"""Attribution: is the sample attributable (the candidate test), then the training images that
most influenced it, vs the noise floor."""

import numpy as np
import streamlit as st

from ui import attribution, results, sidebar

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

ctx = sidebar.sidebar("Attribution")
run = ctx.run
key, seed, rule = ctx.key, ctx.seed, ctx.combine

st.title("Attribution")

# -- is this sample attributable? the candidate-first test ---------------------------------
st.subheader("Is this sample attributable?")
attribution.candidate(run, key, seed, rule, CONTROLS)

st.subheader("Which training images influenced it most?")
method = sidebar.choice("Method", results.METHODS, key="method", on_change=sidebar.keep("method", "jacobian"),
                      help="How each training image's influence is scored.",
                      most=len(results.METHODS), longest=max(map(len, results.METHODS)))
c1, c2 = st.columns([2, 6], vertical_alignment="bottom")
kmax = min(ctx.limits.top_k, run.N)
k = c1.slider("Top k", 1, kmax, key="topk", on_change=sidebar.keep("topk", 8, (1, kmax)))
c2.caption(f"**{method}**: {HELP.get(method, '')}")

base = results.cached_attribution(key, seed, method, rule)
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
    base = results.attribution(key, seed, method, rule)

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
        results.verified(key, seed, method, m, rule)
        st.session_state[vflag] = True
    if st.session_state.get(vflag):
        att = results.verified(key, seed, method, m, rule)
verified_m = m if att is not base else 0

# -- how attributable is this sample? ------------------------------------------------
attribution.noise_floor(att, seed, m, verified_m)

# -- the top-k -------------------------------------------------------------------------
rows = att.order[:k]
in_verified = verified_m and np.isin(rows, att.verified_rows).all()
exact_cf = st.toggle(
    "Exact counterfactual chains",
    value=bool(att.exact or in_verified or method == "nearest"),
    disabled=bool(att.exact or method == "nearest"),
    help="Off: the method's own approximation of each counterfactual.",
)
cfs = results.counterfactuals(
    key,
    seed,
    method,
    verified_m,
    tuple(int(r) for r in rows),
    bool(exact_cf or att.exact or method == "nearest"),
    rule,
)
attribution.top_rows(run, att, rows, cfs)

# -- distributions -----------------------------------------------------------------------
attribution.against_exact(key, seed, rule, method, base, att, k, verified_m)
