"""The Diagnostics page's body: a run's evaluation report (`python -m tda evaluate`, or
a small live one), drawn section by section."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import streamlit as st

from tda import views
from tda.agreement import FAIL_TOP1
from tda.evaluate import REPORT, EvalSizes
from tda.metrics import CONFIDENT, FD_NAME
from tda.report_figures import figures
from tda.scores import DEFAULT_SCORE

REPORT_DIR = "report"
SAVED = f"{REPORT_DIR}/{REPORT}"  # inside the run; shown instead of the server path
LIVE = EvalSizes(samples=32, seeds=1, other_rule_seeds=0, draws=1, sizes=(1, 2, 4),
                 classifier_steps=300)
PARTS = {"candidate": "candidate test", "fidelity": "sample quality",
         "convergence": "convergence", "attribution": "attribution methods vs exact"}


def fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def present(report: dict) -> str:
    """The parts a partial report has, in words."""
    return ", ".join(v for k, v in PARTS.items() if k in report) or "no part yet"


@st.cache_resource(show_spinner=False, max_entries=8)
def _figures(digest: str, _report: dict) -> dict:
    return figures(_report)


def draw(report: dict) -> None:
    """Headline numbers, then one section per part the report has. A report's figures
    are built once for every visitor (plotly figures take a while to build)."""
    digest = hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()
    figs = _figures(digest, report)

    def chart(name: str) -> None:
        if name in figs:
            st.plotly_chart(figs[name], key=f"fig_{name}")

    # -- headline numbers ---------------------------------------------------------------------
    f = report.get("fidelity", {})
    a = report.get("attribution", {})
    default = (a.get("rules") or {}).get(a.get("default_rule"), {})
    best = default.get("default_method")
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
        f"Top-1 agrees ({best or 'n/a'})",
        fmt(default["methods"][best]["scores"][DEFAULT_SCORE]["top1_agreement"], ".0%")
        if best else "n/a",
        help="The default method's top-1 training image equals full exact's (resemblance "
        f"lost) on this share of held-out seeds under the {a.get('default_rule')} rule.",
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

    if a.get("rules"):
        methods_section(a, chart)

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


def methods_section(a: dict, chart) -> None:
    """Every method against exact under each rule: a chart and one table per rule."""
    st.subheader("Which method names the right image? Every method against exact")
    st.caption(
        "On held-out seeds, each method's counterfactuals are scored like exact's and "
        f"compared with them. A method **fails** under a rule when its top-1 agrees with "
        f"exact's below {FAIL_TOP1:.0%}: the Attribution page labels it and never makes it "
        "the default. Copies: samples within pixel distance 1.0 of a training image."
    )
    chart("methods")
    for rule, r in a["rules"].items():
        st.markdown(
            f"**{rule}** · {len(r['seeds'])} seeds, {r['copies']} copies · default method "
            f"**{r['default_method']}** · exact's top-1 is not the nearest image on "
            f"{r['exact_top1_not_nearest']:.0%} of seeds"
        )
        st.dataframe(views.methods_table(r), hide_index=True)

