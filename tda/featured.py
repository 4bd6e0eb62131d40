"""Featured seeds: results precomputed into a run, so that a class's first views are instant.

`precompute(explorer, seeds)` computes, for the sample of each seed under the explorer's
combination rule: the sample and its trajectory, every member alone, the counterfactual
of training image #0 (Home's example), the mixture's log-likelihoods (Generate's
picture of the members followed), the default method's attribution (jacobian) with
its phantom floor, the candidate test, and the exact scores where affordable (N up to
`EXACT_MAX_N` unless told). It writes `RUN/featured/`:

```
featured.json                    format, the run's fingerprint, steps, recipe, and per
                                 (seed, rule): its file, that file's sha256, the scalars
seed_<seed>_<rule>.safetensors   the tensors of that seed and rule (never pickle)
```

`load_featured(run)` reads them back for the app. Results are ignored (with a log line)
when the run's fingerprint differs (other members, codes, data, index or scheduler: the
results would be stale), when a file's sha256 differs from featured.json, or when the
recipe differs from what the app would compute (another step count, control count or
phantom count). The command: `python -m tda precompute --run DIR --seeds 0,1,2,3`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import TdaError
from .api import Counterfactual, Explorer
from .encoding import members_on, unseen_rows
from .ensemble import MANIFEST, read_manifest, sha256
from .index import nearest_row
from .scores import DEFAULT_SCORE, SCORE_VERSION

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: attributions hold every score (`scores.py`) and their floors
FEATURED_DIR = "featured"
INDEX = "featured.json"
DEFAULT_SEEDS = (0, 1, 2, 3)
CONTROLS = 16  # random ablations of the candidate test (the Attribution page's)
EXACT_MAX_N = 1024  # exact scores are precomputed by default up to this N (one chain per image)
# files of a run whose content the results depend on (the manifest's sha256 of each)
_INPUTS = ("codes.safetensors", "train.safetensors", "index.faiss", "scheduler/", "members/")


def fingerprint(manifest: dict) -> str:
    """sha256 of what the results depend on: member weights, codes, training images, index,
    scheduler and sampling config (not the default rule: results are stored per rule)."""
    files = {k: v for k, v in manifest.get("files", {}).items() if k.startswith(_INPUTS)}
    sample = dict(manifest.get("config", {}).get("sample", {}))
    sample.pop("combine", None)
    text = json.dumps({"files": files, "sample": sample}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _file(seed: int, combine: str) -> str:
    return f"seed_{int(seed)}_{combine}.safetensors"


# -- writing ------------------------------------------------------------------------------


def precompute(
    explorer: Explorer,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    exact: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Compute the featured results of `seeds` under the explorer's rule into RUN/featured/.

    `exact`: also the exact scores (default: when N <= EXACT_MAX_N). Entries of other
    seeds or rules already there are kept if they belong to the same run; stale ones are
    dropped. Returns the path of featured.json.
    """
    from .attribution import attribute, default_method, default_phantoms
    from .candidate import candidate_test

    run = explorer.run
    exact = run.N <= EXACT_MAX_N if exact is None else exact
    out = Path(run.path) / FEATURED_DIR
    say = progress or (lambda text: None)
    fp = fingerprint(read_manifest(Path(run.path)))
    index = _read_index(out)
    keep = index.get("entries", []) if index.get("fingerprint") == fp else []
    steps = explorer.steps(None)
    method = default_method(run.path, explorer.combine)
    recipe = {
        "controls": CONTROLS,
        "home": "nearest",
        "phantoms": default_phantoms(run.N),
        "score_version": SCORE_VERSION,
    }
    if index.get("recipe", recipe) != recipe or index.get("steps", steps) != steps:
        keep = []
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise TdaError(f"cannot write {out}: {e}") from e
    for seed in (int(s) for s in seeds):
        tensors: dict[str, torch.Tensor] = {}
        entry: dict = {"seed": seed, "combine": explorer.combine, "seconds": {}}
        say(f"seed {seed}: sample, trajectory, members")
        t = time.perf_counter()
        s = explorer.sample(seed)
        entry["seconds"]["sample"] = time.perf_counter() - t
        tensors |= {
            "sample": s.sample,
            "trajectory": s.trajectory,
            "timesteps": explorer.chain().timesteps.to(torch.int64),
        }
        if s.mixture_loglik is not None:  # Generate's picture of the members it followed
            tensors["mixture_loglik"] = s.mixture_loglik
        t = time.perf_counter()
        tensors["members"] = explorer.member_samples(seed)
        entry["seconds"]["members"] = time.perf_counter() - t
        home = nearest_row(run.images, s.sample)  # Home removes the sample's own image
        t = time.perf_counter()
        tensors["home_counterfactual"] = explorer.counterfactual(
            seed, remove_rows=[home]
        ).counterfactual
        entry["seconds"]["home_counterfactual"] = time.perf_counter() - t
        entry["home_row"] = home
        entry["attributions"] = {}
        for m in dict.fromkeys((method, "exact") if exact else (method,)):
            say(f"seed {seed}: {m} attribution")
            att = attribute(explorer, seed, m)
            entry["attributions"][m] = {"seconds": att.seconds, "exact": att.exact,
                                        "scores": list(att.scores_by)}
            tensors |= {f"{m}.score.{k}": torch.from_numpy(v) for k, v in att.scores_by.items()}
            tensors |= {f"{m}.null.{k}": torch.from_numpy(v) for k, v in att.nulls_by.items()}
            tensors[f"{m}.verified_rows"] = torch.from_numpy(att.verified_rows)
            if att.base_order is not None:
                tensors[f"{m}.base_order"] = torch.from_numpy(att.base_order)
            tensors |= {f"{m}.state.{k}": v for k, v in att.state.items()}
        say(f"seed {seed}: candidate test")
        t = time.perf_counter()
        test = candidate_test(explorer, seed, controls=CONTROLS)
        entry["candidate"] = {
            "seconds": time.perf_counter() - t,
            "candidate": test.candidate,
            "candidate_distance": test.candidate_distance,
            "nearest_after": test.nearest_after,
        }
        for name in (
            "counterfactual",
            "control_rows",
            "control_nearest",
            "control_effects",
            "phantom_nearest",
            "phantom_effects",
        ):
            tensors[f"candidate.{name}"] = torch.as_tensor(np.asarray(getattr(test, name)))
        entry["file"] = _file(seed, explorer.combine)
        path = out / entry["file"]
        # cloned: a method's state may be a view of another tensor here (the mean rule's
        # last-step x_prev is a step of the trajectory), which safetensors refuses
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
                  str(path))
        entry["sha256"] = sha256(path)
        keep = [e for e in keep if (e["seed"], e["combine"]) != (seed, explorer.combine)]
        keep.append(entry)
        _write_index(
            out,
            {
                "format_version": FORMAT_VERSION,
                "fingerprint": fp,
                "steps": steps,
                "recipe": recipe,
                "entries": sorted(keep, key=lambda e: (e["combine"], e["seed"])),
            },
        )
    return out / INDEX


