"""The evaluation report of a run: does the ensemble sample well, and is attribution real?

`evaluate(run, out, sizes)` writes `out/report.json` and plotly figures beside it
(`report_figures.py`). Parts, each saved under `out/parts/` the moment it is done and
skipped on a rerun with the same settings (expensive intermediates, samples in
blocks of seeds and attributions per seed, under `out/cache/`):

- fidelity: FD in a classifier's features (not Inception FID) of ensemble samples and
  of every member alone vs real held-out images; share classified with confidence >= 0.9;
- convergence: sub-ensembles of k members (random draws), mean L2 distance of their
  samples to the full ensemble's under the same noise, and their FD;
- attribution: every method against exact counterfactuals on held-out seeds, per rule
  and per score (`agreement.py`): top-1 agreement, the copied image's rank, Spearman,
  top-10 overlap, seconds, which methods fail and the default method of each rule;
- candidate: the candidate-first test (`candidate.py`) on held-out seeds under both
  combination rules: TAR / FAR with 95% bootstrap intervals, the continuous version,
  per-sample flip rates, how often samples copy a training image;
- compare: the same method agreement and TAR summaries on other runs;
- cost: seconds of each part.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import TdaError
from .agreement import rule_agreement
from .api import Explorer
from .attribution import run_chains
from .candidate import candidate_tests, load_tests, save_tests, tar
from .config import DataConfig
from .ensemble import MANIFEST
from .executor import Executor
from .metrics import (
    CLASSIFIER_DIR,
    CONFIDENT,
    FD_NAME,
    Classifier,
    features,
    fit_classifier,
    frechet_distance,
    heldout_split,
    load_classifier,
    probabilities,
)
from .sampling import COMBINE_RULES
from .scores import DEFAULT_SCORE, SCORE_VERSION

FORMAT_VERSION = 1
REPORT = "report.json"
PARTS_DIR = "parts"
CACHE_DIR = "cache"
BLOCK = 32  # seeds per saved block of samples

Progress = Callable[[str, float, int], None] | None  # (what, done, total)
PARTS = ("candidate", "fidelity", "convergence", "attribution", "compare")
CANDIDATE_CHUNK = 10  # candidate-test samples saved together (a killed evaluation resumes)
TAR_SEED0 = 100_000  # the candidate test's seeds: held out from the app's and the other parts'
ATTR_SEED0 = 200_000  # the attribution part's seeds


@dataclass
class EvalSizes:
    samples: int = 512  # samples per weight vector (ensemble, each member, sub-ensembles)
    seeds: int = 64  # held-out seeds scored exactly and by every approximation (run's rule)
    other_rule_seeds: int = 16  # the same under the other combination rule
    draws: int = 3  # random member subsets per sub-ensemble size
    sizes: tuple[int, ...] = (1, 2, 4, 8, 12)  # sub-ensemble sizes k; n is always added
    classifier_steps: int = 1500  # when the run has no classifier yet
    # ... fitted on the images outside the first this-many of the dataset's draw (0: the
    # run's N); a ladder's largest N gives every rung one classifier that none of them saw
    classifier_outside: int = 0
    tar_samples: int = 200  # samples of held-out seeds in the candidate test, per rule
    tar_controls: int = 16  # random training images ablated per sample
    tar_rules: tuple[str, ...] = ()  # rules the candidate test runs now (empty: all)
    parts: tuple[str, ...] = PARTS  # which parts to compute now (the others: as saved)

    def check(self) -> None:
        if self.samples < 2 or self.seeds < 1 or self.draws < 1 or not self.sizes:
            raise TdaError("need --samples >= 2, --seeds >= 1, --draws >= 1 and some --sizes")
        if self.tar_samples < 2 or self.tar_controls < 1:
            raise TdaError("need --tar-samples >= 2 and --tar-controls >= 1")
        if set(self.tar_rules) - set(COMBINE_RULES):
            raise TdaError(f"unknown combination rules {sorted(set(self.tar_rules))}; choose "
                           f"from {', '.join(COMBINE_RULES)}")
        bad = set(self.parts) - set(PARTS)
        if bad:
            raise TdaError(f"unknown report parts {sorted(bad)}; choose from {', '.join(PARTS)}")


def evaluate(
    run: Explorer | str | Path,
    out: str | Path,
    sizes: EvalSizes | None = None,
    compare_runs=(),
    classifier_dir: str | Path | None = None,
    device: str = "cpu",
    progress: Progress = None,
    executor: Executor | None = None,
) -> dict:
    """Compute (or resume) every part of the report of `run` into the folder `out`.

    `executor`: where the chains run (the samples, the candidate test's ablations, the
    exact attributions); default here. Only this process writes into `out`."""
    sizes = sizes or EvalSizes()
    sizes.check()
    ex = run if isinstance(run, Explorer) else Explorer(run, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(ex)
    clf = classifier_for(ex, classifier_dir, sizes, progress)
    # the classifier's own validation images: outside the run and outside its fit
    _, _, real, _ = heldout_split(DataConfig(**clf.info["data"]), clf.config)
    real_f = features(clf, real)
    report: dict = {
        "format_version": FORMAT_VERSION,
        "note": FD_NAME,
        "complete": False,
        "run": ex.run.summary(),
        "sizes": asdict(sizes),
        "classifier": {**clf.info, "path": str(clf.path)},
    }

    def part(name: str, params: dict, fn: Callable[[], dict]) -> dict | None:
        params = {**params, "run": fp, "clf": clf.sha256}
        if name not in sizes.parts:  # only what is already saved with these settings
            fn = None
        report[name] = cached_part(out, name, params, fn)
        if report[name] is None:
            del report[name]
        save_report(out, report)
        return report.get(name)

    subs = subensembles(ex.n, sizes.sizes, sizes.draws)
    V, rows = weight_rows(ex.n, subs)
    memo: dict = {}

    def samples() -> tuple[torch.Tensor, float]:  # only when a part needs them
        if "ys" not in memo:
            cache = out / CACHE_DIR / "samples"
            memo["ys"] = ensure_samples(ex, V, sizes.samples, cache, fp, progress, executor)
        return memo["ys"]

    def feats_of(row: int) -> np.ndarray:
        if row not in memo:
            memo[row] = features(clf, samples()[0][row])
        return memo[row]

    tar_params = {"samples": sizes.tar_samples, "controls": sizes.tar_controls}
    tar_key = _short_hash(json.dumps([tar_params, fp]))  # its chunks' cache folder
    cand: dict = {"default_rule": ex.combine, "rules": {}}
    for rule in rule_order(ex.combine):  # one saved part per rule; rules not asked for: as saved
        asked = "candidate" in sizes.parts and rule in (sizes.tar_rules or COMBINE_RULES)
        result = cached_part(
            out, f"candidate-{rule}", {**tar_params, "run": fp},
            (lambda r=rule: rule_candidate(
                ex.with_combine(r), sizes, progress, executor,
                cache=out / CACHE_DIR / f"candidate-{r}-{tar_key}"))
            if asked else None,
            any_params=not asked,
        )
        if result is not None:
            cand["rules"][rule] = result
    if cand["rules"]:
        report["candidate"] = cand
        save_report(out, report)
    n = {"samples": sizes.samples, "sizes": list(sizes.sizes), "draws": sizes.draws}
    part("fidelity", n, lambda: fidelity(clf, *samples(), ex.n, real, real_f, feats_of,
                                         ex.run.images))  # fmt: skip
    part("convergence", n, lambda: convergence(subs, rows, samples()[0], real_f, feats_of))
    summary = part(
        "attribution",
        {"seeds": sizes.seeds, "other_rule_seeds": sizes.other_rule_seeds,
         "score_version": SCORE_VERSION, "seed0": ATTR_SEED0},
        lambda: attribution_part(ex, sizes, out / CACHE_DIR / "attributions", fp, progress,
                                 executor),
    )
    seeds = list(range(ATTR_SEED0, ATTR_SEED0 + sizes.seeds))  # other runs: under their rule
    report["by_n"] = [by_n_entry(ex.run.summary(), summary, report.get("candidate"))]
    for path in compare_runs:
        name = f"compare-{_short_hash(str(Path(path).resolve()))}"
        entry = cached_part(
            out,
            name,
            {"seeds": seeds, "path": str(Path(path).resolve())},  # its TAR: as first computed
            None if "compare" not in sizes.parts else lambda path=path, name=name: compare_run(
                path, seeds, sizes, out / CACHE_DIR / name, str(ex.device), progress, executor
            ),
        )
        if entry is not None:
            report["by_n"].append(entry)
        save_report(out, report)
    if not all(p in report for p in ("candidate", "fidelity", "convergence", "attribution")):
        save_report(out, report)  # a partial report: the parts asked for; rerun for the rest
        return report
    report["cost_seconds"] = cost(report, clf)
    report["complete"] = True
    from .report_figures import write_figures

    report["figures"] = write_figures(report, out)
    save_report(out, report)
    return report


# -- resumable parts -------------------------------------------------------------------


def fingerprint(ex: Explorer) -> str:
    """Identity of a run's files (its manifest); cached results of another run are stale."""
    return _short_hash((Path(ex.run.path) / MANIFEST).read_text())


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_part(out: Path, name: str, params: dict, fn: Callable[[], dict] | None,
                any_params: bool = False) -> dict | None:
    """The saved part `name` if it was computed with `params` (`any_params`: with any),
    else compute and save it (`fn` None: only the saved one, or None)."""
    path = out / PARTS_DIR / f"{name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if any_params or saved.get("params") == params:
            return saved["result"]
    if fn is None:
        return None
    t0 = time.perf_counter()
    result = fn()
    result.setdefault("seconds", round(time.perf_counter() - t0, 2))
    _write_json(path, {"params": params, "result": result})
    return result


