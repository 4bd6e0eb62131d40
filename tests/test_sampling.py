"""Recorded-noise sampling: the hand-written DDPM step against diffusers, and y(V, eps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tda import TdaError
from tda.encoding import members_on, u0, without_rows
from tda.sampling import make_chain, record_noise, sample_chains

SHAPE = (2, 1, 4, 4)


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("num_steps", [10, 1000])
def test_chain_step_equals_ddpm_scheduler_step(num_steps, clip):
    """Every step of make_chain(...).step == DDPMScheduler.step fed the same noise z.

    DDPMScheduler.step draws z with `torch.randn(shape, generator=g)` on the CPU; a
    generator seeded identically gives us the very same z to feed our step.
    """
    sched = DDPMScheduler(num_train_timesteps=1000, clip_sample=clip)
    chain = make_chain(sched, num_steps)
    ref = DDPMScheduler.from_config(sched.config)
    ref.set_timesteps(num_steps)
    assert torch.equal(chain.timesteps, ref.timesteps)
    assert len(chain.timesteps) == num_steps and int(chain.timesteps[-1]) == 0

    g_model = torch.Generator().manual_seed(123)
    x_ref = torch.randn(SHAPE, generator=g_model)
    x_ours = x_ref.clone()
    clipped = 0
    for k, t in enumerate(ref.timesteps):
        eps = 1.5 * torch.randn(SHAPE, generator=g_model)  # a stand-in for a model output
        z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + k))
        out = ref.step(eps, t, x_ref, generator=torch.Generator().manual_seed(1000 + k))
        x_ours = chain.step(k, x_ours, eps, z)
        x_ref = out.prev_sample
        assert torch.equal(x_ours, x_ref), f"step {k} (t={int(t)}) differs"
        clipped += int((out.pred_original_sample.abs() == 1.0).any())  # x0 hit the clamp
    if clip:
        assert clipped > 0, "the stand-in outputs never reached the clip range"


def test_last_step_adds_no_noise():
    """At t = 0 the step ignores z, as DDPMScheduler does."""
    chain = make_chain(DDPMScheduler(num_train_timesteps=1000), 10)
    x, eps = torch.randn(SHAPE), torch.randn(SHAPE)
    k = len(chain.timesteps) - 1
    assert torch.equal(chain.step(k, x, eps, torch.randn(SHAPE)), chain.step(k, x, eps, 0 * x))


def test_make_chain_refuses_bad_settings():
    sched = DDPMScheduler(num_train_timesteps=100)
    with pytest.raises(TdaError, match="between 1 and 100"):
        make_chain(sched, 0)
    with pytest.raises(TdaError, match="between 1 and 100"):
        make_chain(sched, 101)
    with pytest.raises(TdaError, match="epsilon"):
        make_chain(DDPMScheduler(prediction_type="v_prediction"), 10)


def test_record_noise_is_seeded_and_silent_at_t0():
    chain = make_chain(DDPMScheduler(num_train_timesteps=1000), 10)
    a, b = record_noise((1, 8, 8), chain, 7), record_noise((1, 8, 8), chain, 7)
    c = record_noise((1, 8, 8), chain, 8)
    assert a.x_T.shape == (1, 8, 8) and a.noise.shape == (10, 1, 8, 8)
    assert torch.equal(a.x_T, b.x_T) and torch.equal(a.noise, b.noise)
    assert not torch.equal(a.x_T, c.x_T)
    last = chain.timesteps == 0
    assert last.sum() == 1
    assert (a.noise[last] == 0).all() and (a.noise[~last] != 0).any(dim=(1, 2, 3)).all()


def _weight_batch(run) -> torch.Tensor:
    n = run.n
    rng = np.random.default_rng(0)
    mixed = torch.as_tensor(rng.dirichlet(np.ones(n)), dtype=torch.float32)
    return torch.stack(
        [
            u0(n),
            torch.eye(n)[2],
            members_on([True, False, True, False, True, False]),
            without_rows(run.codes, [5]),
            mixed,
        ]
    )


def test_batched_chains_equal_chains_one_at_a_time(tiny_explorer):
    ex = tiny_explorer
    V = _weight_batch(ex.run)
    batched = ex.y(V, seed=3)
    assert batched.shape == (len(V), *ex.run.image_shape)
    for b in range(len(V)):
        alone = ex.y(V[b], seed=3)[0]
        torch.testing.assert_close(batched[b], alone, rtol=0, atol=1e-5)
    small_chunks = sample_chains(ex.run.members, V, ex.noise(3), ex.chain(), chunk=2)
    torch.testing.assert_close(small_chunks, batched, rtol=0, atol=1e-5)


def test_threaded_member_calls_equal_one_thread(tiny_explorer):
    """With several torch threads, member calls run in a pool of one-thread workers; the
    chains must not change beyond float summation order, whatever the chunking."""
    ex = tiny_explorer
    V = _weight_batch(ex.run)
    one = sample_chains(ex.run.members, V, ex.noise(4), ex.chain(), chunk=3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        import tda.sampling

        assert tda.sampling._cpu_pool() is not None
        two = sample_chains(ex.run.members, V, ex.noise(4), ex.chain(), chunk=3)
        again = sample_chains(ex.run.members, V, ex.noise(4), ex.chain(), chunk=3)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)
    assert torch.equal(two, again)  # the pool's split and summation order are fixed


def test_full_ensemble_reproduces_the_original_sample_exactly(tiny_explorer, tiny_run_dir):
    from tda.api import Explorer

    ex = tiny_explorer
    original = ex.sample(11).sample
    again = sample_chains(ex.run.members, u0(ex.n), ex.noise(11), ex.chain())[0]
    assert torch.equal(again, original)
    fresh = Explorer(tiny_run_dir).sample(11).sample  # no shared cache
    assert torch.equal(fresh, original)
    cf = ex.counterfactual(11, active=[True] * ex.n)
    assert torch.equal(cf.weights, u0(ex.n))
    assert torch.equal(cf.counterfactual, original) and torch.equal(cf.sample, original)
    assert cf.score == 0.0 and len(cf.excluded) == 0
    # and a real ablation does move the sample
    assert ex.counterfactual(11, exclude_members=[0, 1]).score > 0


class _Counting(torch.nn.Module):
    """A member that records every batch it is asked to denoise."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, torch.Tensor]] = []  # (timestep, inputs)

    def forward(self, x, t):
        self.calls.append((int(t), x.clone()))
        return self.inner(x, t)


