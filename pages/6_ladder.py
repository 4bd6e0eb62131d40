"""Ladder: runs of one recipe at growing N; where samples stop copying a training image."""

import streamlit as st

from ui import ladder, render, sidebar

ctx = sidebar.sidebar("Ladder")

st.title("Ladder")
st.caption(
    "The same recipe trained on more and more images. With few images per member, each "
    "member knows its own images and a sample copies one of them: ablating that image "
    "changes the sample, and the attribution is certain (TAR near 1). With many, members "
    "generalise, samples become new digits, and no single image is to blame."
)
rows = ladder.rungs()
if len(rows) < 2:
    st.info("The ladder needs runs at two or more N. Train one with the recipe of this run "
            "and a different `--n`, put it under assets/ or TDA_RUNS, and reload.",
            icon=":material/stairs:")

st.subheader("TAR against N, ours beside the paper's")
render.chart("TAR curve", lambda: ladder.tar_curve(rows, ctx.label), "ladder_tar",
             picture=ladder.tar_picture(rows, ctx.label))
st.caption(
    "TAR (the candidate-first test of Dai & Gifford, 2024): how much more often ablating a "
    "sample's nearest training image changes it than ablating a random one; bars are 95% "
    "intervals. Their members each see half the images; ours see N·h/n."
)
st.markdown(render.table(ladder.table(rows)))

st.subheader(f"Seed {ctx.seed} on every rung")
shown = ladder.same_seed(rows, ctx.seed)
render.sheet(
    [r["sample"] for r in shown] + [r["nearest"] for r in shown],
    [f"N = {r['N']:,}: sample" for r in shown]
    + [f"#{r['row']} · L2 {r['distance']:.2f}{' · copy' if r['copy'] else ''}" for r in shown],
    cols=len(shown), size=128,
    caption="Top: each rung's sample of this seed (its own rule). Bottom: its nearest "
    "training image and their pixel distance; a copy is closer than 1.0.",
)
ladder.switch_buttons(shown, ctx.label)