def save_report(out: Path, report: dict) -> None:
    _write_json(out / REPORT, report)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1, allow_nan=False))
    os.replace(tmp, path)


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def classifier_for(ex: Explorer, folder, sizes: EvalSizes, progress: Progress) -> Classifier:
    """The run's classifier (`RUN/classifier/`), fitted and saved there if missing."""
    folder = Path(folder) if folder is not None else Path(ex.run.path) / CLASSIFIER_DIR
    data = ex.run.config.data
    if folder.exists():
        return load_classifier(folder, data, device=ex.device)
    outside = sizes.classifier_outside or data.n_train
    if outside < data.n_train:
        raise TdaError(f"--classifier-outside {outside} is below the run's N = {data.n_train}: "
                       "the classifier would train on the run's own images")
    report = None if progress is None else (lambda d, t: progress("classifier", d, t))
    return fit_classifier(replace(data, n_train=outside), folder, device=ex.device,
                          steps=sizes.classifier_steps, progress=report)


# -- samples ---------------------------------------------------------------------------


def subensembles(n: int, sizes, draws: int, seed: int = 0) -> list[tuple[int, int, tuple]]:
    """(k, draw, members) of random k-member subsets; k = n once (the full ensemble)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in sorted({int(k) for k in sizes if 1 <= int(k) < n} | {n}):
        for d in range(draws if k < n else 1):
            out.append((k, d, tuple(sorted(int(i) for i in rng.choice(n, k, replace=False)))))
    return out


def weight_rows(n: int, subs) -> tuple[torch.Tensor, dict[tuple, int]]:
    """Distinct weight vectors: u0, every member alone, then the sub-ensembles [W, n]."""
    rows: dict[tuple, int] = {tuple(range(n)): 0, **{(i,): i + 1 for i in range(n)}}
    for _, _, members in subs:
        rows.setdefault(members, len(rows))
    V = torch.zeros(len(rows), n)
    for members, r in rows.items():
        V[r, list(members)] = 1.0 / len(members)
    return V, rows


def sample_many(
    ex: Explorer,
    V: torch.Tensor,
    seeds: list[int],
    progress: Callable[[int, int], None] | None = None,
    executor: Executor | None = None,
) -> torch.Tensor:
    """Samples [W, S, C, H, W]: every weight vector with every seed's recorded noise
    (under the mean rule; here in one pass, or in tasks of a remote `executor`)."""
    W, S = len(V), len(seeds)
    y = run_chains(ex, V.repeat_interleave(S, 0), [int(s) for s in seeds] * W,  # w*S + s: seed s
                   None, progress, executor, combine="mean", one_pass_here=True)
    return y.view(W, S, *ex.run.image_shape)


def ensure_samples(
    ex: Explorer, V: torch.Tensor, n_samples: int, cache: Path, fp: str, progress: Progress,
    executor: Executor | None = None,
) -> tuple[torch.Tensor, float]:
    """Samples of seeds 0..n_samples-1 for every row of V, in blocks saved to `cache`."""
    blocks, seconds = [], 0.0
    starts = range(0, n_samples, BLOCK)
    K = len(ex.chain().timesteps)
    for b, start in enumerate(starts):
        seeds = list(range(start, min(n_samples, start + BLOCK)))
        path = cache / f"block_{start:06d}.safetensors"
        y = _load_block(path, V, len(seeds), fp)
        if y is None:
            t0 = time.perf_counter()
            report = (
                None
                if progress is None
                else (lambda d, t, b=b: progress("samples", b * K + K * d / t, len(starts) * K))
            )
            y = sample_many(ex, V, seeds, report, executor)
            meta = {"run": fp, "seconds": f"{time.perf_counter() - t0:.3f}"}
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"samples": y.contiguous(), "weights": V.contiguous()}, str(path), meta)
        elif progress is not None:
            progress("samples", (b + 1) * K, len(starts) * K)
        seconds += _block_seconds(path)
        blocks.append(y)
    return torch.cat(blocks, dim=1), seconds


def _load_block(path: Path, V: torch.Tensor, n_seeds: int, fp: str) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("run") != fp:
            return None
    t = load_file(str(path))
    if t["weights"].shape != V.shape or not torch.equal(t["weights"], V):
        return None
    return t["samples"] if t["samples"].shape[1] == n_seeds else None


def _block_seconds(path: Path) -> float:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return float((f.metadata() or {}).get("seconds", 0.0))


# -- fidelity and convergence ------------------------------------------------------------


def confident_share(clf: Classifier, images) -> float:
    return float((probabilities(clf, images).max(1) >= CONFIDENT).mean())


def fidelity(
    clf: Classifier,
    ys: torch.Tensor,
    sample_seconds: float,
    n: int,
    real: torch.Tensor,
    real_f: np.ndarray,
    feats_of,
    train_images: np.ndarray,
) -> dict:
    """FD (classifier features) and confident share: ensemble, each member, references."""
    half = len(real) // 2
    members = range(1, n + 1)  # rows 1..n of `weight_rows` are the members alone
    return {
        "what": FD_NAME,
        "n_samples": int(ys.shape[1]),
        "n_real": len(real),
        "fd_ensemble": frechet_distance(feats_of(0), real_f),
        "fd_members": [frechet_distance(feats_of(r), real_f) for r in members],
        "fd_real_halves": frechet_distance(real_f[:half], real_f[half:]),
        "fd_train_set": frechet_distance(features(clf, train_images), real_f),
        "confident_ensemble": confident_share(clf, ys[0]),
        "confident_members": [confident_share(clf, ys[r]) for r in members],
        "confident_real": confident_share(clf, real),
        "sample_seconds": round(sample_seconds, 2),
    }


def convergence(subs, rows: dict, ys: torch.Tensor, real_f: np.ndarray, feats_of) -> dict:
    """Each sub-ensemble's mean L2 distance to the full ensemble (same noise) and its FD."""
    full = ys[0].flatten(1)
    entries = []
    for k, draw, members in subs:
        r = rows[members]
        l2 = (ys[r].flatten(1) - full).norm(dim=1)
        entries.append(
            {
                "k": k,
                "draw": draw,
                "members": list(members),
                "l2_mean": float(l2.mean()),
                "fd": frechet_distance(feats_of(r), real_f),
            }
        )
    by_k = {}
    for k in sorted({e["k"] for e in entries}):
        es = [e for e in entries if e["k"] == k]
        by_k[str(k)] = {key: float(np.mean([e[key] for e in es])) for key in ("l2_mean", "fd")}
    return {
        "what": f"mean L2 to the full ensemble (same noise, model space); {FD_NAME}",
        "n_samples": int(ys.shape[1]),
        "entries": entries,
        "by_k": by_k,
    }