def test_each_member_runs_only_on_chains_where_its_weight_is_nonzero(tiny_explorer):
    ex = tiny_explorer
    n = ex.n
    V = torch.stack(
        [
            torch.eye(n)[1],
            members_on([1, 0, 1, 0, 1, 0]),
            members_on([0, 1, 1, 1, 1, 0]),
            members_on([1, 1, 0, 0, 0, 0]),
            members_on([0, 0, 0, 1, 0, 0]),
        ]
    )
    assert (V[:, 5] == 0).all()
    wrapped = [_Counting(m) for m in ex.run.members]
    noise, chain = ex.noise(4), ex.chain()
    y, traj = sample_chains(wrapped, V, noise, chain, chunk=2, trajectory=True)
    plain = sample_chains(ex.run.members, V, noise, chain, chunk=2)
    assert torch.equal(y, plain)
    K = len(chain.timesteps)
    for i, member in enumerate(wrapped):
        rows = torch.nonzero(V[:, i]).squeeze(1)
        assert all(len(x) <= 2 for _, x in member.calls)  # chunks of at most `chunk`
        assert sum(len(x) for _, x in member.calls) == K * len(rows)
        if len(rows) == 0:
            assert member.calls == []
            continue
        for k in range(K):
            t = int(chain.timesteps[k])
            seen = torch.cat([x for tk, x in member.calls if tk == t])
            assert torch.equal(seen, traj[k][rows]), f"member {i} step {k} saw other chains"


def test_weights_must_match_the_members(tiny_explorer):
    ex = tiny_explorer
    with pytest.raises(TdaError, match="entries"):
        ex.y(torch.ones(ex.n + 1) / (ex.n + 1), seed=0)


def test_trajectory_starts_at_x_T_and_ends_at_the_sample(tiny_explorer):
    ex = tiny_explorer
    traj = ex.trajectory(5)
    assert traj.shape == (ex.chain().timesteps.numel() + 1, *ex.run.image_shape)
    assert torch.equal(traj[0], ex.noise(5).x_T)
    assert torch.equal(traj[-1], ex.sample(5).sample)


def test_vmapped_few_chain_path_equals_member_loop(tiny_explorer, monkeypatch):
    """A few chains run their active members in one vmapped call; same numbers as the loop."""
    import tda.sampling as sampling
    from tda.encoding import members_on, u0

    ex = tiny_explorer
    V = torch.stack([u0(ex.n), members_on([True, False, True, True, False, True])])
    fast = ex.y(V, 4)
    monkeypatch.setattr(sampling, "VMAP_MAX_CHAINS", 0)
    slow = ex.y(V, 4)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


def test_sample_and_trajectory_share_one_chain(tiny_run_dir, monkeypatch):
    from tda.api import Explorer

    ex = Explorer(tiny_run_dir)
    calls = []
    real_y = ex.y
    monkeypatch.setattr(ex, "y", lambda *a, **k: calls.append(1) or real_y(*a, **k))
    s = ex.sample(11)
    traj = ex.trajectory(11)
    assert len(calls) == 1
    assert traj.shape[0] == len(ex.chain().timesteps) + 1
    assert torch.equal(traj[-1], s.sample) and torch.equal(traj[0], s.noise.x_T)
