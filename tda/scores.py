"""Scores of training images from counterfactual samples, and each score's noise floor.

Every counterfactual method yields, for a training image x, the sample without it:
y_-x. Three scores read it (higher = more of this sample is owed to x):
- `resemblance` (the default): resemblance lost. The sample resembles x as far as it is
  closer to x than x's own nearest other training image: res(y, x) = max(0, D_x - ||y - x||)
  in pixels [0, 1], D_x = the distance from x to its nearest other training image. The
  score is res(y, x) - res(y_-x, x) = min(||y_-x - x||, D_x) - min(||y - x||, D_x): how
  much of the sample's resemblance to x goes when x goes. 0 when removing x changes
  nothing, however close x is; at most D_x, reached when a copy of x turns into
  something no closer to x than its neighbours are. The cap keeps an image the sample
  never resembled from scoring because the sample, without it, moves even further away.
- `features`: the same in the run's classifier's feature space (`classifier/`, written
  by `evaluate`): resemblance in what the digit looks like rather than pixel by pixel.
- `magnitude`: ||y_-x - y|| in model space [-1, 1]: how much the sample would change.
  Under the mixture rule any ablation that removes a member the sample leaned on moves
  it to another copy about as far away, so it ranks flips, not resemblance.

Noise floor (DESIGN.md section 8): phantom codes (weight h, owned by no image) switch
members without removing anything. An image's resemblance floor is the same image
against the phantom ablations, res(y, x) - res(y_-phi, x) ([N, P]: like is compared with
like); the magnitude's floor is ||y_-phi - y|| ([P], one per sample). p-values are
empirical with the +1 correction; `bh_qvalues` corrects for testing many rows at once
(Benjamini-Hochberg).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from . import TdaError

SCORES = ("resemblance", "features", "magnitude")
DEFAULT_SCORE = "resemblance"
SCORE_VERSION = 3  # results computed under another meaning of `scores` are not reused
ALPHA = 0.05  # a row is above the floor when its Benjamini-Hochberg q-value is at most this
MEANING = {
    "resemblance": "resemblance lost: how much of the sample's closeness to the training image "
    "(closer than that image's nearest neighbour, in pixels) goes when the image goes",
    "features": "resemblance lost in the classifier's features: the same question about what "
    "the digit looks like",
    "magnitude": "how much the sample would change without the image, whatever it turns into",
    "nearness": "not influence: minus the pixel distance from the sample to the image",
}

Features = Callable[[torch.Tensor], torch.Tensor]  # images in model space -> [M, F]


def pixels(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images -> flat float64 pixels in [0, 1]: uint8 as stored, floats as model space."""
    t = torch.as_tensor(np.asarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype == torch.uint8:
        return (t.double() / 255.0).flatten(1)
    return ((t.double().clamp(-1, 1) + 1) / 2).flatten(1)


def model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (the space the samples live in)."""
    t = torch.as_tensor(np.asarray(images))
    return t.float() / 127.5 - 1 if t.dtype == torch.uint8 else t.float()


def spacing(x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Each row's distance to its nearest other row (flat vectors [N, D]): D_x."""
    out = torch.empty(len(x), dtype=x.dtype)
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s : s + chunk], x)
        d[torch.arange(len(d)), torch.arange(s, s + len(d))] = float("inf")
        out[s : s + chunk] = d.min(dim=1).values
    return out


def resemblance_lost(cf: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                     radius: torch.Tensor) -> np.ndarray:
    """min(||cf_m - x_m||, D_m) - min(||y - x_m||, D_m) for rows of flat vectors cf [M, D],
    x [M, D], y [D] and each row's radius D_m [M]."""
    before = torch.minimum((y[None] - x).norm(dim=1), radius)
    return (torch.minimum((cf - x).norm(dim=1), radius) - before).numpy()


def resemblance_floor(null_cf: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                      radius: torch.Tensor) -> np.ndarray:
    """The same with every phantom's counterfactual null_cf [P, D] for every row: [M, P]."""
    if len(null_cf) == 0:
        return np.zeros((len(x), 0))
    before = torch.minimum((y[None] - x).norm(dim=1), radius)
    return (torch.minimum(torch.cdist(x, null_cf), radius[:, None]) - before[:, None]).numpy()


