"""K remote visitors at once, as light protocol-level clients, against a trivial app's floor.

    python benchmarks/load.py --sessions 20 [--rounds 1] [--json OUT]

Each visitor is `benchmarks/visitor.py`: what a browser on a visitor's laptop sends and
receives over Streamlit's websocket, and the media it fetches, without the browser. Every
visitor opens Home, then Generate, Attribution, Ablation, Training set and Diagnostics in
one session (the sidebar's links carry `run`, `seed` and `combine`); all K arrive at
once, half on the run's featured seeds (`default/featured/featured.json`), half on a seed
of their own that nothing has computed (10,000 + i, new each round). For own-seed
visitors it notes when they first see a queue place, a progress bar or a "busy" message
(a refusal). The same run drives a trivial Streamlit app of the same shape (six pages at
the same URLs with the same query string, text and one image, no computation): the floor
of Streamlit itself under the same load, run before and after each tda run.

Reported per app and page: p50 / p95 / max seconds to the finished page, errors, the
server's CPU seconds per page view (the server and every process below it, from /proc),
the peak PSS of the server and its workers (shared pages counted once), and the load
clients' own CPU (they share the cores). Servers listen on 127.0.0.1 on a free port and
are started and stopped here, their process group and tree with them; each app run is
bounded by --timeout and each page view by 15 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from visitor import PAGE_TIMEOUT_S, PAGES, drive  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OWN_SEED_BASE = 10_000
WAIT_WITHIN_S = 5.0  # the bar: a waiting visitor sees its place or progress this soon
TICK = os.sysconf("SC_CLK_TCK")


# --- the server and what it costs -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run APP` on 127.0.0.1 in its own process group; the peak PSS of its tree
    sampled every second; its tree's CPU from /proc."""

    def __init__(self, app: Path, env: dict[str, str], log: Path):
        self.port = free_port()
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                app.name,
                "--server.headless",
                "true",
                "--server.address",
                "127.0.0.1",
                "--server.port",
                str(self.port),
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=app.parent,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.peak_pss_mb = 0.0
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_memory, daemon=True)
        self._watch.start()
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise SystemExit(f"the server did not start; see {log}") from None
                time.sleep(0.5)

    def tree(self) -> list[int]:
        """The server and every process below it (its workers)."""
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

    def cpu_s(self) -> float:
        """CPU seconds of the tree so far: each process's own and its reaped children's
        (a worker that ended is counted in its parent's)."""
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(f) for f in fields[11:15])
        return total / TICK

    def pss_mb(self) -> float:
        total = 0
        for pid in self.tree():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def _watch_memory(self) -> None:
        while not self._stop.wait(1.0) and self.proc.poll() is None:
            self.peak_pss_mb = max(self.peak_pss_mb, self.pss_mb())

    def stop(self) -> None:
        """Terminate the server's process group and tree; kill what is left after 15 s."""
        self._stop.set()
        tree = self.tree() if self.proc.poll() is None else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for pid in tree:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(15)
                if not any(Path(f"/proc/{p}").exists() for p in tree[1:]):
                    break
                time.sleep(1)
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self._log.close()


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def run_app(
    label: str, app: Path, env: dict, visitors, log: Path, timeout: float, warm: str | None
) -> dict:
    """Start the app, one warm-up visit of Home (the teacher opening the link; timed
    apart), then all visitors at once; what they saw and what it cost."""
    server = Server(app, env, log)
    try:
        first = None
        if warm is not None:
            t0 = time.perf_counter()
            views = asyncio.run(
                drive(server.port, [(-1, "warm-up", warm)], PAGE_TIMEOUT_S, PAGES[:1])
            )
            first = time.perf_counter() - t0 if not views[0].error else None
        cpu0, own0, t0 = server.cpu_s(), own_cpu_s(), time.perf_counter()
        views = asyncio.run(drive(server.port, visitors, timeout))
        wall, own, cpu = time.perf_counter() - t0, own_cpu_s() - own0, server.cpu_s() - cpu0
        time.sleep(1.1)  # one more memory sample
        records = [vars(v) for v in views]
        return {
            "app": label,
            "sessions": len(visitors),
            "wall_s": wall,
            "first_visit_s": first,
            "server_cpu_s": cpu,
            "server_cpu_s_per_view": cpu / max(1, len(records)),
            "client_cpu_s": own,
            "peak_pss_mb": server.peak_pss_mb,
            "processes_at_end": len(server.tree()),
            "load_per_core": os.getloadavg()[0] / (os.cpu_count() or 1),
            **summary(records),
            "records": records,
        }
    finally:
        server.stop()


# --- the trivial floor ------------------------------------------------------------------------

