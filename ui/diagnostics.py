"""The Diagnostics page's body: a run's evaluation report (`python -m tda evaluate`, or
a small live one), drawn section by section."""

from __future__ import annotations

import numpy as np
import streamlit as st

from tda.evaluate import REPORT, EvalSizes
from tda.metrics import CONFIDENT, FD_NAME
from tda.report_figures import figures

REPORT_DIR = "report"
SAVED = f"{REPORT_DIR}/{REPORT}"  # inside the run; shown instead of the server path
LIVE = EvalSizes(samples=32, seeds=1, draws=1, sizes=(1, 2, 4), classifier_steps=300)
PARTS = {"candidate": "candidate test", "fidelity": "sample quality",
         "convergence": "convergence", "attribution": "approximations and noise floor"}


def fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def present(report: dict) -> str:
    """The parts a partial report has, in words."""
    return ", ".join(v for k, v in PARTS.items() if k in report) or "no part yet"


def draw(report: dict) -> None:
    """Headline numbers, then one section per part the report has."""
    figs = figures(report)

    def chart(name: str) -> None:
        if name in figs:
            st.plotly_chart(figs[name], key=f"fig_{name}")

    # -- headline numbers ---------------------------------------------------------------------
    f = report.get("fidelity", {})
    a = report.get("attribution", {})
    nf = a.get("noise_floor", {})
    m = st.columns(5)
    m[0].metric(
        "Classifier accuracy",
        fmt(report.get("classifier", {}).get("accuracy"), ".1%"),
        help=report.get("classifier", {}).get("what"),
    )
    m[1].metric("FD ensemble", fmt(f.get("fd_ensemble")), help=f"{FD_NAME}; lower is closer to real.")
    m[2].metric(
        "FD members (median)",
        fmt(float(np.median(f["fd_members"])) if f.get("fd_members") else None),
        help=f"{FD_NAME}; each member sampled alone.",
    )
    m[3].metric(
        "Confident samples",
        fmt(f.get("confident_ensemble"), ".0%"),
        help=f"Share of the ensemble's samples that the classifier labels with confidence ≥ "
        f"{CONFIDENT} (real images: {fmt(f.get('confident_real'), '.0%')}).",
    )
    m[4].metric(
        "Top-1 > p99 seeds",
        fmt(nf.get("share_top1_above_p99"), ".0%"),
        help="Exact scores: share of seeds where the best training image beats the 99th "
        "percentile of phantom codes.",
    )

    # -- sections -----------------------------------------------------------------------------
    if "tar" in figs:
        st.subheader("Are samples attributable? The candidate test")
        st.caption(
            "For each sample of a held-out seed: ablate its nearest training image x̂ and see "
            "whether its nearest image changes, against random training images ablated the "
            "same way. TAR = (P(change | x̂) − P(change | random)) / P(unchanged | random)."
        )
        left, right = st.columns(2)
        with left:
            chart("tar")
        with right:
            chart("flip_rates")
        chart("tar_by_n")

    if "fidelity" in figs:
        st.subheader("Sample quality")
        st.caption(
            f"{FD_NAME}. References: the real images split in two halves (the floor at this "
            "sample size) and the run's own training images."
        )
        left, right = st.columns([3, 2])
        with left:
            chart("fidelity")
        with right:
            chart("confidence")

    if "convergence" in figs:
        st.subheader("Convergence")
        st.caption(
            "Sub-ensembles of k random members, same recorded noise: how far their samples lie "
            "from the full ensemble's, and their FD. A flattening curve means more members "
            "would change little."
        )
        chart("convergence")

    if "agreement" in a:
        st.subheader("Approximations vs exact influence")
        chart("agreement")
        st.dataframe(
            {
                "method": list(a["agreement"]),
                "Spearman (median)": [v["spearman_median"] for v in a["agreement"].values()],
                "Pearson (median)": [v["pearson_median"] for v in a["agreement"].values()],
                "top-10 overlap (median)": [v["top10_median"] for v in a["agreement"].values()],
                "seconds per seed": [a["method_seconds"].get(k) for k in a["agreement"]],
            },
            hide_index=True,
        )

    if "noise_floor" in figs:
        st.subheader("Noise floor")
        st.caption(
            "Phantom codes switch to another subset of members without removing any image: "
            "their scores are pure member noise. Real scores that look like them cannot be "
            "told apart from noise."
        )
        left, right = st.columns(2)
        with left:
            chart("noise_floor")
        with right:
            chart("attributability")
        chart("class_agreement")

    if "by_n" in figs:
        st.subheader("Attributability vs training-set size")
        chart("by_n")
        if len(report.get("by_n", [])) < 2:
            st.caption(
                "Only this run so far. Add others with `--compare-runs DIR1,DIR2` to see how "
                "attributability changes with N."
            )

    if "cost" in figs:
        st.subheader("Cost")
        chart("cost")
