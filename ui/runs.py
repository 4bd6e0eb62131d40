"""Which runs the explorer serves and their shared, loaded objects.

Runs are found under the bundled `assets/` folder (`TDA_ASSETS` overrides it) and
under `TDA_RUNS`; a visitor picks among them, never types a path. A run's key is its
path and manifest time, so a rewritten run is loaded afresh. Its Explorer (one per
combination rule, sharing the loaded members), training index and featured results
(`tda.featured`: precomputed seeds, ready at once) live in `st.cache_resource`.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import streamlit as st

from tda import sampling
from tda.api import Explorer
from tda.app_jobs import run_path
from tda.ensemble import MANIFEST
from tda.featured import Entry, Featured, load_featured

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_RUN = "default"
SEARCH_DEPTH = 3  # how deep below a root a run folder may sit


def assets_dir() -> Path:
    return Path(os.environ.get("TDA_ASSETS") or ASSETS)


def roots() -> list[Path]:
    out = [assets_dir()]
    if os.environ.get("TDA_RUNS"):
        out.append(Path(os.environ["TDA_RUNS"]))
    return out


def find_runs(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders at or below `root` (at most `depth` levels) that hold an ensemble.json."""
    if not root.is_dir():
        return []
    if (root / MANIFEST).is_file():
        return [root]
    if depth == 0:
        return []
    found: list[Path] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_runs(child, depth - 1)
    return found


def discover_runs() -> dict[str, str]:
    """Label -> path of every run found; the default run first."""
    runs: dict[str, str] = {}
    for root in roots():
        for path in find_runs(root):
            rel = path.relative_to(root).as_posix()
            label = f"{root.name}/{rel}" if rel != "." else root.name
            runs.setdefault(label, str(path.resolve()))
    default = assets_dir() / DEFAULT_RUN
    if (default / MANIFEST).is_file():
        first = str(default.resolve())
        runs = {k: v for k, v in runs.items() if v == first} | runs
    return runs


def run_key(path: str) -> str:
    """Cache key of a run: its path and the time its manifest was written."""
    return f"{path}@{(Path(path) / MANIFEST).stat().st_mtime_ns}"


def rules() -> tuple[str, ...]:
    """The combination rules the core knows (mean first)."""
    return tuple(getattr(sampling, "COMBINE_RULES", ("mean",)))


def run_rule(explorer: Explorer) -> str:
    """The rule a run samples with unless told otherwise."""
    return getattr(explorer.run.config.sample, "combine", "mean")


@st.cache_resource(show_spinner="Loading the run and checking every file ...", max_entries=4)
def _loaded(key: str) -> Explorer:
    ex = Explorer(run_path(key))
    gc.freeze()  # the run lives as long as the server: the collector need not walk it
    return ex


@st.cache_resource(show_spinner=False, max_entries=8)
def explorer(key: str, combine: str | None = None) -> Explorer:
    """The run's Explorer sampling with `combine` (None: the run's own rule)."""
    ex = _loaded(key)
    with_combine = getattr(ex, "with_combine", None)
    return ex if combine is None or with_combine is None else with_combine(combine)


@st.cache_resource(show_spinner=False, max_entries=4)
def training_index(key: str):
    from tda.index import load_index

    run = _loaded(key).run
    return load_index(run.path, run.images)


@st.cache_resource(show_spinner=False, max_entries=8)
def featured(key: str) -> Featured | None:
    """The run's precomputed results for its featured seeds (`python -m tda precompute`),
    None when it has none or they are stale (then everything is computed on demand)."""
    return load_featured(_loaded(key).run)


def featured_seeds(key: str, combine: str) -> list[int]:
    f = featured(key)
    return [] if f is None else f.seeds(combine)


def entry(key: str, seed: int, combine: str) -> Entry | None:
    f = featured(key)
    return None if f is None else f.get(seed, combine)


@st.cache_data(show_spinner=False, max_entries=64)
def _rung(label: str, path: str, key: str) -> dict | None:
    from tda.ladder import rung

    return rung(label, path)


def rungs(found: dict[str, str]) -> list[dict]:
    """Every run of {label: path} as a rung of the ladder (`tda.ladder.rung`: N, n, h,
    recipe, TAR ...), by N; read from manifests and reports, members not loaded."""
    out = []
    for label, path in found.items():
        try:
            r = _rung(label, path, run_key(path))
        except OSError:
            r = None
        if r is not None:
            out.append(r)
    return sorted(out, key=lambda r: (r["N"], r["label"]))


def picker(found: dict[str, str]) -> tuple[list[str], dict[str, str], str]:
    """The run picker's (labels by N, {label: shown name}, default label): the default
    run (assets/default) is chosen first wherever it sits in the list."""
    rows = rungs(found)
    labels = [r["label"] for r in rows] + [x for x in found if x not in {r["label"] for r in rows}]
    names = {r["label"]: f"N = {r['N']:,} · {r['label']}" for r in rows}
    return labels, names, next(iter(found))
