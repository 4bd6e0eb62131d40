"""Generate: the ensemble's sample of a seed, its denoising trajectory, every member alone."""

import numpy as np
import streamlit as st

from tda import pictures, views
from ui import render, results, sidebar

ctx = sidebar.sidebar("Generate")
run = ctx.run

st.title("Generate")
st.caption(
    "The full ensemble's sample of the seed in the sidebar. The seed fixes the "
    "recorded noise, so every other page reuses this exact chain."
)

y, sample_s = results.ensemble_sample(ctx.key, ctx.seed, ctx.combine)
traj, timesteps, traj_s = results.trajectory(ctx.key, ctx.seed, ctx.combine)
members, members_s = results.member_samples(ctx.key, ctx.seed, ctx.combine)

left, mid, right = st.columns([3, 3, 2])
with left:
    st.subheader(f"Sample of seed {ctx.seed}")
    render.show(y, f"full ensemble, {len(timesteps)} steps", size=320)
with mid:
    st.subheader("Denoising trajectory")
    K = len(timesteps)
    if st.session_state.get("traj_step", K) > K:  # a run with fewer steps was picked
        del st.session_state["traj_step"]
    k = st.slider(
        "Step", 0, K, K, key="traj_step", help="0 is the pure noise x_T; the last is the sample."
    )
    label = "x_T (pure noise)" if k == 0 else f"after step {k}/{K} (t = {int(timesteps[k - 1])})"
    render.show(traj[k], label, size=320)
with right:
    st.subheader("Timing")
    st.markdown(render.table([  # markdown, not st.metric: no metric JavaScript to load
        {"computed": "Ensemble sample", "seconds": f"{sample_s:.2f} s"},
        {"computed": "Trajectory", "seconds": f"{traj_s:.2f} s"},
        {"computed": f"All {run.n} members alone", "seconds": f"{members_s:.2f} s"},
    ]))
    st.caption("Times of the first computation (a featured seed's when it was "
               "precomputed); repeats come from the cache.")

if ctx.combine == "mixture":
    loglik = results.mixture_loglik(ctx.key, ctx.seed)
    nearest = int(views.nearest_row(run.images, y))
    saw = run.codes[nearest] == 1
    render.chart("Interactive weights (hover for each step)",
                 lambda: views.mixture_weights_figure(loglik, timesteps, saw), "weights",
                 picture=pictures.mixture_weights_image(loglik, timesteps, saw))
    st.caption(
        f"Under the mixture rule each member is weighted by how well it explains the "
        f"trajectory so far. *: the members trained on training image #{nearest}, the one "
        "nearest to the sample."
    )

frames = np.unique(np.linspace(0, K, min(K + 1, 11)).round().astype(int))
st.caption("The chain at a glance, from pure noise to the sample:")
render.sheet(traj[frames], [f"step {f}" for f in frames], cols=len(frames), size=64)

st.subheader("Every member alone, same noise")
st.caption(
    "m i: member i sampled by itself (weights e_i) with the same noise; saw k: it was "
    "trained on k images. Members that disagree with the ensemble show how much each "
    "one's quirks could move a counterfactual."
)
seen = run.codes.sum(0)
render.sheet(members, [f"m{i}, saw {int(seen[i])}" for i in range(run.n)], cols=min(8, run.n),
             size=96)
