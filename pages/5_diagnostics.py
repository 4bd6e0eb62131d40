"""Diagnostics: sample quality, convergence, agreement with exact scores and the noise floor.

Everything comes from the run's evaluation report (RUN/report/report.json, written by
`python -m tda evaluate`); a small version can be recomputed live.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st

from tda import TdaError
from tda.evaluate import REPORT, EvalSizes
from tda.metrics import CONFIDENT, FD_NAME
from tda.report_figures import figures
from ui import guard, state

REPORT_DIR = "report"
LIVE = EvalSizes(samples=32, seeds=1, draws=1, sizes=(1, 2, 4), classifier_steps=300)


@st.cache_data(show_spinner=False, max_entries=8)
def load_report(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())


ctx = state.sidebar("Diagnostics")
run = ctx.run
report_path = Path(run.path) / REPORT_DIR / REPORT
live_key = f"diagnostics_live_{ctx.key}_{ctx.combine}"
saved_name = f"{REPORT_DIR}/{REPORT}"  # shown instead of the server path

st.title("Diagnostics")
st.caption(
    "Does the ensemble sample like the real data, do its members agree, do the fast "
    f"approximations rank training images like the exact counterfactuals, and do exact "
    f"scores rise above the phantom noise floor? Distances are **{FD_NAME}**: a small "
    "CNN trained on real images outside this run's training set supplies the features, "
    "so numbers compare within this report only."
)

saved = None
if report_path.is_file():
    try:
        saved = load_report(str(report_path), report_path.stat().st_mtime_ns)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        guard.log.warning("cannot read %s: %s", report_path, e)
        st.error(f"Cannot read this run's `{saved_name}`: it is damaged. Recompute it below.")

command = f"python -m tda evaluate --run {ctx.label}"  # the label, not the server path
with st.expander("Recompute a small version live", expanded=saved is None):
    st.caption(
        "Tiny sizes, in a temporary folder: the run's saved report is not touched. Fits a "
        "quick classifier first if the run has none. The full report comes from "
        f"`{command}` (resumable; see `--help` for its sizes)."
    )
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    lim = ctx.limits
    samples = c1.number_input(
        "Samples per weight vector",
        min(8, lim.live_samples),
        lim.live_samples,
        min(LIVE.samples, lim.live_samples),
        key="diag_n",
    )
    seeds = c2.number_input(
        "Seeds scored exactly", 1, lim.live_seeds, min(LIVE.seeds, lim.live_seeds), key="diag_seeds"
    )
    if c3.button(
        "Recompute small version", type="primary", icon=":material/refresh:", key="diag_recompute"
    ):
        try:  # a queued job (ui.state.run_job), shared with anyone asking the same
            st.session_state[live_key] = state.live_evaluation(
                ctx.key, ctx.combine, replace(LIVE, samples=int(samples), seeds=int(seeds))
            )
        except TdaError as e:
            names = {str(run.path): ctx.label}
            st.error(f"Cannot evaluate this run: {guard.public_message(e, names)}")

live = st.session_state.get(live_key)
if saved is None and live is None:
    st.info(
        f"**No evaluation report for this run yet** (looked for `{saved_name}` in run **{ctx.label}**). "
        f"Produce it with\n\n```\n{command}\n```\n\nor recompute a small version above.",
        icon=":material/analytics:",
    )
    st.stop()
if saved is not None and live is not None:
    shown = st.segmented_control(
        "Show",
        ["saved report", "live small version"],
        default="live small version",
        key="diag_which",
    )
    report = live if shown == "live small version" else saved
else:
    report = saved if saved is not None else live
if report is live:
    s = report["sizes"]
    st.caption(
        f"Live small version: {s['samples']} samples, {s['seeds']} seed(s), "
        f"{s['draws']} draw(s) — rough numbers."
    )
else:
    st.caption(f"Saved report: `{saved_name}` of run **{ctx.label}**")
if not report.get("complete"):
    names = {"candidate": "candidate test", "fidelity": "sample quality",
             "convergence": "convergence", "attribution": "approximations and noise floor"}
    have = [v for k, v in names.items() if k in report]
    st.info(
        f"This report is partial: it has {', '.join(have) or 'no part yet'}. The other "
        f"parts come from `{command}` (resumable: finished parts are kept).",
        icon=":material/info:",
    )

figs = figures(report)


def chart(name: str) -> None:
    if name in figs:
        st.plotly_chart(figs[name], key=f"fig_{name}")


def fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


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
