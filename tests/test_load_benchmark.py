"""The load test's arithmetic (benchmarks/load.py): which run is compared with which floor."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "load_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"
)
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)


def _run(app: str, p95: float) -> dict:
    pages = {p: {"n": 1, "p50": p95, "p95": p95, "max": p95} for p in load.PAGES}
    return {"app": app, **pages, "by_kind": {"featured": pages} if app == "tda" else {}}


def test_each_tda_run_sits_between_two_floors():
    assert load.order(["tda", "trivial"], 1) == ["trivial", "tda", "trivial"]
    assert load.order(["tda", "trivial"], 2) == ["trivial", "tda", "trivial", "tda", "trivial"]
    assert load.order(["tda"], 2) == ["tda", "tda"]


def test_a_run_is_compared_with_the_mean_of_the_floors_around_it():
    runs = [_run("trivial", 30), _run("tda", 40), _run("trivial", 40), _run("tda", 50),
            _run("trivial", 50)]
    over = load.over_floor(runs)
    assert [o["Home"] for o in over] == [pytest.approx(5.0), pytest.approx(5.0)]
    # a floor on one side only (an old order, or --apps tda,trivial run once)
    assert load.over_floor([_run("tda", 40), _run("trivial", 31)])[0]["Home"] == pytest.approx(9)
    assert load.over_floor([_run("tda", 40)]) == []


def _watching(browser, body: str):
    """A new page (its own window, as each visit's) holding `body`, with the watcher."""
    page = browser.new_page()
    page.set_content(f"<body>{body}</body>")
    page.add_script_tag(content=load.WATCH)
    assert page.evaluate("() => window.__tdaWait === null")  # installed, nothing seen yet
    return page


def _add(page, html: str, into: str = "body") -> None:
    page.evaluate("([into, html]) => document.querySelector(into)"
                  ".insertAdjacentHTML('beforeend', html)", [into, html])


def _seen(page) -> bool:
    return page.evaluate("() => window.__tdaWait") is not None


def test_the_load_test_sees_a_queue_place_or_progress_the_moment_it_appears(browser):
    """The watcher marks a queue place (an alert saying so: added whole, filled in later or
    changed in place) or a progress bar, and nothing else: not an alert that says
    something else."""
    page = _watching(browser, '<div data-testid="stMain"></div>')
    _add(page, '<div data-testid="stAlert"><p>Is attribution meaningful here?</p></div>')
    _add(page, '<div data-testid="stCaption">Queued: place</div>')  # not an alert
    assert not _seen(page)
    _add(page, '<div data-testid="stAlert"><div class="md"></div></div>')
    assert not _seen(page)
    _add(page, "<strong>Queued: place 2 of 3</strong>", into="div.md")  # its text comes later
    assert _seen(page)

    page = _watching(browser, "")
    _add(page, '<div data-testid="stAlert"><p><b>Queued: place 1 of 1</b> (1 running)</p></div>')
    assert _seen(page)

    page = _watching(browser, '<div data-testid="stAlert"><p id="t">Loading the run ...</p></div>')
    page.evaluate("() => { document.getElementById('t').firstChild.data = 'Now this.'; }")
    assert not _seen(page)
    page.evaluate("() => { document.getElementById('t').firstChild.data = 'Queued: place 3'; }")
    assert _seen(page)  # an alert whose text was replaced in place

    page = _watching(browser, "")
    _add(page, '<div class="el"><div data-testid="stProgress"><p>Chains 3/9</p></div></div>')
    assert _seen(page)