def _read_index(folder: Path) -> dict:
    try:
        data = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_index(folder: Path, index: dict) -> None:
    tmp = folder / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    os.replace(tmp, folder / INDEX)


# -- reading ------------------------------------------------------------------------------


@dataclass
class Entry:
    """The precomputed results of one seed under one rule."""

    seed: int
    combine: str
    tensors: dict[str, torch.Tensor]
    meta: dict
    codes: np.ndarray
    steps: int

    @property
    def sample(self) -> torch.Tensor:
        return self.tensors["sample"]

    @property
    def mixture_loglik(self) -> torch.Tensor | None:
        """The mixture's running log-likelihoods [K, n] (mixture entries written since they
        were added; None for older ones, which the app then recomputes)."""
        return self.tensors.get("mixture_loglik")

    def seconds(self, what: str) -> float:
        return float(self.meta["seconds"].get(what, 0.0))

    def attribution(self, method: str):
        """The precomputed `Attribution` of `method`, or None."""
        from .attribution import Attribution

        meta = self.meta.get("attributions", {}).get(method)
        if meta is None:
            return None
        t = self.tensors
        state = f"{method}.state."
        base = t.get(f"{method}.base_order")
        return Attribution(
            method,
            self.seed,
            self.steps,
            self.sample,
            {k: t[f"{method}.score.{k}"].numpy() for k in meta["scores"]},
            {k: t[f"{method}.null.{k}"].numpy() for k in meta["scores"]},
            float(meta["seconds"]),
            bool(meta["exact"]),
            score=meta["scores"][0] if DEFAULT_SCORE not in meta["scores"] else DEFAULT_SCORE,
            verified_rows=t[f"{method}.verified_rows"].numpy(),
            base_order=None if base is None else base.numpy(),
            state={k[len(state) :]: v for k, v in t.items() if k.startswith(state)},
        )

    @property
    def home_row(self) -> int:
        """The training row Home removes: the sample's nearest image."""
        return int(self.meta["home_row"])

    def candidate(self):
        """The precomputed `CandidateTest` (CONTROLS controls, no phantoms)."""
        from .candidate import CandidateTest

        m, t = self.meta["candidate"], self.tensors
        arrays = {
            k: t[f"candidate.{k}"].numpy()
            for k in (
                "control_rows",
                "control_nearest",
                "control_effects",
                "phantom_nearest",
                "phantom_effects",
            )
        }
        return CandidateTest(
            seed=self.seed,
            steps=self.steps,
            combine=self.combine,
            sample=self.sample,
            candidate=int(m["candidate"]),
            candidate_distance=float(m["candidate_distance"]),
            counterfactual=t["candidate.counterfactual"],
            nearest_after=int(m["nearest_after"]),
            **arrays,
        )

    def counterfactual(self, active: Sequence[bool]) -> Counterfactual | None:
        """The exact counterfactual of a member mask if precomputed (all on, or Home's)."""
        active = np.asarray(active, dtype=bool)
        if active.all():
            cf = self.sample.clone()
        elif np.array_equal(active, self.codes[self.home_row] == 0):
            cf = self.tensors["home_counterfactual"]
        else:
            return None
        w = members_on(active)
        return Counterfactual(self.sample, cf, w, unseen_rows(self.codes, w))


