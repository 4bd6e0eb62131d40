"""Worker processes that run jobs: one computation per key, a bounded queue, progress,
cancellation, and a dead worker replaced.

A `Job` is a module-level function, its arguments and a key; it runs as
`fn(*args, report=report)` in a worker process and may call `report(msg)` to say how
far it got (the app's jobs report `(done, total, text)`). `Pool.submit(job)` hands back
a `Ticket`:
- a finished result still kept under the key (`keep` of them), at once;
- the queued or running job of the same key, joined: one computation whoever asks;
- else a new job, queued in arrival order; more than `queue` waiting raises `Busy`.
Each ticket is one waiter and `release()`s when it stops waiting. A job nobody has
waited for during `grace` seconds is cancelled: dropped from the queue, or, running,
told to stop at its next report (`report` raises `Cancelled` in the worker), and its
process killed and replaced if it has not stopped `KILL_AFTER_S` later. A worker
process that dies fails its job with a message and is replaced for the next one.

Processes come from a forkserver (spawn where there is none), run at niceness `nice`
with `threads` torch threads, and answer through a pipe (pickles between our own
processes; no file is unpickled). `concurrent.futures` has no cancellation of a running
call and breaks the whole pool when a worker dies, hence this small layer.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from . import TdaError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
POLL_S = 0.2  # how often a busy slot looks whether its job is still wanted
KILL_AFTER_S = 10.0  # a cancelled job that has not reported since is killed


@dataclass
class Job:
    """fn(*args, report=...) somewhere; `key` names it (one job per key at a time)."""

    key: Hashable
    fn: Callable[..., Any]
    args: tuple = ()
    cpus: float = 1.0
    gpus: float = 0.0
    threads: int | None = None  # torch threads inside the job (None: the worker's)


class Busy(TdaError):
    """The queue is full: try again later."""


class Cancelled(Exception):
    """Raised by `report` in a job that nobody waits for any more."""


@dataclass(frozen=True)
class Status:
    """What a waiter sees of its job."""

    state: str
    place: int  # 1-based place in the queue (0 unless queued)
    queued: int  # jobs waiting
    running: int  # jobs running
    report: Any  # the job's last report (None before its first)


class _Task:
    def __init__(self, job: Job, seq: int):
        self.job, self.seq = job, seq
        self.state, self.report, self.reports = QUEUED, None, 0
        self.waiters, self.orphaned = 0, 0.0
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()


class Ticket:
    """One waiter's hold on a job; a context manager that releases it however one leaves."""

    def __init__(self, pool: Pool, task: _Task):
        self._pool, self._task, self._released = pool, task, False

    def status(self) -> Status:
        return self._pool._status(self._task)

    @property
    def reports(self) -> int:
        """How many reports the job has made so far."""
        return self._task.reports

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has ended (at most `timeout` seconds); True if it has."""
        return self._task.finished.wait(timeout)

    def result(self) -> Any:
        """The job's value; its error if it failed; `Cancelled` if it was cancelled."""
        self._task.finished.wait()
        if self._task.state == DONE:
            return self._task.value
        if self._task.state == CANCELLED:
            raise Cancelled(f"job {self._task.job.key!r} was cancelled")
        raise self._task.error  # type: ignore[misc]

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._task)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Pool:
    """`size` worker processes, each running one job at a time; see the module doc."""

    def __init__(self, size: int, queue: int = 1 << 30, nice: int = 0, threads: int = 1,
                 keep: int = 0, grace: float = 2.0, name: str = "tda-worker",
                 preload: tuple[str, ...] = (), eager: bool = False):
        if size < 1 or queue < 0 or keep < 0:
            raise TdaError("a pool needs size >= 1, queue and keep >= 0")
        self.size, self.queue, self.keep, self.grace = size, queue, keep, grace
        self.nice, self.threads, self.name = nice, threads, name
        if "forkserver" in mp.get_all_start_methods():
            self._ctx = mp.get_context("forkserver")
            if preload:  # imported once by the forkserver, shared by every worker
                self._ctx.set_forkserver_preload(list(preload))
        else:
            self._ctx = mp.get_context("spawn")
        self._cv = threading.Condition()
        self._queue: list[_Task] = []
        self._active: dict[Hashable, _Task] = {}
        self._results: OrderedDict[Hashable, _Task] = OrderedDict()
        self._running = 0
        self._seq = itertools.count()
        self._slots: list[threading.Thread] = []
        self._closed = False
        self.started = 0  # jobs ever started (a joined job starts once)
        self.processes = 0  # worker processes ever started
        self.eager = eager  # start every worker now, not at its first job
        if eager:
            for _ in range(size):
                self._start_slot()

    def submit(self, job: Job) -> Ticket:
        with self._cv:
            if self._closed:
                raise TdaError("the worker pool is closed")
            task = self._results.get(job.key) or self._active.get(job.key)
            if task is None:
                if self._waiting() >= self.queue:
                    raise Busy(f"{self._waiting()} computations are already waiting")
                task = _Task(job, next(self._seq))
                self._active[job.key] = task
                self._queue.append(task)
                if len(self._slots) < self.size:
                    self._start_slot()
                self._cv.notify_all()
            elif job.key in self._results:
                self._results.move_to_end(job.key)
            task.waiters += 1
            return Ticket(self, task)

    def result(self, key: Hashable, default: Any = None) -> Any:
        """The kept result of `key`, else `default`; never computes."""
        with self._cv:
            task = self._results.get(key)
            return default if task is None else task.value

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {"running": self._running, "queued": self._waiting(),
                    "kept": len(self._results), "started": self.started}

    def close(self) -> None:
        """Cancel what waits, stop every process (a running job with it)."""
        with self._cv:
            self._closed = True
            for task in list(self._queue):
                self._end(task, CANCELLED)
            self._cv.notify_all()
        for t in self._slots:
            t.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inside (`_cv` held where a name says "locked") ------------------------------------

    def _waiting(self) -> int:
        return sum(1 for t in self._queue if t.waiters > 0)

    def _unwanted(self, task: _Task) -> bool:
        return task.waiters == 0 and time.monotonic() - task.orphaned >= self.grace

    def _status(self, task: _Task) -> Status:
        with self._cv:
            live = [t for t in self._queue if t.waiters > 0]
            place = 1 + live.index(task) if task in live else 0
            return Status(task.state, place, len(live), self._running, task.report)

    def _release(self, task: _Task) -> None:
        with self._cv:
            task.waiters -= 1
            if task.waiters == 0:
                task.orphaned = time.monotonic()
            self._cv.notify_all()

    def _end(self, task: _Task, state: str, value: Any = None, error=None) -> None:
        """Locked: record how a job ended and wake its waiters."""
        if task in self._queue:
            self._queue.remove(task)
        if self._active.get(task.job.key) is task:
            del self._active[task.job.key]
        task.state, task.value, task.error = state, value, error
        if state == DONE and self.keep:
            self._results[task.job.key] = task
            while len(self._results) > self.keep:
                self._results.popitem(last=False)
        task.finished.set()

    def _start_slot(self) -> None:
        t = threading.Thread(target=self._slot, name=f"{self.name}-slot-{len(self._slots)}",
                             daemon=True)
        self._slots.append(t)
        t.start()

    def _next(self) -> _Task | None:
        """Locked: the next job still wanted (waits for one); None once closed."""
        while not self._closed:
            for task in [t for t in self._queue if self._unwanted(t)]:
                self._end(task, CANCELLED)
            if self._queue:
                task = self._queue.pop(0)
                task.state = RUNNING
                self._running += 1
                self.started += 1
                return task
            self._cv.wait()
        return None

    def _new_worker(self) -> _Worker:
        with self._cv:
            self.processes += 1
            name = f"{self.name}-{self.processes}"
        return _Worker(self._ctx, self.nice, self.threads, name)

    def _slot(self) -> None:
        """One worker process and the thread that feeds it, job after job."""
        worker: _Worker | None = None
        if self.eager:
            try:
                worker = self._new_worker()
            except Exception:  # noqa: BLE001 - tried again at the first job
                worker = None
        while True:
            with self._cv:
                task = self._next()
            if task is None:
                break
            try:
                if worker is None:
                    worker = self._new_worker()
                state, value, error = worker.run(task, self)
            except Exception as e:  # noqa: BLE001 - a process that would not start
                state, value, error = FAILED, None, TdaError(f"no worker process: {e}")
            if worker is not None and not worker.alive:
                worker.stop()
                worker = None  # the next job starts a fresh process
            with self._cv:
                self._running -= 1
                self._end(task, state, value, error)
        if worker is not None:
            worker.stop()


