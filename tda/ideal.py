"""Ideal memorisers: members replaced by the exact optimal denoiser of their own images.

The optimal eps-prediction under the empirical distribution of a member's images is
known in closed form (the posterior mean of x0 is a softmax-weighted mean of the
images), so an "ensemble of perfect memorisers" needs no training. It is the limit
that long training approaches; benchmarks and tests use it as a reference.
"""

from __future__ import annotations

import numpy as np
import torch


class _Out:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample


class IdealDenoiser(torch.nn.Module):
    """eps(x_t, t) of the posterior mean of x0 under the empirical distribution of `images`."""

    def __init__(self, images: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("x", images.flatten(1).float())
        self.register_buffer("ac", alphas_cumprod.float())
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # sample_chains reads .device from it

    def posterior(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """Weights [B, M] of this member's images given x_t (they sum to 1 per row)."""
        a = self.ac[int(t)]
        d2 = torch.cdist(x_t.flatten(1), a.sqrt() * self.x).pow(2)
        return torch.softmax(-d2 / (2 * (1 - a)), dim=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> _Out:
        a = self.ac[int(t)]
        x0 = self.posterior(x_t, int(t)) @ self.x
        eps = (x_t.flatten(1) - a.sqrt() * x0) / (1 - a).sqrt()
        return _Out(eps.view_as(x_t))


def ideal_members(images: torch.Tensor, codes: np.ndarray, alphas_cumprod: torch.Tensor):
    """One IdealDenoiser per bit: member i knows the images whose bit i is 1."""
    return [IdealDenoiser(images[torch.as_tensor(codes[:, i] == 1)], alphas_cumprod)
            for i in range(codes.shape[1])]
