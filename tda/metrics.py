"""Classifier features, Fréchet distance and rank agreement, for evaluating a run.

A small CNN (`SmallCNN`) is trained on real images of the run's dataset that are
*not* in its training set (`load_images(..., held_out=True)`), at the run's image
size and channels, and saved beside the run as `classifier/` (safetensors weights +
JSON config with its accuracy on a held-out split of those images). Its penultimate
layer gives the features in which `frechet_distance` compares two image sets: this
is **FD in a classifier's features, not Inception FID** — numbers are comparable
within one classifier only. `spearman`, `pearson` and `topk_overlap` compare two
score vectors over the same training images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import rankdata
from torch import nn

from . import TdaError
from .config import DataConfig
from .data import load_images, to_model_space

FD_NAME = "FD in a classifier's features, not Inception FID"
CLASSIFIER_DIR = "classifier"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CONFIDENT = 0.9  # a sample is "confidently classified" at this top softmax probability


@dataclass
class ClassifierConfig:
    image_size: int  # the run's image size
    channels: int  # the run's channels
    n_classes: int
    width: int = 32  # channels of the first conv block (the second has twice as many)
    feature_dim: int = 64  # penultimate layer: the features FD is computed in
    steps: int = 1500  # optimiser steps
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    val_fraction: float = 0.25  # share of the held-out images kept out of training
    max_images: int = 20_000  # cap on held-out images used (train + validation)


class SmallCNN(nn.Module):
    """conv-conv-pool-conv-conv-pool(2x2) -> features (ReLU) -> logits."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * w, cfg.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(cfg.feature_dim, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass
class Classifier:
    model: SmallCNN
    config: ClassifierConfig
    info: dict  # accuracy, image counts, dataset, fit seconds
    path: Path | None = None
    sha256: str = ""  # of the saved weights: which classifier computed a result

    @property
    def accuracy(self) -> float:
        return float(self.info["accuracy"])


def heldout_split(
    data: DataConfig, cfg: ClassifierConfig
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """Held-out images of a run's dataset, split into (train x, y, validation x, y).

    Images are in model space [-1, 1]; the split is fixed by `cfg.seed`.
    """
    images, labels = load_images(data, held_out=True)
    if len(images) < 20:
        raise TdaError(
            f"dataset {data.dataset!r} has only {len(images)} images outside the "
            "run's training set: too few to train and check a classifier"
        )
    rows = np.random.default_rng(cfg.seed).permutation(len(images))[: cfg.max_images]
    n_val = max(10, int(round(cfg.val_fraction * len(rows))))
    val, train = rows[:n_val], rows[n_val:]
    x = to_model_space(images)
    return x[train], labels[train], x[val], labels[val]


def fit_classifier(
    data: DataConfig,
    out: str | Path,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    **settings,
) -> Classifier:
    """Train the CNN on held-out images of `data` and save it to the folder `out`.

    `settings` override `ClassifierConfig` fields (steps, width, ...).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise TdaError(f"{out} exists; load it with load_classifier or pass overwrite=True")
    try:
        cfg = ClassifierConfig(data.image_size, data.channels, 0, **settings)
    except TypeError as e:
        raise TdaError(f"unknown classifier setting: {e}") from e
    t0 = time.perf_counter()
    xt, yt, xv, yv = heldout_split(data, cfg)
    cfg.n_classes = int(max(yt.max(), yv.max())) + 1
    torch.manual_seed(cfg.seed)
    model = SmallCNN(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=max(1, cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    y_train = torch.as_tensor(yt)
    model.train()
    for step in range(cfg.steps):
        rows = torch.randint(0, len(xt), (cfg.batch_size,), generator=gen)
        x = _shift(xt[rows], gen).to(device)
        loss = nn.functional.cross_entropy(model(x), y_train[rows].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and ((step + 1) % 25 == 0 or step + 1 == cfg.steps):
            progress(step + 1, cfg.steps)
    model.eval()
    clf = Classifier(model, cfg, {})
    pred = probabilities(clf, xv).argmax(1)
    clf.info = {
        "accuracy": float((pred == yv).mean()),
        "n_train": len(xt),
        "n_val": len(xv),
        "data": asdict(data),
        "fit_seconds": round(time.perf_counter() - t0, 2),
        "what": f"held-out accuracy on {len(xv)} real images outside the run's "
        "training set and outside the classifier's own training split",
    }
    save_classifier(clf, out)
    return clf


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift a batch by up to one pixel each way (background fill), a light augmentation."""
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    H, W = x.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]


