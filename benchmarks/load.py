"""A class at once: K real browsers on one server, against a trivial app's floor.

    python benchmarks/load.py --sessions 20 [--rounds 2] [--assets DIR] [--json OUT]

Starts `streamlit run app.py` (a fresh server, the repository's .streamlit/config.toml),
then K concurrent sessions (Playwright with Debian's chromium, one browser context each)
that open Home and click Generate, Attribution and Training set in the sidebar as a
person does, each page timed from the click until Streamlit's script has finished (the
page's heading is there, the status widget has gone, the page's key element shows).
Half the sessions use the run's featured seeds (`python -m tda precompute`, read from
RUN/featured/featured.json), half a seed of their own that nothing has computed. Just
before and just after, the same load runs against a trivial Streamlit app of the same
shape (six pages of text and one image, the same sidebar): the floor that the browsers
and Streamlit themselves cost on this machine, whose speed drifts within minutes
(`--rounds R` repeats tda and the floor after it). Prints p50 / p95 / max seconds per
page for every run, each tda run's featured p95 over the mean of the floors around it,
errors, the time until a session that waits sees its place in the queue or its
progress, the server's peak memory (VmHWM), and where the CPU went (browsers, server,
its worker processes). `--sessions 2` is a smoke check of a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PAGES = ("Home", "Generate", "Attribution", "Training set")
# the heading and a text each page shows once it has finished
DONE = {
    "Home": ("Which training images made this sample?", "without image #0"),
    "Generate": ("Generate", "Every member alone"),
    "Attribution": ("Attribution", "Top-1 / phantom p99"),
    "Training set": ("Training set", "Nearest training images"),
}
OWN_SEED_BASE = 10_000  # session i of its own uses seed OWN_SEED_BASE + i
PAGE_TIMEOUT_S = 600

# marks the first moment a waiting indicator (queue place or progress bar) appears. It
# looks at what changed only (nodes added, text changed in place) and reads text by
# textContent. (It used to read innerText of every alert at every change: innerText lays
# the page out, so every browser laid out its half-built Home, whose alert the trivial app
# lacks, once per arriving element; benchmarks/README.md, "The watcher".)
WATCH = """
window.__tdaWait = null;
const __tdaWaits = (n) => {
  if (n.nodeType !== 1) n = n.parentElement;
  if (!n) return false;
  if (n.closest('[data-testid="stProgress"]') || n.querySelector('[data-testid="stProgress"]'))
    return true;
  const alert = n.closest('[data-testid="stAlert"]') || n.querySelector('[data-testid="stAlert"]');
  return !!alert && alert.textContent.includes('Queued: place');
};
new MutationObserver((records) => {
  if (window.__tdaWait !== null) return;
  for (const r of records) {
    for (const n of r.type === 'characterData' ? [r.target] : r.addedNodes) {
      if (__tdaWaits(n)) { window.__tdaWait = performance.now(); return; }
    }
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""

TRIVIAL_NAV = ("Home", "Generate", "Attribution", "Ablation lab", "Training set", "Diagnostics")
TRIVIAL_PAGE = """import numpy as np
import streamlit as st

st.set_page_config(page_title={title!r}, layout="wide")
for path, label in {links!r}:
    st.sidebar.page_link(path, label=label)
seed = st.sidebar.number_input("Seed", 0, 2**31 - 1, 0, key="seed")
st.title({heading!r})
st.markdown("Some text, as a page of the explorer has. " * 20)
st.image(np.random.default_rng(int(seed)).random((16, 16)), width=256)
st.write({done!r})
"""


def trivial_app(folder: Path) -> Path:
    """Six pages of text and one image, with the explorer's sidebar links and seed input."""
    files = ["app.py"] + [
        f"pages/{i}_{t.lower().replace(' ', '_')}.py" for i, t in enumerate(TRIVIAL_NAV[1:], 1)
    ]
    links = list(zip(files, TRIVIAL_NAV, strict=True))
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    (folder / ".streamlit").mkdir(exist_ok=True)
    shutil.copy(ROOT / ".streamlit" / "config.toml", folder / ".streamlit" / "config.toml")
    for f, title in links:
        heading, done = DONE.get(title, (title, title))
        (folder / f).write_text(
            TRIVIAL_PAGE.format(title=title, links=links, heading=heading, done=done)
        )
    return folder / "app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds so far: user + system) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        out[int(stat.parent.name)] = (text[text.index("(") + 1 : text.rindex(")")],
                                      stat_cpu_s(text))
    return out


def stat_cpu_s(stat: str) -> float:
    """CPU seconds (user + system) from the text of a /proc/PID/stat."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def chromium_cpu_s() -> float:
    """CPU seconds (user + system) of every running chromium process."""
    return sum(t for name, t in process_cpu().values() if "chrom" in name.lower())


class CpuWatch:
    """Where the CPU went while a load ran: the browsers (every chromium process), the
    server process and the processes below it (its workers), sampled each second. A
    process seen for the first time counts all its time; one that ends loses at most its
    last second."""

    def __init__(self, server: Server):
        self.server, self.seconds = server, {"browsers": 0.0, "server": 0.0, "workers": 0.0}
        self._last = process_cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        now, tree = process_cpu(), set(self.server.tree())
        for pid, (name, t) in now.items():
            before = self._last.get(pid)
            dt = t - before[1] if before is not None and before[0] == name else t
            if pid == self.server.proc.pid:
                self.seconds["server"] += dt
            elif pid in tree:
                self.seconds["workers"] += dt
            elif "chrom" in name.lower():
                self.seconds["browsers"] += dt
        self._last = now

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return {k: round(v, 1) for k, v in self.seconds.items()}


class Server:
    """`streamlit run APP` on a free port; `peak_mb()` reads the process's peak RSS."""

    def __init__(self, app: Path, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(app.name),
                "--server.headless",
                "true",
                "--server.port",
                str(self.port),
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=app.parent,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.tree_peak_mb = 0.0
        threading.Thread(target=self._watch_memory, daemon=True).start()
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(self.url + "/_stcore/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise SystemExit(f"the server did not start; see {log}") from None
                time.sleep(0.5)

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def tree(self) -> list[int]:
        """The server and every process below it (its worker processes, their forkserver)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(c) for c in task.read_text().split()]
                except OSError:
                    pass
        return out

    def _watch_memory(self) -> None:
        """Peak of the summed PSS (shared pages split among the processes that share
        them) of the server and its worker processes, sampled every second."""
        while self.proc.poll() is None:
            total = 0
            for pid in self.tree():
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.tree_peak_mb = max(self.tree_peak_mb, total / 1024)
            time.sleep(1.0)

    def cpu_s(self) -> float:
        """CPU seconds the server has used so far (user + system, its threads together)."""
        return stat_cpu_s(Path(f"/proc/{self.proc.pid}/stat").read_text())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


async def finished(page, name: str) -> None:
    """Wait until the page `name` has run to its end in Streamlit."""
    heading, text = DONE[name]
    main = page.locator('[data-testid="stMain"]')
    await main.get_by_role("heading", name=heading).first.wait_for()
    await main.get_by_text(text).first.wait_for()
    await page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached")
    await page.wait_for_selector('[data-testid="stSkeleton"]', state="detached")


async def session(browser, url: str, seed: int, kind: str, out: list[dict]) -> None:
    """One visitor: Home, then the sidebar's Generate, Attribution and Training set."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    await page.add_init_script(WATCH)
    try:
        for name in PAGES:
            rec = {"kind": kind, "seed": seed, "page": name, "error": None, "wait_shown": None}
            t0 = time.perf_counter()
            try:
                if name == "Home":
                    await page.goto(f"{url}/?seed={seed}")
                    p0 = 0.0
                else:
                    p0 = await page.evaluate(
                        "() => { window.__tdaWait = null; return performance.now(); }"
                    )
                    await page.get_by_role("link", name=name, exact=True).click()
                await finished(page, name)
                rec["seconds"] = time.perf_counter() - t0
                if await page.locator('[data-testid="stException"]').count():
                    rec["error"] = "exception shown"
                shown = await page.evaluate("() => window.__tdaWait")
                if shown is not None:
                    rec["wait_shown"] = max(0.0, (shown - p0) / 1000)
            except Exception as e:  # noqa: BLE001 - a failed page is counted, not fatal
                rec["seconds"] = time.perf_counter() - t0
                rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            out.append(rec)
            if rec["error"]:
                break
    finally:
        await context.close()


async def warm(browser, url: str) -> float:
    """One visit of Home on the fresh server (the teacher opening the link), in seconds:
    the server imports torch and loads and checks the run once, for everyone."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
    t0 = time.perf_counter()
    try:
        await page.goto(url)
        await finished(page, "Home")
    finally:
        await context.close()
    return time.perf_counter() - t0


async def launch(playwright):
    """The Debian chromium, headless, as every benchmark here drives it."""
    return await playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage"],
    )


async def drive(url: str, seeds: list[tuple[int, str]], warm_first: bool) -> tuple[list, float]:
    from playwright.async_api import async_playwright

    out: list[dict] = []
    first = float("nan")
    async with async_playwright() as p:
        browser = await launch(p)
        try:
            if warm_first:
                first = await warm(browser, url)
            await asyncio.gather(*(session(browser, url, s, k, out) for s, k in seeds))
        finally:
            await browser.close()
    return out, first


def featured_seeds(assets: Path) -> list[int]:
    index = assets / "default" / "featured" / "featured.json"
    try:
        return sorted({int(e["seed"]) for e in json.loads(index.read_text())["entries"]})
    except (OSError, ValueError, KeyError, TypeError):
        return []


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


def pages(records: list[dict]) -> dict:
    """p50 / p95 / max seconds per page of these records (errors left out)."""
    out: dict = {}
    for name in PAGES:
        ok = [r["seconds"] for r in records if r["page"] == name and not r["error"]]
        out[name] = {
            "n": len(ok),
            "p50": quantile(ok, 0.5),
            "p95": quantile(ok, 0.95),
            "max": max(ok) if ok else float("nan"),
        }
    return out


def summary(records: list[dict]) -> dict:
    out: dict = pages(records)  # every session
    out["by_kind"] = {kind: pages([r for r in records if r["kind"] == kind])
                      for kind in ("featured", "own") if any(r["kind"] == kind for r in records)}
    out["errors"] = [
        f"{r['kind']} seed {r['seed']} {r['page']}: {r['error']}" for r in records if r["error"]
    ]
    waits = [r for r in records if r["kind"] == "own" and r["page"] == "Attribution"]
    shown = [r["wait_shown"] for r in waits if r["wait_shown"] is not None]
    out["own_attribution"] = {
        "sessions": len(waits),
        "saw_queue_or_progress": len(shown),
        "max_seconds_to_see_it": max(shown) if shown else None,
        "within_3s": sum(s <= 3 for s in shown),
    }
    return out


def cpu_busy() -> float:
    """Load average over the last minute, per core (above 1: other work competes)."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def run_app(label: str, app: Path, env: dict, seeds, log: Path, warm_first: bool) -> dict:
    server = Server(app, env, log)
    try:
        load_before = cpu_busy()
        t0 = time.perf_counter()
        watch = CpuWatch(server)
        try:
            records, first = asyncio.run(drive(server.url, seeds, warm_first))
        finally:
            cpu = watch.stop()
        result = {
            "server_cpu_s": server.cpu_s(),
            "cpu_s": cpu,
            "app": label,
            "sessions": len(seeds),
            "wall_s": time.perf_counter() - t0,
            "first_visit_s": first,
            "load_per_core_before": load_before,
            "load_per_core_after": cpu_busy(),
            "peak_rss_mb": server.peak_mb(),
            "tree_peak_pss_mb": server.tree_peak_mb,
            "processes": len(server.tree()),
            **summary(records),
            "records": records,
        }
    finally:
        server.stop()
    return result


def table(results: list[dict]) -> str:
    """Per run and kind of seed: p50 / p95 / max per page; then the featured p95 over the
    floor (`over_floor`; the issue's bar: at most 5 s on every page)."""
    head = "| app, sessions | " + " | ".join(PAGES) + " |"
    rows = [head, "|" + "---|" * (len(PAGES) + 1)]
    for r in results:
        for kind, stats in [("all", r), *r["by_kind"].items()]:
            n = r["sessions"] if kind == "all" else stats[PAGES[0]]["n"]
            cells = [f"{stats[p]['p50']:.1f} / {stats[p]['p95']:.1f} / {stats[p]['max']:.1f}"
                     for p in PAGES]
            rows.append(f"| {r['app']}{r.get('tag', '')}, {kind} ({n}) | " + " | ".join(cells) + " |")
    out = "\n".join(rows) + "\n\n(p50 / p95 / max seconds from click to finished page)"
    rounds = over_floor(results)
    for i, over in enumerate(rounds):
        out += (f"\nround {i + 1}: featured p95 over the trivial app's (the runs just before "
                "and after): " + ", ".join(f"{p} {over[p]:+.1f} s" for p in PAGES))
    if len(rounds) > 1:
        out += "\nmedian over the rounds: " + ", ".join(
            f"{p} {statistics.median(o[p] for o in rounds):+.1f} s" for p in PAGES)
    return out


def over_floor(results: list[dict]) -> list[dict[str, float]]:
    """For each tda run (in the order run), its featured sessions' p95 per page minus the
    floor: the mean p95 of the trivial runs next to it in time (before and after). This
    machine's speed drifts within minutes (the floor moved between 28 and 46 s within an
    hour), so a floor measured once, minutes away, can be off by more than the bar."""
    out = []
    for i, r in enumerate(results):
        if r["app"] != "tda" or "featured" not in r["by_kind"]:
            continue
        near = [results[j] for j in (i - 1, i + 1)
                if 0 <= j < len(results) and results[j]["app"] == "trivial"]
        if not near:
            continue
        feat = r["by_kind"]["featured"]
        out.append({p: feat[p]["p95"] - statistics.fmean(t[p]["p95"] for t in near)
                    for p in PAGES})
    return out


def order(apps: list[str], rounds: int) -> list[str]:
    """Which app runs when: with both, each tda run between two trivial runs
    (trivial, tda, trivial, tda, trivial for two rounds); otherwise each app `rounds` times."""
    if set(apps) == {"tda", "trivial"}:
        return ["trivial"] + ["tda", "trivial"] * rounds
    return [a for _ in range(rounds) for a in apps]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", "-k", type=int, default=2, help="concurrent browsers K")
    ap.add_argument(
        "--assets",
        type=Path,
        default=ROOT / "assets",
        help="folder holding the run default/ (TDA_ASSETS); its featured seeds "
        "come from default/featured/",
    )
    ap.add_argument("--apps", default="tda,trivial", help="which apps to load: tda,trivial")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="no warm-up visit: the K sessions meet a server that has not yet "
        "loaded the run (by default one visit of Home comes first, timed apart)",
    )
    ap.add_argument(
        "--own",
        type=int,
        default=None,
        help="how many of the K sessions use a seed of their own (default: half); "
        "the rest use featured seeds",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="how many tda runs, each between two runs of the trivial app (default 1: "
        "trivial, tda, trivial); each round's own seeds are new",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every record here")
    a = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    featured = featured_seeds(a.assets)
    if not featured:
        print(
            f"warning: {a.assets}/default has no featured seeds (python -m tda precompute); "
            "the 'featured' half uses seed 0, computed on demand",
            file=sys.stderr,
        )
    first = featured or [0]
    own = a.sessions // 2 if a.own is None else a.own
    if not 0 <= own <= a.sessions:
        raise SystemExit(f"--own must be between 0 and {a.sessions}")
    # featured and own seeds interleaved, so both kinds start at the same moments
    kinds = ["own" if (i + 1) * own // a.sessions > i * own // a.sessions else "featured"
             for i in range(a.sessions)]
    if a.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    def seeds(round_: int) -> list[tuple[int, str]]:
        return [
            (first[i // 2 % len(first)], "featured") if k == "featured"
            else (OWN_SEED_BASE + round_ * a.sessions + i, "own")
            for i, k in enumerate(kinds)
        ]

    env = {"TDA_ASSETS": str(a.assets.resolve()), "TDA_RUNS": ""}
    results = []
    with tempfile.TemporaryDirectory(prefix="tda-load-") as tmp:
        tmp = Path(tmp)
        apps = {"tda": ROOT / "app.py", "trivial": trivial_app(tmp / "trivial")}
        plan = order(a.apps.split(","), a.rounds)
        for n, label in enumerate(plan):
            done = plan[:n].count(label)
            tag = f" #{done + 1}" if plan.count(label) > 1 else ""
            print(f"{label}{tag}: {a.sessions} sessions ...", flush=True)
            log = tmp / f"{label}-{n}.log"
            r = run_app(label, apps[label], env, seeds(done), log, not a.cold)
            r["tag"] = tag
            results.append(r)
            print(
                f"  {r['wall_s']:.0f} s, server CPU {r['server_cpu_s']:.0f} s, errors {len(r['errors'])}, peak {r['peak_rss_mb']:.0f} "
                f"MB (with its worker processes: {r['tree_peak_pss_mb']:.0f} MB PSS), first visit {r['first_visit_s']:.1f} s, load/core "
                f"{r['load_per_core_before']:.2f} before, {r['load_per_core_after']:.2f} after",
                flush=True,
            )
            print("  CPU seconds during the run (the warm-up visit included): " + ", ".join(
                f"{k} {v:.0f}" for k, v in r["cpu_s"].items()), flush=True)
            for e in r["errors"][:10]:
                print("  error:", e)
            if r["errors"]:
                print(log.read_text()[-3000:])
    print(table(results))
    for r in results:
        if r["app"] == "tda":
            w = r["own_attribution"]
            print(
                f"tda{r['tag']}, own seeds on Attribution: {w['saw_queue_or_progress']} of "
                f"{w['sessions']} saw their queue place or progress, {w['within_3s']} within "
                f"3 s (latest {w['max_seconds_to_see_it']})"
            )
    print(f"featured seeds: {featured or 'none'}; machine: {os.cpu_count()} cores")
    if a.json:
        a.json.write_text(json.dumps({"featured": featured, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
