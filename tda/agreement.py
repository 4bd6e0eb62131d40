"""How each attribution method does against exact counterfactuals, per rule and per score.

For held-out seeds, `seed_scores` computes every score of every method (the exact
counterfactual of every training image is the reference); `summarise` turns them into
the figures the report, the Attribution page and the CLI's default method read:

- top-1 agreement: how often the method's top-1 is exact's top-1 by the same score;
- on samples that copy a training image (pixel L2 < COPY_DISTANCE): how often the
  method's top-1 is the copied image, its median rank, how often the runner-up scores
  at most RUNNER_UP of the top (a clear answer);
- Spearman (over the rows the method scores, leaving out rows both score 0) and the
  overlap with exact's top 10 (of its rows with a positive score);
- how often the top-1 is not the sample's nearest image; median seconds.

A method *fails* under a rule when its top-1 agreement is below FAIL_TOP1; a failing
method is never a default and its scores get no "above the noise floor" badge. The
default method of a rule is the best non-failing one that answers within ANSWER_S.
`exact` runs here without phantoms (N chains; the figures need no floor), and `screened`
is scored from the exact chains of its rows (the same chains it would run); its seconds
are measured by running it, phantoms included, on the first TIMED_SEEDS seeds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .api import Explorer
from .attribution import COUNTERFACTUAL_METHODS, SCREEN_ROWS, attribute
from .candidate import COPY_DISTANCE
from .executor import Executor
from .metrics import spearman
from .scores import ALPHA, DEFAULT_SCORE, SCORE_VERSION, order_of

FAIL_TOP1 = 0.8  # top-1 agreement with full exact below this: the method fails under the rule
RUNNER_UP = 0.8  # a clear answer: the runner-up scores at most this share of the top
ANSWER_S = 30.0  # a default method answers an own seed within this many seconds (N = 256)
TIMED_SEEDS = 4
TOP_K = 10
APPROX = ("jacobian", "last-step", "individual", "individual-paper")


def seed_scores(ex: Explorer, seed: int, cache: Path, fp: str, timed: bool,
                executor: Executor | None = None) -> dict:
    """Every method's scores [N] (`<method>.<score>`) for one seed, with the sample's nearest
    row and distance and each method's seconds; cached under `cache`."""
    path = cache / f"{ex.combine}_seed_{seed:06d}.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("run") == fp and meta.get("score_version") == str(SCORE_VERSION):
            t = {k: v.numpy() for k, v in load_file(str(path)).items()}
            return {**t, "seconds": json.loads(meta["seconds"])}
    t, seconds = {}, {}
    exact = attribute(ex, seed, "exact", n_phantoms=0, executor=executor)  # no floor needed
    near = attribute(ex, seed, "nearest")
    seconds["exact"] = exact.seconds
    rows = near.order[:SCREEN_ROWS]
    for name, v in exact.scores_by.items():
        t[f"exact.{name}"] = v
        screened = np.full_like(v, np.nan)
        screened[rows] = v[rows]
        t[f"screened.{name}"] = screened
    if timed:
        seconds["screened"] = attribute(ex, seed, "screened", executor=executor).seconds
    for m in APPROX:
        att = attribute(ex, seed, m)
        seconds[m] = att.seconds
        t |= {f"{m}.{name}": v for name, v in att.scores_by.items()}
    t["nearest_row"] = np.array([near.order[0]], np.int64)
    t["nearest_distance"] = np.array([-near.scores[near.order[0]]], np.float32)
    t["sample"] = exact.sample.numpy()
    meta = {"run": fp, "score_version": str(SCORE_VERSION), "seconds": json.dumps(seconds)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()}, str(path),
              meta)
    return {**t, "seconds": seconds}


def method_figures(res: list[dict], method: str, score: str) -> dict:
    """The agreement figures of one method and score over the seeds' results."""
    top1, ref1, copy_top1, copy_rank, clear, not_near, rho, topk = [], [], [], [], [], [], [], []
    for r in res:
        s, e = r[f"{method}.{score}"], r[f"exact.{score}"]
        o, oe = order_of(s), order_of(e)
        near = int(r["nearest_row"][0])
        top1.append(int(o[0]) == int(oe[0]))
        ref1.append(int(oe[0]))
        not_near.append(int(o[0]) != near)
        # rows where either score is 0 tie (the sample never resembled them): leave them out
        ok = np.isfinite(s) & ((s != 0) | (e != 0))
        rho.append(spearman(s[ok], e[ok]) if ok.sum() > 2 else np.nan)
        k = min(TOP_K, int((e > 0).sum()))
        topk.append(len(set(o[:k]) & set(oe[:k])) / k if k else np.nan)
        if r["nearest_distance"][0] < COPY_DISTANCE:
            copy_top1.append(int(o[0]) == near)
            copy_rank.append(int(np.flatnonzero(o == near)[0]) + 1)
            a, b = float(s[o[0]]), float(s[o[1]])
            clear.append(bool(a > 0 and b <= RUNNER_UP * a))
    return {
        "top1_agreement": float(np.mean(top1)),
        "copies": len(copy_top1),
        "copy_top1": float(np.mean(copy_top1)) if copy_top1 else None,
        "copy_rank_median": float(np.median(copy_rank)) if copy_rank else None,
        "copy_runner_up_clear": float(np.mean(clear)) if clear else None,
        "top1_not_nearest": float(np.mean(not_near)),
        "spearman_median": float(np.nanmedian(rho)) if np.isfinite(rho).any() else None,
        f"top{TOP_K}_median": float(np.nanmedian(topk)) if np.isfinite(topk).any() else None,
        "per_seed_top1_agrees": [bool(x) for x in top1],
    }


