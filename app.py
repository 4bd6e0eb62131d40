"""Streamlit entry point of the explorer (`streamlit run app.py`), and its Home page.

Home: what the tool does, the loaded run, its code matrix, how a counterfactual works.
The other views are Streamlit's native multipage `pages/` (URL /generate, /attribution,
...); each page, this one included, starts with `ui.sidebar.sidebar(title)`, which sets the
page config, draws the navigation and the shared sidebar (run, seed, combination rule,
all carried in the URL), so a deep link on a freshly started server shows the whole
app. Runs come from assets/ (the shipped one is assets/default) and from the folder in
TDA_RUNS.
"""

import streamlit as st

from tda import pictures, views
from ui import findings, render, results, sidebar

INIT_HELP = {
    "shared": "shared: members start from the same weights and random stream.",
    "independent": "independent: one seed per member.",
    "pretrained": "pretrained: members start from one base model trained on the dataset's "
    "images outside the training set.",
}

ctx = sidebar.sidebar("Home")
run = ctx.run

st.title("Which training images made this sample?")
st.markdown(
    "This explorer asks which training images made a generated image, using an **encoded "
    "ensemble** of diffusion models: every training image has a code that says which "
    "members were trained on it. "
    "Sampling again with only the members that never saw an image — with exactly the same "
    "recorded noise — shows the sample **as if that image had never been in the training "
    "set**, and the difference is that image's influence. "
    "Scoring **phantom** codes (owned by no image) the same way measures the ensemble's own "
    "noise, so you can see whether an influence rises above it."
)

st.subheader(f"Loaded run: {ctx.label}")
s = run.summary()
c_, h_, w_ = run.image_shape
replay = run.config.train.replay
st.markdown(
    f"**{s['N']:,} training images** (N) · **{s['n']} members** (n) · each image seen by "
    f"**h = {s['h']}** members · {s['dataset']}, {h_}×{w_} px, {c_} channel(s) · "
    f"{s['steps']} sampling steps"
)
st.caption(
    f"{s['train_steps']:,} training steps per member · "
    + (f"{replay:.0%} of each member batch replayed from held-out images · " if replay else "")
    + f"{s['params_per_member']:,} parameters per member · "
    + INIT_HELP.get(s["init"], "")
)

findings.attributable(run, ctx.label)

render.chart("Interactive code matrix (hover for each image)",
             lambda: views.code_matrix_figure(run.codes, run.labels), "codes",
             picture=pictures.code_matrix_image(run.codes))

st.subheader("How a counterfactual works")
row = results.own_image(ctx.key, ctx.seed, ctx.combine)  # the sample's own nearest image
code = run.codes[row]
st.image(pictures.weights_image(code, row), output_format="PNG")
cf, _ = results.counterfactual(ctx.key, ctx.seed, tuple(bool(b) for b in code == 0), ctx.combine)
before, after = views.distances_to(run.images[row], cf.sample, cf.counterfactual)
c = st.columns([4, 3])
names = [f"training image #{row}", f"sample (seed {ctx.seed})", f"without image #{row}",
         "residual"]
with c[0]:  # one picture, captions drawn in (and said below it), not four
    render.sheet([views.to_image(run.images[row], 128), views.to_image(cf.sample, 128),
                  views.to_image(cf.counterfactual, 128), views.residual_image(cf.residual, 128)],
                 names, cols=4, size=128, caption=" · ".join(names))
c[1].markdown(
    f"Training image #{row} is the one nearest to this sample (distance {before:.2f}). "
    + (f"The full ensemble averages all {run.n} members' noise predictions. "
       if ctx.combine == "mean" else
       f"The full ensemble mixes all {run.n} members, each weighted by how well it explains "
       "the trajectory so far. ")
    + f"Image #{row} was seen by members {', '.join(map(str, views.members_of(code)))}; "
    f"switch them off, spread the weight over the {run.n - run.h} members that never saw "
    "it, and run the chain again **with the same noise**. "
    f"Without it the sample is {after:.2f} from the image: **resemblance lost "
    f"{after - before:+.2f}**"
    + (" — the sample looked like this image *because of* it." if after - before > 1 else
       " — little changes: this sample does not owe its look to this one image.")
    + " Part of any residual is the quirks of the members switched off, which is why "
    "phantom codes (owned by no image) measure the noise floor."
)

st.caption(
    "Next, in the sidebar: **Generate** a sample, **Attribute** it, switch members off in "
    "the **Ablation lab**, browse the **Training set**, or climb the **Ladder** of runs "
    "at growing N. The links keep this run, seed "
    "and rule, and so does the page's URL: copy it to share this view."
)
