"""Code matrix and weight vectors.

Every training image gets a unique n-bit code of Hamming weight h (`make_codes`);
member i is trained on the images whose bit i is 1. A weight vector v (length n)
mixes the members' noise predictions: u0 is the full ensemble, `without_rows` the
ensemble of the members that never saw some images, `members_on` any toggle set.
Phantom codes have weight h but belong to no image: they measure the noise floor.
"""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import torch

from . import TdaError


def make_codes(n_images: int, n_bits: int, weight: int, seed: int = 0) -> np.ndarray:
    """Unique random codes: uint8 [n_images, n_bits], every row of weight `weight`."""
    check_code_params(n_images, n_bits, weight)
    return _unique_codes(n_images, n_bits, weight, np.random.default_rng(seed), exclude=None)


def check_code_params(n_images: int, n_bits: int, weight: int) -> None:
    if n_bits < 2 or not 1 <= weight < n_bits:
        raise TdaError(f"code weight h={weight} must be between 1 and n-1={n_bits - 1}")
    if comb(n_bits, weight) < n_images:
        raise TdaError(
            f"only C({n_bits},{weight})={comb(n_bits, weight)} distinct codes exist for "
            f"{n_images} images: use more members or a weight closer to n/2"
        )


def phantom_codes(codes: np.ndarray, count: int, seed: int = 1) -> np.ndarray:
    """Up to `count` unique weight-h codes that no training image has."""
    n_bits, weight = codes.shape[1], int(codes[0].sum())
    count = min(count, comb(n_bits, weight) - len(codes))
    if count <= 0:
        return np.zeros((0, n_bits), dtype=np.uint8)
    return _unique_codes(count, n_bits, weight, np.random.default_rng(seed), exclude=codes)


def _unique_codes(
    count: int, n_bits: int, weight: int, rng: np.random.Generator, exclude: np.ndarray | None
) -> np.ndarray:
    taken = set() if exclude is None else {_key(c) for c in exclude}
    total = comb(n_bits, weight)
    if total <= 200_000 and count > total // 4:  # dense: enumerate all, draw without replacement
        allc = np.zeros((total, n_bits), dtype=np.uint8)
        for r, on in enumerate(itertools.combinations(range(n_bits), weight)):
            allc[r, list(on)] = 1
        free = np.array([r for r in range(total) if _key(allc[r]) not in taken])
        return allc[rng.choice(free, size=count, replace=False)]
    out = np.zeros((count, n_bits), dtype=np.uint8)
    k = 0
    while k < count:  # sparse: rejection sampling
        code = np.zeros(n_bits, dtype=np.uint8)
        code[rng.choice(n_bits, size=weight, replace=False)] = 1
        key = _key(code)
        if key not in taken:
            taken.add(key)
            out[k] = code
            k += 1
    return out


def _key(code: np.ndarray) -> bytes:
    return np.asarray(code, dtype=np.uint8).tobytes()


def u0(n: int) -> torch.Tensor:
    """The full ensemble: uniform weights over all n members."""
    return torch.full((n,), 1.0 / n)


def members_on(active: np.ndarray | list[bool] | torch.Tensor) -> torch.Tensor:
    """Uniform weights over the active members (a bool mask of length n)."""
    mask = torch.as_tensor(np.asarray(active, dtype=bool))
    if not mask.any():
        raise TdaError("at least one member must be on")
    return mask.float() / mask.sum()


def without_codes(codes: np.ndarray) -> torch.Tensor:
    """Weights [M, n]: row m is uniform over the members whose bit in code m is 0."""
    off = torch.as_tensor(1 - np.asarray(codes, dtype=np.float32))
    if (off.sum(1) == 0).any():
        raise TdaError("a code with every bit set leaves no member to sample with")
    return off / off.sum(1, keepdim=True)


def without_rows(codes: np.ndarray, rows: np.ndarray | list[int]) -> torch.Tensor:
    """Weights [n]: the members that saw none of the given training rows."""
    rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
    if rows.size and (rows.min() < 0 or rows.max() >= len(codes)):
        raise TdaError(f"training rows must be in 0..{len(codes) - 1}")
    saw = codes[rows].any(0) if rows.size else np.zeros(codes.shape[1], dtype=bool)
    if saw.all():
        raise TdaError("every member saw one of these images: nothing is left to sample with")
    return members_on(~saw)


def unseen_rows(codes: np.ndarray, weights: torch.Tensor | np.ndarray) -> np.ndarray:
    """Training rows that no member with non-zero weight saw, in code order."""
    w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    active = w != 0
    return np.flatnonzero(~(codes[:, active].astype(bool).any(1)))
