"""Codes and weight vectors, checked against brute force."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
import torch

from tda import TdaError
from tda.encoding import (
    make_codes,
    members_on,
    phantom_codes,
    u0,
    unseen_rows,
    without_codes,
    without_rows,
)

# (N, n, h): the dense path (draw from all codes), the sparse path (rejection), all codes
CASES = [(16, 6, 3), (100, 16, 8), (5000, 16, 8), (20, 6, 3)]


def _rows(codes: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in codes}


@pytest.mark.parametrize(("N", "n", "h"), CASES)
def test_codes_are_unique_binary_of_weight_h(N, n, h):
    codes = make_codes(N, n, h, seed=0)
    assert codes.shape == (N, n) and codes.dtype == np.uint8
    assert set(np.unique(codes)) <= {0, 1}
    assert (codes.sum(1) == h).all()
    assert len(_rows(codes)) == N


@pytest.mark.parametrize(("N", "n", "h"), CASES[:3])
def test_codes_are_seeded(N, n, h):
    assert np.array_equal(make_codes(N, n, h, seed=4), make_codes(N, n, h, seed=4))
    assert not np.array_equal(make_codes(N, n, h, seed=4), make_codes(N, n, h, seed=5))


def test_too_few_codes_is_refused_clearly():
    assert comb(6, 3) == 20
    with pytest.raises(TdaError, match=r"C\(6,3\)=20.*21 images"):
        make_codes(21, 6, 3)
    with pytest.raises(TdaError, match="between 1 and n-1"):
        make_codes(4, 6, 0)
    with pytest.raises(TdaError, match="between 1 and n-1"):
        make_codes(1, 6, 6)


@pytest.mark.parametrize(("N", "n", "h"), CASES[:3])
def test_phantoms_never_collide_with_real_codes(N, n, h):
    codes = make_codes(N, n, h, seed=0)
    want = 64
    ph = phantom_codes(codes, want, seed=1)
    assert len(ph) == min(want, comb(n, h) - N)
    assert (ph.sum(1) == h).all() and ph.dtype == np.uint8
    assert len(_rows(ph)) == len(ph)
    assert not (_rows(ph) & _rows(codes))
    assert np.array_equal(ph, phantom_codes(codes, want, seed=1))


def test_phantoms_run_out_with_the_free_codes():
    codes = make_codes(16, 6, 3)
    ph = phantom_codes(codes, 100)
    assert len(ph) == 4  # C(6,3) - 16
    assert _rows(ph) | _rows(codes) == _rows(_all_codes(6, 3))
    assert phantom_codes(make_codes(20, 6, 3), 10).shape == (0, 6)


def _all_codes(n: int, h: int) -> np.ndarray:
    allc = np.array([[(m >> b) & 1 for b in range(n)] for m in range(2**n)], dtype=np.uint8)
    return allc[allc.sum(1) == h]


def _unseen_brute_force(codes: np.ndarray, w: np.ndarray) -> list[int]:
    return [
        m
        for m in range(len(codes))
        if all(codes[m, i] == 0 for i in range(codes.shape[1]) if w[i] != 0)
    ]


def test_unseen_rows_match_brute_force():
    codes = make_codes(100, 16, 8, seed=2)
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random(16) < rng.uniform(0.1, 0.9)
        if not mask.any():
            continue
        w = members_on(mask)
        assert unseen_rows(codes, w).tolist() == _unseen_brute_force(codes, w.numpy())
    assert unseen_rows(codes, u0(16)).tolist() == []


def test_removing_an_image_uses_exactly_the_members_whose_bit_is_zero():
    codes = make_codes(16, 6, 3, seed=0)
    for x in range(len(codes)):
        w = without_rows(codes, [x])
        assert torch.equal(w != 0, torch.as_tensor(codes[x] == 0))
        torch.testing.assert_close(w[w != 0], torch.full((3,), 1 / 3))
        assert x in unseen_rows(codes, w)
    torch.testing.assert_close(
        without_codes(codes), torch.stack([without_rows(codes, [x]) for x in range(16)])
    )


def test_removing_several_images_uses_members_that_saw_none_of_them():
    codes = make_codes(100, 16, 8, seed=0)
    rows = [3, 40]
    w = without_rows(codes, rows)
    saw = codes[3].astype(bool) | codes[40].astype(bool)
    assert torch.equal(w != 0, torch.as_tensor(~saw))
    assert float(w.sum()) == pytest.approx(1.0)
    assert set(rows) <= set(unseen_rows(codes, w).tolist())


def test_weight_vectors_refuse_impossible_requests():
    codes = make_codes(16, 6, 3, seed=0)
    with pytest.raises(TdaError, match="0..15"):
        without_rows(codes, [16])
    with pytest.raises(TdaError, match="0..15"):
        without_rows(codes, [-1])
    complement = [m for m in range(16) if not (codes[m] & codes[0]).any()]
    if complement:  # two images with disjoint codes cover every member
        with pytest.raises(TdaError, match="every member"):
            without_rows(codes, [0, complement[0]])
    with pytest.raises(TdaError, match="at least one"):
        members_on([False] * 6)
    assert torch.equal(without_rows(codes, []), members_on([True] * 6))


def test_u0_and_members_on_are_uniform():
    assert torch.equal(u0(6), torch.full((6,), 1 / 6))
    torch.testing.assert_close(members_on([True] * 6), u0(6), rtol=0, atol=0)
    w = members_on([True, False, True, False, False, False])
    assert w.tolist() == [0.5, 0, 0.5, 0, 0, 0]
