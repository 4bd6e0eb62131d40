"""Streamlit side of the explorer: which run, seed and rule, and the caches.

Runs are found under the bundled `assets/` folder (`TDA_ASSETS` overrides it) and
under `TDA_RUNS`; a visitor picks among them, never types a path. The Explorer of a
run lives in `st.cache_resource` (one per combination rule, sharing the loaded
members). Everything is keyed by the run's key (path and manifest time), the seed, the
rule and the method, and looked up first in the run's featured results
(`tda.featured`, precomputed for a few seeds so that a class's first views are instant).
Cheap work (a sample, its trajectory, one counterfactual chain) is cached in
`st.cache_data`; the page waits for it. Expensive work (member samples, attribution
sweeps, verification, the candidate test, live evaluation) goes through the server's
one job manager (`tda.jobs`, sized by `tda.limits`): one computation per question
whoever asks, a bounded pool and queue, the waiting page showing its place or progress,
and cancellation when nobody waits any more. Every chain runs in a niced worker process
(`tda.workers`; a "page" lane and a "job" lane), never in the server's threads, which
keep the GIL and the CPU for serving pages. The chosen run, seed and rule
survive page switches (`keep`) and travel in the URL (`ui.urls`).
"""

from __future__ import annotations

import gc
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from tda import TdaError
from tda import sampling as _sampling
from tda.api import MAX_SEED, Counterfactual, Explorer
from tda.encoding import u0, unseen_rows
from tda.ensemble import MANIFEST
from tda.featured import CONTROLS as FEATURED_CONTROLS
from tda.featured import Entry, Featured, load_featured
from tda.jobs import QUEUED, Busy, JobManager, Status
from tda.limits import Limits, limits
from tda.workers import WorkerPool, fewer_malloc_arenas, run_path
from ui import guard, nav, render, urls

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
POLL_S = 1.0  # a waiting page redraws its place in the queue or progress this often: a
# changed progress bar costs its browser ~70 ms of CPU, and at two a second ten waiting
# pages took more than a core from the browsers beside them (the load test's own seeds)
RESULTS_KEPT = 256  # finished expensive results kept for everyone (least recently used go)


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
    ex = Explorer(run_path(key))
    # torch, the app's modules and the run now live as long as the server: out of the
    # cyclic collector with them, so that a collection (automatic, or Streamlit's after a
    # script run) walks only what pages create (0.26 s -> microseconds on assets/default)
    gc.freeze()
    fewer_malloc_arenas()  # a thread per session: each would keep an arena of freed memory
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


# -- precomputed results and the server's job manager -----------------------------------


@st.cache_resource(show_spinner=False, max_entries=8)
def featured(key: str) -> Featured | None:
    """The run's precomputed results for its featured seeds (`python -m tda precompute`),
    None when it has none or they are stale (then everything is computed on demand)."""
    return load_featured(_loaded(key).run)


def featured_seeds(key: str, combine: str) -> list[int]:
    f = featured(key)
    return [] if f is None else f.seeds(combine)


def _entry(key: str, seed: int, combine: str) -> Entry | None:
    f = featured(key)
    return None if f is None else f.get(seed, combine)


@st.cache_resource(show_spinner=False)
def jobs() -> JobManager:
    """The server's one job manager: every expensive computation, shared by all sessions.

    `Limits.jobs` run at once (at most the machine's cores), `Limits.queue` wait."""
    lim = limits()
    return JobManager(min(lim.jobs, os.cpu_count() or 1), lim.queue, keep=RESULTS_KEPT)


@st.cache_resource
def _workers() -> WorkerPool:
    """The server's worker processes (`tda.workers`), one more than the jobs that may run
    at once (`Limits.jobs`, at most the cores), at niceness `Limits.nice` and on spare
    CPU only (`Limits.spare_cpu_s`, `tda.spare_cpu`): a page's own chains (a sample with
    its trajectory, one counterfactual) take any free one before queued job calls, and
    jobs always leave one to pages. Chains never run in the server's threads, so a
    class's own seeds cannot hold the GIL or the CPU that serving ready pages (featured
    seeds, cached results) needs. One pool, not one per lane: each process holds torch,
    diffusers and a run (about 100 MB of its own beside what the forkserver shares)."""
    lim = limits()
    jobs = max(1, min(lim.jobs, os.cpu_count() or 1))
    return WorkerPool(jobs + 1, min(lim.nice, 19), lim.threads, "tda-worker",
                      spare_cpu_s=lim.spare_cpu_s)


