"""Streamlit side of the explorer: which run, seed and rule, and the caches.

Runs are found under the bundled `assets/` folder (`TDA_ASSETS` overrides it) and
under `TDA_RUNS`; a visitor picks among them, never types a path. The Explorer of a
run lives in `st.cache_resource` (one per combination rule, sharing the loaded
members); samples, counterfactuals and attributions in `st.cache_data`, keyed by the
run's key (path and manifest time), the seed, the rule and the method. The chosen run,
seed and rule survive page switches (`keep`) and travel in the URL (`ui.urls`).
Expensive work (attribution sweeps, verification, live evaluation) runs through one
bounded pool per server (`heavy`), sized by `tda.limits`.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from tda import TdaError
from tda import sampling as _sampling
from tda.api import MAX_SEED, Explorer
from tda.ensemble import MANIFEST
from tda.limits import Limits, limits
from ui import guard, nav, urls

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_RUN = "default"
SEARCH_DEPTH = 3  # how deep below a root a run folder may sit
COMBINE_HELP = (
    "mean: average the members' noise predictions (the paper's rule); mixture: weight "
    "members by how well each explains the trajectory so far, so a sample follows what "
    "some members know."
)

TRAIN_HINT = """No trained run was found.

Train one (a few minutes to an hour on a laptop CPU), then reload this page:

```
python -m tda train --dataset mnist --n 384 --members 16 --steps 3000 --out assets/default
```

or point the explorer at a folder that holds runs: `TDA_RUNS=/path/to/runs streamlit run app.py`.
A run is any folder with an `ensemble.json` in it."""


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


def keep(key: str, default, bounds: tuple[int, int] | None = None):
    """Let the widget with `key` keep its value across pages; pass the result as on_change.

    Streamlit forgets a widget's value on pages that do not show it; the value is
    mirrored in `_kept_<key>` and restored before the widget is created. `bounds`
    (lo, hi) clamps a kept number, e.g. a row index after switching to a smaller run.
    """
    store = f"_kept_{key}"
    if store not in st.session_state:
        st.session_state[store] = default
    if bounds is not None:
        st.session_state[store] = min(max(st.session_state[store], bounds[0]), bounds[1])
    st.session_state[key] = st.session_state[store]
    return lambda: st.session_state.__setitem__(store, st.session_state[key])


def set_kept(key: str, value) -> None:
    """Change a kept widget's value from a callback (it shows on the next run)."""
    st.session_state[f"_kept_{key}"] = value


# -- caches ----------------------------------------------------------------------------


def rules() -> tuple[str, ...]:
    """The combination rules the core knows (mean first)."""
    return tuple(getattr(_sampling, "COMBINE_RULES", ("mean",)))


def run_rule(explorer: Explorer) -> str:
    """The rule a run samples with unless told otherwise."""
    return getattr(explorer.run.config.sample, "combine", "mean")


@st.cache_resource(show_spinner="Loading the run and checking every file ...", max_entries=4)
def _loaded(key: str) -> Explorer:
    return Explorer(key.rsplit("@", 1)[0])


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


@st.cache_resource(show_spinner=False)
def _ledger() -> set[tuple]:
    """Which attributions have been computed (process-wide), to find them again."""
    return set()


@st.cache_resource(show_spinner=False)
def _gate() -> guard.Gate:
    """The server's one pool for expensive work."""
    return guard.Gate()


@contextmanager
def heavy():
    """Run the block in one of the server's `Limits.jobs` slots, showing the queue while it
    waits; when `Limits.queue` computations already wait, say so and stop the page."""
    lim = limits()
    box = st.empty()

    def wait(queued: int) -> None:
        box.info(
            f"Waiting for a free worker: {queued} computation(s) queued, {lim.jobs} running. "
            "This starts by itself.",
            icon=":material/hourglass_top:",
        )

    try:
        with _gate().slot(lim.jobs, lim.queue, wait):
            box.empty()
            yield
    except guard.Busy:
        box.empty()
        st.warning(
            "The server is busy: every worker is taken and the queue is full. Try again "
            "in a minute; results others computed meanwhile will be ready at once.",
            icon=":material/hourglass_disabled:",
        )
        st.stop()