def compute(
    cf: torch.Tensor,
    images: np.ndarray,
    null_cf: torch.Tensor,
    sample: torch.Tensor,
    radius: np.ndarray | torch.Tensor,
    features: Features | None = None,
    feature_radius: np.ndarray | torch.Tensor | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every score of M rows from their counterfactuals cf [M, C, H, W] (model space), their
    training images [M, C, H, W] (uint8) and each image's spacing D_x [M] (pixels; in
    features: `feature_radius`), with the floors from the phantoms' counterfactuals
    null_cf [P, C, H, W]: ({score: [M]}, {score: [M, P] or [P]}). `features` (the
    classifier's, or None: no `features` score)."""
    if len(cf) != len(images):
        raise TdaError(f"{len(cf)} counterfactuals for {len(images)} training images")
    y, x = pixels(sample[None])[0], pixels(images)
    c, n = pixels(cf), pixels(null_cf)
    rad = torch.as_tensor(np.asarray(radius), dtype=torch.float64)
    scores = {"resemblance": resemblance_lost(c, y, x, rad)}
    nulls = {"resemblance": resemblance_floor(n, y, x, rad)}
    if features is not None and feature_radius is not None:
        f = lambda t: torch.as_tensor(features(t), dtype=torch.float64)  # noqa: E731
        fy, fx, fc = f(sample[None])[0], f(model_space(images)), f(cf)
        fn = f(null_cf) if len(null_cf) else torch.zeros(0, fy.shape[0], dtype=torch.float64)
        frad = torch.as_tensor(np.asarray(feature_radius), dtype=torch.float64)
        scores["features"] = resemblance_lost(fc, fy, fx, frad)
        nulls["features"] = resemblance_floor(fn, fy, fx, frad)
    scores["magnitude"] = (cf - sample).flatten(1).double().norm(dim=1).numpy()
    nulls["magnitude"] = (null_cf - sample).flatten(1).double().norm(dim=1).numpy()
    return ({k: v.astype(np.float32) for k, v in scores.items()},
            {k: v.astype(np.float32) for k, v in nulls.items()})


@dataclass
class Scorer:
    """The scores of a run's training rows: its images, their spacings D_x (pixels and,
    with a classifier, features) and the feature map."""

    images: np.ndarray  # uint8 [N, C, H, W]
    radius: np.ndarray  # [N]
    features: Features | None = None
    feature_radius: np.ndarray | None = None

    def __call__(self, cf: torch.Tensor, rows, null_cf: torch.Tensor, sample: torch.Tensor):
        """`compute` for training rows `rows` with counterfactuals cf [len(rows), ...]."""
        rows = np.asarray(rows, dtype=np.int64)
        fr = None if self.feature_radius is None else self.feature_radius[rows]
        return compute(cf, self.images[rows], null_cf, sample, self.radius[rows],
                       self.features, fr)


def make_scorer(images: np.ndarray, features: Features | None = None) -> Scorer:
    """A run's `Scorer`: each image's distance to its nearest other image, in pixels and
    (with `features`) in feature space."""
    radius = spacing(pixels(images)).numpy()
    fr = None
    if features is not None:
        fr = spacing(torch.as_tensor(features(model_space(images)), dtype=torch.float64)).numpy()
    return Scorer(images, radius, features, fr)


def pvalues(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """P(null >= score) with the +1 correction: `null` [P] shared by every row, or [N, P]
    one floor per row. NaN for rows without a score or without a floor."""
    scores = np.asarray(scores, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    P = null.shape[-1]
    if P == 0:
        return np.full(len(scores), np.nan, dtype=np.float32)
    if null.ndim == 1:
        s = np.sort(null)
        ge = len(s) - np.searchsorted(s, scores, side="left")
    else:
        ge = (null >= scores[:, None]).sum(axis=1)
    p = (1 + ge) / (1 + P)
    p[~np.isfinite(scores)] = np.nan
    if null.ndim == 2:
        p[~np.isfinite(null).all(axis=1)] = np.nan
    return p.astype(np.float32)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the rows that have a p-value (NaN stays NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return q.astype(np.float32)
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q.astype(np.float32)


def order_of(scores: np.ndarray) -> np.ndarray:
    """Rows best first; rows without a score (NaN) last, in row order."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    return np.argsort(-s, kind="stable").astype(np.int64)