class _Worker:
    """One process and the server's end of its pipe."""

    def __init__(self, ctx, nice: int, threads: int, name: str):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, nice, threads), name=name,
                                daemon=True)
        with not_rerunning_main():
            self.proc.start()
        child.close()

    @property
    def alive(self) -> bool:
        return self.proc.is_alive() and not self.conn.closed

    def run(self, task: _Task, pool: Pool) -> tuple[str, Any, BaseException | None]:
        job = task.job
        self.conn.send((task.seq, job.fn, job.args, job.threads))
        cancelled_at = None
        while True:
            try:
                msg = self.conn.recv() if self.conn.poll(POLL_S) else None
            except (EOFError, OSError):  # the process is gone (or going)
                self.proc.join(5)
                msg = None
            if msg is None and not self.proc.is_alive():
                return FAILED, None, TdaError(
                    f"the worker process computing {job.key} stopped (exit code "
                    f"{self.proc.exitcode}); it has been replaced, ask again")
            if msg is not None and msg[0] == "report":
                task.report, task.reports = msg[1], task.reports + 1
            elif msg is not None:
                return _answer(msg)
            with pool._cv:
                unwanted = pool._unwanted(task) or pool._closed
            if unwanted and cancelled_at is None:
                cancelled_at = time.monotonic()
                self.conn.send(("cancel", task.seq))
                if pool._closed:
                    self.kill()
                    return CANCELLED, None, None
            elif cancelled_at is not None and time.monotonic() - cancelled_at > KILL_AFTER_S:
                self.kill()
                return CANCELLED, None, None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()  # an idle worker reads EOF and ends
        self.proc.join(5)
        if self.proc.is_alive():
            self.kill()


