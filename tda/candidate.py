"""The candidate-first test of a sample (Dai & Gifford's follow-up, arXiv 2406.07908).

For one sample: the candidate x̂ is its nearest training image (the run's FAISS index,
pixel L2), chosen before any counterfactual. x̂ is ablated exactly (the chain re-run
with only the members that never saw it); the question is whether the sample's
nearest training image changes. The controls ablate random *other* training images
(and, optionally, phantom codes) the same way. The share of controls that change the
nearest image is the sample's flip rate: the p-value of the candidate's change (how
often ablating an image that the sample was not attributed to does the same).

Over many samples, `tar` gives the true attribution rate
TAR = (P(change | x̂) - P(change | random)) / P(unchanged | random), FAR = 1 - TAR, with
a bootstrap interval over samples, and the continuous version: how often the
candidate's ablation moves the sample more than a random image's does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import TdaError
from .api import Explorer
from .attribution import run_chains
from .encoding import phantom_codes, u0, without_codes
from .executor import Executor
from .index import load_index, search

DEFAULT_CONTROLS = 16  # random training images ablated per sample
MAX_CONTROLS = 256
ALPHA = 0.05  # a candidate whose flip rate is at most this is "attributable"
SAMPLES_PER_CALL = 16  # samples whose chains share one batched call


@dataclass
class CandidateTest:
    """The candidate test of the sample of one seed (rows index the training set)."""

    seed: int
    steps: int
    combine: str
    sample: torch.Tensor  # [C, H, W]
    candidate: int  # x̂: the training row nearest to the sample
    candidate_distance: float  # L2 in pixel space [0, 1]
    counterfactual: torch.Tensor  # the sample with x̂ ablated [C, H, W]
    nearest_after: int  # the counterfactual's nearest training row
    control_rows: np.ndarray  # [R] random training rows ablated as controls
    control_nearest: np.ndarray  # [R] nearest training row of each control ablation
    control_effects: np.ndarray  # [R] L2 moves of the sample (model space)
    phantom_nearest: np.ndarray  # [P]
    phantom_effects: np.ndarray  # [P]

    @property
    def changed(self) -> bool:
        """Did ablating x̂ change the sample's nearest training image?"""
        return self.nearest_after != self.candidate

    @property
    def effect(self) -> float:
        return float((self.counterfactual - self.sample).norm())

    @property
    def flip_rate(self) -> float:
        """Share of control ablations that change the nearest training image."""
        return float(np.mean(self.control_nearest != self.candidate))

    @property
    def phantom_flip_rate(self) -> float:
        if len(self.phantom_nearest) == 0:
            return float("nan")
        return float(np.mean(self.phantom_nearest != self.candidate))

    @property
    def p_value(self) -> float:
        """The candidate test's p-value: the flip rate if x̂'s ablation changed the
        nearest image (with the usual +1 so it is never 0), else 1."""
        if not self.changed:
            return 1.0
        R = len(self.control_rows)
        return float((1 + np.sum(self.control_nearest != self.candidate)) / (1 + R))

    @property
    def effect_p_value(self) -> float:
        """Continuous version: share of controls that move the sample at least as far."""
        R = len(self.control_effects)
        return float((1 + np.sum(self.control_effects >= self.effect)) / (1 + R))

    @property
    def verdict(self) -> str:
        """attributable | not attributable | unclear (changed, but so do many controls)."""
        if not self.changed:
            return "not attributable"
        return "attributable" if self.p_value <= max(ALPHA, 1 / (1 + len(self.control_rows))) \
            else "unclear"

    def summary(self) -> dict:
        return {
            "seed": self.seed, "combine": self.combine, "candidate": self.candidate,
            "candidate_distance": self.candidate_distance, "changed": self.changed,
            "nearest_after": self.nearest_after, "effect": self.effect,
            "controls": len(self.control_rows), "flip_rate": self.flip_rate,
            "p_value": self.p_value, "effect_p_value": self.effect_p_value,
            "phantoms": len(self.phantom_effects), "phantom_flip_rate": self.phantom_flip_rate,
            "verdict": self.verdict,
        }


