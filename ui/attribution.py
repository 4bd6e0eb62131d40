"""The Attribution page's sections: the candidate test's verdict, how attributable the
sample is against the phantom noise floor, the top-k rows, and scores against exact."""

from __future__ import annotations

import numpy as np
import streamlit as st

from tda import views
from tda.agreement import FAIL_TOP1, floor_badge
from ui import render, results


def candidate(run, key: str, seed: int, rule: str, controls: int):
    """The candidate-first test of the sample: its pictures and verdict; returns the test."""
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
    return test


METHOD_HELP = {
    "screened": "The training images nearest to the sample, each with its exact "
    "counterfactual (one chain each) and exact phantoms for the floor.",
    "exact": "One chain per training image with the members that never saw it (exact, O(N)).",
    "jacobian": "Linearise the sample in the member weights (n + 1 chains), then every "
    "counterfactual is one matrix product.",
    "last-step": "Full ensemble until the last step; drop the image's members only there.",
    "individual": "Each member alone; residuals mixed with the centred weights u_-x − u0.",
    "individual-paper": "Each member alone; the paper's −Σ r_i / (n − h) over the image's members.",
    "nearest": "Not influence: the training images nearest to the sample in pixel space.",
}


def method_label(method: str, fig: dict | None) -> str:
    """The method with its measured standing, for the method picker."""
    if fig is None:
        return method
    return f"{method} ({'fails' if fig['fails'] else 'passes'}: top-1 {fig['top1_agreement']:.0%})"


def standing(method: str, fig: dict | None, rule: str) -> None:
    """One line: how the method did against exact on this run under this rule."""
    if method == "nearest":
        st.caption("**nearest** ranks by pixel distance: no counterfactual, so no influence "
                   "and no noise floor.")
        return
    if fig is None:
        st.caption(f"**{method}** has not been measured against exact on this run under "
                   f"**{rule}** (`python -m tda evaluate --parts attribution`): its scores "
                   "carry no floor badge.")
        return
    copies = ("" if not fig.get("copies") else
              f"; on the {fig['copies']} samples that copy a training image its top-1 is "
              f"that image in {fig['copy_top1']:.0%}")
    said = (f"against exact on {fig['seeds']} held-out seeds of this run ({rule}): top-1 "
            f"agrees {fig['top1_agreement']:.0%}{copies}; "
            f"{(fig['seconds_median'] or float('nan')):.0f} s per seed")
    if fig["fails"]:
        st.warning(f"**{method} fails under {rule}** — {said}. Below {FAIL_TOP1:.0%} "
                   "top-1 agreement a method fails: read its ranking as an approximation, "
                   "not evidence (no floor badges).", icon=":material/warning:")
    else:
        st.caption(f"**{method} passes** {said} (a method fails below {FAIL_TOP1:.0%}).")


def noise_floor(att, test, run_tar: dict | None, n_members: int) -> None:
    """The top image against its own floor, and what a single image's p-value can say."""
    a = att.attributability
    ratio = a["top1_ratio"]
    if np.isnan(ratio):
        return
    top = int(att.order[0])
    P = att.null_scores.shape[-1]
    p, q = float(att.pvalues[top]), float(att.qvalues[top])
    scored = int(np.isfinite(att.scores).sum())
    st.markdown(render.table([{
        "Top-1": f"#{top}",
        f"Top-1 {att.score}": f"{att.scores[top]:.3f}",
        "Its floor's p99": f"{a['p99']:.3f}",
        "p (phantoms)": f"{p:.3f}",
        "q": f"{q:.2f}",
        "Time": f"{att.seconds:.1f} s",
    }]))
    if ratio <= 1:
        st.info("**No training image explains this sample.** The top image's score does not "
                f"rise above what switching members without removing anything does to it "
                f"({P} phantom codes): the sample is a blend of what the members learned, not "
                "a copy of one image.", icon=":material/blur_on:")
    flips = test.flip_rate
    tar_said = ("" if run_tar is None else
                f" The run's true attribution rate over {run_tar['samples']} held-out "
                f"samples, TAR = {run_tar['tar']:.2f} ({run_tar['tar_low']:.2f}–"
                f"{run_tar['tar_high']:.2f}), is the evidence that samples here come from "
                "their images.")
    st.caption(
        f"Each row's p-value compares its score with the same image against {P} phantom "
        "ablations (members switched without removing anything); q corrects for testing the "
        f"{scored} scored rows at once (Benjamini–Hochberg, counting only rows that could "
        "score above 0: those the sample resembles). With {n_members} members a random "
        f"ablation flips this sample to another image {flips:.0%} of the time (the candidate "
        "test), and a flip moves it as far as removing its own image does, so a single "
        "image rarely reaches p ≤ 0.05 on its own." + tar_said)


