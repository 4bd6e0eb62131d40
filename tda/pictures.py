"""Heatmaps and contact sheets drawn as plain images (PIL), for a light first view.

A browser draws an image at once, where a plotly chart first loads and compiles a few
MB of JavaScript: on a shared 2-core server with a class of browsers that is most of a
page's wait (benchmarks/README.md, "A class at once"). So the pages show these pictures
first and offer the interactive plotly version (tda.views) on request. Every picture
is drawn at the size it is shown, text included, so nothing is scaled in the browser.
Text is ASCII: Pillow's built-in font is the one font every machine has.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import TdaError
from .views import OFF_COLOR, ON_COLOR, bits, to_image

INK = (49, 51, 63)  # Streamlit's text colour
PAPER = (255, 255, 255)
FONT_PX = 13
PAD = 6


@lru_cache(maxsize=4)
def font(px: int = FONT_PX) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], dtype=np.float32)


def _text_size(text: str, px: int = FONT_PX) -> tuple[int, int]:
    left, top, right, bottom = font(px).getbbox(text)
    return int(right - left), int(bottom - top)


def heatmap_image(
    values: np.ndarray,
    row_labels: Sequence[str],
    cell: tuple[int, int] = (12, 12),
    low: str = OFF_COLOR,
    high: str = ON_COLOR,
    title: str = "",
    x_label: str = "",
    x_ticks: Sequence[tuple[int, str]] = (),
    cell_text: Sequence[Sequence[str]] | None = None,
    gap: int = 0,
) -> Image.Image:
    """values [rows, cols] in [0, 1] as cells coloured from `low` to `high`, with row labels
    on the left, an optional title above, ticks (column, text) and a label below, and an
    optional text in every cell. `info["grid"]` of the picture: (left, top, cell width,
    cell height) of the cells, so a reader (or a test) can find every cell."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    if v.ndim != 2 or 0 in v.shape:
        raise TdaError(f"a heatmap needs a non-empty [rows, cols] array, got shape {v.shape}")
    rows, cols = v.shape
    if len(row_labels) != rows:
        raise TdaError(f"{len(row_labels)} row labels for {rows} rows")
    cw, ch = cell
    line = _text_size("Mg")[1] + 4
    left = max(_text_size(s)[0] for s in row_labels) + PAD * 2
    top = (line + PAD) if title else PAD
    grid_w, grid_h = cols * cw, rows * ch
    bottom = PAD + (line + 4 if x_ticks else 0) + (line + 4 if x_label else 0)
    width = left + grid_w + PAD
    if title:
        width = max(width, _text_size(title)[0] + 2 * PAD)
    if x_label:
        width = max(width, left + _text_size(x_label)[0] + PAD)
    colours = _rgb(low) + v[..., None] * (_rgb(high) - _rgb(low))
    cells = np.repeat(np.repeat(colours.round().astype(np.uint8), ch, axis=0), cw, axis=1)
    if gap:  # white lines between cells
        cells[ch - gap :: ch, :] = PAPER
        cells[:, cw - gap :: cw] = PAPER
    im = Image.new("RGB", (width, top + grid_h + bottom), PAPER)
    im.paste(Image.fromarray(cells), (left, top))
    im.info["grid"] = (left, top, cw, ch)
    draw = ImageDraw.Draw(im)
    f = font()
    if title:
        draw.text((PAD, PAD), title, fill=INK, font=f)
    for r, label in enumerate(row_labels):
        draw.text((left - PAD, top + r * ch + ch / 2), label, fill=INK, font=f, anchor="rm")
    y = top + grid_h + 2
    for c, text in x_ticks:
        x = left + c * cw + cw / 2
        draw.line([(x, y), (x, y + 3)], fill=INK)
        draw.text((x, y + 6), text, fill=INK, font=f, anchor="mt")
    if x_label:
        draw.text((left + grid_w / 2, y + (line + 4 if x_ticks else 0) + 4), x_label, fill=INK,
                  font=f, anchor="mt")
    if cell_text is not None:
        for r, row in enumerate(cell_text):
            for c, text in enumerate(row):
                dark = v[r, c] > 0.5
                draw.text((left + c * cw + (cw - gap) / 2, top + r * ch + (ch - gap) / 2), text,
                          fill=PAPER if dark else INK, font=f, anchor="mm")
    return im