@st.cache_data(show_spinner="Sampling ...", max_entries=64)
def ensemble_sample(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    y = explorer(key, combine).sample(seed).sample.numpy()
    return y, time.perf_counter() - t


@st.cache_data(show_spinner="Recording the denoising trajectory ...", max_entries=32)
def trajectory(key: str, seed: int, combine: str) -> tuple[np.ndarray, np.ndarray, float]:
    """x after each step (x_T first), the timestep of each, and the seconds it took."""
    t = time.perf_counter()
    ex = explorer(key, combine)
    traj = ex.trajectory(seed).numpy()
    return traj, ex.chain().timesteps.numpy(), time.perf_counter() - t


@st.cache_data(show_spinner="Sampling every member alone ...", max_entries=32)
def member_samples(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    y = explorer(key, combine).member_samples(seed).numpy()
    return y, time.perf_counter() - t


@st.cache_data(show_spinner="Running the counterfactual chain ...", max_entries=256)
def counterfactual(key: str, seed: int, active: tuple[bool, ...], combine: str):
    t = time.perf_counter()
    cf = explorer(key, combine).counterfactual(seed, active=list(active))
    return cf, time.perf_counter() - t


def _progress(text: str):
    """A progress bar and its `progress(done, total)` callback.

    Create it inside the cached function that reports to it: Streamlit replays the
    elements a cached function made, and cannot replay calls on outside blocks.
    """
    bar = st.progress(0.0, text=text)

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{text} {done}/{total}")

    return bar, update


@st.cache_data(show_spinner=False, max_entries=64)
def attribution(key: str, seed: int, method: str, combine: str):
    """Scores of every training image for the sample of `seed`, drawing a progress bar."""
    from tda.attribution import attribute

    with heavy():
        bar, update = _progress(f"Scoring every training image with {method} ...")
        att = attribute(explorer(key, combine), seed, method, progress=update)
        bar.empty()
    _ledger().add((key, seed, method, combine))
    return att


def cached_attribution(key: str, seed: int, method: str, combine: str):
    """The attribution if it was computed before (by anyone), else None; never computes."""
    done = (key, seed, method, combine) in _ledger()
    return attribution(key, seed, method, combine) if done else None


@st.cache_data(show_spinner=False, max_entries=256)
def candidate(key: str, seed: int, combine: str, controls: int):
    """The candidate test of the sample of `seed` (its nearest image vs random ones)."""
    from tda.candidate import candidate_test

    with heavy():
        bar, update = _progress("Ablating the nearest training image and random ones ...")
        test = candidate_test(explorer(key, combine), seed, controls=controls,
                              chain_progress=update)
        bar.empty()
    return test


@st.cache_data(show_spinner=False, max_entries=64)
def verified(key: str, seed: int, method: str, m: int, combine: str):
    """The attribution with its top m rescored by exact chains."""
    from tda.attribution import verify_topk

    base = attribution(key, seed, method, combine)
    with heavy():
        bar, update = _progress(f"Exact chains for the top {m} and the phantoms ...")
        att = verify_topk(explorer(key, combine), base, m=m, progress=update)
        bar.empty()
    return att


@st.cache_data(show_spinner="Counterfactuals of the top images ...", max_entries=256)
def counterfactuals(
    key: str,
    seed: int,
    method: str,
    verified_m: int,
    rows: tuple[int, ...],
    exact: bool,
    combine: str,
) -> np.ndarray:
    from tda.attribution import counterfactuals_for

    att = (
        verified(key, seed, method, verified_m, combine)
        if verified_m
        else attribution(key, seed, method, combine)
    )
    return counterfactuals_for(explorer(key, combine), att, list(rows), exact=exact).numpy()


# -- the sidebar every page shows ------------------------------------------------------


@dataclass
class Context:
    """What a page works on: the run (cache key, label, Explorer for the rule), seed, rule."""

    key: str
    label: str
    explorer: Explorer
    seed: int
    combine: str
    limits: Limits

    @property
    def run(self):
        return self.explorer.run


def _random_seed() -> None:
    set_kept("seed", random.randint(0, 99_999))


def _read_link(labels: list[str]) -> None:
    """On a session's first page, take run, seed and rule from the URL (checked)."""
    if "_link_read" in st.session_state:
        return
    st.session_state["_link_read"] = True
    view, problems = urls.parse_view(st.query_params.to_dict(), labels, rules(), MAX_SEED)
    for name, value in view.items():
        set_kept(name, value)
    for text in problems:
        st.warning(text, icon=":material/link_off:")


def _write_link(view: dict[str, str]) -> None:
    """Keep the URL equal to the view, so that copying it shares what is on screen."""
    if st.query_params.to_dict() != view:
        st.query_params.from_dict(view)


def _stop(message: str, links, icon: str = ":material/error:") -> None:
    nav.navigation(links, {})
    st.error(message, icon=icon)
    st.stop()


def sidebar(title: str = "Home") -> Context:
    """Page config, navigation, run, seed and rule; the first call on every page.

    Stops the page with a clear message if there is no run or it cannot be opened.
    """
    nav.configure(title)
    links = st.sidebar.container()  # the navigation, drawn once the view is known
    runs = discover_runs()
    if not runs:
        nav.navigation(links, {})
        st.info(TRAIN_HINT, icon=":material/model_training:")
        st.stop()
    labels = list(runs)
    _read_link(labels)
    if st.session_state.get("_kept_run") not in labels:
        st.session_state["_kept_run"] = labels[0]
    with st.sidebar:
        label = st.selectbox(
            "Run",
            labels,
            key="run",
            on_change=keep("run", labels[0]),
            help="Runs under assets/ and under the folder in TDA_RUNS.",
        )
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        seed = c1.number_input(
            "Seed",
            min_value=0,
            max_value=MAX_SEED,
            step=1,
            key="seed",
            on_change=keep("seed", 0),
            help="Fixes the recorded noise: same seed, same sample.",
        )
        c2.button(":material/casino:", on_click=_random_seed, help="A random seed")
    lim = limits()
    try:
        key = run_key(runs[label])
        base = explorer(key)
    except (TdaError, OSError) as e:
        names = {runs[label]: label, str(Path(runs[label])): label}
        _stop(f"Cannot open run **{label}**: {guard.public_message(e, names)}", links)
    steps = base.run.config.sample.num_inference_steps
    if steps > lim.steps:
        _stop(
            f"Run **{label}** samples with {steps} steps; this server runs at most "
            f"{lim.steps} (the operator's TDA_MAX_STEPS). Pick another run.",
            links,
        )
    options = rules()
    rule = st.session_state.get("_kept_combine") or run_rule(base)
    st.session_state["combine"] = rule if rule in options else options[0]
    combine = st.sidebar.selectbox(
        "Combine",
        options,
        key="combine",
        on_change=lambda: set_kept("combine", st.session_state["combine"]),
        help=COMBINE_HELP,
    )
    s = base.run.summary()
    st.sidebar.caption(
        f"{s['dataset']} · N = {s['N']} images · n = {s['n']} members · "
        f"h = {s['h']} · {s['steps']} steps"
    )
    view = urls.view_params(label, int(seed), combine)
    _write_link(view)
    nav.navigation(links, view)
    return Context(key, label, explorer(key, combine), int(seed), combine, lim)
