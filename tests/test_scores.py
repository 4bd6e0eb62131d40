"""Scores specific to each image: resemblance lost, its floor, p- and q-values, badges,
and the ideal-memoriser check that the copied image comes first under the mixture."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tda.agreement import FAIL_TOP1, choose_default, floor_badge, method_figures, standing
from tda.api import Explorer
from tda.attribution import attribute
from tda.ensemble import load_run
from tda.ideal import ideal_members
from tda.scores import bh_qvalues, make_scorer, pixels, pvalues


def test_compute_matches_its_definition_row_by_row():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 4, 4), generator=g, dtype=torch.uint8).numpy()
    y = torch.rand(1, 4, 4, generator=g) * 2 - 1
    cf = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    null = torch.rand(3, 1, 4, 4, generator=g) * 2 - 1
    x = images.reshape(5, -1) / 255.0
    D = np.array([[np.linalg.norm(a - b) if i != j else np.inf for j, b in enumerate(x)]
                  for i, a in enumerate(x)]).min(1)  # each image's nearest other image
    scorer = make_scorer(images)
    np.testing.assert_allclose(scorer.radius, D, rtol=1e-12)
    s, n = scorer(cf, np.arange(5), null, y)
    px = lambda t: (t.numpy().reshape(len(t), -1).astype(np.float64) + 1) / 2  # noqa: E731
    res = lambda v, i: max(0.0, D[i] - np.linalg.norm(v - x[i]))  # noqa: E731
    for i in range(5):
        y0 = px(y[None])[0]
        assert s["resemblance"][i] == pytest.approx(res(y0, i) - res(px(cf)[i], i), abs=1e-6)
        for p in range(3):
            assert n["resemblance"][i, p] == pytest.approx(res(y0, i) - res(px(null)[p], i),
                                                           abs=1e-6)
    np.testing.assert_allclose(s["magnitude"], (cf - y).flatten(1).norm(dim=1), rtol=1e-6)
    assert "features" not in s  # no classifier given
    # a removal that leaves the sample unchanged scores 0, however close the image is
    same, _ = scorer(y[None].expand(5, -1, -1, -1), np.arange(5), null, y)
    np.testing.assert_allclose(same["resemblance"], 0, atol=1e-6)
    assert torch.equal(pixels(images), torch.as_tensor(images).double().flatten(1) / 255)
    # an image the sample never resembled (further than D_x) scores at most 0
    far = make_scorer(images)
    far.radius = np.zeros(5)
    assert (far(cf, np.arange(5), null, y)[0]["resemblance"] == 0).all()


def test_per_row_pvalues_and_benjamini_hochberg_against_brute_force():
    scores = np.array([3.0, 1.0, np.nan, 0.5])
    null = np.array([[1, 2, 4], [0, 0, 0], [1, 1, 1], [0.5, 0.6, 0.1]])
    np.testing.assert_allclose(pvalues(scores, null), [2 / 4, 1 / 4, np.nan, 3 / 4])
    np.testing.assert_allclose(pvalues(np.array([0.0, 2.5, 10.0]), np.array([1.0, 2.0, 3.0])),
                               [1.0, 0.5, 0.25])
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 12)
    p[3] = np.nan
    q = bh_qvalues(p)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    for i in ok:  # q_i = min over p_j >= p_i of p_j * m / rank_j
        ranks = {j: 1 + int((p[ok] < p[j]).sum() + (p[ok][: list(ok).index(j)] == p[j]).sum())
                 for j in ok}
        brute = min(min(1.0, p[j] * m / ranks[j]) for j in ok if p[j] >= p[i])
        assert q[i] == pytest.approx(brute, rel=1e-6)
    assert np.isnan(q[3])


def test_floor_badge_needs_a_method_that_holds_against_exact():
    passing = {"fails": False, "top1_agreement": 0.95}
    failing = {"fails": True, "top1_agreement": 0.1}
    assert floor_badge(0.01, 0.02, passing)[0] == "above"
    assert floor_badge(0.01, 0.2, passing)[0] == "within"  # corrected for many rows
    kind, text = floor_badge(0.001, 0.001, failing)
    assert kind == "none" and "fails" in text and "10%" in text
    assert floor_badge(0.001, 0.001, None)[0] == "none"  # not measured on this run
    assert floor_badge(float("nan"), float("nan"), passing)[0] == "none"
    report = {"attribution": {"rules": {"mixture": {"seeds": [1, 2], "methods": {
        "jacobian": {"seconds_median": 3.0, "scores": {"resemblance": failing}}}}}}}
    fig = standing(report, "mixture", "jacobian+verify")
    assert fig["fails"] and fig["seeds"] == 2 and fig["seconds_median"] == 3.0
    assert standing(report, "mean", "jacobian") is None


def test_default_method_is_the_best_one_that_holds_and_answers_in_time():
    def m(top1, secs):
        return {"seconds_median": secs,
                "scores": {"resemblance": {"top1_agreement": top1, "fails": top1 < FAIL_TOP1}}}

    methods = {"exact": m(1.0, 90), "screened": m(0.95, 20), "jacobian": m(0.1, 5),
               "last-step": m(0.97, 45)}
    assert choose_default(methods) == "screened"  # last-step is better but too slow
    methods["last-step"] = m(0.97, 2)
    assert choose_default(methods) == "last-step"


def test_method_figures_count_copies_and_runner_ups():
    near = {"nearest_row": np.array([0]), "nearest_distance": np.array([0.3])}
    res = [{**near, "exact.resemblance": np.array([2.0, 0.1, 0.0]),
            "m.resemblance": np.array([2.0, 1.9, np.nan])},
           {**near, "exact.resemblance": np.array([0.2, 1.0, 0.0]),
            "m.resemblance": np.array([0.1, 0.2, 0.0])}]
    f = method_figures(res, "m", "resemblance")
    assert f["top1_agreement"] == 1.0 and f["copies"] == 2
    assert f["copy_top1"] == 0.5 and f["copy_rank_median"] == 1.5
    assert f["copy_runner_up_clear"] == 0.5  # 1.9 of 2.0: not clear; 0.1 of 0.2: clear
    assert f["top1_not_nearest"] == 0.5


@pytest.fixture(scope="module")
def ideal_explorer(tiny_run_dir):
    """The tiny run's codes and images, members replaced by ideal memorisers, mixture."""
    run = load_run(tiny_run_dir)
    sched = DDPMScheduler.from_config(run.scheduler.config)
    images = torch.as_tensor(run.images).float() / 127.5 - 1
    members = ideal_members(images, run.codes, sched.alphas_cumprod)
    return Explorer(dataclasses.replace(run, members=members), combine="mixture")


