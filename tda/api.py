"""Explorer: one facade over a loaded run for the CLI, the app and the benchmarks.

It owns the run, the scheduler chain per step count and the recorded noise per seed,
and answers in terms a user asks: the sample of a seed, the exact counterfactual of
a set of members or training images, every member's own sample. Attribution methods
live in `attribution.py` and take an Explorer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import TdaError
from .encoding import members_on, u0, unseen_rows, without_rows
from .ensemble import Run, load_run
from .sampling import (
    COMBINE_RULES,
    DEFAULT_CHUNK,
    Chain,
    RecordedNoise,
    make_chain,
    record_noise,
    sample_chains,
    stack_noise,
)
from .scores import Scorer, make_scorer

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
MAX_CACHED_SAMPLES = 256  # per Explorer: a shared server must not grow without bound


@dataclass
class Sample:
    seed: int
    steps: int
    noise: RecordedNoise
    sample: torch.Tensor  # [C, H, W] in [-1, 1]
    trajectory: torch.Tensor  # x after every step [K+1, C, H, W], x_T first
    mixture_loglik: torch.Tensor | None = None  # mixture rule: l before every step [K, n]


@dataclass
class Counterfactual:
    sample: torch.Tensor  # the full ensemble's sample [C, H, W]
    counterfactual: torch.Tensor  # same noise, other weights [C, H, W]
    weights: torch.Tensor  # [n]
    excluded: np.ndarray  # training rows no active member saw

    @property
    def residual(self) -> torch.Tensor:
        return self.counterfactual - self.sample

    @property
    def score(self) -> float:
        return float(self.residual.norm())


class Explorer:
    """A run plus its chains and recorded noise; every method is y(V, eps) underneath."""

    def __init__(
        self,
        run: Run | str | Path,
        device: str | torch.device = "cpu",
        chunk: int = DEFAULT_CHUNK,
        combine: str | None = None,
    ):
        self.run = run if isinstance(run, Run) else load_run(run, device=device)
        self.device = torch.device(device)
        self.chunk = chunk
        self.combine = self.run.config.sample.combine if combine is None else combine
        if self.combine not in COMBINE_RULES:
            raise TdaError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {self.combine!r}")
        self._chain = lru_cache(maxsize=8)(lambda k: make_chain(self.run.scheduler, k))
        self._samples: OrderedDict[tuple[int, int], Sample] = OrderedDict()
        self._scorer: Scorer | None = None

    def with_combine(self, combine: str | None) -> Explorer:
        """This run's Explorer for another combination rule (same loaded members)."""
        if combine is None or combine == self.combine:
            return self
        other = Explorer(self.run, self.device, self.chunk, combine)
        other._scorer = self._scorer
        return other

    @property
    def n(self) -> int:
        return self.run.n

    def scorer(self) -> Scorer:
        """Scores of this run's training rows (`scores.Scorer`), with feature scores when the
        run has a classifier (`classifier/`, written by `evaluate`); made once."""
        if self._scorer is None:
            from .metrics import features, load_classifier

            folder = Path(self.run.path) / "classifier"
            clf = None
            if folder.is_dir():
                try:
                    clf = load_classifier(folder, self.run.config.data, self.device)
                except TdaError as e:
                    log.warning("no feature scores: %s", e)
            fmap = None if clf is None else (lambda x: features(clf, x))
            self._scorer = make_scorer(self.run.images, fmap)
        return self._scorer

    def steps(self, steps: int | None) -> int:
        return int(self.run.config.sample.num_inference_steps if steps is None else steps)

    def chain(self, steps: int | None = None) -> Chain:
        return self._chain(self.steps(steps))

    def noise(self, seed: int, steps: int | None = None) -> RecordedNoise:
        if not 0 <= int(seed) <= MAX_SEED:
            raise TdaError(f"seed must be between 0 and {MAX_SEED}")
        return record_noise(self.run.image_shape, self.chain(steps), seed)

    def y(
        self,
        weights: torch.Tensor,
        seed: int,
        steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        **kw,
    ) -> torch.Tensor:
        """y(V, eps) for the recorded noise of `seed`: samples [B, C, H, W]."""
        return sample_chains(
            self.run.members,
            weights,
            self.noise(seed, steps),
            self.chain(steps),
            chunk=self.chunk,
            progress=progress,
            combine=self.combine,
            **kw,
        )

    def y_seeds(
        self,
        weights: torch.Tensor,
        seeds: Sequence[int],
        steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """y(V, eps) where chain b has the recorded noise of `seeds[b]`: [B, C, H, W]."""
        if len(seeds) != len(weights):
            raise TdaError(f"{len(seeds)} seeds for {len(weights)} weight vectors")
        noises = {s: self.noise(s, steps) for s in set(int(s) for s in seeds)}
        return sample_chains(
            self.run.members,
            weights,
            stack_noise([noises[int(s)] for s in seeds]),
            self.chain(steps),
            chunk=self.chunk,
            progress=progress,
            combine=self.combine,
        )

    def sample(self, seed: int, steps: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> Sample:
        """The full ensemble's sample and its trajectory: one chain, cached (LRU) per seed."""
        key = (int(seed), self.steps(steps))
        if key in self._samples:
            self._samples.move_to_end(key)
        else:
            record: dict = {}
            y, traj = self.y(u0(self.n), seed, steps, progress, trajectory=True, record=record)
            loglik = record["mixture_loglik"][:, 0] if record else None
            self._samples[key] = Sample(key[0], key[1], self.noise(seed, steps), y[0], traj[:, 0],
                                        loglik)
            while len(self._samples) > MAX_CACHED_SAMPLES:
                self._samples.popitem(last=False)
        return self._samples[key]

    def trajectory(self, seed: int, steps: int | None = None) -> torch.Tensor:
        """x after every step of the full ensemble's chain: [K+1, C, H, W], x_T first."""
        return self.sample(seed, steps).trajectory

    def member_samples(self, seed: int, steps: int | None = None) -> torch.Tensor:
        """Each member alone (v = e_i) with the same noise: [n, C, H, W]."""
        return self.y(torch.eye(self.n), seed, steps)

    def weights_for(
        self,
        exclude_members: Sequence[int] | None = None,
        remove_rows: Sequence[int] | None = None,
        active: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Weight vector of one ablation: members off, training rows removed, or a mask."""
        given = [x is not None for x in (exclude_members, remove_rows, active)]
        if sum(given) != 1:
            raise TdaError("give exactly one of: members to exclude, training rows, active mask")
        if remove_rows is not None:
            return without_rows(self.run.codes, list(remove_rows))
        if exclude_members is not None:
            bad = [i for i in exclude_members if not 0 <= int(i) < self.n]
            if bad:
                raise TdaError(f"members must be in 0..{self.n - 1}, got {bad}")
            active = [i not in set(map(int, exclude_members)) for i in range(self.n)]
        if len(active) != self.n:
            raise TdaError(f"the active mask needs {self.n} entries, got {len(active)}")
        return members_on(active)

    def counterfactual(self, seed: int, steps: int | None = None, **which) -> Counterfactual:
        """Exact counterfactual sample with the same recorded noise."""
        w = self.weights_for(**which)
        base = self.sample(seed, steps).sample
        cf = base.clone() if torch.equal(w, u0(self.n)) else self.y(w, seed, steps)[0]
        return Counterfactual(base, cf, w, unseen_rows(self.run.codes, w))
