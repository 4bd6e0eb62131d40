"""Counterfactuals of every training image for one sample, their scores and the noise floor.

Methods (all return an `Attribution`; `scores.py` turns counterfactuals into scores):
- `exact`: the chain with u_-x (members that never saw x) and the same noise, for
  every x at once in batched sweeps.
- `screened`: the SCREEN_ROWS training images nearest to the sample (FAISS), each
  with its exact counterfactual; the rest are not scored (they follow in nearness
  order). Exact where it matters, at a fraction of `exact`'s chains.
- `jacobian`: J = dy/dv at u0 by forward finite differences through the whole chain
  (n + 1 chains), then y(u_-x) ~ y(u0) + J (u_-x - u0) for all x in one product.
- `last-step`: full ensemble until the last step, u_-x only in the final step.
- `individual`: each member alone, r_i = y(e_i) - y(u0), centred form
  sum_i (u_-x - u0)_i r_i; `individual-paper`: the paper's -sum_{i in x} r_i / (n - h).
- `nearest`: pixel-space nearness through FAISS (score `nearness` = -L2 distance): no
  counterfactual, so no influence.
Each method gives phantom codes (weight h, given to no image) counterfactuals the same
way; every score's floor comes from them (DESIGN.md section 8, `scores.py`).
`run_chains` runs the chains of many weight rows here or as tasks of an executor (Ray):
the exact sweeps, the candidate test's ablations and the evaluation's samples.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import TdaError
from .api import Explorer
from .encoding import phantom_codes, u0, without_codes
from .executor import Executor, Job, LocalExecutor, open_explorer, run_source
from .index import load_index, search
from .sampling import mix_step
from .scores import DEFAULT_SCORE, SCORES, bh_qvalues, order_of, pvalues

METHODS = ("screened", "exact", "jacobian", "last-step", "individual", "individual-paper",
           "nearest")
COUNTERFACTUAL_METHODS = METHODS[:-1]
DEFAULT_METHOD = "screened"  # when the run's report has not measured the methods
MAX_PHANTOMS = 512
MIN_PHANTOMS = 256  # a p99 estimated from fewer draws is just their maximum
SCREEN_ROWS = 16  # `screened`: the nearest images that get exact counterfactuals
SCREEN_PHANTOMS = 32  # `screened`: exact phantom chains for the floor (p >= 1/33)
SWEEP_CHUNK = 512  # chains per exact sweep pass (memory and progress granularity)
FD_STEP = 3e-3  # forward finite-difference step on each member weight (u0 entries are 1/n);
# as close to exact as central differences at N = 1,024 (benchmarks/README.md)
FD_STEP_CENTRAL = 1e-2  # the step of central differences
REPORT = Path("report") / "report.json"

Progress = Callable[[int, int], None] | None


@dataclass
class Attribution:
    """Scores of the training rows for one sample under each score, with their floors.

    `scores_by[name]` [N] (NaN: a row the method did not score), `nulls_by[name]` the
    phantoms' scores: [P] shared by every row (magnitude) or [N, P] one floor per row
    (resemblance, features). `score` is the one that ranks; `scores`, `null_scores`,
    `pvalues`, `qvalues` and `order` are of it. Unscored rows follow the scored ones in
    `base_order` (the screen they were picked from), or in row order.
    """

    method: str
    seed: int
    steps: int
    sample: torch.Tensor  # [C, H, W]
    scores_by: dict[str, np.ndarray]
    nulls_by: dict[str, np.ndarray]
    seconds: float
    exact: bool  # every row's counterfactual is an exact chain
    score: str = DEFAULT_SCORE
    verified_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    base_order: np.ndarray | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # for counterfactuals_for

    def __post_init__(self):
        if self.score not in self.scores_by:
            raise TdaError(f"method {self.method} has no score {self.score!r}; it has "
                           f"{', '.join(self.scores_by)}")
        s = self.scores
        if self.base_order is None:
            self.order = order_of(s)
        else:  # scored rows by score, then the rest in the screen's order
            scored = np.isfinite(s)
            top = np.flatnonzero(scored)[np.argsort(-s[scored], kind="stable")]
            self.order = np.concatenate([top, self.base_order[~scored[self.base_order]]])
        self.pvalues = pvalues(s, self.null_scores)
        self.qvalues = bh_qvalues(np.where(self._testable(), self.pvalues, np.nan))
        self.qvalues[np.isfinite(self.pvalues) & ~self._testable()] = 1.0

    def _testable(self) -> np.ndarray:
        """Rows that can rise above their floor: not those whose score and whole floor are
        at most 0 (a sample that never resembled x loses nothing whatever is removed), so
        the correction for many rows counts only real hypotheses."""
        null = self.null_scores
        if null.ndim != 2 or null.shape[1] == 0:
            return np.ones(len(self.scores), bool)
        with np.errstate(invalid="ignore"):
            return ~((self.scores <= 0) & (np.nan_to_num(null, nan=0.0).max(axis=1) <= 0))

    @property
    def scores(self) -> np.ndarray:
        return self.scores_by[self.score]

    @property
    def null_scores(self) -> np.ndarray:
        return self.nulls_by[self.score]

    def with_score(self, score: str) -> Attribution:
        """The same counterfactuals ranked by another score."""
        return replace(self, score=score)

    def floor_of(self, row: int) -> np.ndarray:
        """The phantoms' scores that row `row` is compared with: [P]."""
        null = self.null_scores
        return null[row] if null.ndim == 2 else null

    def top(self, k: int) -> np.ndarray:
        return self.order[:k]

    @property
    def attributability(self) -> dict:
        """Top-1 score / its floor's p99, rows above their p99 vs the number chance predicts."""
        scored = np.isfinite(self.scores)
        P = self.null_scores.shape[-1]
        if P == 0 or not scored.any():
            return {"top1_ratio": float("nan"), "p99": float("nan"), "n_above": 0,
                    "expected_above": float("nan")}
        null = self.null_scores
        p99 = (np.quantile(null, 0.99, axis=-1) if null.ndim == 2 else
               np.full(len(scored), np.quantile(null, 0.99)))
        top = int(self.order[0])
        s = float(self.scores[top])
        ratio = s / p99[top] if p99[top] > 0 else float("inf") if s > 0 else 0.0
        return {
            "top1_ratio": float(ratio),
            "p99": float(p99[top]),
            "n_above": int((self.scores[scored] > p99[scored]).sum()),
            "expected_above": 0.01 * int(scored.sum()),
        }