def test_ideal_memorisers_copied_image_is_top1_by_resemblance_lost(ideal_explorer):
    """Every sample of ideal memorisers under the mixture copies one training image;
    resemblance lost names that image first, with a clear runner-up."""
    ex = ideal_explorer
    flat = pixels(ex.run.images).float()
    for seed in range(6):
        att = attribute(ex, seed, "exact")
        copied = int(torch.cdist(pixels(att.sample[None]).float(), flat)[0].argmin())
        assert float(torch.cdist(pixels(att.sample[None]).float(), flat)[0].min()) < 0.1
        assert int(att.order[0]) == copied
        top, second = att.scores[att.order[:2]]
        assert second <= 0.8 * top


def test_q_values_count_only_rows_that_could_rise_above_their_floor():
    from tda.attribution import Attribution

    scores = np.array([2.0, 0.0, 0.0, 0.5], np.float32)
    null = np.zeros((4, 9), np.float32)  # rows 1, 2: never resembled, nothing can move them
    null[3] = np.linspace(0, 1, 9)
    att = Attribution("exact", 0, 1, torch.zeros(1, 2, 2), {"resemblance": scores},
                      {"resemblance": null}, 0.0, True)
    np.testing.assert_allclose(att.pvalues, [0.1, 1.0, 1.0, 0.6], rtol=1e-6)
    # BH over rows 0 and 3 only: q_0 = 0.1 * 2 / 1, q_3 = 0.6 * 2 / 2
    np.testing.assert_allclose(att.qvalues, [0.2, 1.0, 1.0, 0.6], rtol=1e-6)