def save_classifier(clf: Classifier, out: Path) -> None:
    """Write weights (safetensors) and config + info (JSON), replacing `out` atomically."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in clf.model.state_dict().items()},
        str(tmp / WEIGHTS),
    )
    clf.sha256 = _sha256(tmp / WEIGHTS)
    meta = {"config": asdict(clf.config), "info": clf.info, "sha256": clf.sha256}
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    clf.path = out


def load_classifier(
    path: str | Path, data: DataConfig | None = None, device: str | torch.device = "cpu"
) -> Classifier:
    """Load a saved classifier; with `data`, check it was trained for that run's data."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise TdaError(f"{path} holds no classifier ({CONFIG} + {WEIGHTS}); fit one first")
    try:
        meta = json.loads((path / CONFIG).read_text())
        known = {f.name for f in fields(ClassifierConfig)}
        cfg = ClassifierConfig(**{k: v for k, v in meta["config"].items() if k in known})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TdaError(f"{path / CONFIG} is not a classifier config: {e}") from e
    if meta.get("sha256") != _sha256(path / WEIGHTS):
        raise TdaError(f"{path / WEIGHTS} does not match its sha256 in {CONFIG}; refit it")
    if data is not None and not trained_outside(meta.get("info", {}).get("data"), data):
        raise TdaError(f"{path} was trained for other data than this run; refit it")
    model = SmallCNN(cfg)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS)))
    except RuntimeError as e:
        raise TdaError(f"{path / WEIGHTS} does not fit its config: {e}") from e
    return Classifier(model.to(device).eval(), cfg, meta["info"], path, meta["sha256"])


def trained_outside(fitted: dict | None, data: DataConfig) -> bool:
    """Whether a classifier fitted for the data config `fitted` never saw an image of `data`:
    the same config, or the same but a larger draw. Draws are nested (`balanced_subset`
    takes a prefix of each class's fixed permutation), so the images outside a larger
    draw are outside every smaller one: one classifier serves a whole ladder of runs."""
    if not isinstance(fitted, dict):
        return False
    same = {**fitted, "n_train": data.n_train} == asdict(data)
    return same and isinstance(fitted.get("n_train"), int) and fitted["n_train"] >= data.n_train


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _as_input(images) -> torch.Tensor:
    """uint8 images -> model space; float arrays/tensors are taken as model space."""
    if isinstance(images, np.ndarray):
        return to_model_space(images) if images.dtype == np.uint8 else torch.from_numpy(images)
    return images.float()


@torch.no_grad()
def _batched(clf: Classifier, images, fn, batch: int) -> np.ndarray:
    x = _as_input(images)
    device = next(clf.model.parameters()).device
    out = [fn(x[s : s + batch].to(device)).cpu() for s in range(0, len(x), batch)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def features(clf: Classifier, images, batch: int = 512) -> np.ndarray:
    """Penultimate-layer features [M, feature_dim] (float64) of images [M, C, H, W]."""
    return _batched(clf, images, clf.model.body, batch)


def probabilities(clf: Classifier, images, batch: int = 512) -> np.ndarray:
    """Class probabilities [M, n_classes] (softmax of the logits)."""
    return _batched(clf, images, lambda x: clf.model(x).softmax(1), batch)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of two feature sets [M, D].

    FD in a classifier's features, not Inception FID.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise TdaError(
            f"Fréchet distance needs two sets of >= 2 feature vectors of one "
            f"dimension, got {a.shape} and {b.shape}"
        )
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # near-singular covariances (dead ReLU units) are common
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(ca @ cb)
        if not np.isfinite(root).all():  # as in pytorch-fid: nudge the diagonals
            off = 1e-6 * np.eye(len(ca))
            root = scipy.linalg.sqrtm((ca + off) @ (cb + off))
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(root).real)


def pearson(a, b) -> float:
    """Pearson correlation of two score vectors; NaN if either is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either is constant."""
    return pearson(rankdata(a), rankdata(b))


def topk_overlap(a, b, k: int) -> float:
    """Share of the k highest-scoring indices of `a` that are among the k highest of `b`."""
    a, b = np.asarray(a), np.asarray(b)
    k = min(int(k), len(a))
    if k < 1 or len(a) != len(b):
        raise TdaError(
            f"top-k overlap needs two score vectors of one length and k >= 1 "
            f"(got {len(a)}, {len(b)}, k={k})"
        )
    ta = np.argsort(-a, kind="stable")[:k]
    tb = np.argsort(-b, kind="stable")[:k]
    return len(np.intersect1d(ta, tb)) / k
