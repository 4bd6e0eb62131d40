"""The candidate-first test against its definition, computed by hand from `counterfactual`
calls and a brute-force nearest neighbour; TAR from its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda import TdaError
from tda.candidate import CandidateTest, candidate_test, candidate_tests, control_rows, tar
from tda.index import as_vectors


def _nearest_by_hand(run, image: torch.Tensor) -> tuple[int, float]:
    d = np.linalg.norm(as_vectors(run.images) - as_vectors(image[None].numpy()), axis=1)
    return int(d.argmin()), float(d.min())


@pytest.mark.parametrize("rule", ["mean", "mixture"])
def test_candidate_test_equals_its_definition_by_hand(tiny_explorer, rule):
    ex = tiny_explorer.with_combine(rule)
    seed = 11
    t = candidate_test(ex, seed, controls=5, phantoms=3)
    sample = ex.sample(seed).sample
    cand, dist = _nearest_by_hand(ex.run, sample)
    assert (t.candidate, t.combine) == (cand, rule)
    assert t.candidate_distance == pytest.approx(dist, rel=1e-5)
    cf = ex.counterfactual(seed, remove_rows=[cand])
    torch.testing.assert_close(t.counterfactual, cf.counterfactual, rtol=0, atol=1e-5)
    assert t.nearest_after == _nearest_by_hand(ex.run, cf.counterfactual)[0]
    assert t.changed == (t.nearest_after != cand)
    rows = control_rows(ex.run.N, cand, 5, seed)
    assert cand not in rows and len(set(rows.tolist())) == 5
    np.testing.assert_array_equal(t.control_rows, rows)
    flips = []
    for r, near, effect in zip(rows, t.control_nearest, t.control_effects, strict=True):
        c = ex.counterfactual(seed, remove_rows=[int(r)])
        assert near == _nearest_by_hand(ex.run, c.counterfactual)[0]
        assert effect == pytest.approx(c.score, rel=1e-4, abs=1e-5)
        flips.append(near != cand)
    assert t.flip_rate == pytest.approx(np.mean(flips))
    assert t.p_value == (1.0 if not t.changed else (1 + sum(flips)) / 6)
    assert len(t.phantom_effects) == 3


def test_batched_samples_equal_one_at_a_time(tiny_explorer):
    ex = tiny_explorer.with_combine("mixture")
    many = candidate_tests(ex, [1, 2, 3], controls=4)
    for t in many:
        one = candidate_test(ex, t.seed, controls=4)
        assert (one.candidate, one.nearest_after) == (t.candidate, t.nearest_after)
        np.testing.assert_array_equal(one.control_nearest, t.control_nearest)
        np.testing.assert_allclose(one.control_effects, t.control_effects, rtol=1e-4, atol=1e-5)


def test_bad_control_counts_are_refused(tiny_explorer):
    with pytest.raises(TdaError, match="controls must be between"):
        candidate_test(tiny_explorer, 0, controls=0)


def _fake(changed: bool, control_flips: list[bool], effect=1.0, control_effects=None):
    R = len(control_flips)
    near = np.where(np.asarray(control_flips), 9, 0)
    img = torch.zeros(1, 2, 2)
    return CandidateTest(
        seed=0, steps=1, combine="mean", sample=img, candidate=0, candidate_distance=0.5,
        counterfactual=img + effect / 2, nearest_after=1 if changed else 0,
        control_rows=np.arange(1, R + 1), control_nearest=near,
        control_effects=np.asarray(control_effects if control_effects is not None else [0.5] * R),
        phantom_nearest=np.zeros(0, int), phantom_effects=np.zeros(0),
    )


def test_tar_follows_its_formula():
    tests = [_fake(True, [False, False, True, False]), _fake(True, [False] * 4),
             _fake(False, [True, False, False, False]), _fake(True, [False, True, False, False])]
    out = tar(tests, boot=200)
    pc, pr = 3 / 4, 3 / 16
    assert out["p_change_candidate"] == pc and out["p_change_random"] == pytest.approx(pr)
    assert out["tar"] == pytest.approx((pc - pr) / (1 - pr))
    assert out["far"] == pytest.approx(1 - out["tar"])
    assert out["tar_low"] <= out["tar"] <= out["tar_high"]
    assert out["candidate_beats_random_effect"] == 1.0  # effect 1.0 vs controls 0.5
    assert tests[1].p_value == pytest.approx(1 / 5) and tests[1].verdict == "attributable"
    assert tests[2].verdict == "not attributable" and tests[2].p_value == 1.0
    assert tests[0].verdict == "unclear"  # changed, but so did 1 of 4 controls
