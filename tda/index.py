"""FAISS index of training images (exact L2 in pixel space, [0, 1] floats).

Saved as `index.faiss` (FAISS's own binary format, never pickle) beside `index.json`,
which records how many vectors of which size it holds. `search` answers the
"which training images look like this?" question for the app and `nearest`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import TdaError
from .ensemble import INDEX, INDEX_META

if TYPE_CHECKING:
    import faiss


def _faiss():
    """faiss, imported on first use: training and sampling never touch the index."""
    import faiss

    return faiss


def as_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 [M, C, H, W] (or float in [-1, 1]) -> float32 [M, C*H*W] in [0, 1]."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        v = a.astype(np.float32) / 255.0
    else:
        v = (np.clip(a.astype(np.float32), -1.0, 1.0) + 1.0) / 2.0
    return np.ascontiguousarray(v.reshape(len(v), -1))


def build_index(images: np.ndarray) -> faiss.Index:
    vecs = as_vectors(images)
    index = _faiss().IndexFlatL2(vecs.shape[1])
    index.add(vecs)
    return index


def save_index(run_dir: Path, index: faiss.Index) -> None:
    _faiss().write_index(index, str(Path(run_dir) / INDEX))
    meta = {"count": int(index.ntotal), "dim": int(index.d), "metric": "l2", "space": "[0,1]"}
    (Path(run_dir) / INDEX_META).write_text(json.dumps(meta, indent=2))


def load_index(run_dir: Path, images: np.ndarray) -> faiss.Index:
    """Load the run's index and check it matches its training images."""
    path = Path(run_dir) / INDEX
    if not path.is_file():
        raise TdaError(f"run {run_dir}: {INDEX} is missing (python -m tda index --run DIR)")
    index = _faiss().read_index(str(path))
    dim = int(np.prod(images.shape[1:]))
    if index.ntotal != len(images) or index.d != dim:
        raise TdaError(f"run {run_dir}: {INDEX} holds {index.ntotal} vectors of size {index.d}, "
                       f"the run has {len(images)} images of size {dim}")
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distances and training rows of the k nearest images per query."""
    k = min(k, index.ntotal)
    d, rows = index.search(as_vectors(queries), k)
    return d, rows


def nearest_row(images: np.ndarray, x) -> int:
    """The training row nearest to one image x [C, H, W] (pixel L2, brute force)."""
    x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    d = np.linalg.norm(as_vectors(images) - as_vectors(x[None]), axis=1)
    return int(d.argmin())