# -- attribution: agreement, noise floor, class agreement ---------------------------------


def attribution_part(ex: Explorer, sizes: EvalSizes, cache: Path, fp: str,
                     progress: Progress = None, executor: Executor | None = None) -> dict:
    """Every method against exact, per rule and score (`agreement.py`): `seeds` held-out
    seeds under the run's rule, `other_rule_seeds` under the other."""
    rules = {}
    for rule in rule_order(ex.combine):
        count = sizes.seeds if rule == ex.combine else sizes.other_rule_seeds
        if count:
            seeds = list(range(ATTR_SEED0, ATTR_SEED0 + count))
            rules[rule] = rule_agreement(ex.with_combine(rule), seeds, cache, fp, progress,
                                         executor)
    return {"default_rule": ex.combine, "rules": rules}


# -- other runs, cost --------------------------------------------------------------------


def compare_run(
    path, seeds: list[int], sizes: EvalSizes, cache: Path, device: str, progress: Progress,
    executor: Executor | None = None,
) -> dict:
    """Another run's method agreement (under its own rule, `seeds`) and candidate test."""
    ex = Explorer(path, device=device)
    s = {"default_rule": ex.combine,
         "rules": {ex.combine: rule_agreement(ex, seeds, cache, fingerprint(ex), progress,
                                              executor)}}
    return by_n_entry(ex.run.summary(), s, candidate_part(ex, sizes, progress, executor))


