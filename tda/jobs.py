"""One computation per question: a job manager shared by every visitor of a server.

A job is a function `fn(progress)` under a key, e.g. ("attribution", run key, seed,
method, rule). `JobManager.submit(key, fn)` hands back a `Ticket`:
- if the key's result is already known (a bounded LRU of finished results), at once;
- if a job with that key is queued or running, the caller joins it: no second
  computation, the same progress;
- otherwise a new job, started at once when one of `workers` threads is free, else put
  in a queue of at most `queue` jobs (ordered by priority, then arrival); a full queue
  raises `Busy`.
Each ticket is one waiter; `Ticket.release()` says it no longer waits. A job nobody
waits for (for `grace` seconds, so that a page that reruns can rejoin it) is
cancelled: taken out of the queue, or, while it runs, stopped at its next progress
report (`progress` raises `Cancelled`), which frees its worker. The core's long
functions all take `progress(done, total)`, so they stop within one step.

Threads only; no streamlit here (ui/state.py shows a ticket's status while it waits).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
Progress = Callable[..., None]  # progress(done, total, text=None)


class Busy(RuntimeError):
    """Every worker is taken and the queue is full: try again later."""


class Cancelled(Exception):
    """Raised by a job's progress callback once nobody waits for the job any more."""


@dataclass(frozen=True)
class Status:
    """What a waiter sees of its job."""

    state: str  # queued | running | done | failed | cancelled
    position: int  # 1-based place in the queue (0 unless queued)
    queued: int  # jobs waiting in the queue
    running: int  # jobs running
    done: float  # progress so far ...
    total: float  # ... of this much (0: not reported yet)
    text: str  # what the job says it is doing
    waiters: int  # tickets held on the job

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


class _Job:
    def __init__(
        self, key: Hashable, fn: Callable[[Progress], Any], priority: int, text: str, seq: int
    ):
        self.key, self.fn, self.priority, self.text, self.seq = key, fn, priority, text, seq
        self.state = QUEUED
        self.waiters = 0
        self.orphaned = 0.0  # monotonic time the last waiter left
        self.done = self.total = 0.0
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.started = self.ended = 0.0


