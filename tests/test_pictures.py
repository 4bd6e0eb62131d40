"""The pictures of tda.pictures hold what they draw: cells read back as the values, every
thumbnail of a contact sheet as the image it shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda import TdaError, pictures, views
from tda.encoding import make_codes


def _cells(im, rows: int, cols: int) -> np.ndarray:
    """The colour of every cell near its top-left corner (clear of its text): [rows, cols, 3]."""
    left, top, cw, ch = im.info["grid"]
    a = np.asarray(im)
    ys = top + np.arange(rows) * ch + min(2, ch // 2)
    xs = left + np.arange(cols) * cw + min(2, cw // 2)
    return a[ys][:, xs].astype(int)


def test_the_code_matrix_picture_reads_back_as_the_codes():
    codes = make_codes(100, 12, 3, seed=0)
    im = pictures.code_matrix_image(codes)
    cells = _cells(im, 12, 100)
    on = (cells == pictures._rgb(views.ON_COLOR)).all(axis=2)
    off = (cells == pictures._rgb(views.OFF_COLOR)).all(axis=2)
    assert (on | off).all()
    assert np.array_equal(on, codes.T == 1)
    assert im.width <= 760 + 200  # fits the page without scaling


def test_the_weights_picture_switches_off_the_members_that_saw_the_image():
    code = np.array([1, 0, 0, 1, 0, 1, 0, 0], np.uint8)
    cells = _cells(pictures.weights_image(code, 4), 2, 8)
    blue = pictures._rgb(views.ON_COLOR)
    assert (cells[1][code == 0] == blue).all()  # the members left carry all the weight
    assert (cells[1][code == 1] == pictures._rgb(views.OFF_COLOR)).all()
    assert len({tuple(c) for c in cells[0]}) == 1  # the full ensemble: equal weights
    assert not (cells[0] == blue).all(axis=1).any()  # 1/8 is lighter than 1/5


def test_the_mixture_picture_reads_back_as_the_softmax_weights():
    ll = torch.randn(30, 6, generator=torch.Generator().manual_seed(0)).cumsum(0) * 3
    im = pictures.mixture_weights_image(ll, np.arange(29, -1, -1), np.array([1, 0, 1, 0, 0, 0]))
    w = torch.softmax(ll.double(), dim=1).numpy()
    blue = pictures._rgb(views.ON_COLOR)
    cells = _cells(im, 6, 30)[..., 0].T  # red channel: 255 at weight 0, blue's red at 1
    read = (255.0 - cells) / (255.0 - blue[0])
    assert np.abs(read - w).max() <= 1 / (255 - blue[0]) + 1e-9


def test_a_contact_sheet_shows_every_image_at_its_size_with_its_caption():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    sheet = pictures.contact_sheet(images, [f"#{i}" for i in range(5)], cols=3, size=32)
    a = np.asarray(sheet)
    cell_w, cell_h = sheet.width // 3, sheet.height // 2
    for i, im in enumerate(images):
        want = np.asarray(views.to_image(im, 32).convert("RGB"))
        x, y = (i % 3) * cell_w + (cell_w - 32) // 2, (i // 3) * cell_h
        assert np.array_equal(a[y : y + 32, x : x + 32], want)
        caption = a[y + 32 : y + cell_h, x : x + 32]
        assert (caption != 255).any()  # something is written under it
    assert (a[cell_h:, 2 * cell_w :] == 255).all()  # the sixth cell is empty


def test_pictures_refuse_what_they_cannot_draw():
    with pytest.raises(TdaError, match="captions for"):
        pictures.contact_sheet(np.zeros((2, 1, 4, 4)), ["one"])
    with pytest.raises(TdaError, match="at least one"):
        pictures.contact_sheet([], [])
    with pytest.raises(TdaError, match="row labels"):
        pictures.heatmap_image(np.zeros((2, 3)), ["a"])
    with pytest.raises(TdaError, match="non-empty"):
        pictures.heatmap_image(np.zeros((0, 3)), [])
