"""Streamlit entry point of the explorer (`streamlit run app.py`), and its Home page.

Home: what the tool does, the loaded run, its code matrix, how a counterfactual works.
The other views are Streamlit's native multipage `pages/` (URL /generate, /attribution,
...); each page, this one included, starts with `ui.state.sidebar(title)`, which sets the
page config, draws the navigation and the shared sidebar (run, seed, combination rule,
all carried in the URL), so a deep link on a freshly started server shows the whole
app. Runs come from assets/ (the shipped one is assets/default) and from the folder in
TDA_RUNS.
"""

import streamlit as st

from tda import pictures, views
from ui import nav, render, state

INIT_HELP = {
    "shared": "shared: members start from the same weights and random stream.",
    "independent": "independent: one seed per member.",
    "pretrained": "pretrained: members start from one base model trained on the dataset's "
    "images outside the training set.",
}

ctx = state.sidebar("Home")
run = ctx.run

st.title("Which training images made this sample?")
st.markdown(
    "This explorer asks which training images made a generated image, using an **encoded "
    "ensemble** of diffusion models: every training image has a code that says which "
    "members were trained on it. "
    "Sampling again with only the members that never saw an image — with exactly the same "
    "recorded noise — shows the sample *as if that image had never been in the training "
    "set*, and the difference is that image's influence. "
    "Scoring *phantom* codes (owned by no image) the same way measures the ensemble's own "
    "noise, so you can see whether an influence rises above it."
)

st.subheader(f"Loaded run: {ctx.label}")
s = run.summary()
c_, h_, w_ = run.image_shape
replay = run.config.train.replay
# facts and tables as markdown: one element kind the page loads anyway, where metrics and
# st.table would each make every visitor's browser fetch and compile more JavaScript
st.markdown(render.table([{
    "Training images N": s["N"],
    "Members n": s["n"],
    "Code weight h": s["h"],
    "Dataset": s["dataset"],
    "Image size": f"{h_}×{w_}",
    "Sampling steps": s["steps"],
    "Initialisation": s["init"] + (" + replay" if replay else ""),
}]))
st.caption(
    f"h: how many members see each image ({c_} channel(s) per image) · "
    f"{s['train_steps']:,} training steps per member · "
    + (f"{replay:.0%} of each member batch replayed from held-out images · " if replay else "")
    + f"{s['params_per_member']:,} parameters per member · "
    + INIT_HELP.get(s["init"], "")
)

tar = views.tar_finding(run.path)
if tar is not None:
    head = {"ok": "Yes: samples here are attributable.",
            "partly": "Partly.", "weak": "Mostly not."}[tar["level"]]
    show = {"ok": st.success, "partly": st.warning, "weak": st.warning}[tar["level"]]
    show(f"**Is attribution meaningful here? {head}** " + tar["text"])
    paper = tar["paper"]
    st.markdown(render.table(
        [{"rule": r["rule"] + (" (this run's default)" if r["rule"] == tar["default_rule"] else ""),
          "TAR": f"{r['tar']:.2f}", "95% interval": f"{r['low']:.2f}–{r['high']:.2f}",
          "x̂ ablation changes the sample": f"{r['candidate']:.0%}",
          "random ablation changes it": f"{r['random']:.0%}",
          "samples that copy a training image": f"{r['copies']:.0%}",
          "paper (MNIST)": "—" if paper is None else f"{paper[1]:.2f} at N = {paper[0]:,}"}
         for r in tar["rows"]],
    ))

finding = views.floor_finding(run.path)
if finding is None and tar is None:
    st.info(
        "No attribution measurement for this run yet: run `python -m tda evaluate --run "
        f"{ctx.label}` (the run's folder) to learn whether its samples are attributable."
    )
elif finding is not None and tar is not None:  # the candidate test leads; the floor adds
    st.caption("**Scores vs the phantom floor.** " + finding[1])
elif finding is not None:
    head = {"weak": "Mostly not.", "partly": "Partly.", "ok": "Yes."}[finding[0]]
    show = st.success if finding[0] == "ok" else st.warning
    show(f"**Is attribution meaningful here? {head}** " + finding[1])

render.chart("Interactive code matrix (hover for each image)",
             lambda: views.code_matrix_figure(run.codes, run.labels), "codes",
             picture=pictures.code_matrix_image(run.codes))

st.subheader("How a counterfactual works")
code = run.codes[0]
st.image(pictures.weights_image(code, 0), output_format="PNG")
cf, _ = state.counterfactual(ctx.key, ctx.seed, tuple(bool(b) for b in code == 0), ctx.combine)
c = st.columns([1, 1, 1, 1, 3])
render.show(run.images[0], "training image #0", 128, c[0])
render.show(cf.sample, f"sample (seed {ctx.seed})", 128, c[1])
render.show(cf.counterfactual, "without image #0", 128, c[2])
render.show_residual(cf.residual, "residual", 128, container=c[3])
c[4].markdown(
    (f"The full ensemble averages all {run.n} members' noise predictions. "
     if ctx.combine == "mean" else
     f"The full ensemble mixes all {run.n} members, each weighted by how well it explains "
     "the trajectory so far. ")
    + "Training image #0 "
    f"was seen by members {', '.join(map(str, views.members_of(code)))}; switch them off, "
    f"spread the weight over the {run.n - run.h} members that never saw it, and run the "
    "chain again **with the same noise**. The residual is what image #0 contributed — plus "
    "the quirks of the members that were switched off, which is why phantom codes (owned "
    "by no image) measure the noise floor."
)

st.subheader("Where to go")
c = st.columns(4)
view = st.query_params.to_dict()
nav.link("generate", "Generate a sample", c[0], view)
nav.link("attribution", "Attribute it", c[1], view)
nav.link("ablation", "Switch members off", c[2], view)
nav.link("training_set", "Browse the training set", c[3], view)