class Featured:
    """The featured results of one run, checked against it; entries load on first use."""

    def __init__(self, run, index: dict):
        self.run, self.index = run, index
        self.folder = Path(run.path) / FEATURED_DIR
        self._entries: dict[tuple[int, str], Entry | None] = {}
        self._lock = threading.Lock()

    def seeds(self, combine: str | None = None) -> list[int]:
        """Featured seeds (of one rule, or of any)."""
        return sorted(
            {
                int(e["seed"])
                for e in self.index["entries"]
                if combine is None or e["combine"] == combine
            }
        )

    def get(self, seed: int, combine: str) -> Entry | None:
        """The entry of (seed, rule), None if not featured or its file fails its check."""
        key = (int(seed), combine)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = self._load(*key)
            return self._entries[key]

    def _load(self, seed: int, combine: str) -> Entry | None:
        meta = next(
            (
                e
                for e in self.index["entries"]
                if int(e["seed"]) == seed and e["combine"] == combine
            ),
            None,
        )
        if meta is None:
            return None
        path = self.folder / Path(meta["file"]).name
        try:
            if sha256(path) != meta["sha256"]:
                log.warning("featured %s: sha256 differs from %s; ignored", path.name, INDEX)
                return None
            tensors = load_file(str(path))
        except (OSError, KeyError, ValueError) as e:
            log.warning("featured %s cannot be read (%s); ignored", path.name, e)
            return None
        return Entry(seed, combine, tensors, meta, self.run.codes, int(self.index["steps"]))


def load_featured(run, steps: int | None = None) -> Featured | None:
    """The run's featured results if present and current, else None (the reason is logged).

    `steps`: the step count the caller samples with (default: the run's)."""
    from .attribution import default_phantoms

    folder = Path(run.path) / FEATURED_DIR
    if not (folder / INDEX).is_file():
        return None
    index = _read_index(folder)
    manifest = run.manifest or read_manifest(Path(run.path))
    steps = run.config.sample.num_inference_steps if steps is None else steps
    problem = None
    if index.get("format_version") != FORMAT_VERSION or not isinstance(index.get("entries"), list):
        problem = "unknown format"
    elif index.get("fingerprint") != fingerprint(manifest):
        problem = f"made for another version of the run (its {MANIFEST} differs)"
    elif index.get("steps") != steps:
        problem = f"made with {index.get('steps')} steps, not {steps}"
    elif index.get("recipe", {}).get("phantoms") != default_phantoms(run.N):
        problem = "made with another phantom count"
    elif index.get("recipe", {}).get("controls") != CONTROLS:
        problem = "made with another control count"
    elif index.get("recipe", {}).get("score_version") != SCORE_VERSION:
        problem = "made under another meaning of the scores"
    if problem:
        log.warning(
            "featured results of %s ignored: %s; rebuild them with `python -m tda "
            "precompute --run %s`",
            run.path,
            problem,
            run.path,
        )
        return None
    return Featured(run, index)
