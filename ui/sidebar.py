"""The sidebar every page starts with, and the view state that follows a visitor.

`sidebar(title)` sets the page up (config, navigation), lets the visitor pick run,
seed and combination rule, and hands the page a `Context`. The choices survive page
switches (`keep`) and travel in the URL (`ui.urls`), so a copied link shares the view.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from tda import TdaError
from tda.api import MAX_SEED, Explorer
from tda.limits import Limits, limits
from ui import guard, nav, runs, urls

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
           longest: int | None = None, names: dict[str, str] | None = None):
    """One of the options, in `st.session_state[key]` (set before by `keep` for a value
    that follows the visitor across pages; else the last one chosen, or the first).

    A few short options (at most `most`, each at most `longest` characters without the
    folder they share) are a segmented control, every option in sight; more are a select
    box. A segmented control can be clicked off; the option stays chosen. `names`: what
    is shown for an option (default: the option without the shared folder).
    """
    options = list(options)
    folder = os.path.commonprefix(options)
    folder = folder[: folder.rfind("/") + 1]  # "assets/" when every run is from assets/

    def shown(option: str) -> str:
        return (names or {}).get(option) or option[len(folder):]

    most = CHOICE_BUTTONS if most is None else most
    longest = CHOICE_CHARS if longest is None else longest
    if len(options) > most or max(len(shown(o)) for o in options) > longest:
        return st.selectbox(label, options, key=key, on_change=on_change, help=help,
                            format_func=lambda o: (names or {}).get(o) or o)

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
    view, problems = urls.parse_view(st.query_params.to_dict(), labels, runs.rules(), MAX_SEED)
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
    torch.set_num_threads(limits().threads)  # sessions run side by side, one thread each
    links = st.sidebar.container()  # the navigation, drawn once the view is known
    found = runs.discover_runs()
    if not found:
        nav.navigation(links, {})
        st.info(TRAIN_HINT, icon=":material/model_training:")
        st.stop()
    labels, names, first_run = runs.picker(found)
    _read_link(labels)
    if st.session_state.get("_kept_run") not in labels:
        st.session_state["_kept_run"] = first_run
    with st.sidebar:
        label = choice(
            "Run",
            labels,
            key="run",
            on_change=keep("run", first_run),
            help="Runs under assets/ and under the folder in TDA_RUNS, by their number of "
            "training images N (the Ladder page compares them).",
            names=names,
        )
    lim = limits()
    try:
        key = runs.run_key(found[label])
        base = runs.explorer(key)
    except (TdaError, OSError) as e:
        known = {found[label]: label, str(Path(found[label])): label}
        _stop(f"Cannot open run **{label}**: {guard.public_message(e, known)}", links)
    f = runs.featured(key)
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
    options = runs.rules()
    rule = st.session_state.get("_kept_combine") or runs.run_rule(base)
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
    ready = runs.featured_seeds(key, combine)
    if ready:
        st.sidebar.caption(
            f"Featured seeds, ready at once: {', '.join(map(str, ready))}",
            help="Their samples, member samples, candidate test and attribution were "
            "precomputed with the run; other seeds are computed when asked.",
        )
    view = urls.view_params(label, int(seed), combine)
    _write_link(view)
    nav.navigation(links, view)
    return Context(key, label, runs.explorer(key, combine), int(seed), combine, lim)
