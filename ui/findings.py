"""Home's findings about a run, from its evaluation report: is attribution meaningful here?"""

from __future__ import annotations

import streamlit as st

from tda import views


def attributable(run, label: str) -> None:
    """Home's answer to "is attribution meaningful here?": the candidate test of the run's
    report as an alert and a caption, the phantom floor after it; how to measure without."""
    tar = views.tar_finding(run.path)
    if tar is not None:
        head = {"ok": "Yes: samples here are attributable.",
                "partly": "Partly.", "weak": "Mostly not."}[tar["level"]]
        show = {"ok": st.success, "partly": st.warning, "weak": st.warning}[tar["level"]]
        show(f"**Is attribution meaningful here? {head}** " + tar["text"])
        paper = tar["paper"]
        st.caption(
            "Candidate test (TAR, 95% interval; how often ablating the nearest training image "
            "x̂ / a random one changes the sample; samples that copy a training image): "
            + "; ".join(
                f"**{r['rule']}**{' (default)' if r['rule'] == tar['default_rule'] else ''} "
                f"{r['tar']:.2f} ({r['low']:.2f}–{r['high']:.2f}), {r['candidate']:.0%} / "
                f"{r['random']:.0%}, {r['copies']:.0%} copies"
                for r in tar["rows"]
            )
            + ("" if paper is None else f". The paper (MNIST): {paper[1]:.2f} at N = {paper[0]:,}")
            + ". Details on Diagnostics."
        )

    finding = views.floor_finding(run.path)
    if finding is None and tar is None:
        st.info(
            "No attribution measurement for this run yet: run `python -m tda evaluate --run "
            f"{label}` (the run's folder) to learn whether its samples are attributable."
        )
    elif finding is not None and tar is not None:  # the candidate test leads; the floor adds
        st.caption("**Scores vs the phantom floor.** " + finding[1])
    elif finding is not None:
        head = {"weak": "Mostly not.", "partly": "Partly.", "ok": "Yes."}[finding[0]]
        show = st.success if finding[0] == "ok" else st.warning
        show(f"**Is attribution meaningful here? {head}** " + finding[1])
