"""Training set: browse it, inspect one image, and search it with a sample or an upload."""

import numpy as np
import streamlit as st

from tda import views
from ui import attribution, render, results, sidebar
from ui.upload import UploadError, read_image

PAGE_SIZE = 32
NEIGHBOURS = 6

ctx = sidebar.sidebar("Training set")
run = ctx.run
size, channels = run.image_shape[1], run.image_shape[0]


def neighbours(query: np.ndarray, skip: int | None = None, caption: str | None = None) -> None:
    """The training images nearest to one query image [C, H, W], the query first if captioned."""
    pairs = results.neighbours(ctx.key, query, NEIGHBOURS, skip)
    images = [run.images[j] for j, _ in pairs]
    captions = [f"#{j} · {int(run.labels[j])} · L2 {dist:.2f}" for j, dist in pairs]
    if caption is not None:
        images, captions = [query, *images], [caption, *captions]
    render.sheet(images, captions, cols=len(images), size=96)


st.title("Training set")

# -- browse ------------------------------------------------------------------------------
st.subheader("Browse")
labels = sorted({int(x) for x in run.labels})
shown_label = sidebar.choice("Label", ["all", *map(str, labels)], key="browse_label",
                           help="Only the images of one label.", most=16, longest=4)
label = "all" if shown_label == "all" else int(shown_label)
f2, f3 = st.columns([1, 4], vertical_alignment="bottom")
rows = np.arange(run.N) if label == "all" else np.flatnonzero(run.labels == label)
pages = max(1, -(-len(rows) // PAGE_SIZE))
page = f2.number_input(f"Page (of {pages})", 1, pages, 1, key=f"browse_page_{label}")
shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
which = "" if label == "all" else f" with label {label}"
f3.caption(f"{len(rows)} images{which}; page {page} shows {len(shown)}.")
render.sheet(run.images[shown], [f"#{j}: {int(run.labels[j])}" for j in shown], cols=16, size=48,
             caption="#index: label")

# -- one image ---------------------------------------------------------------------------
st.subheader("One training image")
left, right = st.columns([1, 3])
own = results.own_image(ctx.key, ctx.seed, ctx.combine)  # the sample's nearest image
j = left.number_input(
    "Training image #",
    0,
    run.N - 1,
    key=f"picked_{ctx.seed}",
    on_change=sidebar.keep(f"picked_{ctx.seed}", own, (0, run.N - 1)),
    help=f"Opens on #{own}, the training image nearest to the sample of seed {ctx.seed}.",
)
render.show(run.images[j], f"#{j} · label {int(run.labels[j])}", 192, left)
with right:
    members = views.members_of(run.codes[j])
    st.markdown(
        f"Code `{views.bits(run.codes[j])}`: seen by members "
        f"{', '.join(map(str, members))}; never by "
        f"{', '.join(str(i) for i in range(run.n) if i not in members)}."
    )
    attribution.image_standing(ctx, j)
    st.markdown("**Nearest training images**")
    st.caption("#index · label · L2 distance, pixels in [0, 1].")
    neighbours(run.images[j], skip=j)

# -- search ------------------------------------------------------------------------------
st.subheader("Search the training set")
st.markdown(
    f"**With the current sample (seed {ctx.seed})**: a memorised sample sits at "
    "distance ≈ 0 from a training image."
)
y, _ = results.ensemble_sample(ctx.key, ctx.seed, ctx.combine)
neighbours(y, caption=f"seed {ctx.seed} (query)")

st.markdown("**With an image of your own**")
max_mb = ctx.limits.upload_mb
upload = st.file_uploader(
    f"PNG or JPEG, at most {max_mb} MB and {ctx.limits.upload_pixels:,} pixels; it is "
    f"converted to {channels}×{size}×{size} like the training images",
    type=["png", "jpg", "jpeg"],
    max_upload_size=max_mb,
    key="upload",
)
if upload is not None:
    try:
        query = read_image(upload.getvalue(), upload.name, size, channels, ctx.limits)
    except UploadError as e:
        st.error(str(e), icon=":material/broken_image:")
    else:
        neighbours(query, caption="your image, converted")
