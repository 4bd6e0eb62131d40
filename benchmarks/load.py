"""K remote visitors at once, as light protocol-level clients, against a trivial app's floor.

    python benchmarks/load.py --sessions 20 [--rounds 1] [--json OUT]

Each visitor is what a browser on a visitor's laptop sends and receives, without the
browser: it opens Streamlit's websocket (`/_stcore/stream`), asks for a page with the
`BackMsg` a browser sends (`rerun_script`: the query string, and the page's script hash
from the server's page list once known), reads `ForwardMsg`s until the page has finished,
and fetches the page's media (`/media/...` images) over HTTP, six at a time, as a browser
does. A page has finished at the `script_finished` of a full run after which nothing is
pending: not a run ended early for `st.rerun`, and no fragment left that reruns itself
(`st.fragment(run_every=...)`: its timer is kept here and fired as the browser fires it).

Every visitor opens Home, then Generate, Attribution, Ablation, Training set and
Diagnostics in the same session (the sidebar's links); all K arrive at once, half on the
run's featured seeds (`default/featured/featured.json`), half on a seed of their own
that nothing has computed (10,000 + i, new each round). For own-seed visitors it records
when they first see a queue place, a progress bar or a "busy" message (the refusal of a
full queue). The same run drives a trivial Streamlit app of the same shape (six pages,
the same URLs and query parameters, text and one image, no computation): the floor of
Streamlit itself under the same load, run before and after each tda run.

Reported per app and page: p50 / p95 / max seconds to the finished page, errors, the
server's CPU seconds per page view (the server and every process below it, from /proc),
the peak PSS of the server and its workers (shared pages counted once), and the load
clients' own CPU (they share the cores). Servers listen on 127.0.0.1 on a free port and
are started and stopped here, their process group and tree with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

ROOT = Path(__file__).resolve().parent.parent
# (title, URL path) of the six pages, in the order a visitor opens them
PAGES = (
    ("Home", ""),
    ("Generate", "generate"),
    ("Attribution", "attribution"),
    ("Ablation", "ablation"),
    ("Training set", "training_set"),
    ("Diagnostics", "diagnostics"),
)
OWN_SEED_BASE = 10_000
PAGE_TIMEOUT_S = 900.0  # one page view; the whole load is bounded by --timeout
MEDIA_CONNECTIONS = 6  # a browser's parallel HTTP/1.1 connections to one host
WAIT_WITHIN_S = 5.0  # the bar: a waiting visitor sees its place or progress this soon
MEDIA = re.compile(rb"/media/[0-9A-Za-z_.-]+")
QUEUED = re.compile(r"queue|place \d+|waiting", re.I)
REFUSED = re.compile(r"\bbusy\b|queue is full|try again", re.I)
TICK = os.sysconf("SC_CLK_TCK")

FINISHED = ForwardMsg.FINISHED_SUCCESSFULLY
FRAGMENT_FINISHED = ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
COMPILE_ERROR = ForwardMsg.FINISHED_WITH_COMPILE_ERROR


# --- one visitor --------------------------------------------------------------------------


@dataclass
class View:
    """One page view: what a visitor saw and when (seconds from its request)."""

    kind: str
    seed: int
    page: str
    seconds: float | None = None  # to the finished page
    media_s: float | None = None  # to the last of its media fetched
    media: int = 0
    media_bytes: int = 0
    runs: int = 0  # script runs it took (reruns and fragment runs included)
    wait_shown: float | None = None  # first queue place, progress bar or busy message
    wait_kind: str | None = None  # "queue", "progress" or "busy"
    error: str | None = None


@dataclass
class Visitor:
    """One browser tab's worth of protocol: a websocket session and its media fetches."""

    host: str
    port: int
    ws: object = None
    hashes: dict[str, str] = field(default_factory=dict)  # URL path -> page script hash
    cache: dict[str, ForwardMsg] = field(default_factory=dict)  # the browser's message cache
    fetched: set[str] = field(default_factory=set)  # media already in the browser's cache
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MEDIA_CONNECTIONS))

    async def connect(self, timeout: float) -> None:
        self.ws = await websockets.connect(
            f"ws://{self.host}:{self.port}/_stcore/stream",
            subprotocols=["streamlit"],
            max_size=None,
            ping_interval=None,  # browsers send no websocket pings; a busy server may lag
            open_timeout=timeout,
        )

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    def _rerun(self, path: str, query: str, fragment_id: str = "") -> bytes:
        msg = BackMsg()
        state = msg.rerun_script  # what the browser's app sends to run a page
        state.query_string = query
        if path in self.hashes:  # a link in the sidebar: the page's hash
            state.page_script_hash = self.hashes[path]
        else:  # a typed or shared URL: the page's path
            state.page_name = path
        state.widget_states.SetInParent()
        state.cached_message_hashes.extend(self.cache)
        state.context_info.timezone = "UTC"
        state.context_info.locale = "en-US"
        state.context_info.url = f"http://{self.host}:{self.port}/{path}?{query}"
        if fragment_id:
            state.fragment_id = fragment_id
            state.is_auto_rerun = True
        return msg.SerializeToString()

    async def _message(self, data: bytes) -> ForwardMsg:
        msg = ForwardMsg.FromString(data)
        if msg.ref_hash:  # the server knows this client has it
            if msg.ref_hash in self.cache:
                return self.cache[msg.ref_hash]
            status, body = await http_get(
                self.host, self.port, f"/_stcore/message?hash={msg.ref_hash}", 60
            )
            if status != 200:
                raise RuntimeError(f"cached message {msg.ref_hash}: HTTP {status}")
            msg = ForwardMsg.FromString(body)
        if msg.hash and msg.metadata.cacheable:
            self.cache[msg.hash] = msg
        return msg

    async def _fetch(self, url: str, view: View, t0: float) -> None:
        async with self.slots:
            status, body = await http_get(self.host, self.port, url, PAGE_TIMEOUT_S)
        if status != 200:
            view.error = view.error or f"media {url}: HTTP {status}"
        view.media += 1
        view.media_bytes += len(body)
        view.media_s = time.perf_counter() - t0

    def _look(self, msg: ForwardMsg, view: View, t0: float, fetches: list) -> None:
        """What a delta shows: media to fetch, an error, a queue place or progress."""
        element = msg.delta.new_element
        what = element.WhichOneof("type")
        if what is None:
            return
        if what != "download_button":  # a browser fetches downloads only when clicked
            for url in MEDIA.findall(element.SerializeToString()):
                url = url.decode()
                if url not in self.fetched:
                    self.fetched.add(url)
                    fetches.append(asyncio.ensure_future(self._fetch(url, view, t0)))
        if what == "exception":
            view.error = view.error or f"exception shown: {element.exception.message[:200]}"
        if view.wait_shown is not None:
            return
        body = getattr(element, what)
        text = " ".join(str(getattr(body, f, "")) for f in ("body", "text", "title"))
        seen = (
            "progress"
            if what == "progress"
            else "busy"
            if REFUSED.search(text)
            else "queue"
            if what != "spinner" and QUEUED.search(text)
            else None
        )
        if seen:
            view.wait_shown, view.wait_kind = time.perf_counter() - t0, seen

    async def open(self, title: str, path: str, query: str, view: View, timeout: float) -> None:
        """Ask for a page and read until it has finished; then wait for its media."""
        t0 = time.perf_counter()
        deadline = t0 + timeout
        fetches: list[asyncio.Future] = []
        timers: dict[str, list[float]] = {}  # fragment id -> [interval, next firing]
        full_done = False
        await self.ws.send(self._rerun(path, query))
        while True:
            now = time.perf_counter()
            due = min((t for _, t in timers.values()), default=deadline)
            try:
                data = await asyncio.wait_for(self.ws.recv(), max(0.0, min(due, deadline) - now))
            except TimeoutError:
                if time.perf_counter() >= deadline:
                    view.error = f"not finished after {timeout:.0f} s"
                    break
                for fid, timer in timers.items():  # the browser's interval timers
                    if timer[1] <= time.perf_counter():
                        timer[1] += timer[0]
                        await self.ws.send(self._rerun(path, query, fid))
                continue
            msg = await self._message(data)
            what = msg.WhichOneof("type")
            if what == "new_session":
                view.runs += 1
                if not msg.metadata.run.fragment_ids:  # a full run re-registers its timers
                    full_done, timers = False, {}
            elif what == "navigation":  # the app's pages, and which one this run is
                for p in msg.navigation.app_pages:
                    self.hashes["" if p.is_default else p.url_pathname] = p.page_script_hash
                if msg.navigation.page_script_hash != self.hashes.get(path):
                    view.error = view.error or f"the server ran another page than /{path}"
            elif what == "delta":
                self._look(msg, view, t0, fetches)
            elif what == "auto_rerun":
                timers[msg.auto_rerun.fragment_id] = [
                    msg.auto_rerun.interval,
                    time.perf_counter() + msg.auto_rerun.interval,
                ]
            elif what == "stop_auto_rerun":
                for fid in msg.stop_auto_rerun.fragment_ids:
                    timers.pop(fid, None)
            elif what == "page_not_found":
                view.error = f"page not found: /{path}"
            elif what == "session_event" and msg.session_event.HasField(
                "script_compilation_exception"
            ):
                view.error = "script compilation error"
            elif what == "script_finished":
                if msg.script_finished == COMPILE_ERROR:
                    view.error = view.error or "script compilation error"
                    break
                full_done = full_done or msg.script_finished == FINISHED
                if (
                    full_done
                    and not timers
                    and msg.script_finished in (FINISHED, FRAGMENT_FINISHED)
                ):
                    view.seconds = time.perf_counter() - t0
                    break
        if fetches:
            done, pending = await asyncio.wait(
                fetches, timeout=max(1.0, deadline - time.perf_counter())
            )
            for f in pending:
                f.cancel()
            for f in done:
                if f.exception() is not None and view.error is None:
                    view.error = f"media: {type(f.exception()).__name__}: {f.exception()}"
            if pending and view.error is None:
                view.error = f"{len(pending)} media not fetched in time"


