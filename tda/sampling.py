"""Recorded noise and y(V, eps): DDPM chains for a batch of member weight vectors.

A DDPM sample is fixed by its exogenous noise eps = (x_T, z_K .. z_1). `record_noise`
draws it from a seed (on the CPU, so every device sees the same numbers);
`sample_chains` runs the run's `DDPMScheduler` chain for many weight vectors at once,
feeding each step the recorded z instead of fresh noise. Every view of the product
(sample, counterfactuals, toggles, single members, the Jacobian) is a call of it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from torch.func import functional_call, stack_module_state, vmap

from . import TdaError

COMBINE_RULES = ("mean", "mixture")  # how a step combines the active members (see module doc)
DEFAULT_CHUNK = 256  # chains per member forward; measured best on 2 CPU cores (benchmarks/README.md)
VMAP_MAX_CHAINS = 4  # up to this many chains: their active members in one vmapped call


@dataclass
class RecordedNoise:
    """Exogenous noise of a chain: x_T [C,H,W], z per step [K,C,H,W], timesteps [K]."""

    x_T: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    seed: int


@dataclass
class Chain:
    """Per-step coefficients of the run's DDPM scheduler for K inference steps."""

    timesteps: torch.Tensor
    sqrt_alpha_prod: list[torch.Tensor]
    sqrt_beta_prod: list[torch.Tensor]
    x0_coeff: list[torch.Tensor]
    xt_coeff: list[torch.Tensor]
    noise_std: list[torch.Tensor]
    clip: float | None

    def mean(self, k: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The posterior mean mu(x_t, t) of step k from a noise prediction (no noise added)."""
        x0 = (x - self.sqrt_beta_prod[k] * eps) / self.sqrt_alpha_prod[k]
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return self.x0_coeff[k] * x0 + self.xt_coeff[k] * x

    def adds_noise(self, k: int) -> bool:
        return bool(self.timesteps[k] > 0)

    def step(self, k: int, x: torch.Tensor, eps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_t -> x_{t-1} for step k (same operations as `DDPMScheduler.step`), z given."""
        prev = self.mean(k, x, eps)
        if self.adds_noise(k):
            prev = prev + self.noise_std[k] * z
        return prev


def make_chain(scheduler: DDPMScheduler, num_steps: int) -> Chain:
    """The chain of `scheduler` (its saved config) with `set_timesteps(num_steps)`."""
    cfg = scheduler.config
    if cfg.prediction_type != "epsilon" or cfg.thresholding:
        raise TdaError("only epsilon prediction without thresholding is supported")
    if cfg.variance_type != "fixed_small":
        raise TdaError(f"variance_type {cfg.variance_type!r} is not supported (use fixed_small)")
    if not 1 <= num_steps <= cfg.num_train_timesteps:
        raise TdaError(f"steps must be between 1 and {cfg.num_train_timesteps}, got {num_steps}")
    sched = DDPMScheduler.from_config(cfg)
    sched.set_timesteps(num_steps)
    ts = sched.timesteps.clone()
    ac, one = sched.alphas_cumprod, sched.one
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("sa", "sb", "c0", "ct", "std")}
    for k, t in enumerate(ts.tolist()):
        prev_t = int(ts[k + 1]) if k + 1 < len(ts) else -1
        a_t = ac[t]
        a_prev = ac[prev_t] if prev_t >= 0 else one
        b_t, b_prev = 1 - a_t, 1 - a_prev
        cur_alpha = a_t / a_prev
        cur_beta = 1 - cur_alpha
        variance = torch.clamp((1 - a_prev) / (1 - a_t) * cur_beta, min=1e-20)
        out["sa"].append(a_t ** (0.5))
        out["sb"].append(b_t ** (0.5))
        out["c0"].append((a_prev ** (0.5) * cur_beta) / b_t)
        out["ct"].append(cur_alpha ** (0.5) * b_prev / b_t)
        out["std"].append(variance**0.5)
    clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
    return Chain(ts, out["sa"], out["sb"], out["c0"], out["ct"], out["std"], clip)