def badge(att, j: int, fig: dict | None, container=st) -> None:
    render.floor_badge(*floor_badge(float(att.pvalues[j]), float(att.qvalues[j]), fig),
                       container=container)


def image_standing(ctx, j: int) -> None:
    """Training image j's score and rank in every attribution of the current seed that is
    already cached (never computes one), with its standing against the phantom floor."""
    _, _, figs = results.methods(ctx.key, ctx.combine)
    cached = [(mth, a) for mth in figs
              if (a := results.cached_attribution(ctx.key, ctx.seed, mth, ctx.combine)) is not None]
    if not cached:
        st.caption(f"No attribution of seed {ctx.seed} is cached yet: run one on the "
                   "Attribution page to see this image's influence here.")
    for mth, a in cached:
        rank = int(np.flatnonzero(a.order == j)[0]) + 1
        c = st.columns([3, 2])
        s = a.scores[j]
        c[0].markdown(f"On the sample of seed {ctx.seed} ({mth}): {a.score} "
                      f"**{'not scored' if np.isnan(s) else f'{s:.3f}'}**, rank {rank} of "
                      f"{ctx.run.N}")
        badge(a, j, figs[mth], container=c[1])


def top_rows(run, att, rows, cfs: np.ndarray, fig: dict | None) -> None:
    """Each top row: the image, the sample without it, the residual, its scores and code."""
    k = len(rows)
    residuals = cfs - att.sample.numpy()[None]
    vmax = views.residual_scale(residuals)
    st.subheader(f"Top {k} training images by {att.score}")
    st.caption(render.residual_legend(vmax) + " Same scale for every row.")
    others = [s for s in att.scores_by if s != att.score]
    for r, j in enumerate(rows):
        with st.container(border=True):
            c = st.columns([1, 1], vertical_alignment="center")
            with c[0]:
                render.sheet([run.images[j], cfs[r], views.residual_image(residuals[r], 128, vmax)],
                             ["training image", "sample without it", "residual"], cols=3, size=128)
            with c[1]:
                exact_row = att.exact or j in att.verified_rows
                st.markdown(f"**#{r + 1} · training image {j}** · label {int(run.labels[j])}")
                s = att.scores[j]
                st.markdown(
                    f"{att.score} **{'not scored' if np.isnan(s) else f'{s:.3f}'}** "
                    f"({'exact' if exact_row else 'approximate'})"
                    + "".join(f" · {o} {att.scores_by[o][j]:.3f}" for o in others
                              if np.isfinite(att.scores_by[o][j]))
                )
                badge(att, j, fig)
                st.markdown(
                    f"code `{views.bits(run.codes[j])}` · seen by members "
                    f"{', '.join(map(str, views.members_of(run.codes[j])))}"
                )


def against_exact(key: str, seed: int, rule: str, att, k: int) -> None:
    """The top image's score against its floor, and the method against exact scores."""
    st.subheader("Scores against the noise floor")
    h, s = st.columns(2)
    with h:
        top = int(att.order[0])
        floor = att.floor_of(top)
        if len(floor):
            render.chart(f"Show #{top}'s score against its floor",
                         lambda: views.score_histogram(att.scores[np.isfinite(att.scores)],
                                                       floor, f"{att.method}, {att.score}"),
                         "hist")
        else:
            st.caption("This method scores no phantom codes.")
    with s:
        method = att.method.removesuffix("+verify")
        exact = None if att.exact else results.cached_attribution(key, seed, "exact", rule)
        if exact is not None:
            exact = exact.with_score(att.score) if att.score in exact.scores_by else None
        if exact is not None:
            cmp = views.compare_scores(att.scores, exact.scores, k)
            render.chart(f"Show {method} against exact scores", lambda: views.scatter_figure(
                exact.scores, att.scores, f"exact {att.score}", f"{method} {att.score}",
                f"{method} vs exact (Spearman ρ = {cmp['rho']:.2f})", highlight=att.order[:k],
            ), "scatter")
            st.markdown(render.table([{"Spearman ρ vs exact": f"{cmp['rho']:.2f}",
                                       f"Top-{k} overlap with exact": f"{cmp['overlap']}/{k}"}]))
        elif not att.exact and method != "nearest":
            st.caption("How does this method rank against the exact scores for this seed?")
            if st.button("Compute exact scores to compare", icon=":material/compare_arrows:"):
                results.attribution(key, seed, "exact", rule)
                st.rerun()