TRIVIAL_PAGE = """import numpy as np
import streamlit as st

st.set_page_config(page_title={title!r}, layout="wide")
view = {{k: st.query_params[k] for k in ("run", "seed", "combine") if k in st.query_params}}
for path, label in {links!r}:
    st.sidebar.page_link(path, label=label, query_params=view)
seed = int(view.get("seed", 0)) if str(view.get("seed", "0")).isdigit() else 0
st.sidebar.number_input("Seed", 0, 2**31 - 1, seed, key="seed")
st.title({title!r})
st.markdown("Some text, as a page of the explorer has. " * 20)
st.image(np.random.default_rng(seed).random((16, 16)), width=256)
st.write("Done.")
"""


def trivial_app(folder: Path) -> Path:
    """Six pages of text and one image at the explorer's URLs, with its query string."""
    files = ["app.py"] + [f"pages/{i}_{path}.py" for i, (_, path) in enumerate(PAGES[1:], 1)]
    links = [(f, title) for f, (title, _) in zip(files, PAGES, strict=True)]
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    (folder / ".streamlit").mkdir(exist_ok=True)
    shutil.copy(ROOT / ".streamlit" / "config.toml", folder / ".streamlit" / "config.toml")
    for f, title in links:
        (folder / f).write_text(TRIVIAL_PAGE.format(title=title, links=links))
    return folder / "app.py"


# --- figures ------------------------------------------------------------------------------------


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q * 100) - 1]


def pages(records: list[dict]) -> dict:
    """Per page: views, errors, p50 / p95 / max seconds to the finished page (errors left
    out), p95 to its last media, and media fetched."""
    out = {}
    for title, _ in PAGES:
        mine = [r for r in records if r["page"] == title]
        ok = [r["seconds"] for r in mine if not r["error"] and r["seconds"] is not None]
        with_media = [
            max(r["seconds"], r["media_s"] or 0)
            for r in mine
            if not r["error"] and r["seconds"] is not None
        ]
        out[title] = {
            "n": len(mine),
            "errors": sum(bool(r["error"]) for r in mine),
            "p50": quantile(ok, 0.5),
            "p95": quantile(ok, 0.95),
            "max": max(ok) if ok else float("nan"),
            "p95_with_media": quantile(with_media, 0.95),
            "media": sum(r["media"] for r in mine),
        }
    return out


def waits(records: list[dict]) -> dict:
    """Own-seed views per page: how many took over WAIT_WITHIN_S, how many of those showed
    a queue place, progress or busy message within it, the latest showing, refusals."""
    out = {}
    for title, _ in PAGES:
        mine = [r for r in records if r["page"] == title and r["kind"] == "own"]
        slow = [r for r in mine if r["error"] or (r["seconds"] or 0) > WAIT_WITHIN_S]
        shown = [r["wait_shown"] for r in mine if r["wait_shown"] is not None]
        out[title] = {
            "views": len(mine),
            "slow": len(slow),
            "slow_shown_in_time": sum(
                r["wait_shown"] is not None and r["wait_shown"] <= WAIT_WITHIN_S for r in slow
            ),
            "shown": len(shown),
            "latest_shown_s": max(shown) if shown else None,
            "refused": sum(r["wait_kind"] == "busy" for r in mine),
        }
    return out


def summary(records: list[dict]) -> dict:
    return {
        "pages": pages(records),
        "by_kind": {
            k: pages([r for r in records if r["kind"] == k])
            for k in ("featured", "own")
            if any(r["kind"] == k for r in records)
        },
        "own_waits": waits(records),
        "errors": [
            f"{r['kind']} seed {r['seed']} {r['page']}: {r['error']}" for r in records if r["error"]
        ],
    }


def table(results: list[dict]) -> str:
    titles = [t for t, _ in PAGES]
    rows = ["| app, visitors | " + " | ".join(titles) + " |", "|" + "---|" * (len(titles) + 1)]
    for r in results:
        for kind, stats in [("all", r["pages"]), *r["by_kind"].items()]:
            n = (
                r["sessions"]
                if kind == "all"
                else sum(1 for x in r["records"] if x["kind"] == kind and x["page"] == "Home")
            )
            cells = [
                f"{s['p50']:.1f} / {s['p95']:.1f} / {s['max']:.1f}"
                + (f" ({s['errors']} err)" if s["errors"] else "")
                for s in (stats[t] for t in titles)
            ]
            rows.append(
                f"| {r['app']}{r.get('tag', '')}, {kind} ({n}) | " + " | ".join(cells) + " |"
            )
    return "\n".join(rows) + "\n\n(p50 / p95 / max seconds from request to finished page)"