def _axis(count: int, width: int, steps: Sequence[int]) -> tuple[int, int]:
    """Whole-pixel column width for `count` columns within `width` pixels, and the first
    tick step of `steps` that puts ticks at least 40 px apart."""
    cw = int(np.clip(width // count, 1, 24))
    return cw, next((e for e in steps if e * cw >= 40), count)


def code_matrix_image(codes: np.ndarray, width: int = 760) -> Image.Image:
    """The code matrix: members down, training images across, blue where a member was
    trained on the image; as wide as `width` allows with whole-pixel columns."""
    codes = np.asarray(codes)
    N, n = codes.shape
    cw, every = _axis(N, width, [2**k for k in range(13)])
    return heatmap_image(
        codes.T.astype(np.float32), [f"m{i}" for i in range(n)], cell=(cw, 12),
        title=f"Code matrix: blue = member trained on the image ({N} images x {n} members)",
        x_label="training image #", x_ticks=[(i, str(i)) for i in range(0, N, every)], gap=1 if cw >= 6 else 0,
    )


def weights_image(code: np.ndarray, row: int) -> Image.Image:
    """Members' weights in the full ensemble vs the ensemble without training image `row`."""
    code = np.asarray(code).astype(bool)
    n, keep = len(code), int((~code).sum())
    on = np.stack([np.ones(n), np.where(code, 0.0, 1.0)])
    text = [[f"1/{n}"] * n, ["off" if c else f"1/{keep}" for c in code]]
    return heatmap_image(
        on * np.array([[keep / n], [1.0]]), ["full ensemble", f"without image #{row}"],
        cell=(40, 30), cell_text=text, gap=3,
        title=f"Member weights: image #{row} has code {bits(code)}, so its {int(code.sum())} "
        "members switch off",
        x_ticks=[(i, f"m{i}") for i in range(n)],
    )


def mixture_weights_image(loglik: torch.Tensor | np.ndarray, timesteps: np.ndarray,
                          saw: np.ndarray | None = None, width: int = 760) -> Image.Image:
    """The mixture's member weights at every step (softmax of the running log-likelihoods
    l [K, n]), white 0 to blue 1; * marks the members in `saw`."""
    ll = torch.as_tensor(np.asarray(loglik), dtype=torch.float64)
    w = torch.softmax(ll, dim=1).numpy()
    K, n = w.shape
    cw, every = _axis(K, width, (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))
    names = [f"m{i}" + (" *" if saw is not None and saw[i] else "") for i in range(n)]
    return heatmap_image(
        w.T, names, cell=(cw, 14), low="#ffffff",
        title="Which members the sample followed (mixture weight per step: white 0, blue 1)",
        x_label=f"step (t = {int(timesteps[0])} down to {int(timesteps[-1])})",
        x_ticks=[(k - 1, str(k)) for k in range(1, K + 1) if k == 1 or k % every == 0],
    )


def contact_sheet(images, captions: Sequence[str], cols: int = 8, size: int = 96) -> Image.Image:
    """Images [M, C, H, W] (or a list) on a grid of `cols` columns, each `size` pixels wide
    with its caption below: one picture instead of M."""
    images = list(images)
    if len(images) != len(captions):
        raise TdaError(f"{len(captions)} captions for {len(images)} images")
    if not images:
        raise TdaError("a contact sheet needs at least one image")
    cols = max(1, min(cols, len(images)))
    line = _text_size("Mg")[1] + 4
    cell_w = max(size, *(_text_size(c)[0] + 4 for c in captions)) + PAD
    cell_h = size + line + PAD
    rows = -(-len(images) // cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), PAPER)
    draw = ImageDraw.Draw(sheet)
    for i, (im, cap) in enumerate(zip(images, captions, strict=True)):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        pic = im if isinstance(im, Image.Image) else to_image(im, size)
        sheet.paste(pic.convert("RGB"), (x + (cell_w - pic.width) // 2, y))
        draw.text((x + cell_w / 2, y + size + 3), cap, fill=INK, font=font(), anchor="mt")
    return sheet