def default_phantoms(n_images: int) -> int:
    """As many phantoms as images, at least MIN_PHANTOMS (a stable p99), at most MAX_PHANTOMS."""
    return min(max(n_images, MIN_PHANTOMS), MAX_PHANTOMS)


def default_method(run_path: str | Path, combine: str) -> str:
    """The method the run's report measured best under `combine` (`evaluate --parts
    attribution`), else DEFAULT_METHOD."""
    try:
        report = json.loads((Path(run_path) / REPORT).read_text())
        method = report["attribution"]["rules"][combine]["default_method"]
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_METHOD
    return method if method in METHODS else DEFAULT_METHOD


def attribute(
    explorer: Explorer,
    seed: int,
    method: str | None = None,
    steps: int | None = None,
    n_phantoms: int | None = None,
    progress: Progress = None,
    executor: Executor | None = None,
    score: str = DEFAULT_SCORE,
) -> Attribution:
    """Score the training images of the run for the sample of `seed` and rank them by
    `score`; `method` None: the run's measured default under the explorer's rule;
    `executor`: where exact sweeps run (default: here)."""
    method = default_method(explorer.run.path, explorer.combine) if method is None else method
    if method not in METHODS:
        raise TdaError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if score not in SCORES:
        raise TdaError(f"unknown score {score!r}; choose one of {', '.join(SCORES)}")
    codes = explorer.run.codes
    t0 = time.perf_counter()
    sample = explorer.sample(seed, steps).sample
    steps = explorer.steps(steps)
    if method in ("nearest", "screened"):
        near = Attribution("nearest", int(seed), steps, sample,
                           {"nearness": _nearest(explorer, sample)},
                           {"nearness": np.zeros(0, np.float32)},
                           time.perf_counter() - t0, False, score="nearness")
        if method == "nearest":
            return near
        P = SCREEN_PHANTOMS if n_phantoms is None else n_phantoms
        att = verify_topk(explorer, near, SCREEN_ROWS, P, progress, executor)
        return replace(att, method=method, score=score,
                       seconds=time.perf_counter() - t0)
    P = default_phantoms(len(codes)) if n_phantoms is None else n_phantoms
    ph = phantom_codes(codes, P, seed=1)
    fn = {
        "exact": functools.partial(_exact, executor=executor),
        "jacobian": _jacobian,
        "last-step": _last_step,
        "individual": _individual,
        "individual-paper": _individual,
    }[method]
    res, state = fn(explorer, seed, steps, np.concatenate([codes, ph]), method, progress)
    N = len(codes)
    scores_by, nulls_by = explorer.scorer()(sample + res[:N], np.arange(N), sample + res[N:],
                                            sample)
    if method == "exact":
        state = {"residuals": res[:N]}
    return Attribution(method, int(seed), steps, sample, scores_by, nulls_by,
                       time.perf_counter() - t0, method == "exact", score=score, state=state)


