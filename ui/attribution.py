"""The Attribution page's sections: the candidate test's verdict, how attributable the
sample is against the phantom noise floor, the top-k rows, and scores against exact."""

from __future__ import annotations

import numpy as np
import streamlit as st
from scipy.stats import spearmanr

from tda import views
from ui import render, results


def candidate(run, key: str, seed: int, rule: str, controls: int) -> None:
    """The candidate-first test of the sample: its pictures and verdict."""
    test = results.candidate(key, seed, rule, controls)
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


def noise_floor(att, seed: int, m: int, verified_m: int) -> None:
    """How far the top score rises above the phantom scores, in figures and words."""
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


def top_rows(run, att, rows, cfs: np.ndarray) -> None:
    """Each top row: the image, the sample without it, the residual, score and code."""
    k = len(rows)
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


def against_exact(key: str, seed: int, rule: str, method: str, base, att, k: int,
                  verified_m: int) -> None:
    """The histogram of real vs phantom scores, and the method against exact scores."""
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
        exact = None if method == "exact" else results.cached_attribution(key, seed, "exact", rule)
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
                results.attribution(key, seed, "exact", rule)
                st.rerun()