def rule_order(default: str) -> list[str]:
    """The run's default combination rule first, then the others."""
    return [default, *[r for r in COMBINE_RULES if r != default]]


def candidate_part(ex: Explorer, sizes: EvalSizes, progress: Progress,
                   executor: Executor | None = None) -> dict:
    """The candidate test on `tar_samples` held-out seeds under each combination rule."""
    rules = {r: rule_candidate(ex.with_combine(r), sizes, progress, executor)
             for r in rule_order(ex.combine) if r in (sizes.tar_rules or COMBINE_RULES)}
    return {"default_rule": ex.combine, "rules": rules}


def rule_candidate(ex: Explorer, sizes: EvalSizes, progress: Progress,
                   executor: Executor | None = None, cache: Path | None = None) -> dict:
    """TAR of `ex`'s rule on `tar_samples` held-out seeds, with every sample's figures.

    `cache`: a folder where every CANDIDATE_CHUNK samples' tests are saved as they finish
    (`candidate.save_tests`), so a killed evaluation resumes where it stopped."""
    seeds = list(range(TAR_SEED0, TAR_SEED0 + sizes.tar_samples))
    what = f"candidate test N={ex.run.N} ({ex.combine})"
    tests: list = []
    seconds = _seconds(cache)  # of every chunk, saved ones included
    for start in range(0, len(seeds), CANDIDATE_CHUNK):
        part = seeds[start : start + CANDIDATE_CHUNK]
        name = f"seeds-{part[0]}-{part[-1]}.safetensors"
        if cache is not None and (cache / name).is_file():
            tests += load_tests(cache / name)
        else:
            t0, done = time.perf_counter(), len(tests)
            tests += candidate_tests(
                ex, part, controls=sizes.tar_controls, executor=executor,
                progress=None if progress is None
                else lambda d, t, done=done: progress(what, done + d, len(seeds)))
            seconds[name] = time.perf_counter() - t0
            if cache is not None:
                save_tests(cache / name, tests[start:])
                (cache / "seconds.json").write_text(json.dumps(seconds))
        if progress is not None:
            progress(what, len(tests), len(seeds))
    return {
        **tar(tests),
        "seeds": [seeds[0], seeds[-1]],
        "seconds_per_sample": sum(seconds.values()) / len(tests),
        "per_sample": {k: [t.summary()[k] for t in tests]
                       for k in ("candidate", "changed", "flip_rate", "p_value",
                                 "effect_p_value", "candidate_distance", "verdict")},
    }


