"""What one browser pays for each page, in CPU seconds, tda against the trivial app.

    python benchmarks/page_weight.py [--repeat 3]

The load test (`load.py`) puts K browsers on the 2 cores beside the server; what the
class waits for is then mostly the browsers' own work. This measures that work for one
visitor at a time on a quiet machine, which is far less noisy than the load test: a
fresh browser context opens Home (a featured seed) and clicks Generate, Attribution and
Training set, and for every page it reports the CPU seconds of all chromium processes
(renderer, network, compositor) from the click until the page has finished, the main
thread's task time (Chrome's Performance.getMetrics), and the server's CPU seconds.
The same for the trivial app of `load.py` gives the floor. Medians of `--repeat` visits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402 - the load test's server, trivial app and page checks


async def visit(browser, server, seed: int) -> dict[str, dict[str, float]]:
    url = server.url
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(load.PAGE_TIMEOUT_S * 1000)
    cdp = await context.new_cdp_session(page)
    await cdp.send("Performance.enable")
    out: dict[str, dict[str, float]] = {}
    try:
        for name in load.PAGES:
            metrics = {m["name"]: m["value"] for m in
                       (await cdp.send("Performance.getMetrics"))["metrics"]}
            cpu0, t0 = load.chromium_cpu_s(), time.perf_counter()
            server0 = server.cpu_s()
            if name == "Home":
                await page.goto(f"{url}/?seed={seed}")
            else:
                await page.get_by_role("link", name=name, exact=True).click()
            await load.finished(page, name)
            await asyncio.sleep(0.3)  # late chunks and their compile land in this page
            after = {m["name"]: m["value"] for m in
                     (await cdp.send("Performance.getMetrics"))["metrics"]}
            out[name] = {
                "seconds": time.perf_counter() - t0 - 0.3,
                "browser_cpu_s": load.chromium_cpu_s() - cpu0,
                "server_cpu_s": server.cpu_s() - server0,
                "main_task_s": after["TaskDuration"] - metrics.get("TaskDuration", 0.0),
                "script_s": after["ScriptDuration"] - metrics.get("ScriptDuration", 0.0),
            }
    finally:
        await context.close()
    return out


async def measure(server, seed: int, repeat: int) -> dict[str, dict[str, float]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await load.launch(p)
        try:
            await load.warm(browser, server.url)
            visits = [await visit(browser, server, seed) for _ in range(repeat)]
        finally:
            await browser.close()
    return {name: {k: statistics.median(v[name][k] for v in visits) for k in visits[0][name]}
            for name in load.PAGES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="visits per app (medians)")
    ap.add_argument("--assets", type=Path, default=load.ROOT / "assets")
    ap.add_argument("--apps", default="tda,trivial")
    a = ap.parse_args(argv)
    seed = (load.featured_seeds(a.assets) or [0])[0]
    env = {"TDA_ASSETS": str(a.assets.resolve()), "TDA_RUNS": ""}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="tda-weight-") as tmp:
        tmp = Path(tmp)
        apps = {"tda": load.ROOT / "app.py", "trivial": load.trivial_app(tmp / "trivial")}
        for label in a.apps.split(","):
            server = load.Server(apps[label], env, tmp / f"{label}.log")
            try:
                rows[label] = asyncio.run(measure(server, seed, a.repeat))
            finally:
                server.stop()
    print(f"one browser at a time, seed {seed}, median of {a.repeat} visits\n")
    print("| app | " + " | ".join(load.PAGES) + " |")
    print("|---|" + "---|" * len(load.PAGES))
    for label, r in rows.items():
        cells = [f"{r[p]['browser_cpu_s']:.2f} s CPU · {r[p]['main_task_s']:.2f} s main · "
                 f"{r[p]['server_cpu_s']:.2f} s server · {r[p]['seconds']:.2f} s" for p in load.PAGES]
        print(f"| {label} | " + " | ".join(cells) + " |")
    if "tda" in rows and "trivial" in rows:
        print("\nbrowser CPU over the trivial app's: " + ", ".join(
            f"{p} {rows['tda'][p]['browser_cpu_s'] - rows['trivial'][p]['browser_cpu_s']:+.2f} s"
            for p in load.PAGES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