def report(r: dict) -> str:
    views = sum(p["n"] for p in r["pages"].values())
    media = sum(p["media"] for p in r["pages"].values())
    lines = [
        f"{r['app']}{r.get('tag', '')}: {r['sessions']} visitors, {views} page views, "
        f"{media} media fetched, {len(r['errors'])} errors, {r['wall_s']:.0f} s; first visit "
        + (f"{r['first_visit_s']:.1f} s" if r["first_visit_s"] is not None else "-"),
        f"  server + workers: {r['server_cpu_s']:.1f} CPU s "
        f"({r['server_cpu_s_per_view']:.2f} per view), peak PSS {r['peak_pss_mb']:.0f} MB; "
        f"load clients {r['client_cpu_s']:.1f} CPU s; load/core at end {r['load_per_core']:.2f}",
    ]
    for title, w in r["own_waits"].items():
        if w["views"] and (w["slow"] or w["shown"]):
            lines.append(
                f"  own seeds, {title}: {w['slow']} of {w['views']} over {WAIT_WITHIN_S:.0f} s, "
                f"{w['slow_shown_in_time']} of them showed queue/progress/busy within "
                f"{WAIT_WITHIN_S:.0f} s; latest showing "
                + (f"{w['latest_shown_s']:.2f} s" if w["latest_shown_s"] is not None else "-")
                + f"; refused {w['refused']}"
            )
    lines += [f"  error: {e}" for e in r["errors"][:10]]
    return "\n".join(lines)


def order(apps: list[str], rounds: int) -> list[str]:
    """With both apps each tda run sits between two trivial runs (trivial, tda, trivial,
    ...); otherwise each app `rounds` times."""
    if set(apps) == {"tda", "trivial"}:
        return ["trivial"] + ["tda", "trivial"] * rounds
    return [a for _ in range(rounds) for a in apps]


def featured(assets: Path) -> list[tuple[int, str]]:
    index = assets / "default" / "featured" / "featured.json"
    try:
        entries = json.loads(index.read_text())["entries"]
        return sorted({(int(e["seed"]), str(e.get("combine", ""))) for e in entries})
    except (OSError, ValueError, KeyError, TypeError):
        return []


def visitors(k: int, round_: int, feats: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    """K visitors, featured and own seeds alternating: (seed, kind, query string)."""
    out = []
    for i in range(k):
        if i % 2 == 0:
            seed, combine = feats[i // 2 % len(feats)]
            kind = "featured"
        else:
            seed, combine, kind = OWN_SEED_BASE + round_ * k + i, feats[0][1], "own"
        query = f"run=default&seed={seed}" + (f"&combine={combine}" if combine else "")
        out.append((seed, kind, query))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", "-k", type=int, default=4, help="visitors K, at once")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="tda runs, each between two trivial runs (own seeds new each round)",
    )
    ap.add_argument("--apps", default="tda,trivial", help="which apps: tda,trivial")
    ap.add_argument(
        "--assets",
        type=Path,
        default=ROOT / "assets",
        help="folder holding the run default/ (TDA_ASSETS) and its featured seeds",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds the visitors of one app run may take in all",
    )
    ap.add_argument("--cold", action="store_true", help="no warm-up visit of Home first")
    ap.add_argument("--json", type=Path, default=None, help="write every record here")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    if a.sessions < 1 or a.rounds < 1:
        raise SystemExit("--sessions and --rounds must be at least 1")
    feats = featured(a.assets)
    if not feats:
        print(
            f"warning: {a.assets}/default has no featured seeds; the featured half uses "
            "seed 0, computed on demand",
            file=sys.stderr,
        )
        feats = [(0, "")]
    env = {"TDA_ASSETS": str(a.assets.resolve()), "TDA_RUNS": ""}
    results = []
    with tempfile.TemporaryDirectory(prefix="tda-load-") as tmp:
        tmp = Path(tmp)
        apps = {"tda": ROOT / "app.py", "trivial": trivial_app(tmp / "trivial")}
        plan = order(a.apps.split(","), a.rounds)
        for n, label in enumerate(plan):
            done = plan[:n].count(label)
            print(f"{label}: {a.sessions} visitors ...", flush=True)
            log = tmp / f"{label}-{n}.log"
            warm = None if a.cold else visitors(1, 0, feats)[0][2]
            r = run_app(
                label, apps[label], env, visitors(a.sessions, done, feats), log, a.timeout, warm
            )
            r["tag"] = f" #{done + 1}" if plan.count(label) > 1 else ""
            results.append(r)
            print(report(r), flush=True)
            if r["errors"]:
                print(log.read_text()[-3000:])
    print(table(results))
    print(f"featured seeds: {feats}; machine: {os.cpu_count()} cores")
    if a.json:
        a.json.write_text(json.dumps({"featured": feats, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