def summarise(res: list[dict], seeds: list[int], scores) -> dict:
    """Per method and score: the figures, the seconds, whether it fails; the default method."""
    methods = {}
    for m in ("screened", *COUNTERFACTUAL_METHODS[1:]):
        secs = [r["seconds"][m] for r in res if m in r["seconds"]]
        methods[m] = {
            "seconds_median": float(np.median(secs)) if secs else None,
            "timed_seeds": len(secs),
            "scores": {s: method_figures(res, m, s) for s in scores},
        }
        for fig in methods[m]["scores"].values():
            fig["fails"] = fig["top1_agreement"] < FAIL_TOP1
    return {
        "seeds": [int(s) for s in seeds],
        "copies": int(sum(r["nearest_distance"][0] < COPY_DISTANCE for r in res)),
        "exact_top1_not_nearest": float(np.mean(
            [int(order_of(r[f"exact.{DEFAULT_SCORE}"])[0]) != int(r["nearest_row"][0])
             for r in res])),
        "methods": methods,
        "default_method": choose_default(methods),
        "thresholds": {"fail_top1": FAIL_TOP1, "runner_up": RUNNER_UP, "answer_s": ANSWER_S},
    }


def choose_default(methods: dict, score: str = DEFAULT_SCORE) -> str:
    """The best method that does not fail and answers within ANSWER_S (else `screened`)."""
    ok = [(m, d) for m, d in methods.items()
          if m != "exact" and not d["scores"][score]["fails"]
          and d["seconds_median"] is not None and d["seconds_median"] <= ANSWER_S]
    if not ok:
        return "screened"
    return max(ok, key=lambda md: (md[1]["scores"][score]["top1_agreement"],
                                   -md[1]["seconds_median"]))[0]


def rule_agreement(ex: Explorer, seeds: list[int], cache: Path, fp: str,
                   progress: Callable[[str, float, int], None] | None = None,
                   executor: Executor | None = None) -> dict:
    """`summarise` of every seed under `ex`'s rule (resumable: one cached file per seed)."""
    t0 = time.perf_counter()
    res = []
    for j, seed in enumerate(seeds):
        if progress is not None:
            progress(f"attribution vs exact ({ex.combine})", j, len(seeds))
        res.append(seed_scores(ex, seed, cache, fp, j < TIMED_SEEDS, executor))
    scores = sorted({k.split(".", 1)[1] for k in res[0] if k.startswith("exact.")},
                    key=lambda s: (s != DEFAULT_SCORE, s))
    out = summarise(res, seeds, scores)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def standing(report: dict | None, combine: str, method: str,
             score: str = DEFAULT_SCORE) -> dict | None:
    """How `method` did against exact under `combine` by `score` in a run's report
    (its figures with `fails`), or None where the report did not measure it."""
    method = method.removesuffix("+verify")
    try:
        m = report["attribution"]["rules"][combine]["methods"][method]
        fig = dict(m["scores"][score])
    except (KeyError, TypeError):
        return None
    fig["seconds_median"] = m.get("seconds_median")
    fig["seeds"] = len(report["attribution"]["rules"][combine]["seeds"])
    return fig


def floor_badge(p: float, q: float, fig: dict | None) -> tuple[str, str]:
    """One row's score against its floor: ("above" | "within" | "none", words). A method
    that fails against exact on this run, or was not measured, gets no floor badge."""
    if p is None or not np.isfinite(p):
        return "none", "no noise floor for this row"
    if fig is None:
        return "none", f"no badge: method not measured against exact here (p = {p:.2f})"
    if fig["fails"]:
        return "none", (f"no badge: this method fails against exact here (top-1 agrees "
                        f"{fig['top1_agreement']:.0%}; p = {p:.2f})")
    if q <= ALPHA:
        return "above", f"above noise floor (q = {q:.3f})"
    return "within", f"within noise (p = {p:.2f}, q = {q:.2f})"
