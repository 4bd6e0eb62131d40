"""The `mixture` combination rule: its definition replayed by hand, exact ablations, one
member alone, and ideal memorisers (whose samples it must copy, not blend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tda import TdaError
from tda.api import Explorer
from tda.data import to_model_space
from tda.encoding import u0, without_rows
from tda.ideal import ideal_members
from tda.sampling import make_chain, record_noise, sample_chains

SEED = 7


@pytest.fixture(scope="module")
def mix(tiny_explorer) -> Explorer:
    return tiny_explorer.with_combine("mixture")


def test_mean_is_the_default_and_unknown_rules_are_refused(tiny_explorer, tiny_run_dir):
    assert tiny_explorer.combine == "mean"
    assert tiny_explorer.with_combine("mean") is tiny_explorer
    with pytest.raises(TdaError, match="combine must be one of"):
        Explorer(tiny_run_dir, combine="median")
    with pytest.raises(TdaError, match="non-negative"):
        tiny_explorer.with_combine("mixture").y(-u0(tiny_explorer.n), SEED)


def test_one_member_alone_is_that_members_own_chain(tiny_explorer, mix):
    eye = torch.eye(tiny_explorer.n)
    for V in (eye[:2], eye):  # the few-chain (vmapped) and the member-loop paths
        torch.testing.assert_close(mix.y(V, SEED), tiny_explorer.y(V, SEED), rtol=0, atol=1e-6)


def test_mixture_replays_step_by_step_from_the_recorded_noise(mix):
    """An independent replay of the definition: every member's posterior mean, weights
    softmax(log v + l), l_i += log N(x_{s-1}; mu_i, sigma^2 I), recorded z."""
    run, chain, noise = mix.run, mix.chain(), mix.noise(SEED)
    V = torch.stack([u0(mix.n), without_rows(run.codes, [3])])
    record: dict = {}
    _, traj = sample_chains(run.members, V, noise, chain, trajectory=True,
                            combine="mixture", record=record)
    sched = DDPMScheduler.from_config(run.scheduler.config)
    sched.set_timesteps(len(chain.timesteps))
    # A step's log-likelihood is a float32 sum of D squares, about D sigma^2 in all, over
    # 2 sigma^2: rounding of up to D eps in its units. Two implementations, the steps
    # accumulating, softmax at most 1/2-Lipschitz: the weights agree to steps * D * eps.
    # (The trajectory itself is a weighted sum of a few float32 terms: 1e-5 is ~80 eps.)
    w_atol = len(chain.timesteps) * noise.noise[0].numel() * torch.finfo(torch.float32).eps
    for b in range(len(V)):
        on = V[b] > 0
        loglik = torch.zeros(mix.n, dtype=torch.float64)
        x = traj[0, b][None]
        for k, t in enumerate(sched.timesteps):
            logw = torch.where(on, loglik, torch.tensor(-torch.inf, dtype=torch.float64))
            w = torch.softmax(logw, 0)
            torch.testing.assert_close(record["mixture_weights"][k, b], w.float(), rtol=0,
                                       atol=w_atol)
            # each member's posterior mean as DDPMScheduler.step computes it (no noise: z = 0)
            mus = torch.stack([_posterior_mean(sched, m(x, t).sample, t, x) for m in run.members])
            sigma = chain.noise_std[k] if t > 0 else torch.tensor(0.0)
            x_next = (w.float()[:, None, None, None, None] * mus).sum(0) + sigma * noise.noise[k]
            torch.testing.assert_close(traj[k + 1, b][None], x_next, rtol=0, atol=1e-5)
            x = traj[k + 1, b][None]
            if t > 0:
                d2 = (x[None] - mus).flatten(1).pow(2).sum(1).double()
                loglik = loglik - d2 / (2 * float(sigma) ** 2)
        assert float(record["mixture_weights"][-1, b].max()) > 0.5  # the weights concentrate


def _posterior_mean(sched: DDPMScheduler, eps, t, x) -> torch.Tensor:
    """mu(x_t, t): DDPMScheduler.step's previous sample minus its noise term (drawn with a
    generator we control, so it can be taken out exactly)."""
    g = torch.Generator().manual_seed(0)
    out = sched.step(eps, t, x, generator=g).prev_sample
    if t == 0:
        return out
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return out - (sched._get_variance(t) ** 0.5) * z


def test_ablation_uses_only_members_that_never_saw_the_image(mix):
    run = mix.run
    row = 5
    saw = torch.as_tensor(run.codes[row] == 1)
    w = without_rows(run.codes, [row])
    record: dict = {}
    V = torch.cat([w[None], u0(mix.n)[None].expand(5, -1)])  # > 4 chains: the member loop
    y = sample_chains(run.members, V, mix.noise(SEED), mix.chain(), combine="mixture",
                      record=record)
    assert float(record["mixture_weights"][:, 0, saw].abs().max()) == 0.0  # through the weights
    # through a replay: the members that saw the image replaced by untrained models
    torch.manual_seed(0)
    others = [type(m)(**m.config).eval() if s else m for m, s in zip(run.members, saw.tolist(),
                                                                     strict=True)]
    for V_ in (w[None], V):  # the few-chain (vmapped) path and the member loop
        ref = sample_chains(run.members, V_, mix.noise(SEED), mix.chain(), combine="mixture")
        again = sample_chains(others, V_, mix.noise(SEED), mix.chain(), combine="mixture")
        assert torch.equal(again[0], ref[0])
        torch.testing.assert_close(ref[0], y[0], rtol=0, atol=1e-5)
    assert not torch.equal(y[0], y[1])


def _ideal_setup(n_train=24, n=8, h=2):
    from tda.config import DataConfig
    from tda.data import load_images
    from tda.encoding import make_codes

    images = to_model_space(load_images(DataConfig("digits", n_train, 8, 1, 0))[0])
    codes = make_codes(n_train, n, h, 0)
    sched = DDPMScheduler(num_train_timesteps=1000)
    return images, codes, ideal_members(images, codes, sched.alphas_cumprod), make_chain(sched, 50)


def test_ideal_memorisers_are_copied_under_mixture_and_blended_under_mean():
    """With exact optimal denoisers, the mixture's sample is one training image (the
    members still weighted at the end all know it); the mean blends. Ablating the copied
    image under the mixture lands on another image."""
    images, codes, members, chain = _ideal_setup()
    flat = images.flatten(1)
    spacing = float(torch.cdist(flat, flat).add(torch.eye(len(flat)) * 1e9).min(1).values.median())
    dist = {"mean": [], "mixture": []}
    for seed in range(6):
        noise = record_noise(images.shape[1:], chain, seed)
        for rule in dist:
            record: dict = {}
            y = sample_chains(members, u0(len(members)), noise, chain, combine=rule, record=record)
            d = torch.cdist(y.flatten(1), flat)[0]
            dist[rule].append(float(d.min()))
            if rule == "mixture":
                row = int(d.argmin())
                w_end = record["mixture_weights"][-1, 0]
                assert float(w_end[torch.as_tensor(codes[row] == 1)].sum()) > 0.99
                cf = sample_chains(members, without_rows(codes, [row]), noise, chain,
                                   combine="mixture")
                assert int(torch.cdist(cf.flatten(1), flat)[0].argmin()) != row
    assert max(dist["mixture"]) < 0.05 * spacing  # copies
    assert np.median(dist["mean"]) > 5 * np.median(dist["mixture"])  # blends


def test_last_step_method_under_mixture(mix):
    """Dropping no member in the last step gives back the sample; in a one-step chain the
    last step is the whole chain, so last-step equals exact."""
    from tda.attribution import _last_step, attribute

    n = mix.n
    codes = np.zeros((1, n), dtype=np.uint8)
    residual, state = _last_step(mix, SEED, None, codes, "last-step", None)
    assert "loglik" in state and state["loglik"].shape == (n,)
    torch.testing.assert_close(residual, torch.zeros_like(residual), rtol=0, atol=1e-5)
    one = {m: attribute(mix, SEED, m, steps=1) for m in ("exact", "last-step")}
    np.testing.assert_allclose(one["last-step"].scores, one["exact"].scores, rtol=1e-4, atol=1e-4)