class _Lane:
    def __init__(self, lane: str):
        self.lane = lane

    def call(self, *args, **kw):
        return _workers().call(*args, lane=self.lane, **kw)

    def timed(self, *args, **kw):
        return _workers().timed(*args, lane=self.lane, **kw)


def _pool(lane: str):
    """Calls into the worker processes in `lane` ("page" or "job")."""
    return _Lane(lane)


def _show(box, s: Status, text: str) -> None:
    """A waiting page's view of its job: place in the queue, or progress."""
    if s.state == QUEUED:
        box.info(
            f"**Queued: place {s.position} of {s.queued}** ({s.running} computation(s) "
            "running). It starts by itself; anyone who asks the same gets the same result.",
            icon=":material/hourglass_top:",
        )
    else:
        done = f" {s.done:.0f}/{s.total:.0f}" if s.total else ""
        box.progress(s.fraction, text=f"{s.text or text}{done}")


def run_job(job_key: tuple, fn: Callable[[Callable], Any], text: str, priority: int = 0) -> Any:
    """The result of the job `job_key`: known, joined, or computed by `fn(progress)`.

    While the page waits it shows the job's place in the queue or its progress, redrawn
    once a second in one placeholder (no rerun). Leaving the page (another widget, page
    or seed, a closed tab) stops this run at the next update, which releases the ticket;
    a job nobody waits for is cancelled. `fn` runs in a worker thread: it must not call
    Streamlit.
    """
    try:
        ticket = jobs().submit(job_key, fn, priority=priority, text=text)
    except Busy:
        st.warning(
            "The server is busy: every worker is taken and the queue is full. Try again "
            "in a minute; results others computed meanwhile will be ready at once.",
            icon=":material/hourglass_disabled:",
        )
        st.stop()
    with ticket:
        if not ticket.wait(0.05):
            render.still()
            box = st.empty()
            while True:  # each draw is also where Streamlit stops the run of a page left
                _show(box, ticket.status(), text)
                if ticket.wait(POLL_S):
                    break
            box.empty()
        return ticket.result()


@st.cache_data(show_spinner=False, max_entries=64)  # callers say "Sampling ..."
def _sampled(key: str, seed: int, combine: str):
    """The full ensemble's chain of `seed` in a page worker: (sample, trajectory, mixture
    log-likelihoods or None, seconds the chain took in its process)."""
    (y, traj, loglik), seconds = _pool("page").timed(key, combine, "sample", seed)
    return y, traj, loglik, seconds