def _answer(msg: tuple) -> tuple[str, Any, BaseException | None]:
    if msg[0] == "done":
        return DONE, msg[1], None
    if msg[0] == "cancelled":
        return CANCELLED, None, None
    return FAILED, None, TdaError(msg[2]) if msg[1] else RuntimeError(msg[2])


def _serve(conn, nice: int, threads: int) -> None:
    """A worker process: run jobs sent through `conn` until it closes."""
    import gc

    import torch

    gc.freeze()  # what the forkserver imported stays shared: the collector never writes it
    if nice > 0:
        with contextlib.suppress(OSError):
            os.nice(max(0, nice - os.nice(0)))
    torch.set_num_threads(threads)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "cancel":  # late, for a job already answered
            continue
        seq, fn, args, job_threads = msg
        torch.set_num_threads(job_threads or threads)

        def report(what, seq=seq) -> None:
            while conn.poll():
                if conn.recv() == ("cancel", seq):
                    raise Cancelled
            conn.send(("report", what))

        try:
            conn.send(("done", fn(*args, report=report)))
        except Cancelled:
            conn.send(("cancelled",))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            conn.send(("error", isinstance(e, TdaError), f"{type(e).__name__}: {e}"))
        _trim()


def _trim() -> None:
    """glibc: give a finished job's freed memory back to the system."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_STARTING = threading.Lock()


@contextlib.contextmanager
def not_rerunning_main():
    """Start processes in this block without re-running a borrowed __main__ in them.

    multiprocessing runs the parent's main module again in a spawned or forkserver
    child. Streamlit (its server, and AppTest) puts the page script it ran last there,
    as a module it made itself, and a child that re-runs a page fails before its job
    starts. A main module that Python's import system loaded (`python script.py`, whose
    module-level job functions a child must import) is kept; one without a loader is
    dropped.
    """
    from multiprocessing import spawn

    real = spawn.get_preparation_data
    if getattr(sys.modules.get("__main__"), "__loader__", None) is not None:
        yield
        return

    def prepared(name):
        data = real(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _STARTING:
        spawn.get_preparation_data = prepared
        try:
            yield
        finally:
            spawn.get_preparation_data = real
