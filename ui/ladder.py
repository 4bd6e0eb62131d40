"""The Ladder page's pieces: every run as a rung, the same seed on each, and the switch.

A rung's sample of a seed is the run's own (featured results first, else one chain in
the cheap lane, `ui.results`), under the run's own rule, next to the training image
nearest to it: a class sees copies at small N turn into new digits at large N.
Opening a rung sets the sidebar's run, so every page follows.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from tda import views
from tda.candidate import COPY_DISTANCE
from tda.ladder import table, tar_curve, tar_picture  # noqa: F401 - the page draws these
from ui import results, runs, sidebar


def rungs() -> list[dict]:
    """Every run the server offers, as rungs by N."""
    return runs.rungs(runs.discover_runs())


def same_seed(rows: list[dict], seed: int) -> list[dict]:
    """For each rung: its sample of `seed`, its nearest training image and their L2."""
    out = []
    for r in rows:
        key = runs.run_key(r["path"])
        y, _ = results.ensemble_sample(key, seed, r["rule"])
        row = results.own_image(key, seed, r["rule"])
        x = runs.explorer(key).run.images[row]
        distance, _ = views.distances_to(x, y, y)
        out.append(r | {"sample": np.asarray(y), "nearest": x, "row": row,
                        "distance": distance, "copy": distance < COPY_DISTANCE})
    return out


def open_rung(label: str) -> None:
    """Switch the whole app to the run `label` (a button's on_click)."""
    sidebar.set_kept("run", label)


def switch_buttons(rows: list[dict], current: str) -> None:
    """One button per rung under its pictures; the current rung's is disabled."""
    cols = st.columns(len(rows))
    for c, r in zip(cols, rows, strict=True):
        here = r["label"] == current
        c.button(f"N = {r['N']:,}: {'open now' if here else 'open'}", key=f"rung_{r['label']}",
                 on_click=open_rung, args=(r["label"],), disabled=here,
                 icon=":material/check:" if here else ":material/swap_horiz:",
                 width="stretch",
                 help=None if here else f"Switch every page to {r['label']}")