def _ensemble_sample(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    """`ensemble_sample` drawing nothing: for cached functions, whose elements Streamlit
    would record and draw again on every hit."""
    e = _entry(key, seed, combine)
    if e is not None:
        return e.sample.numpy(), e.seconds("sample")
    y, _, _, seconds = _sampled(key, seed, combine)
    return y, seconds


def ensemble_sample(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    """The full ensemble's sample and the seconds it took (precomputed if featured)."""
    with render.computing("Sampling ...", when=_entry(key, seed, combine) is None):
        return _ensemble_sample(key, seed, combine)


def trajectory(key: str, seed: int, combine: str) -> tuple[np.ndarray, np.ndarray, float]:
    """x after each step (x_T first), the timestep of each, and the seconds it took."""
    e = _entry(key, seed, combine)
    if e is not None:
        t = e.tensors
        return t["trajectory"].numpy(), t["timesteps"].numpy(), e.seconds("sample")
    with render.computing("Sampling ..."):
        _, traj, _, seconds = _sampled(key, seed, combine)
    return traj, explorer(key, combine).chain().timesteps.numpy(), seconds


def mixture_loglik(key: str, seed: int) -> np.ndarray:
    """The mixture's running log-likelihoods of the seed's chain [K, n] (precomputed if
    featured)."""
    e = _entry(key, seed, "mixture")
    if e is not None and e.mixture_loglik is not None:
        return e.mixture_loglik.numpy()
    with render.computing("Sampling ..."):
        return _sampled(key, seed, "mixture")[2]


def member_samples(key: str, seed: int, combine: str) -> tuple[np.ndarray, float]:
    """Every member alone with the seed's noise [n, C, H, W], and the seconds it took."""
    e = _entry(key, seed, combine)
    if e is not None:
        return e.tensors["members"].numpy(), e.seconds("members")
    n = explorer(key, combine).n

    def work(progress):
        return _pool("job").timed(key, combine, "y", torch.eye(n), seed, progress=progress)

    return run_job(("members", key, seed, combine), work, "Sampling every member alone ...", -1)


@st.cache_data(show_spinner=False, max_entries=256)
def _counterfactual(key: str, seed: int, active: tuple[bool, ...], combine: str):
    ex = explorer(key, combine)
    w = ex.weights_for(active=list(active))
    t = time.perf_counter()
    base = torch.as_tensor(_ensemble_sample(key, seed, combine)[0])
    y = base.clone() if torch.equal(w, u0(ex.n)) else torch.from_numpy(
        _pool("page").call(key, combine, "y", w, seed)[0])
    return Counterfactual(base, y, w, unseen_rows(ex.run.codes, w)), time.perf_counter() - t


def counterfactual(key: str, seed: int, active: tuple[bool, ...], combine: str):
    """The exact counterfactual of a member mask (one chain: cheap, not queued)."""
    e = _entry(key, seed, combine)
    cf = None if e is None else e.counterfactual(active)
    if cf is not None:
        return cf, e.seconds("home_counterfactual")
    with render.computing("Running the counterfactual chain ..."):
        return _counterfactual(key, seed, active, combine)


def attribution(key: str, seed: int, method: str, combine: str):
    """Scores of every training image for the sample of `seed` (precomputed, shared or
    computed in the job queue; an exact sweep queues behind shorter work)."""
    att = cached_attribution(key, seed, method, combine)
    if att is not None:
        return att
    return run_job(
        ("attribution", key, seed, method, combine),
        lambda progress: _pool("job").call(key, combine, "attribution", seed, method,
                                           progress=progress),
        f"Scoring every training image with {method} ...",
        priority=1 if method == "exact" else 0,
    )


def cached_attribution(key: str, seed: int, method: str, combine: str):
    """The attribution if it is precomputed or was computed before (by anyone), else None;
    never computes."""
    e = _entry(key, seed, combine)
    att = None if e is None else e.attribution(method)
    if att is not None:
        return att
    return jobs().result(("attribution", key, seed, method, combine))


def candidate(key: str, seed: int, combine: str, controls: int):
    """The candidate test of the sample of `seed` (its nearest image vs random ones)."""
    e = _entry(key, seed, combine)
    if e is not None and controls == FEATURED_CONTROLS:
        return e.candidate()
    return run_job(
        ("candidate", key, seed, combine, controls),
        lambda progress: _pool("job").call(key, combine, "candidate", seed, controls,
                                           progress=progress),
        "Ablating the nearest training image and random ones ...",
    )


def verified(key: str, seed: int, method: str, m: int, combine: str):
    """The attribution with its top m rescored by exact chains."""
    base = attribution(key, seed, method, combine)
    return run_job(
        ("verified", key, seed, method, m, combine),
        lambda progress: _pool("job").call(key, combine, "verified", base, m,
                                           progress=progress),
        f"Exact chains for the top {m} and the phantoms ...",
    )


def live_evaluation(key: str, combine: str, sizes) -> dict:
    """A small evaluation report (tda.evaluate) in a temporary folder, as a queued job;
    the run's own classifier is used if it has one, and its saved report is not touched."""
    from tda.metrics import CLASSIFIER_DIR

    def work(progress):
        tmp = Path(tempfile.mkdtemp(prefix="tda-diagnostics-"))
        own = Path(run_path(key)) / CLASSIFIER_DIR
        classifier = own if own.is_dir() else tmp / CLASSIFIER_DIR
        return _pool("job").call(key, combine, "evaluate", str(tmp / "report"), sizes,
                                 str(classifier), progress=progress)

    return run_job(("live", key, combine, repr(sizes)), work, "Evaluating ...", priority=2)


@st.cache_data(show_spinner=False, max_entries=256)
def _counterfactuals(key, seed, method, verified_m, rows, exact, combine, _att) -> np.ndarray:
    from tda.attribution import counterfactuals_for, counterfactuals_need_chains

    if counterfactuals_need_chains(_att, list(rows), exact):  # exact chains: a page worker
        return _pool("page").call(key, combine, "counterfactuals", _att, list(rows), exact)
    # a matrix product or stored residuals: here, not queued behind other sessions' chains
    return counterfactuals_for(explorer(key, combine), _att, list(rows), exact=exact).numpy()


def counterfactuals(
    key: str,
    seed: int,
    method: str,
    verified_m: int,
    rows: tuple[int, ...],
    exact: bool,
    combine: str,
) -> np.ndarray:
    """Counterfactual samples of training rows for the attribution shown (verified if m)."""
    att = (
        verified(key, seed, method, verified_m, combine)
        if verified_m
        else attribution(key, seed, method, combine)
    )
    from tda.attribution import counterfactuals_need_chains

    chains = counterfactuals_need_chains(att, list(rows), exact)  # else a matrix product
    with render.computing("Counterfactuals of the top images ...", when=chains):
        return _counterfactuals(key, seed, method, verified_m, rows, exact, combine, att)


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


CHOICE_BUTTONS = 4  # a sidebar choice of at most this many options, each at most
CHOICE_CHARS = 14  # this long, is a row of buttons; more, a select box


def choice(label: str, options: Sequence[str], key: str, help: str,
           on_change: Callable | None = None, most: int | None = None,
           longest: int | None = None):
    """One of the options, in `st.session_state[key]` (set before by `keep` for a value
    that follows the visitor across pages; else the last one chosen, or the first).

    At most `most` options of at most `longest` characters (shown without the folder
    they share) are a segmented control: every option in sight, one click, and light for
    a browser. A select box's JavaScript (130 kB, fetched and compiled by every visitor's
    browser on its first page with one) cost 0.25 s of CPU per visit with 20 browsers on
    the server's two cores, a quarter of what separated Home from the trivial app
    (benchmarks/README.md). A segmented control can be clicked off; the option stays.
    """
    options = list(options)
    folder = os.path.commonprefix(options)
    folder = folder[: folder.rfind("/") + 1]  # "assets/" when every run is from assets/

    def shown(option: str) -> str:
        return option[len(folder):]

    most = CHOICE_BUTTONS if most is None else most
    longest = CHOICE_CHARS if longest is None else longest
    if len(options) > most or max(len(shown(o)) for o in options) > longest:
        return st.selectbox(label, options, key=key, on_change=on_change, help=help)

    def changed() -> None:
        if st.session_state.get(key) is None:  # clicked off: the option it had stays
            st.session_state[key] = st.session_state.get(f"_chosen_{key}", options[0])
        elif on_change is not None:
            on_change()

    if st.session_state.get(key) not in options:  # shown chosen from the start
        st.session_state[key] = st.session_state.get(f"_chosen_{key}", options[0])
    if folder:
        help = f"{help} All of these are in {folder}"
    value = st.segmented_control(label, options, key=key, on_change=changed, help=help,
                                 format_func=shown)
    value = value if value in options else options[0]
    st.session_state[f"_chosen_{key}"] = value
    return value


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
    torch.set_num_threads(limits().threads)  # this page run's thread (sessions run side by side)
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
        label = choice(
            "Run",
            labels,
            key="run",
            on_change=keep("run", labels[0]),
            help="Runs under assets/ and under the folder in TDA_RUNS.",
        )
    lim = limits()
    try:
        key = run_key(runs[label])
        base = explorer(key)
    except (TdaError, OSError) as e:
        names = {runs[label]: label, str(Path(runs[label])): label}
        _stop(f"Cannot open run **{label}**: {guard.public_message(e, names)}", links)
    f = featured(key)
    first = f.seeds() if f is not None else []
    with st.sidebar:
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        seed = c1.number_input(
            "Seed",
            min_value=0,
            max_value=MAX_SEED,
            step=1,
            key="seed",
            on_change=keep("seed", 0 if not first or 0 in first else first[0]),
            help="Fixes the recorded noise: same seed, same sample.",
        )
        c2.button(":material/casino:", on_click=_random_seed, help="A random seed")
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
    with st.sidebar:
        combine = choice(
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
    ready = featured_seeds(key, combine)
    if ready:
        st.sidebar.caption(
            f"Featured seeds, ready at once: {', '.join(map(str, ready))}",
            help="Their samples, member samples, candidate test and attribution were "
            "precomputed with the run; other seeds are computed when asked.",
        )
    view = urls.view_params(label, int(seed), combine)
    _write_link(view)
    nav.navigation(links, view)
    return Context(key, label, explorer(key, combine), int(seed), combine, lim)
