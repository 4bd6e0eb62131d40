"""What the noise floor looks like for *perfectly memorising* members.

Each member is replaced by the exact optimal denoiser of its own training subset (the
posterior mean of x0 under the empirical distribution of its images), so the ensemble
is the ideal memoriser that long training approaches. Everything else is the product's
own code: codes, phantom codes, recorded noise, the DDPM chain, exact scores. It shows
how far top-1 exact scores can rise above the phantoms' 99th percentile at each N for a
given n and h, without training anything (seconds per N on the CPU).

    python benchmarks/ideal_memoriser.py --sizes 16,32,64,128 --seeds 16
"""

from __future__ import annotations

import argparse
import sys
from math import comb
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tda.config import DataConfig  # noqa: E402
from tda.data import load_images, to_model_space  # noqa: E402
from tda.encoding import make_codes, phantom_codes, u0, without_codes  # noqa: E402
from tda.ideal import ideal_members  # noqa: E402
from tda.sampling import make_chain, record_noise, sample_chains  # noqa: E402


def floor_at(N: int, n: int, h: int, seeds: list[int], phantoms: int, steps: int) -> dict:
    images = to_model_space(load_images(DataConfig("mnist", N, 16, 1, 0))[0])
    codes = make_codes(N, n, h, 0)
    sched = DDPMScheduler(num_train_timesteps=1000)
    members = ideal_members(images, codes, sched.alphas_cumprod)
    chain = make_chain(sched, steps)
    null = phantom_codes(codes, min(phantoms, comb(n, h) - N))
    V = torch.cat([u0(n)[None], without_codes(codes), without_codes(null)])
    ratios, flips = [], []
    for s in seeds:
        y = sample_chains(members, V, record_noise(images.shape[1:], chain, s), chain, chunk=512)
        d = (y[1:] - y[:1]).flatten(1).norm(dim=1).numpy()
        real, ph = d[:N], d[N:]
        ratios.append(real.max() / np.quantile(ph, 0.99))
        flips.append(float(np.mean(ph > 0.5 * real.max())))
    r = np.asarray(ratios)
    return {"N": N, "h": h, "n_phantoms": len(null), "share_top1_above_p99": float(np.mean(r > 1)), "median_top1_ratio": float(np.median(r)),
            "chance": 1 - 0.99 ** N, "median_phantoms_moving_half_as_much": float(np.median(flips))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16,32,64,128")
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--weights", default="8", help="code weights h, comma separated")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--phantoms", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    seeds = np.random.default_rng(0).integers(0, 2**31 - 1, a.seeds).tolist()
    print(f"ideal memorisers, n = {a.members}, {a.seeds} seeds, {a.steps} steps")
    print("| h | N | phantoms | seeds top-1 > p99 | by chance | median top-1 / p99 |"
          " phantoms moving >= half the top-1 |")
    print("|---|---|---|---|---|---|---|")
    for h in [int(x) for x in a.weights.split(",")]:
        for N in [int(x) for x in a.sizes.split(",")]:
            if comb(a.members, h) - N < 16:
                continue
            f = floor_at(N, a.members, h, seeds, a.phantoms, a.steps)
            print(f"| {h} | {N} | {f['n_phantoms']} | {100 * f['share_top1_above_p99']:.0f}% | "
                  f"{100 * f['chance']:.0f}% | {f['median_top1_ratio']:.2f} | "
                  f"{100 * f['median_phantoms_moving_half_as_much']:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