class Ticket:
    """One waiter's hold on a job: poll `status()`, `wait()`, take `result()`, `release()`.

    Use it as a context manager so that it is released however the waiter leaves.
    """

    def __init__(self, manager: JobManager, job: _Job):
        self._manager, self._job = manager, job
        self._released = False

    @property
    def key(self) -> Hashable:
        return self._job.key

    @property
    def done(self) -> bool:
        return self._job.finished.is_set()

    def status(self) -> Status:
        return self._manager._status(self._job)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (or `timeout` seconds); True if it has."""
        return self._job.finished.wait(timeout)

    def result(self) -> Any:
        """The job's value; its exception if it failed; `Cancelled` if it was cancelled."""
        self._job.finished.wait()
        if self._job.state == DONE:
            return self._job.value
        if self._job.state == CANCELLED:
            raise Cancelled(f"job {self._job.key!r} was cancelled")
        raise self._job.error  # type: ignore[misc]

    def release(self) -> None:
        """This waiter no longer waits (idempotent)."""
        if not self._released:
            self._released = True
            self._manager._release(self._job)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class JobManager:
    """A bounded pool of worker threads, a bounded priority queue, joined jobs, a result LRU.

    `workers`: jobs running at once (at most the machine's cores makes sense);
    `queue`: jobs waiting for a worker before `submit` raises `Busy`; `keep`: finished
    results kept (least recently used dropped first); `grace`: seconds a job may have no
    waiter before it is cancelled.
    """

    def __init__(self, workers: int, queue: int, keep: int = 128, grace: float = 2.0):
        if workers < 1 or queue < 0 or keep < 0:
            raise ValueError("workers must be >= 1, queue and keep >= 0")
        self.workers, self.queue_limit, self.keep, self.grace = workers, queue, keep, grace
        self._lock = threading.Lock()
        self._active: dict[Hashable, _Job] = {}  # queued or running, by key
        self._queue: list[_Job] = []  # sorted by (priority, seq)
        self._results: OrderedDict[Hashable, _Job] = OrderedDict()
        self._running = 0
        self._seq = itertools.count()
        self.started = 0  # jobs ever started (to check that joined work ran once)

    # -- asking -------------------------------------------------------------------------

    def submit(
        self, key: Hashable, fn: Callable[[Progress], Any], priority: int = 0, text: str = ""
    ) -> Ticket:
        """A ticket on the job for `key`: its finished result, the running or queued job
        (joined), or a new job running `fn(progress)`. Lower `priority` runs first."""
        with self._lock:
            job = self._results.get(key)
            if job is not None:
                self._results.move_to_end(key)
            else:
                job = self._active.get(key)
            if job is None:
                if self._running >= self.workers and self._live_queue() >= self.queue_limit:
                    raise Busy(f"{len(self._queue)} computations are already waiting")
                job = _Job(key, fn, priority, text, next(self._seq))
                self._active[key] = job
                self._queue.append(job)
                self._queue.sort(key=lambda j: (j.priority, j.seq))
            job.waiters += 1
            self._dispatch()
            return Ticket(self, job)

    def result(self, key: Hashable, default: Any = None) -> Any:
        """The finished result of `key` if it is kept, else `default`; never computes."""
        with self._lock:
            job = self._results.get(key)
            if job is None:
                return default
            self._results.move_to_end(key)
            return job.value

    def status(self, key: Hashable) -> Status | None:
        """The status of the job for `key` (queued, running or kept), None if unknown."""
        with self._lock:
            job = self._active.get(key) or self._results.get(key)
        return None if job is None else self._status(job)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": self._running,
                "queued": self._live_queue(),
                "kept": len(self._results),
                "started": self.started,
            }

    # -- inside ---------------------------------------------------------------------------

    def _live_queue(self) -> int:
        return sum(1 for j in self._queue if j.waiters > 0)

    def _status(self, job: _Job) -> Status:
        with self._lock:
            position = 0
            if job.state == QUEUED:
                position = 1 + sum(
                    1
                    for j in self._queue
                    if j.waiters > 0 and (j.priority, j.seq) < (job.priority, job.seq)
                )
            return Status(
                job.state,
                position,
                self._live_queue(),
                self._running,
                job.done,
                job.total,
                job.text,
                job.waiters,
            )

    def _orphaned_for(self, job: _Job, now: float) -> float:
        return now - job.orphaned if job.waiters == 0 else -1.0

    def _dispatch(self) -> None:
        """Start queued jobs while workers are free (lock held)."""
        now = time.monotonic()
        for job in [j for j in self._queue if self._orphaned_for(j, now) >= self.grace]:
            self._end(job, CANCELLED)  # nobody waits for it any more
        while self._queue and self._running < self.workers:
            job = self._queue.pop(0)
            job.state, job.started = RUNNING, now
            self._running += 1
            self.started += 1
            threading.Thread(
                target=self._run, args=(job,), daemon=True, name=f"tda-job-{job.seq}"
            ).start()

    def _end(self, job: _Job, state: str) -> None:
        """Mark a queued or running job as ended (lock held)."""
        if job in self._queue:
            self._queue.remove(job)
        job.state, job.ended = state, time.monotonic()
        if self._active.get(job.key) is job:
            del self._active[job.key]
        if state == DONE and self.keep:
            self._results[job.key] = job
            self._results.move_to_end(job.key)
            while len(self._results) > self.keep:
                self._results.popitem(last=False)
        job.fn = None  # type: ignore[assignment]  # drop what the closure holds
        job.finished.set()

    def _run(self, job: _Job) -> None:
        def progress(done: float, total: float, text: str | None = None) -> None:
            with self._lock:
                job.done, job.total = float(done), float(total)
                if text:
                    job.text = text
                if self._orphaned_for(job, time.monotonic()) >= self.grace:
                    if self._active.get(job.key) is job:  # a new asker starts afresh
                        del self._active[job.key]
                    raise Cancelled(f"nobody waits for {job.key!r}")

        state, value, error = DONE, None, None
        try:
            value = job.fn(progress)
        except Cancelled:
            state = CANCELLED
            log.info("job %r cancelled: nobody waits for it", job.key)
        except BaseException as e:  # noqa: BLE001 - handed to every waiter
            state, error = FAILED, e
            log.warning("job %r failed: %r", job.key, e)
        with self._lock:
            job.value, job.error = value, error
            self._running -= 1
            self._end(job, state)
            self._dispatch()

    def _release(self, job: _Job) -> None:
        with self._lock:
            job.waiters -= 1
            if job.waiters > 0 or job.finished.is_set():
                return
            job.orphaned = time.monotonic()
            if job.state == QUEUED and self.grace <= 0:
                self._end(job, CANCELLED)
                return
        if job.state == QUEUED:  # take it out of the queue once the grace has passed
            timer = threading.Timer(self.grace + 0.05, self._reap)
            timer.daemon = True
            timer.start()

    def _reap(self) -> None:
        with self._lock:
            self._dispatch()
