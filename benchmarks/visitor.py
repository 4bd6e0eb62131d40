"""One remote visitor of a Streamlit app, as a light protocol-level client (no browser).

It opens Streamlit's websocket (`/_stcore/stream`), asks for a page with the `BackMsg` a
browser's app sends (`rerun_script`: the URL's query string, and the page's script hash
from the server's `navigation` message once known, else the page's URL path), reads
`ForwardMsg`s until the page has finished, and fetches the media its elements reference
(`/media/...`) over HTTP, at most six at a time and each once, as a browser does.

A page has finished at the `script_finished` of a full run after which nothing is
pending: not a run ended early by `st.rerun` (a new run follows), and no fragment that
reruns itself (`st.fragment(run_every=...)`: the server sends `auto_rerun`; its timer is
kept here and fired as the browser fires it, until a full run no longer registers it or
the server sends `stop_auto_rerun`). A page that waits on work in its own script (a loop
redrawing a placeholder) simply finishes later. On the way, the first queue place,
progress bar or "busy" message (a refusal) is noted with its time.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

# (title, URL path) of the six pages, in the order a visitor opens them
PAGES = (
    ("Home", ""),
    ("Generate", "generate"),
    ("Attribution", "attribution"),
    ("Ablation", "ablation"),
    ("Training set", "training_set"),
    ("Diagnostics", "diagnostics"),
)
PAGE_TIMEOUT_S = 900.0  # the longest one page view may take
MEDIA_CONNECTIONS = 6  # a browser's parallel HTTP/1.1 connections to one host
MEDIA = re.compile(rb"/media/[0-9A-Za-z_.-]+")
QUEUED = re.compile(r"\bqueued?\b|\bplace \d+", re.I)
REFUSED = re.compile(r"\bbusy\b|queue is full|try again", re.I)

FINISHED = ForwardMsg.FINISHED_SUCCESSFULLY
FRAGMENT_FINISHED = ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
COMPILE_ERROR = ForwardMsg.FINISHED_WITH_COMPILE_ERROR


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