async def http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one GET over a fresh connection, as a browser's fetch."""

    async def get() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    return await asyncio.wait_for(get(), timeout)


async def visit(
    port: int, seed: int, kind: str, query: str, start: asyncio.Event, deadline: float, pages=PAGES
) -> list[View]:
    """One visitor: every page in turn in one session, from the moment `start` is set."""
    await start.wait()
    views: list[View] = []
    v = Visitor("127.0.0.1", port)
    try:
        await v.connect(max(1.0, deadline - time.perf_counter()))
    except Exception as e:  # noqa: BLE001 - a refused visitor is counted, not fatal
        return [View(kind, seed, pages[0][0], error=f"connect: {type(e).__name__}: {e}")]
    try:
        for title, path in pages:
            view = View(kind, seed, title)
            views.append(view)
            left = min(PAGE_TIMEOUT_S, deadline - time.perf_counter())
            try:
                await v.open(title, path, query, view, max(1.0, left))
            except Exception as e:  # noqa: BLE001
                view.error = view.error or f"{type(e).__name__}: {str(e)[:200]}"
            if view.error:
                break
    finally:
        await v.close()
    return views


async def drive(
    port: int, visitors: list[tuple[int, str, str]], timeout: float, pages=PAGES
) -> list[View]:
    """All visitors (seed, kind, query string) at once; their page views."""
    start = asyncio.Event()
    deadline = time.perf_counter() + timeout
    tasks = [
        asyncio.ensure_future(visit(port, s, k, q, start, deadline, pages)) for s, k, q in visitors
    ]
    await asyncio.sleep(0)
    start.set()
    return [view for views in await asyncio.gather(*tasks) for view in views]


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
