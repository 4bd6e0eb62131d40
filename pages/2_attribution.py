"""Attribution: is the sample attributable (the candidate test), then which training images
it owes most to, each with its counterfactual and against its noise floor."""

import numpy as np
import streamlit as st

from tda import views
from ui import attribution, results, sidebar

CONTROLS = 16  # random training images ablated in the candidate test

ctx = sidebar.sidebar("Attribution")
run = ctx.run
key, seed, rule = ctx.key, ctx.seed, ctx.combine

st.title("Attribution")

# -- is this sample attributable? the candidate-first test ---------------------------------
st.subheader("Is this sample attributable?")
test = attribution.candidate(run, key, seed, rule, CONTROLS)

st.subheader("Which training images made it?")
default, offered, figs = results.methods(key, rule)
c1, c2, c3 = st.columns([3, 3, 2], vertical_alignment="bottom")
with c1:
    method = st.selectbox("Method", offered, key=f"method_{rule}",
                          on_change=sidebar.keep(f"method_{rule}", default),
                          format_func=lambda m: attribution.method_label(m, figs[m]),
                          help="How each training image's counterfactual is computed. The "
                          "default is the best method measured against exact on this run.")
with c2:
    scores = ["nearness"] if method == "nearest" else list(views.SCORES)
    score = sidebar.choice("Score", scores, key="score", on_change=sidebar.keep("score",
                           scores[0]), help="What ranks the images.")
kmax = min(ctx.limits.top_k, run.N)
k = c3.slider("Top k", 1, kmax, key="topk", on_change=sidebar.keep("topk", 8, (1, kmax)))
st.caption(f"**{method}**: {attribution.METHOD_HELP[method]}  \n"
           + "  \n".join(f"**{s}**: {views.SCORE_MEANING[s]}" for s in scores))
attribution.standing(method, figs[method], rule)

base = results.cached_attribution(key, seed, method, rule)
if base is None:
    if method == "exact" and not st.button(
        f"Compute exact scores ({run.N} training images + phantoms, one chain each)",
        type="primary",
    ):
        st.info("Exact attribution runs one full chain per training image and per phantom "
                "code. Press the button to start; the result is kept for this seed.")
        st.stop()
    base = results.attribution(key, seed, method, rule)

m = min(ctx.limits.verify, run.N)
vflag = f"verified|{key}|{seed}|{method}|{rule}"
att = base
if not base.exact and not len(base.verified_rows) and method != "nearest":
    if not st.session_state.get(vflag) and st.button(
        f"Verify exactly: rescore the top {m} with exact chains",
        icon=":material/fact_check:",
        help="Re-runs the top images and 128 phantoms as exact counterfactual chains.",
    ):
        st.session_state[vflag] = True
    if st.session_state.get(vflag):
        att = results.verified(key, seed, method, m, rule)
verified_m = m if att is not base else 0
att = att.with_score(score if score in att.scores_by else att.score)

attribution.noise_floor(att, test, results.run_tar(key, rule), run.n)

# -- the top-k -------------------------------------------------------------------------
rows = att.order[:k]
exact_only = bool(att.exact or len(att.verified_rows) and np.isin(rows, att.verified_rows).all()
                  or method == "nearest")
exact_cf = st.toggle("Exact counterfactual chains", value=exact_only, disabled=exact_only,
                     help="Off: the method's own approximation of each counterfactual.")
cfs = results.counterfactuals(key, seed, method, verified_m, tuple(int(r) for r in rows),
                              bool(exact_cf or exact_only), rule)
attribution.top_rows(run, att, rows, cfs, figs[method])
attribution.against_exact(key, seed, rule, att, k)