def exact_counterfactuals(
    explorer: Explorer,
    seed: int,
    steps: int | None,
    codes: np.ndarray,
    progress: Progress = None,
    executor: Executor | None = None,
) -> torch.Tensor:
    """y(u_-c, eps) for every code c (rows of `codes`), in batched sweeps of SWEEP_CHUNK
    chains (`run_chains`): [M, C, H, W]."""
    W = without_codes(codes)
    if len(W) == 0:
        return torch.zeros(0, *explorer.run.image_shape)
    return run_chains(explorer, W, int(seed), steps, progress, executor)


def run_chains(
    explorer: Explorer,
    weights: torch.Tensor,
    seeds: int | Sequence[int],
    steps: int | None = None,
    progress: Progress = None,
    executor: Executor | None = None,
    combine: str | None = None,
    one_pass_here: bool = False,
) -> torch.Tensor:
    """y(V, eps) of every weight row [B, n] under `combine` (default: the explorer's), chain
    b with the recorded noise of `seeds[b]` (one seed: of it for all): [B, C, H, W].

    Here (no executor, or a local one): passes of SWEEP_CHUNK chains one after another
    in this process (`one_pass_here`: all chains in one pass; how chains are batched can
    change the last float32 bits). With a remote `executor` (Ray): one task per
    SWEEP_CHUNK chains (one CPU and one torch thread, or one GPU when the explorer's
    device is cuda), all at once as far as the cluster allows. `progress(done, total)`
    counts the steps of all passes.
    """
    one_seed = isinstance(seeds, int | np.integer)
    if not one_seed and len(seeds) != len(weights):
        raise TdaError(f"{len(seeds)} seeds for {len(weights)} weight vectors")
    if len(weights) == 0:
        return torch.zeros(0, *explorer.run.image_shape)
    remote = executor is not None and executor.remote
    if not remote:
        executor = LocalExecutor(1)  # here: the loaded run, this process's threads
    size = len(weights) if one_pass_here and not remote else SWEEP_CHUNK
    starts = range(0, len(weights), size)
    K = len(explorer.chain(steps).timesteps)
    source = run_source(explorer, executor)
    gpus = 1.0 if explorer.device.type == "cuda" else 0.0
    device = explorer.device.type if remote else str(explorer.device)
    head = (source, device, combine or explorer.combine, explorer.chunk)
    jobs = [Job(c, _sweep, (*head, weights[s : s + size],
                            int(seeds) if one_seed else [int(x) for x in seeds[s : s + size]],
                            steps), cpus=1, gpus=gpus, threads=1 if remote else None)
            for c, s in enumerate(starts)]
    done_steps = [0] * len(jobs)
    out: dict[int, torch.Tensor] = {}

    def on_report(c: int, k: int) -> None:
        done_steps[c] = k
        if progress is not None:
            progress(sum(done_steps), len(jobs) * K)

    def done(job: Job, y: torch.Tensor) -> None:
        out[job.key] = y
        on_report(job.key, K)

    executor.run(jobs, done, on_report)
    return torch.cat([out[c] for c in range(len(jobs))])


def _sweep(source, device: str, combine: str, chunk: int, weights: torch.Tensor,
           seeds: int | list[int], steps: int | None, report) -> torch.Tensor:
    """One pass: y(weights, eps) wherever the executor runs it."""
    explorer = open_explorer(source, device, combine, chunk)
    if isinstance(seeds, int):
        return explorer.y(weights, seeds, steps, progress=lambda k, K: report(k))
    return explorer.y_seeds(weights, seeds, steps, progress=lambda k, K: report(k))


