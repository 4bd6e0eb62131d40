"""How long one visitor waits for the Attribution page on a seed of their own.

Starts the app (`streamlit run app.py`, the shipped default run) on 127.0.0.1 and, one
seed at a time, opens the Attribution page as a remote visitor does (`visitor.py`: the
websocket protocol, media fetched, no browser on the server) with its default method
and score: everything the page runs for that seed (the sample, the candidate test, the
default method's top-k and their counterfactuals). First a featured seed warms the
server (worker processes started, run loaded), not counted. Prints each seed's seconds
and the median. Run it on a quiet machine:

    .venv/bin/python benchmarks/attribution_page.py --seeds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import Server  # noqa: E402
from visitor import drive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = (("Attribution", "attribution"),)
OWN_SEED0 = 555_000  # not featured, not in the report's held-out seeds


def one_view(port: int, seed: int, combine: str, timeout: float) -> dict:
    query = f"run=default&seed={seed}&combine={combine}"
    (view,) = asyncio.run(drive(port, [(seed, "own", query)], timeout, PAGE))
    return {"seed": seed, "seconds": view.seconds, "error": view.error, "runs": view.runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="own seeds, one after another")
    ap.add_argument("--combine", default="mixture")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per page view")
    ap.add_argument("--json", type=Path, default=None, help="write the records here")
    a = ap.parse_args(argv)
    log = Path(tempfile.mkdtemp(prefix="tda-attr-bench-")) / "server.log"
    server = Server(ROOT / "app.py", {}, log)
    try:
        warm = one_view(server.port, 0, a.combine, a.timeout)
        print(f"warm-up (featured seed 0): {warm['seconds']:.1f} s", flush=True)
        rows = []
        for i in range(a.seeds):
            r = one_view(server.port, OWN_SEED0 + i, a.combine, a.timeout)
            rows.append(r)
            said = f"{r['seconds']:.1f} s" if r["seconds"] is not None else f"error {r['error']}"
            print(f"own seed {r['seed']}: {said} ({r['runs']} script runs)", flush=True)
        cpu = server.cpu_s()
    finally:
        server.stop()
    ok = [r["seconds"] for r in rows if r["seconds"] is not None and not r["error"]]
    med = statistics.median(ok) if ok else float("nan")
    print(f"median of {len(ok)} own seeds: {med:.1f} s (bar: 30 s); server + workers "
          f"{cpu:.0f} CPU s in all; {len(rows) - len(ok)} errors")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "median_s": med, "cpu_s": cpu}, indent=1))
    return 0 if ok and len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
