"""Shareable views: the run, seed and combination rule carried in the URL's query string.

`?run=default&seed=3&combine=mixture` on any page (the page is the URL's path). The
values come from whoever wrote the link, so each is checked against what this server
offers: the run against the labels of the runs it found (its full label, or the last
part of it when that names one run), the seed against 0..MAX_SEED, the rule against
the rules the core knows. A value that fails is dropped with a message that does not
repeat it (a link's text is never rendered), and the page shows its default instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

KEYS = ("run", "seed", "combine")
MAX_LEN = 200  # longer values are refused unread
_DIGITS = re.compile(r"[0-9]{1,10}")


def _one(value) -> str | None:
    """The last value of a query parameter (a key may repeat), None if absent or too long."""
    if isinstance(value, list | tuple):
        value = value[-1] if value else None
    if value is None or len(str(value)) > MAX_LEN:
        return None
    return str(value).strip()


def match_run(value: str, labels: Sequence[str]) -> str | None:
    """The run label that `value` names: the label itself, or its unique last part(s)."""
    if value in labels:
        return value
    hits = [lab for lab in labels if lab.endswith("/" + value)]
    return hits[0] if len(hits) == 1 else None


def parse_view(
    params: Mapping, labels: Sequence[str], rules: Sequence[str], max_seed: int
) -> tuple[dict, list[str]]:
    """Checked values {run, seed, combine} found in `params`, and a message per bad one."""
    view: dict = {}
    problems: list[str] = []
    if "run" in params:
        raw = _one(params["run"])
        run = match_run(raw, labels) if raw else None
        if run is None:
            problems.append(
                f"The link names a run this server does not have; showing **{labels[0]}**."
                if labels
                else "The link names an unknown run."
            )
        else:
            view["run"] = run
    if "seed" in params:
        raw = _one(params["seed"])
        if raw is not None and _DIGITS.fullmatch(raw) and int(raw) <= max_seed:
            view["seed"] = int(raw)
        else:
            problems.append(
                f"The link's seed is not a whole number from 0 to {max_seed}; showing seed 0."
            )
    if "combine" in params:
        raw = _one(params["combine"])
        if raw in rules:
            view["combine"] = raw
        else:
            problems.append(
                f"The link's combination rule is not one of {', '.join(rules)}; showing the "
                "run's own rule."
            )
    return view, problems


def view_params(run: str, seed: int, combine: str) -> dict[str, str]:
    """The query string of a view, as written back to the URL and into every link."""
    return {"run": run, "seed": str(int(seed)), "combine": combine}
