"""Do a run's members know their own images? Measured on each finished member alone.

    python benchmarks/memorisation.py --run runs/n256-h4 --samples 32

For every member folder present (also while the run is still training), it samples the
member alone from `--samples` seeds and reports the median L2 distance (pixels in
[0, 1]) of its samples to the nearest of *its own* training images and to the nearest
of the *other* training images, the share of samples closer than 1.0 to one of its own
images (copies), and the share whose nearest training image is its own. For reference,
the median nearest-neighbour spacing of the training images is printed first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tda.candidate import COPY_DISTANCE  # noqa: E402
from tda.index import as_vectors  # noqa: E402
from tda.sampling import make_chain, record_noise, sample_chains, stack_noise  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    torch.set_num_threads(1)
    codes = load_file(str(a.run / "codes.safetensors"))["codes"]
    images = load_file(str(a.run / "train.safetensors"))["images"]
    vecs = as_vectors(images)
    d = np.linalg.norm(vecs[:, None] - vecs[None], axis=2)
    np.fill_diagonal(d, np.inf)
    print(f"{a.run}: N = {len(vecs)}, median nearest-neighbour spacing {np.median(d.min(1)):.2f}")
    chain = make_chain(DDPMScheduler.from_pretrained(a.run / "scheduler"), a.steps)
    noise = stack_noise([record_noise(images.shape[1:], chain, s)
                         for s in range(1000, 1000 + a.samples)])
    for folder in sorted((a.run / "members").iterdir()):
        i = int(folder.name)
        member = UNet2DModel.from_pretrained(folder).eval()
        y = sample_chains([member], torch.ones(a.samples, 1), noise, chain)
        dist = np.linalg.norm(as_vectors(y.numpy())[:, None] - vecs[None], axis=2)
        own, other = dist[:, codes[:, i] == 1].min(1), dist[:, codes[:, i] == 0].min(1)
        print(f"member {i:02d}: median distance to own {np.median(own):.2f}, to others "
              f"{np.median(other):.2f}; copies {np.mean(own < COPY_DISTANCE):.0%}; "
              f"nearest is its own {np.mean(own < other):.0%}", flush=True)


if __name__ == "__main__":
    main()
