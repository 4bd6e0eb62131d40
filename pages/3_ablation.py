"""Ablation lab: switch members on and off and see the exact sample they make together."""

import numpy as np
import streamlit as st

from tda import views
from ui import render, results, sidebar

ctx = sidebar.sidebar("Ablation lab")
run = ctx.run
n = run.n


def _set_mask(mask) -> None:
    for i in range(n):
        sidebar.set_kept(f"member_{i}", bool(mask[i]))


st.title("Ablation lab")
st.caption(
    "Every switch is a member of the ensemble. The sample on the right is the exact "
    "chain of the members that are on, with the same recorded noise as the original. "
    "Removing a training image is switching off every member that saw it."
)

b1, b2, b3, b4, b5 = st.columns([2, 2, 3, 2, 3], vertical_alignment="bottom")
b1.button("All on", on_click=_set_mask, args=(np.ones(n, bool),), width="stretch")
only = b2.selectbox(
    "Member", range(n), key="only_member", on_change=sidebar.keep("only_member", 0, (0, n - 1))
)
b3.button(f"Only member {only}", on_click=_set_mask, args=(np.arange(n) == only,), width="stretch")
own = results.own_image(ctx.key, ctx.seed, ctx.combine)  # the sample's nearest image
row = b4.number_input(
    "Training image #",
    0,
    run.N - 1,
    key=f"remove_row_{ctx.seed}",
    on_change=sidebar.keep(f"remove_row_{ctx.seed}", own, (0, run.N - 1)),
    help=f"Opens on #{own}, the training image nearest to this sample.",
)
b5.button(
    f"Remove image #{row}",
    on_click=_set_mask,
    args=(run.codes[row] == 0,),
    width="stretch",
    help="Switches off the members that saw it: the exact counterfactual of that image.",
)

st.caption("Members: switch m i off to drop member i from the ensemble.")
per_row = min(8, n)
active = []
for start in range(0, n, per_row):
    cols = st.columns(per_row)
    for i in range(start, min(n, start + per_row)):
        active.append(
            cols[i - start].toggle(
                f"m{i}", key=f"member_{i}", on_change=sidebar.keep(f"member_{i}", True)
            )
        )
on = int(sum(active))
if on == 0:
    st.warning("Switch at least one member on: an ensemble of no members samples nothing.")
    st.stop()

cf, seconds = results.counterfactual(ctx.key, ctx.seed, tuple(bool(a) for a in active), ctx.combine)
residual = cf.residual.numpy()
vmax = views.residual_scale(residual)
c = st.columns([2, 2, 2, 2])
render.show(cf.sample, f"full ensemble (seed {ctx.seed})", 256, c[0])
render.show(cf.counterfactual, f"{on} of {n} members on", 256, c[1])
render.show_residual(residual, "residual", 256, vmax, c[2])
with c[3]:
    st.metric("Members on", f"{on}/{n}")
    st.metric("Distance ‖y′ − y‖", f"{cf.score:.4f}")
    st.metric(
        "Unseen training images",
        len(cf.excluded),
        help="Training images that no member that is on ever saw.",
    )
    st.caption(f"Chain computed in {seconds:.2f} s.")
if on == n:
    st.caption("All members are on: this is the full ensemble itself, so nothing changes.")
else:
    st.caption(render.residual_legend(vmax))

st.subheader(f"Training images no active member saw ({len(cf.excluded)})")
if len(cf.excluded) == 0:
    st.caption(
        "Every training image was seen by at least one member that is on: this "
        "ensemble removes nothing, it only re-weights members."
    )
else:
    shown = cf.excluded[:64]
    render.gallery(
        run.images[shown], [f"#{j} · label {int(run.labels[j])}" for j in shown], cols=8, size=96
    )
    if len(cf.excluded) > len(shown):
        st.caption(f"... and {len(cf.excluded) - len(shown)} more.")
