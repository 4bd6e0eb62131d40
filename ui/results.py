"""What pages ask for, by run key, seed and rule: featured (precomputed) results first,
then results computed before by anyone, else computed in the compute layer
(`ui.compute`: a page's own chain in the cheap lane, sweeps in the long one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from tda import app_jobs
from tda.agreement import standing
from tda.api import Counterfactual
from tda.attribution import METHODS, default_method
from tda.encoding import u0, unseen_rows
from tda.featured import CONTROLS as FEATURED_CONTROLS
from tda.index import nearest_row
from tda.scores import SCORE_VERSION
from ui import compute, runs


def _sampled(key: str, seed: int, combine: str):
    """(sample, trajectory, mixture log-likelihoods or None, seconds of the chain)."""
    return compute.cheap(("sample", key, seed, combine), app_jobs.sample, key, combine, seed,
                         text=f"Sampling seed {seed} ...")


def _sample(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    e = runs.entry(key, seed, combine)
    if e is not None:
        return e.sample.numpy(), e.seconds("sample")
    y, _, _, seconds = _sampled(key, seed, combine)
    return y, seconds


def ensemble_sample(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    """The full ensemble's sample and the seconds it took (precomputed if featured)."""
    return _sample(key, seed, combine)


def trajectory(key: str, seed: int, combine: str) -> tuple[np.ndarray, np.ndarray, float]:
    """x after each step (x_T first), the timestep of each, and the seconds it took."""
    e = runs.entry(key, seed, combine)
    if e is not None:
        t = e.tensors
        return t["trajectory"].numpy(), t["timesteps"].numpy(), e.seconds("sample")
    _, traj, _, seconds = _sampled(key, seed, combine)
    return traj, runs.explorer(key, combine).chain().timesteps.numpy(), seconds


def mixture_loglik(key: str, seed: int) -> np.ndarray:
    """The mixture's running log-likelihoods of the seed's chain [K, n]."""
    e = runs.entry(key, seed, "mixture")
    if e is not None and e.mixture_loglik is not None:
        return e.mixture_loglik.numpy()
    return _sampled(key, seed, "mixture")[2]