def _exact(explorer, seed, steps, codes, method, progress, executor=None):
    y0 = explorer.sample(seed, steps).sample
    return exact_counterfactuals(explorer, seed, steps, codes, progress, executor) - y0, {}


def jacobian(
    explorer: Explorer,
    seed: int,
    steps: int | None = None,
    eps: float | None = None,
    progress: Progress = None,
    central: bool = False,
) -> torch.Tensor:
    """J = dy/dv at u0 by finite differences through the whole chain: [C*H*W, n].

    Forward differences by default: n + 1 chains (u0 and u0 + eps e_i, in one batch so
    that every chain runs the same kernels), half the cost of central differences
    (`central=True`: 2n chains, error O(eps^2) instead of O(eps)).
    """
    n = explorer.n
    base = u0(n)
    if central:
        eps = FD_STEP_CENTRAL if eps is None else eps
        V = torch.cat([base + eps * torch.eye(n), base - eps * torch.eye(n)])
        y = explorer.y(V, seed, steps, progress=progress).flatten(1)
        return ((y[:n] - y[n:]) / (2 * eps)).T.contiguous()
    eps = FD_STEP if eps is None else eps
    V = torch.cat([base[None], base + eps * torch.eye(n)])
    y = explorer.y(V, seed, steps, progress=progress).flatten(1)
    return ((y[1:] - y[0]) / eps).T.contiguous()


def _linear(coef: torch.Tensor, basis: torch.Tensor, shape) -> torch.Tensor:
    """Residuals coef [M, n] @ basis [n, P] as images [M, *shape]."""
    return (coef @ basis).view(len(coef), *shape)


def _coefficients(codes: np.ndarray, method: str) -> torch.Tensor:
    """Per-code weights on the member directions: u_-x - u0, or the paper's -B/(n-h)."""
    n = codes.shape[1]
    if method == "individual-paper":
        h = int(codes[0].sum())
        return -torch.as_tensor(codes, dtype=torch.float32) / (n - h)
    return without_codes(codes) - u0(n)


def _jacobian(explorer, seed, steps, codes, method, progress):
    basis = jacobian(explorer, seed, steps, progress=progress).T  # [n, P]
    return _linear(_coefficients(codes, method), basis, explorer.run.image_shape), {"basis": basis}


def _individual(explorer, seed, steps, codes, method, progress):
    y0 = explorer.sample(seed, steps).sample
    basis = (explorer.y(torch.eye(explorer.n), seed, steps, progress=progress) - y0).flatten(1)
    return _linear(_coefficients(codes, method), basis, explorer.run.image_shape), {"basis": basis}


@torch.no_grad()
def _last_step(explorer, seed, steps, codes, method, progress):
    """Full ensemble until x_1, then each member's eps once, mixed per code in the last step."""
    chain = explorer.chain(steps)
    x_prev = explorer.trajectory(seed, steps)[-2][None]  # [1, C, H, W], before the last step
    t = chain.timesteps[-1]
    device = next(explorer.run.members[0].parameters()).device
    eps = torch.cat([m(x_prev.to(device), t).sample.cpu() for m in explorer.run.members])
    state = {"x_prev": x_prev, "member_eps": eps}
    if explorer.combine == "mixture":  # the trajectory's log-likelihoods before the last step
        state["loglik"] = explorer.sample(seed, steps).mixture_loglik[-1]
    return _last_step_residuals(explorer, seed, steps, codes, state), state


def _last_step_residuals(explorer, seed, steps, codes, state) -> torch.Tensor:
    """The last step taken with each code's members dropped: the mean of the remaining
    members' eps, or under `mixture` their posterior means weighted by
    softmax(log v + l) with l from the full ensemble's trajectory."""
    chain, noise = explorer.chain(steps), explorer.noise(seed, steps)
    W = without_codes(codes)
    k = len(chain.timesteps) - 1
    if "loglik" in state:
        mu = chain.mean(k, state["x_prev"][None], state["member_eps"][:, None])  # [n, 1, ...]
        w = torch.softmax(torch.log(W.double()) + state["loglik"], dim=1)
        y = mix_step(chain, k, w, mu.expand(-1, len(W), -1, -1, -1), noise.noise[k])
    else:
        mixed = (W @ state["member_eps"].flatten(1)).view(len(W), *explorer.run.image_shape)
        y = chain.step(k, state["x_prev"].expand_as(mixed), mixed, noise.noise[k])
    return y - explorer.sample(seed, steps).sample