def _seconds(cache: Path | None) -> dict:
    if cache is None:
        return {}
    try:
        return json.loads((cache / "seconds.json").read_text())
    except (OSError, ValueError):
        return {}


def by_n_entry(run_summary: dict, s: dict | None, cand: dict | None = None) -> dict:
    tar_by_rule = {r: {k: v for k, v in t.items() if k != "per_sample"}
                   for r, t in (cand or {}).get("rules", {}).items()}
    entry = {**{k: run_summary[k] for k in ("path", "N", "n", "h", "train_steps", "init")},
             "tar": tar_by_rule}
    if s is None:  # the attribution part was not computed (yet)
        return entry
    rule = s["rules"].get(s["default_rule"]) or next(iter(s["rules"].values()))
    entry["attribution"] = {
        "rule": s["default_rule"],
        "default_method": rule["default_method"],
        "exact_seconds_per_seed": rule["methods"]["exact"]["seconds_median"],
        "copies": rule["copies"], "seeds": len(rule["seeds"]),
        "top1": {m: d["scores"][DEFAULT_SCORE]["top1_agreement"]
                 for m, d in rule["methods"].items()},
    }
    return entry


def cost(report: dict, clf: Classifier) -> dict:
    """Seconds of each part as it was computed (resumed parts keep their first timing)."""
    f, a = report["fidelity"], report["attribution"]
    out = {
        "classifier_fit": clf.info.get("fit_seconds"),
        "samples": f["sample_seconds"],
        "fidelity_features": f["seconds"],
        "convergence": report["convergence"]["seconds"],
        "attribution": a["seconds"],
        **{f"compare.{e['path']}": e["seconds"] for e in report["by_n"][1:]},
    }
    out["total"] = round(sum(v for k, v in out.items() if v is not None and "per_seed" not in k), 2)
    return out
