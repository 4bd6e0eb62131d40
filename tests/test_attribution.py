"""Attribution methods against exact counterfactuals and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from tda.api import Explorer
from tda.attribution import (
    FD_STEP,
    METHODS,
    attribute,
    counterfactuals_for,
    counterfactuals_need_chains,
    jacobian,
    verify_topk,
)
from tda.cli import main
from tda.encoding import u0, without_codes
from tda.ensemble import load_run
from tda.scores import pvalues

SEED = 5


@pytest.fixture(scope="module")
def linear_explorer(tiny_run_dir) -> Explorer:
    """The tiny run with clip_sample off: with one step (from t=999), y is affine in v."""
    run = load_run(tiny_run_dir)
    run.scheduler = DDPMScheduler.from_config(
        run.scheduler.config, clip_sample=False, timestep_spacing="trailing"
    )
    return Explorer(run)


@pytest.fixture(scope="module")
def exact_att(tiny_explorer):
    return attribute(tiny_explorer, SEED, "exact")


def _rounding_bound(ex: Explorer, method: str, y_scale: float) -> float:
    """Largest per-pixel error float32 arithmetic allows a linear approximation here.

    Each chain's y carries rounding of a couple of float32 epsilons of its magnitude
    (y_scale), and so does the approximation's own sum. A counterfactual combines member
    directions, each the difference of two chains, with coefficients of total size
    max_x ||u_-x - u0||_1 (the paper's form: h / (n - h)); a forward difference also
    divides by its step. Exact arithmetic would give 0 error.
    """
    rounding = 2 * torch.finfo(torch.float32).eps * y_scale
    codes = ex.run.codes
    coef = max(float((without_codes(codes) - u0(ex.n)).abs().sum(1).max()),
               float(codes.sum(1).max()) / (ex.n - int(codes[0].sum())))
    step = FD_STEP if method == "jacobian" else 1.0
    return rounding * (1 + 2 * coef / step)  # measured here: 0.07 (jacobian) to 0.4 of it


@pytest.mark.parametrize("method", ["jacobian", "last-step", "individual", "individual-paper"])
def test_one_step_linear_chain_makes_approximations_exact(linear_explorer, method):
    ex = linear_explorer
    exact = attribute(ex, SEED, "exact", steps=1)
    approx = attribute(ex, SEED, method, steps=1)
    rows = np.arange(ex.run.N)
    cf_exact = counterfactuals_for(ex, exact, rows)
    # one step from t = 999 without clipping divides by sqrt(alpha_bar) ~ 0.006: |y| ~ 1e2
    y_scale = float(ex.y(torch.eye(ex.n), SEED, 1).abs().max())
    atol = _rounding_bound(ex, method, y_scale)
    torch.testing.assert_close(counterfactuals_for(ex, approx, rows), cf_exact, rtol=0, atol=atol)
    # a score is the norm of a residual: its error is at most the residual error's norm
    score_atol = atol * float(np.sqrt(cf_exact[0].numel()))
    mag, emag = approx.with_score("magnitude"), exact.with_score("magnitude")
    np.testing.assert_allclose(mag.scores, emag.scores, rtol=0, atol=score_atol)
    np.testing.assert_allclose(mag.null_scores, emag.null_scores, rtol=0, atol=score_atol)
    # the bound is tight enough to mean something: far below the scores themselves
    assert score_atol < 0.05 * float(np.median(emag.scores))


def _chain_of_v(ex: Explorer, seed: int):
    """An independent dense chain y(v) written for torch.func (no masking, no batching)."""
    chain, noise = ex.chain(), ex.noise(seed)
    members = ex.run.members

    def f(v: torch.Tensor) -> torch.Tensor:
        x = noise.x_T[None]
        for k, t in enumerate(chain.timesteps):
            eps = sum(v[i] * m(x, t).sample for i, m in enumerate(members))
            x = chain.step(k, x, eps, noise.noise[k])
        return x[0].flatten()

    return f


def test_jacobian_matches_forward_mode_ad_and_small_exact_changes(linear_explorer):
    ex = linear_explorer
    n = ex.n
    J = jacobian(ex, SEED)
    f = _chain_of_v(ex, SEED)
    tangents = torch.eye(n)
    J_ad = torch.stack([torch.func.jvp(f, (u0(n),), (tangents[i],))[1] for i in range(n)], 1)
    torch.testing.assert_close(J, J_ad, rtol=0, atol=2e-3 * float(J_ad.abs().max()))
    # an exact small change of the weights moves the sample by J @ dv
    dv = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1e-3
    y0 = ex.y(u0(n), SEED)[0].flatten()
    y1 = ex.y(u0(n) + dv, SEED)[0].flatten()
    torch.testing.assert_close(y1 - y0, J @ dv, rtol=0, atol=0.02 * float((y1 - y0).abs().max()))


def test_forward_and_central_differences_agree_on_a_multi_step_chain(tiny_explorer):
    ex = tiny_explorer
    fwd, central = jacobian(ex, SEED), jacobian(ex, SEED, central=True)
    assert float((fwd - central).norm() / central.norm()) < 0.05


def test_sweep_scores_equal_one_at_a_time_counterfactuals(tiny_explorer, exact_att):
    """Every score against its definition, built from one `counterfactual` call per row."""
    ex = tiny_explorer
    px = lambda t: (np.clip(np.asarray(t, np.float64), -1, 1) + 1) / 2  # noqa: E731
    flat = ex.run.images.reshape(ex.run.N, -1).astype(np.float64) / 255
    for row in range(ex.run.N):
        cf = ex.counterfactual(SEED, remove_rows=[row])
        x = flat[row]
        D = np.delete(np.linalg.norm(flat - x, axis=1), row).min()  # its nearest other image
        res = lambda v, D=D, x=x: max(0.0, D - np.linalg.norm(px(v).flatten() - x))  # noqa: E731
        lost = res(cf.sample) - res(cf.counterfactual)
        assert exact_att.scores_by["resemblance"][row] == pytest.approx(lost, abs=1e-5)
        assert exact_att.scores_by["magnitude"][row] == pytest.approx(cf.score, rel=1e-5,
                                                                      abs=1e-6)
        torch.testing.assert_close(
            counterfactuals_for(ex, exact_att, [row])[0], cf.counterfactual, rtol=1e-5, atol=1e-6
        )
    assert exact_att.exact and exact_att.score == "resemblance"
    assert list(exact_att.order) == list(np.argsort(-exact_att.scores, kind="stable"))


def test_verified_topk_returns_exact_counterfactuals(tiny_explorer, exact_att):
    ex = tiny_explorer
    approx = attribute(ex, SEED, "last-step")
    m = 8
    v = verify_topk(ex, approx, m=m)
    top = approx.order[:m]
    assert set(v.verified_rows) == set(top)
    np.testing.assert_allclose(v.scores[top], exact_att.scores[top], rtol=1e-5, atol=1e-5)
    assert np.isnan(np.delete(v.scores, top)).all()  # the rest: not scored, in last-step order
    assert list(v.order[:m]) == sorted(top, key=lambda r: -exact_att.scores[r])
    cf = counterfactuals_for(ex, v, v.order[:3], exact=True)
    for k, row in enumerate(v.order[:3]):
        torch.testing.assert_close(
            cf[k], ex.counterfactual(SEED, remove_rows=[row]).counterfactual, rtol=1e-5, atol=1e-6
        )
    # which requests run chains (the app sends those to a worker process): exact ones
    # that are not stored, and last-step's one step
    rest = [r for r in range(ex.run.N) if r not in set(v.verified_rows)][:2]
    assert not counterfactuals_need_chains(v, v.order[:3], exact=True)  # verified: stored
    assert counterfactuals_need_chains(v, rest, exact=True)
    assert counterfactuals_need_chains(approx, top[:2])  # last-step runs one step
    assert not counterfactuals_need_chains(exact_att, rest, exact=True)  # residuals stored
    jac = attribute(ex, SEED, "jacobian")
    assert not counterfactuals_need_chains(jac, rest) and counterfactuals_need_chains(
        jac, rest, exact=True)


def test_noise_floor_uses_unused_codes_and_gives_pvalues(tiny_explorer, exact_att):
    from math import comb

    run = tiny_explorer.run
    P = comb(run.n, run.h) - run.N  # every unused code
    assert exact_att.null_scores.shape == (run.N, P)  # each image against the phantoms
    assert exact_att.nulls_by["magnitude"].shape == (P,)  # one floor per sample
    assert np.all((exact_att.pvalues > 0) & (exact_att.pvalues <= 1))
    p99 = np.quantile(exact_att.null_scores, 0.99, axis=1)
    s = exact_att.attributability
    top = exact_att.order[0]
    assert s["n_above"] == int((exact_att.scores > p99).sum())
    want = exact_att.scores[top] / p99[top] if p99[top] > 0 else float(exact_att.scores[top] > 0)
    assert s["top1_ratio"] == pytest.approx(want) or (np.isinf(want) and s["top1_ratio"] > 1)
    mag = exact_att.with_score("magnitude")  # one floor for the sample
    m99 = np.quantile(mag.null_scores, 0.99)
    assert mag.attributability["top1_ratio"] == pytest.approx(mag.scores.max() / m99)
    assert mag.attributability["n_above"] == int((mag.scores > m99).sum())
    p = pvalues(np.array([0.0, 2.5, 10.0]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(p, [1.0, 0.5, 0.25])


def test_nearest_ranks_by_pixel_distance(tiny_explorer):
    att = attribute(tiny_explorer, SEED, "nearest")
    imgs = tiny_explorer.run.images.reshape(tiny_explorer.run.N, -1) / 255.0
    y = (att.sample.flatten().numpy() + 1) / 2
    brute = np.linalg.norm(imgs - y, axis=1)
    np.testing.assert_allclose(-att.scores, brute, rtol=1e-4, atol=1e-5)
    assert np.isnan(att.pvalues).all() and len(att.null_scores) == 0


def test_unknown_method_is_refused(tiny_explorer):
    from tda import TdaError

    with pytest.raises(TdaError, match="unknown method"):
        attribute(tiny_explorer, SEED, "magic")
    assert "exact" in METHODS


def test_cli_attribute_writes_documented_tensors(tiny_run_dir, tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    rc = main(
        [
            "attribute",
            "--run",
            str(tiny_run_dir),
            "--seed",
            str(SEED),
            "--method",
            "jacobian",
            "--top-k",
            "3",
            "--verify",
            "6",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    t = load_file(str(out))
    N = 16
    assert t["scores"].shape == (N,) and t["scores"].dtype == torch.float32
    assert t["order"].shape == (N,) and t["order"].dtype == torch.int64
    assert t["pvalues"].shape == (N,) and t["null_scores"].shape[0] == N
    for name in ("resemblance", "magnitude"):
        assert t[f"score_{name}"].shape == (N,)
    assert torch.equal(t["scores"].nan_to_num(-9), t["score_resemblance"].nan_to_num(-9))
    assert t["sample"].shape == (1, 8, 8)
    assert t["topk_index"].tolist() == t["order"][:3].tolist()
    assert t["topk_counterfactual"].shape == (3, 1, 8, 8)
    assert main(["attribute", "--run", str(tiny_run_dir), "--top-k", "0", "--out", str(out)]) == 2
    assert "error: --top-k" in capsys.readouterr().err
    # no --method, no --score: the run's default (no report: screened) by resemblance lost
    assert main(["attribute", "--run", str(tiny_run_dir), "--seed", str(SEED), "--out",
                 str(out)]) == 0
    assert "screened (resemblance)" in capsys.readouterr().out
    assert main(["attribute", "--run", str(tiny_run_dir), "--method", "jacobian", "--score",
                 "magnitude", "--out", str(out)]) == 0
    t = load_file(str(out))
    assert torch.equal(t["scores"], t["score_magnitude"])

