"""Small Streamlit building blocks shared by the pages: galleries and p-value badges."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import streamlit as st

from tda import pictures, views

CHART_ON = ":material/touch_app: interactive"  # a chart pill's one option, with a picture
CHART_SHOW = ":material/bar_chart: show"  # and without


def show(image, caption: str | None = None, size: int = 256, container=st) -> None:
    """One image [C, H, W] (uint8 or [-1, 1]), crisp, as PNG (JPEG would blur the pixels)."""
    container.image(views.to_image(image, size), caption=caption, output_format="PNG")


def show_residual(
    r, caption: str | None = None, size: int = 256, vmax: float | None = None, container=st
) -> None:
    container.image(views.residual_image(r, size, vmax), caption=caption, output_format="PNG")


def gallery(
    images: np.ndarray | Sequence, captions: Sequence[str], cols: int = 8, size: int = 96
) -> None:
    """Images in rows of `cols` columns, each with its caption."""
    for start in range(0, len(images), cols):
        row = st.columns(cols)
        for c, im, cap in zip(
            row, images[start : start + cols], captions[start : start + cols], strict=False
        ):
            show(im, cap, size, container=c)


def sheet(images: np.ndarray | Sequence, captions: Sequence[str], cols: int = 8,
          size: int = 96, caption: str | None = None) -> None:
    """Many small images as one picture (a contact sheet), captions drawn in: one image
    for the browser to fetch and lay out instead of one per thumbnail."""
    picture = pictures.contact_sheet(images, captions, cols, size)
    # its own width: a long caption would otherwise stretch the picture (and blur it)
    st.image(picture, caption=caption, output_format="PNG", width=picture.width)


def chart(label: str, make: Callable[[], object], key: str, picture=None) -> None:
    """A plotly chart on request. With `picture` (a PIL image of the same figure), the
    picture is shown and the pill swaps in the interactive chart; without, the pill
    shows the chart. Plotly's JavaScript, a few MB per browser, loads only when asked.
    A pill, not a toggle: the sidebar's controls load the same JavaScript (a toggle's
    would be one more chunk for every browser's first page)."""
    on = st.pills(label, [CHART_ON if picture is not None else CHART_SHOW], key=f"chart_{key}")
    if on:
        st.plotly_chart(make(), key=key)
    elif picture is not None:
        st.image(picture, output_format="PNG")


def table(rows: Sequence[dict]) -> str:
    """Rows of {column: value} (the first row's keys are the columns) as a markdown table:
    st.markdown draws it, with no table widget for the browser to load."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(map(cell, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def floor_badge(kind: str, text: str, container=st) -> None:
    """A row's score against its noise floor (`tda.agreement.floor_badge`)."""
    if kind == "above":
        container.badge(text, color="green", icon=":material/check_circle:")
    else:
        container.badge(text, color="gray")


def residual_legend(vmax: float) -> str:
    return (
        f"Residual = counterfactual − sample, colour scale ±{vmax:.2f}: "
        "red = brighter without the image, blue = darker, white = unchanged."
    )
