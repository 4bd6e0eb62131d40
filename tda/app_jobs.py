"""The explorer's computations as `tda.pool` jobs: module-level functions a worker
process runs on a run's Explorer, each `fn(run_key, combine, *args, report=...)`.

A run key is `folder@manifest mtime` (`ui.runs.run_key`): a rewritten run is loaded
afresh. Each worker process keeps its own few Explorers (one loaded run shared by its
rules). `report((done, total, text))` says how far a job got; a job told to stop
raises `tda.pool.Cancelled` from it, within one step.
"""

from __future__ import annotations

import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from .api import Explorer


def run_path(key: str) -> str:
    """The run folder of a run key."""
    return key.rsplit("@", 1)[0]


@lru_cache(maxsize=4)  # a ladder's rungs side by side
def _loaded(key: str) -> Explorer:
    return Explorer(run_path(key))


@lru_cache(maxsize=8)
def explorer(key: str, combine: str | None) -> Explorer:
    """This process's Explorer of run `key` under rule `combine`."""
    return _loaded(key).with_combine(combine)


def _open(key: str, combine: str | None, report) -> Explorer:
    """`explorer`, telling a job's `report` first when the run must be loaded (its files
    checked, a second or more), so the waiting page says so."""
    if report is not None and key not in _seen:
        report((0.0, 1.0, "Loading the run in a worker ..."))
    _seen.add(key)
    return explorer(key, combine)


_seen: set[str] = set()  # run keys this process has loaded


def _progress(report, text: str | None = None):
    if report is None:
        return None
    return lambda done, total, what=None: report((float(done), float(total), what or text))


def sample(key: str, combine: str, seed: int, report=None):
    """(sample, trajectory, mixture log-likelihoods or None) as numpy, and the seconds."""
    t = time.perf_counter()
    step = _progress(report, f"Sampling seed {seed}: step")
    s = _open(key, combine, report).sample(seed, progress=step)
    loglik = None if s.mixture_loglik is None else s.mixture_loglik.numpy()
    return s.sample.numpy(), s.trajectory.numpy(), loglik, time.perf_counter() - t


def y(key: str, combine: str, weights, seed: int, report=None):
    """y(V, eps) of one seed [B, C, H, W] as numpy, and the seconds it took."""
    t = time.perf_counter()
    out = _open(key, combine, report).y(weights, seed, progress=_progress(report)).numpy()
    return out, time.perf_counter() - t


def attribution(key: str, combine: str, seed: int, method: str, report=None):
    from .attribution import attribute

    return attribute(_open(key, combine, report), seed, method, progress=_progress(report))


def verified(key: str, combine: str, base, m: int, report=None):
    from .attribution import verify_topk

    return verify_topk(_open(key, combine, report), base, m=m, progress=_progress(report))


def counterfactuals(key: str, combine: str, att, rows, exact: bool, report=None) -> np.ndarray:
    from .attribution import counterfactuals_for

    return counterfactuals_for(_open(key, combine, report), att, list(rows), exact=exact).numpy()


def candidate(key: str, combine: str, seed: int, controls: int, report=None):
    from .candidate import candidate_test

    return candidate_test(_open(key, combine, report), seed, controls=controls,
                          chain_progress=_progress(report))


def evaluate(key: str, combine: str, sizes, report=None) -> dict:
    """A small evaluation report (`tda.evaluate`) in a temporary folder; the run's own
    classifier is used if it has one, and its saved report is not touched."""
    from .evaluate import evaluate as run_evaluation
    from .metrics import CLASSIFIER_DIR

    tmp = Path(tempfile.mkdtemp(prefix="tda-diagnostics-"))
    own = Path(run_path(key)) / CLASSIFIER_DIR
    return run_evaluation(_open(key, combine, report), tmp / "report", sizes,
                          classifier_dir=own if own.is_dir() else tmp / CLASSIFIER_DIR,
                          progress=lambda what, d, t: report((float(d), float(t), f"{what}:")))
