"""The load test's protocol client (benchmarks/load.py) against its trivial app: two
visitors see every page finish and fetch the pages' media."""

import asyncio
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "load_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "load.py"
)
load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(load)


def test_two_visitors_see_every_page_of_the_trivial_app_finish(tmp_path):
    app = load.trivial_app(tmp_path / "trivial")
    server = load.Server(app, {}, tmp_path / "server.log")
    try:
        visitors = load.visitors(2, 0, [(3, "mixture")])
        views = asyncio.run(load.drive(server.port, visitors, timeout=120))
    finally:
        server.stop()
    assert [(v.page, v.kind) for v in views] == [
        (title, kind) for kind in ("featured", "own") for title, _ in load.PAGES
    ]
    assert all(v.error is None for v in views), [v.error for v in views if v.error]
    assert all(v.seconds is not None for v in views)  # script_finished seen on every page
    assert all(v.media >= 1 for v in views if v.page == "Home")  # its image, over HTTP
    assert all(v.media_bytes > 0 for v in views if v.media)
    assert server.proc.poll() is not None
