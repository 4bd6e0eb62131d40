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
