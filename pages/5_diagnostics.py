"""Diagnostics: sample quality, convergence, agreement with exact scores and the noise floor.

Everything comes from the run's evaluation report (RUN/report/report.json, written by
`python -m tda evaluate`); a small version can be recomputed live.
"""

from dataclasses import replace

import streamlit as st

from ui import diagnostics, guard, results, sidebar
from ui.diagnostics import FD_NAME, LIVE

ctx = sidebar.sidebar("Diagnostics")
run = ctx.run
live_key = f"diagnostics_live_{ctx.key}_{ctx.combine}"
saved_name = diagnostics.SAVED

st.title("Diagnostics")
st.caption(
    "Does the ensemble sample like the real data, do its members agree, do the fast "
    f"approximations rank training images like the exact counterfactuals, and do exact "
    f"scores rise above the phantom noise floor? Distances are **{FD_NAME}**: a small "
    "CNN trained on real images outside this run's training set supplies the features, "
    "so numbers compare within this report only."
)

try:
    saved = results.saved_report(ctx.key, saved_name)
except ValueError as e:
    saved = None
    guard.log.warning("%s", e)
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
        try:  # a queued job (ui.results.run_job), shared with anyone asking the same
            st.session_state[live_key] = results.live_evaluation(
                ctx.key, ctx.combine, replace(LIVE, samples=int(samples), seeds=int(seeds))
            )
        except Exception as e:  # noqa: BLE001 - a visitor reads why, without server paths
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
    st.info(
        f"This report is partial: it has {diagnostics.present(report)}. The other "
        f"parts come from `{command}` (resumable: finished parts are kept).",
        icon=":material/info:",
    )

diagnostics.draw(report)