def member_samples(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    """Every member alone with the seed's noise [n, C, H, W], and the seconds it took."""
    e = runs.entry(key, seed, combine)
    if e is not None:
        return e.tensors["members"].numpy(), e.seconds("members")
    eye = torch.eye(runs.explorer(key, combine).n)
    return compute.long(("members", key, seed, combine), app_jobs.y, key, combine, eye, seed,
                        text="Sampling every member alone ...")


def _counterfactual(key: str, seed: int, active: tuple[bool, ...], combine: str):
    ex = runs.explorer(key, combine)
    w = ex.weights_for(active=list(active))
    base = torch.as_tensor(_sample(key, seed, combine)[0])
    if torch.equal(w, u0(ex.n)):
        y, seconds = base.clone(), 0.0
    else:
        ys, seconds = compute.cheap(("y", key, seed, combine, active), app_jobs.y, key, combine,
                                    w, seed, text="Running the counterfactual chain ...")
        y = torch.from_numpy(ys[0])
    return Counterfactual(base, y, w, unseen_rows(ex.run.codes, w)), seconds


def counterfactual(key: str, seed: int, active: tuple[bool, ...], combine: str):
    """The exact counterfactual of a member mask (one chain: the cheap lane)."""
    e = runs.entry(key, seed, combine)
    cf = None if e is None else e.counterfactual(active)
    if cf is not None:
        return cf, e.seconds("home_counterfactual")
    return _counterfactual(key, seed, active, combine)


def cached_attribution(key: str, seed: int, method: str, combine: str):
    """The attribution if precomputed or computed before (by anyone), else None."""
    e = runs.entry(key, seed, combine)
    att = None if e is None else e.attribution(method)
    return att if att is not None else compute.kept(_key(key, seed, method, combine))


def _key(key: str, seed: int, method: str, combine: str) -> tuple:
    return ("attribution", SCORE_VERSION, key, seed, method, combine)


def attribution(key: str, seed: int, method: str, combine: str):
    """Scores of every training image for the sample of `seed`."""
    att = cached_attribution(key, seed, method, combine)
    if att is not None:
        return att
    return compute.long(_key(key, seed, method, combine), app_jobs.attribution,
                        key, combine, seed, method,
                        text=f"Scoring every training image with {method} ...")


def candidate(key: str, seed: int, combine: str, controls: int):
    """The candidate test of the sample of `seed` (its nearest image vs random ones)."""
    e = runs.entry(key, seed, combine)
    if e is not None and controls == FEATURED_CONTROLS:
        return e.candidate()
    return compute.long(("candidate", key, seed, combine, controls), app_jobs.candidate,
                        key, combine, seed, controls,
                        text="Ablating the nearest training image and random ones ...")


def verified(key: str, seed: int, method: str, m: int, combine: str):
    """The attribution with its top m rescored by exact chains."""
    base = attribution(key, seed, method, combine)
    return compute.long(("verified", SCORE_VERSION, key, seed, method, m, combine),
                        app_jobs.verified,
                        key, combine, base, m,
                        text=f"Exact chains for the top {m} and the phantoms ...")


def _counterfactuals(key, seed, method, verified_m, rows, exact, combine, att) -> np.ndarray:
    from tda.attribution import counterfactuals_for, counterfactuals_need_chains

    if counterfactuals_need_chains(att, list(rows), exact):
        return compute.cheap(("counterfactuals", key, seed, method, verified_m, rows, exact,
                              combine), app_jobs.counterfactuals, key, combine, att, rows,
                             exact, text="Counterfactuals of the top images ...")
    # a matrix product or stored residuals: here, at once
    return counterfactuals_for(runs.explorer(key, combine), att, list(rows), exact=exact).numpy()


def counterfactuals(key: str, seed: int, method: str, verified_m: int,
                    rows: tuple[int, ...], exact: bool, combine: str) -> np.ndarray:
    """Counterfactual samples of training rows for the attribution shown (verified if m)."""
    att = (verified(key, seed, method, verified_m, combine) if verified_m
           else attribution(key, seed, method, combine))
    return _counterfactuals(key, seed, method, verified_m, rows, exact, combine, att)


def neighbours(key: str, query: np.ndarray, k: int, skip: int | None = None):
    """The k training rows nearest to one image [C, H, W] (not `skip`) and their L2
    distances, from the run's FAISS index."""
    from tda.index import search

    d, rows = search(runs.training_index(key), query[None], k + (skip is not None))
    pairs = [(int(j), float(np.sqrt(max(x, 0.0)))) for x, j in zip(d[0], rows[0], strict=True)
             if j != skip]
    return pairs[:k]


def live_evaluation(key: str, combine: str, sizes) -> dict:
    """A small evaluation report of the run (`tda.app_jobs.evaluate`), in the long lane."""
    return compute.long(("live", key, combine, repr(sizes)), app_jobs.evaluate, key, combine,
                        sizes, text="Evaluating ...")


@st.cache_data(show_spinner=False, max_entries=8)
def _report(path: str, mtime_ns: int) -> dict:
    return json.loads(Path(path).read_text())


def saved_report(key: str, name: str) -> dict | None:
    """The run's saved evaluation report (`name` inside the run), None if it has none;
    `ValueError` if it cannot be read."""
    path = Path(app_jobs.run_path(key)) / name
    if not path.is_file():
        return None
    try:
        return _report(str(path), path.stat().st_mtime_ns)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {name}: {e}") from e


def own_image(key: str, seed: int, combine: str) -> int:
    """The training row nearest to the seed's sample: where Home, the Ablation lab and the
    Training set start (precomputed for featured seeds)."""
    e = runs.entry(key, seed, combine)
    if e is not None:  # featured format 2 always records it
        return e.home_row
    return nearest_row(runs.explorer(key, combine).run.images, _sample(key, seed, combine)[0])


def methods(key: str, combine: str) -> tuple[str, list[str], dict]:
    """(the default method, the methods in the order offered, each one's standing against
    exact on this run under `combine`: `tda.agreement.standing` or None)."""
    path = app_jobs.run_path(key)
    try:
        report = saved_report(key, "report/report.json")
    except ValueError:
        report = None
    first = default_method(path, combine)
    order = [first, *[m for m in METHODS if m != first]]
    return first, order, {m: standing(report, combine, m) for m in order}


def run_tar(key: str, combine: str) -> dict | None:
    """The candidate test's TAR of the run's report under `combine`, or None."""
    try:
        report = saved_report(key, "report/report.json")
    except ValueError:
        return None
    return ((report or {}).get("candidate") or {}).get("rules", {}).get(combine)
