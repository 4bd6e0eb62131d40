"""K browsers open Home at once, tda then the trivial app: the first page of a class.

    PYTHONPATH=. python benchmarks/first_page.py [--sessions 20] [--app app.py]
    PYTHONPATH=. python benchmarks/first_page.py --together 4   # both apps in each round

The full load test (`load.py`) takes ~8 minutes and mixes Home with the pages after
it. This isolates Home on featured seed 0 (~1.5 minutes for both apps): p50 / p95 / max
seconds to a finished page and where the browsers' CPU went, summed over the threads of
every chromium process (renderer main threads, their thread pools: V8's compiles and
GC, compositors; the browser and GPU processes) before any context closes. `--app`
measures another version of the app (a copy with one part removed, say) in its place.

`--together R`: R rounds in which the K browsers open Home at the same moment, every
other one on tda and the rest on the trivial app (both servers up): both apps meet
exactly the same machine, which one app after the other does not (this machine's speed
drifts within minutes). Prints each round's p50 / p95 of both and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402 - the load test's server, trivial app and page checks


def chromium_threads() -> collections.Counter:
    """CPU seconds so far of every chromium thread, by (process type, thread name)."""
    out: collections.Counter = collections.Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        if "chrom" not in cmd.split("\0")[0]:
            continue
        kind = next((t for t in ("renderer", "gpu-process", "utility") if f"--type={t}" in cmd),
                    "other" if "--type=" in cmd else "browser")
        for tid in tasks:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789")
            out[(kind, name)] += load.stat_cpu_s(stat)
    return out


async def visit(browser, url: str, seconds: list[float]):
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(load.PAGE_TIMEOUT_S * 1000)
    t0 = time.perf_counter()
    await page.goto(f"{url}/?seed=0")
    await load.finished(page, "Home")
    seconds.append(time.perf_counter() - t0)
    return context


async def rounds_of(urls: dict[str, str], k: int, rounds: int = 1) -> list[dict]:
    """`rounds` rounds of k browsers opening Home at once, alternately on each app in
    `urls` (after one warm-up visit of each): per round, the sorted seconds per app and
    the chromium CPU (by process type and thread) before any context closes."""
    from playwright.async_api import async_playwright

    out = []
    async with async_playwright() as p:
        browser = await load.launch(p)
        try:
            for url in urls.values():
                await load.warm(browser, url)
            labels = list(urls)
            for _ in range(rounds):
                seconds: dict[str, list[float]] = {label: [] for label in labels}
                before = chromium_threads()
                plan = [labels[i % len(labels)] for i in range(k)]
                contexts = await asyncio.gather(
                    *(visit(browser, urls[n], seconds[n]) for n in plan))
                cpu = chromium_threads()
                cpu.subtract(before)
                for c in contexts:
                    await c.close()
                out.append({"seconds": {n: sorted(xs) for n, xs in seconds.items()}, "cpu": cpu})
                await asyncio.sleep(3)  # the closed contexts' processes end
        finally:
            await browser.close()
    return out


def main_together(app: Path, env: dict, k: int, rounds: int, tmp: Path) -> None:
    servers = {"tda": load.Server(app, env, tmp / "tda.log")}
    try:
        servers["trivial"] = load.Server(load.trivial_app(tmp / "t"), env, tmp / "t.log")
        result = asyncio.run(rounds_of({n: s.url for n, s in servers.items()}, k, rounds))
    finally:
        for s in servers.values():
            s.stop()
    diffs = []
    for i, r in enumerate((r["seconds"] for r in result), 1):
        p95 = {n: load.quantile(xs, 0.95) for n, xs in r.items()}
        diffs.append(p95["tda"] - p95["trivial"])
        print(f"round {i}: " + "; ".join(
            f"{n} ({len(xs)}) p50 {statistics.median(xs):.1f} / p95 {p95[n]:.1f} s"
            for n, xs in r.items()) + f"; tda p95 over the trivial app's {diffs[-1]:+.1f} s")
    print(f"median over {len(diffs)} rounds: {statistics.median(diffs):+.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--app", type=Path, default=load.ROOT / "app.py", help="tda's app.py")
    ap.add_argument("--assets", type=Path, default=load.ROOT / "assets")
    ap.add_argument("--together", type=int, default=0, metavar="R",
                    help="R rounds with both apps' browsers at once (see above)")
    a = ap.parse_args(argv)
    env = {"TDA_ASSETS": str(a.assets.resolve()), "TDA_RUNS": ""}
    with tempfile.TemporaryDirectory(prefix="tda-first-") as tmp:
        tmp = Path(tmp)
        if a.together:
            main_together(a.app.resolve(), env, a.sessions, a.together, tmp)
            return 0
        for label, app in (("tda", a.app.resolve()), ("trivial", load.trivial_app(tmp / "t"))):
            server = load.Server(app, env, tmp / f"{label}.log")
            try:
                (r,) = asyncio.run(rounds_of({label: server.url}, a.sessions))
            finally:
                server.stop()
            k, xs, cpu = a.sessions, r["seconds"][label], r["cpu"]
            print(f"{label}, {k} at once: p50 {statistics.median(xs):.1f} / p95 "
                  f"{load.quantile(xs, 0.95):.1f} / max {xs[-1]:.1f} s; browser CPU per "
                  f"visit {sum(cpu.values()) / k:.2f} s, of which")
            for (kind, name), s in cpu.most_common(6):
                print(f"  {s / k:.2f} s  {kind} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