def _nearest(explorer: Explorer, sample: torch.Tensor) -> np.ndarray:
    images = explorer.run.images
    index = load_index(explorer.run.path, images)  # the run's own FAISS index
    d, rows = search(index, sample[None].numpy(), len(images))
    scores = np.empty(len(images), dtype=np.float32)
    scores[rows[0]] = -np.sqrt(np.maximum(d[0], 0.0))
    return scores


def _exact_wanted(att: Attribution, exact: bool) -> bool:
    """Methods without counterfactuals of their own for every row: exact chains."""
    return exact or att.exact or att.method in ("nearest", "screened")


def _stored_counterfactuals(att: Attribution, rows: np.ndarray) -> torch.Tensor | None:
    """The exact counterfactuals of `rows` that `att` already holds, or None."""
    if "verified_cf" in att.state and np.isin(rows, att.verified_rows).all():
        pos = {int(r): k for k, r in enumerate(att.verified_rows)}
        return att.state["verified_cf"][torch.as_tensor([pos[int(r)] for r in rows])]
    if "residuals" in att.state:
        return att.sample + att.state["residuals"][torch.as_tensor(rows)]
    return None


def counterfactuals_need_chains(att: Attribution, rows, exact: bool = False) -> bool:
    """Whether `counterfactuals_for(explorer, att, rows, exact)` runs chains (exact ones
    not stored, or last-step's one step); otherwise it is a lookup or a matrix product."""
    rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
    if _exact_wanted(att, exact):
        return _stored_counterfactuals(att, rows) is None
    return att.method == "last-step"


def counterfactuals_for(
    explorer: Explorer, att: Attribution, rows, exact: bool = False
) -> torch.Tensor:
    """Counterfactual samples [k, C, H, W] of training rows: exact chains, or the method's."""
    rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
    codes = explorer.run.codes[rows]
    y0 = att.sample
    if _exact_wanted(att, exact):
        stored = _stored_counterfactuals(att, rows)
        if stored is not None:
            return stored
        return exact_counterfactuals(explorer, att.seed, att.steps, codes)
    if att.method == "last-step":
        return y0 + _last_step_residuals(explorer, att.seed, att.steps, codes, att.state)
    return y0 + _linear(_coefficients(codes, att.method), att.state["basis"], y0.shape)


def verify_topk(
    explorer: Explorer,
    att: Attribution,
    m: int = 64,
    n_phantoms: int = 128,
    progress: Progress = None,
    executor: Executor | None = None,
) -> Attribution:
    """Re-score the top m rows of an attribution with exact chains.

    The m rows get exact counterfactuals and every score from them, with floors from
    `n_phantoms` phantoms run exactly; the other rows are not scored and follow in
    `att`'s order. `executor`: where the chains run.
    """
    if att.exact or len(att.verified_rows):
        return att
    t0 = time.perf_counter()
    top = att.order[:m]
    m, N = len(top), len(att.order)
    codes = explorer.run.codes
    ph = phantom_codes(codes, n_phantoms, seed=1)
    cf = exact_counterfactuals(
        explorer, att.seed, att.steps, np.concatenate([codes[top], ph]), progress, executor
    )
    s, nl = explorer.scorer()(cf[:m], top, cf[m:], att.sample)
    scores_by, nulls_by = {}, {}
    for name, v in s.items():
        scores_by[name] = np.full(N, np.nan, np.float32)
        scores_by[name][top] = v
        if nl[name].ndim == 2:
            nulls_by[name] = np.full((N, nl[name].shape[1]), np.nan, np.float32)
            nulls_by[name][top] = nl[name]
        else:
            nulls_by[name] = nl[name]
    score = att.score if att.score in scores_by else DEFAULT_SCORE
    return replace(
        att,
        method=f"{att.method}+verify",
        scores_by=scores_by,
        nulls_by=nulls_by,
        score=score,
        base_order=att.order.copy(),
        verified_rows=top.copy(),
        state=dict(att.state, verified_cf=cf[:m]),
        seconds=att.seconds + time.perf_counter() - t0,
    )