def record_noise(shape: Sequence[int], chain: Chain, seed: int) -> RecordedNoise:
    """x_T and one z per step from a seed; z is zero where a step adds no noise."""
    g = torch.Generator().manual_seed(int(seed))
    x_T = torch.randn(tuple(shape), generator=g)
    noise = torch.randn((len(chain.timesteps), *shape), generator=g)
    noise[chain.timesteps == 0] = 0.0
    return RecordedNoise(x_T, noise, chain.timesteps.clone(), int(seed))


def stack_noise(noises: Sequence[RecordedNoise]) -> RecordedNoise:
    """One noise per chain: x_T [B,C,H,W], z [K,B,C,H,W] (seed -1) for `sample_chains`.

    Chain b of the batch uses `noises[b]`; e.g. many samples of one weight vector,
    each with its own seed's noise.
    """
    if not noises:
        raise TdaError("stack_noise needs at least one recorded noise")
    x_T = torch.stack([z.x_T for z in noises])
    noise = torch.stack([z.noise for z in noises], dim=1)
    return RecordedNoise(x_T, noise, noises[0].timesteps.clone(), -1)


@torch.no_grad()
def sample_chains(
    members: Sequence[torch.nn.Module],
    weights: torch.Tensor,
    noise: RecordedNoise,
    chain: Chain,
    chunk: int = DEFAULT_CHUNK,
    trajectory: bool = False,
    progress: Callable[[int, int], None] | None = None,
    combine: str = "mean",
    record: dict | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y(V, eps): final samples [B,C,H,W] of the chains of weight vectors V [B, n].

    `combine="mean"`: eps_v(x, t) = sum_i v_i eps_i(x, t), one DDPM step with it.
    `combine="mixture"`: see `MixtureRule`; V >= 0 are the members' prior weights.
    Member i runs, per step, only on the chains where v_i != 0, in chunks of `chunk`.
    With `trajectory`, also returns x after every step [K+1, B, C, H, W] (x_T first).
    `progress(k, K)` is called per step. A batched noise (`stack_noise`, x_T [B,C,H,W])
    gives chain b its own noise. `record` (a dict), under `mixture`, receives
    "mixture_weights" [K, B, n], the weights each step used, and "mixture_loglik"
    [K, B, n] (float64), the running log-likelihoods l they came from.
    """
    if combine not in COMBINE_RULES:
        raise TdaError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
    if weights.ndim == 1:
        weights = weights[None]
    if weights.shape[1] != len(members):
        raise TdaError(f"weights have {weights.shape[1]} entries for {len(members)} members")
    device = next(members[0].parameters()).device
    V = weights.to(device=device, dtype=torch.float32)
    if noise.x_T.ndim == 4 and len(noise.x_T) != len(V):
        raise TdaError(f"{len(noise.x_T)} recorded noises for {len(V)} weight vectors")
    x = noise.x_T.to(device).expand(V.shape[0], *noise.x_T.shape[-3:]).clone()
    active = torch.nonzero((V != 0).any(0)).squeeze(1).tolist()
    every_member = (  # a few chains: all their active members in one vmapped call
        _all_members_at_once([members[i] for i in active]) if len(V) <= VMAP_MAX_CHAINS else None
    )
    rows = [torch.nonzero(V[:, i]).squeeze(1) for i in range(len(members))]
    coef = [V[r, i].view(-1, 1, 1, 1) for i, r in enumerate(rows)]
    traj = [x.cpu()] if trajectory else None
    K = len(chain.timesteps)
    mixture = MixtureRule(V, chain) if combine == "mixture" else None
    with _full_float32(device):
        for k in range(K):
            t = chain.timesteps[k].to(device)
            z = noise.noise[k].to(device)
            if mixture is not None:  # every active member's own eps [n, B, C, H, W]
                if every_member is not None:
                    eps_all = torch.zeros(len(members), *x.shape, device=device)
                    eps_all[active] = every_member(x, t)
                else:
                    eps_all = _member_eps(members, x, t, rows, chunk)
                x = mixture.step(k, x, eps_all, z)
            else:
                if every_member is not None:  # [m, B, C, H, W] -> weighted sum over active
                    eps = torch.einsum("bm,mbchw->bchw", V[:, active], every_member(x, t))
                else:
                    eps = _mixed_eps(members, x, t, rows, coef, chunk)
                x = chain.step(k, x, eps, z)
            if traj is not None:
                traj.append(x.cpu())
            if progress is not None:
                progress(k + 1, K)
    if mixture is not None and record is not None:
        record["mixture_weights"] = torch.stack(mixture.history).cpu()
        record["mixture_loglik"] = torch.stack(mixture.loglik_history).cpu()
    out = x.cpu()
    return (out, torch.stack(traj)) if traj is not None else out


def mix_step(chain: Chain, k: int, w: torch.Tensor, mu: torch.Tensor, z: torch.Tensor):
    """sum_i w_i mu_i + sigma_k z: one mixture step from weights w [B, n] and every
    member's posterior mean mu [n, B, C, H, W]."""
    prev = torch.einsum("bn,nbchw->bchw", w.to(mu.dtype), mu)
    if chain.adds_noise(k):
        prev = prev + chain.noise_std[k] * z
    return prev


class MixtureRule:
    """One DDPM step with a *mixture* of the active members instead of their mean.

    Every active member i proposes its own posterior mean mu_i(x_s, s), computed from
    its own noise prediction exactly as `DDPMScheduler.step` would (clipping included).
    The step is x_{s-1} = sum_i w_i mu_i + sigma_s z_s with z_s the recorded noise and
    w = softmax(log v + l) over the active members (v the chain's weight vector, so a
    uniform v starts uniform). After each noisy step, l_i += log N(x_{s-1}; mu_i,
    sigma_s^2 I), up to a constant shared by all members: -|x_{s-1} - mu_i|^2 / 2 sigma_s^2.
    w is then the posterior probability that member i's own chain made the trajectory so
    far, so a sample follows what some members know (CDM, arXiv 2308.01937; SuperDiff,
    arXiv 2412.17762) rather than a geometric blend of all. A member with v_i = 0 never
    enters: an ablation stays exact. One member alone (v = e_i) is that member's chain.
    """

    def __init__(self, V: torch.Tensor, chain: Chain):
        if (V < 0).any():
            raise TdaError("the mixture rule needs non-negative member weights")
        self.chain = chain
        self.log_prior = torch.log(V.double())  # -inf where a member is off
        self.loglik = torch.zeros_like(self.log_prior)
        self.history: list[torch.Tensor] = []
        self.loglik_history: list[torch.Tensor] = []

    def weights(self) -> torch.Tensor:
        """w [B, n]: the members' weights in the next step (0 where off)."""
        return torch.softmax(self.log_prior + self.loglik, dim=1)

    def step(self, k: int, x: torch.Tensor, eps_all: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_s -> x_{s-1} from every member's eps [n, B, C, H, W] (ignored where off)."""
        w = self.weights()
        self.history.append(w.float())
        self.loglik_history.append(self.loglik.clone())
        mu = self.chain.mean(k, x[None], eps_all)  # [n, B, C, H, W]
        prev = mix_step(self.chain, k, w, mu, z)
        if self.chain.adds_noise(k):
            var = float(self.chain.noise_std[k]) ** 2
            d2 = (prev[None] - mu).flatten(2).pow(2).sum(2).T.double()  # [B, n]
            self.loglik = self.loglik - torch.where(self.log_prior.isfinite(), d2, 0.0) / (2 * var)
        return prev


def _full_float32(device: torch.device):
    """No TF32 in cuDNN convolutions (on by default on recent GPUs, ~1e-3 relative error):
    exact counterfactuals must differ from the sample by the ablation, not by rounding."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    b = torch.backends.cudnn
    return b.flags(enabled=b.enabled, benchmark=b.benchmark, deterministic=b.deterministic,
                   allow_tf32=False)


def _mixed_eps(members, x, t, rows, coef, chunk) -> torch.Tensor:
    """sum_i v_i eps_i(x): member i only on its non-zero rows, in chunks.

    On a CPU with several threads, the (member, chunk) calls are shared among that many
    Python threads of one intra-op thread each: small convolutions parallelise poorly
    inside one call, and the threads run calls side by side (measured ~1.1-1.3x on 2
    cores). Each thread sums its own calls; the partial sums are added in a fixed order.
    """
    jobs = [(i, s) for i, r in enumerate(rows) for s in range(0, len(r), chunk)]

    def run(part) -> torch.Tensor:
        eps = torch.zeros_like(x)
        with torch.no_grad():  # grad mode is per thread
            for i, s in part:
                r = rows[i][s : s + chunk]
                eps.index_add_(0, r, members[i](x[r], t).sample * coef[i][s : s + chunk])
        return eps

    return functools.reduce(torch.add, _pooled(run, jobs, rows, chunk, x.device))


def _member_eps(members, x, t, rows, chunk) -> torch.Tensor:
    """Every member's own eps [n, B, C, H, W] on its non-zero rows (zeros elsewhere),
    in chunks, shared among the CPU pool's threads like `_mixed_eps`."""
    out = torch.zeros(len(members), *x.shape, device=x.device)
    jobs = [(i, s) for i, r in enumerate(rows) for s in range(0, len(r), chunk)]

    def run(part) -> None:
        with torch.no_grad():
            for i, s in part:
                r = rows[i][s : s + chunk]
                out[i, r] = members[i](x[r], t).sample

    _pooled(run, jobs, rows, chunk, x.device)
    return out


def _pooled(run, jobs: list, rows, chunk: int, device: torch.device) -> list:
    """run(part) over the (member, chunk) jobs: in the CPU pool's threads, split into
    groups of about equal size, or all at once in this thread; the results in order."""
    pool = _cpu_pool() if device.type == "cpu" and len(jobs) > 1 else None
    if pool is None:
        return [run(jobs)]
    sizes = [min(chunk, len(rows[i]) - s) for i, s in jobs]
    return list(pool.map(run, _balanced(jobs, sizes, torch.get_num_threads())))


def _balanced(jobs: list, sizes: list[int], k: int) -> list[list]:
    """jobs in k groups of about equal total size (largest first, to the lightest group)."""
    groups, load = [[] for _ in range(k)], [0] * k
    for j in sorted(range(len(jobs)), key=lambda j: -sizes[j]):
        g = load.index(min(load))
        groups[g].append(jobs[j])
        load[g] += sizes[j]
    return [g for g in groups if g]


_POOL: dict[int, ThreadPoolExecutor] = {}


def _cpu_pool() -> ThreadPoolExecutor | None:
    """Threads of one intra-op thread each, as many as torch's intra-op threads (None: 1)."""
    k = torch.get_num_threads()
    if k < 2:
        return None
    if k not in _POOL:
        _POOL[k] = ThreadPoolExecutor(k, thread_name_prefix="tda-eps",
                                      initializer=lambda: torch.set_num_threads(1))
    return _POOL[k]


def _all_members_at_once(members) -> Callable | None:
    """x -> every member's eps [n, B, ...] in one vmapped call (same-architecture members).

    A few chains (the ensemble's sample, one counterfactual) are bound by per-call
    overhead; vmapping over stacked weights runs them ~4x faster on a CPU. None when the
    members are not all one diffusers model class with one config, or use attention.
    """
    first = members[0]
    if (
        len(members) < 2
        or not hasattr(first, "config")
        or any(type(m) is not type(first) or _arch(m) != _arch(first) for m in members)
    ):
        return None
    if any(type(mod).__name__ == "Attention" for mod in first.modules()):
        return None  # attention under vmap is not supported by torch on CPU
    params, buffers = stack_module_state(list(members))
    base = copy.deepcopy(first).to("meta")

    def one(p, b, x, t):
        return functional_call(base, (p, b), (x, t)).sample

    batched = vmap(one, in_dims=(0, 0, None, None))
    return lambda x, t: batched(params, buffers, x, t)


def _arch(model) -> dict:
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