def control_rows(n_train: int, candidate: int, count: int, seed: int) -> np.ndarray:
    """`count` distinct random training rows other than the candidate, fixed by the seed."""
    if not 1 <= count <= MAX_CONTROLS:
        raise TdaError(f"controls must be between 1 and {MAX_CONTROLS}, got {count}")
    others = np.delete(np.arange(n_train), candidate)
    rng = np.random.default_rng([int(seed), 7])
    return rng.choice(others, size=min(count, len(others)), replace=False)


def candidate_tests(
    explorer: Explorer,
    seeds: Sequence[int],
    steps: int | None = None,
    controls: int = DEFAULT_CONTROLS,
    phantoms: int = 0,
    progress: Callable[[int, int], None] | None = None,
    index=None,
    chain_progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
) -> list[CandidateTest]:
    """The candidate test of the sample of every seed; chains of several samples run in
    one batch. `progress(done, total)` counts samples, `chain_progress(done, total)` the
    steps of each batch of ablation chains. `index`: a FAISS index of the training
    images (default: the run's saved one). `executor`: where the chains run (default:
    here, SAMPLES_PER_CALL samples per batch); a remote one (Ray) gets every sample's
    chains as one batch, spread over its tasks (`run_chains`), and `progress` then moves
    as they finish."""
    seeds = [int(s) for s in seeds]
    steps = explorer.steps(steps)
    run = explorer.run
    index = load_index(run.path, run.images) if index is None else index
    null = phantom_codes(run.codes, phantoms) if phantoms else np.zeros((0, explorer.n), np.uint8)
    remote = executor is not None and executor.remote
    per_call = len(seeds) if remote else SAMPLES_PER_CALL
    out: list[CandidateTest] = []
    for start in range(0, len(seeds), per_call):
        part = seeds[start : start + per_call]

        def chains_done(done: int, total: int, start: int = start, size: int = len(part)) -> None:
            if chain_progress is not None:
                chain_progress(done, total)
            if remote and progress is not None:
                progress(start + size * done // max(total, 1), len(seeds))

        out += _tests(explorer, index, part, steps, controls, null, chains_done, executor)
        if progress is not None:
            progress(len(out), len(seeds))
    return out


def candidate_test(explorer: Explorer, seed: int, **kw) -> CandidateTest:
    """The candidate test of one seed's sample (see `candidate_tests`)."""
    return candidate_tests(explorer, [seed], **kw)[0]


def _nearest(index, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    d, rows = search(index, images.numpy(), 1)
    return rows[:, 0], np.sqrt(np.maximum(d[:, 0], 0.0))


def _tests(explorer, index, seeds, steps, controls, null, progress=None,
           executor=None) -> list[CandidateTest]:
    run = explorer.run
    if len(seeds) == 1:
        samples = explorer.sample(seeds[0], steps).sample[None]
    else:
        samples = run_chains(explorer, u0(explorer.n).expand(len(seeds), -1), seeds, steps,
                             executor=executor, one_pass_here=True)
    cand, dist = _nearest(index, samples)
    plans = [np.concatenate([[c], control_rows(run.N, int(c), controls, s)])
             for c, s in zip(cand, seeds, strict=True)]
    V = [torch.cat([without_codes(run.codes[p]), without_codes(null)]) for p in plans]
    chain_seeds = [s for s, v in zip(seeds, V, strict=True) for _ in range(len(v))]
    y = run_chains(explorer, torch.cat(V), chain_seeds, steps, progress, executor,
                   one_pass_here=True)
    nearest, _ = _nearest(index, y)
    tests, at = [], 0
    for b, (seed, plan) in enumerate(zip(seeds, plans, strict=True)):
        k, R = len(V[b]), len(plan) - 1
        yb, nb = y[at : at + k], nearest[at : at + k]
        at += k
        moves = (yb - samples[b]).flatten(1).norm(dim=1).numpy()
        tests.append(CandidateTest(
            seed=seed, steps=steps, combine=explorer.combine, sample=samples[b],
            candidate=int(cand[b]), candidate_distance=float(dist[b]),
            counterfactual=yb[0], nearest_after=int(nb[0]),
            control_rows=plan[1:], control_nearest=nb[1 : 1 + R], control_effects=moves[1 : 1 + R],
            phantom_nearest=nb[1 + R :], phantom_effects=moves[1 + R :],
        ))
    return tests


_SCALARS = ("seed", "steps", "combine", "candidate", "candidate_distance", "nearest_after")


def save_tests(path: str | Path, tests: Sequence[CandidateTest]) -> None:
    """Candidate tests to one safetensors file (arrays as tensors, scalars as its JSON
    metadata; never pickle), written atomically: a killed evaluation keeps what it saved."""
    from safetensors.torch import save_file

    path = Path(path)
    arrays = {f"{k}.{f.name}": torch.as_tensor(np.asarray(getattr(t, f.name))).contiguous()
              for k, t in enumerate(tests) for f in fields(CandidateTest)
              if f.name not in _SCALARS}
    meta = [{name: _plain(getattr(t, name)) for name in _SCALARS} for t in tests]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(arrays, str(tmp), metadata={"tests": json.dumps(meta)})
    os.replace(tmp, path)


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def load_tests(path: str | Path) -> list[CandidateTest]:
    """The candidate tests `save_tests` wrote."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["tests"])
            arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        out = []
        for k, m in enumerate(meta):
            parts = {f.name: arrays[f"{k}.{f.name}"] for f in fields(CandidateTest)
                     if f.name not in _SCALARS}
            out.append(CandidateTest(**m, **{
                name: v if name in ("sample", "counterfactual") else v.numpy()
                for name, v in parts.items()}))
        return out
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise TdaError(f"{path} holds no readable candidate tests ({e}); delete it") from e


def tar(tests: Sequence[CandidateTest], boot: int = 2000, seed: int = 0) -> dict:
    """TAR and FAR over samples, with 95% bootstrap intervals (resampling samples).

    TAR = (P(change | x̂) - P(change | random)) / P(unchanged | random), the rates
    pooled over samples and their controls. Also the continuous version: the share of
    (sample, control) pairs where the candidate's ablation moves the sample further.
    """
    if not tests:
        raise TdaError("TAR needs at least one candidate test")
    changed = np.array([t.changed for t in tests], dtype=float)
    flips = np.array([t.flip_rate for t in tests])
    beats = np.array([np.mean(t.effect > t.control_effects) for t in tests])

    def rate(idx: np.ndarray) -> float:
        pc, pr = changed[idx].mean(), flips[idx].mean()
        return float((pc - pr) / (1 - pr)) if pr < 1 else float("nan")

    S = len(tests)
    rng = np.random.default_rng(seed)
    draws = np.array([rate(rng.integers(0, S, S)) for _ in range(boot)])
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    value = rate(np.arange(S))
    return {
        "samples": S,
        "controls_per_sample": int(np.median([len(t.control_rows) for t in tests])),
        "p_change_candidate": float(changed.mean()),
        "p_change_random": float(flips.mean()),
        "tar": value, "tar_low": float(lo), "tar_high": float(hi),
        "far": 1 - value, "far_low": float(1 - hi), "far_high": float(1 - lo),
        "candidate_beats_random_effect": float(beats.mean()),
        "share_attributable": float(np.mean([t.verdict == "attributable" for t in tests])),
        "median_candidate_distance": float(np.median([t.candidate_distance for t in tests])),
        "share_copies": float(np.mean([t.candidate_distance < COPY_DISTANCE for t in tests])),
    }


COPY_DISTANCE = 1.0  # pixel L2 in [0, 1] below which a sample counts as a copy (16x16: ~0.06/px)


# the paper's MNIST TAR (Dai & Gifford 2024, 22 UNets, h = 11, 32x32, Euclidean NN)
PAPER_TAR = {256: 1.00, 512: 0.92, 1024: 0.85, 2048: 0.55, 4096: 0.0}
# their public rows (data/false_attribution.csv, Euclidean, 100 samples each): how often
# ablating x-hat / a random image changed the sample's nearest training image
PAPER_CHANGE = {256: (1.00, 0.48), 512: (0.96, 0.50), 1024: (0.92, 0.48), 2048: (0.73, 0.40),
                4096: (0.39, 0.38), 8192: (0.31, 0.29)}
