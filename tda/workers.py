"""Chains in worker processes, so that a server's threads keep the CPU and the GIL for
serving pages.

A chain of small UNets is mostly Python glue between short torch calls, and holds the
GIL for much of its time. Run in a thread of the Streamlit server at a low priority, it
is descheduled while holding the GIL and every page of every session waits for it (on
2 cores with 20 browsers: featured pages 6-16 s over the floor). A `WorkerPool` runs
named operations (`OPS`) on a run's Explorer in `size` processes forked from a
forkserver that has imported torch and tda once (so the processes share those pages),
each at niceness `nice` for all its threads and in a scheduling group of its own
(`yield_cpu`), so the kernel gives serving, and browsers on the same machine, first
claim on the CPU; with `spare_cpu_s`, they compute only on CPU nobody else wants
(`tda.spare_cpu`). The forkserver (`tda.worker_forkserver`) ends with the server and
takes them along. Each process calls gc.freeze() first, so Python's collector never
writes to (and so never copies) the pages it shares with the forkserver: 60 MB of
private memory per process after a chain instead of 150.

`pool.call(run_key, combine, op, *args, lane=..., progress=...)` waits for a free process
of its lane ("page" goes first; "job" leaves one process for pages), sends
it the question, relays its progress reports to `progress(done, total, text)` and
returns the answer. If `progress` raises (`jobs.Cancelled`: nobody waits any more), the
process is told to stop at its next report, which frees it; the exception goes on. A
process that dies is replaced; the call that it held fails with a `TdaError`. Results
come back through a pipe (pickled between our own processes; no file is unpickled).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import TdaError
from .executor import not_rerunning_main
from .spare_cpu import SpareCpu

log = logging.getLogger(__name__)

EXPLORERS_KEPT = 4  # runs (with a rule) a worker process keeps loaded
_CANCEL = "cancel"


@lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def fewer_malloc_arenas(arenas: int = 2) -> bool:
    """glibc: at most `arenas` malloc arenas from now on (it makes up to 8 per core, one
    per busy thread, each keeping its own freed memory; a Streamlit server runs a thread
    per session). False where this is not glibc."""
    libc = _libc()
    return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(-8, arenas))


def give_back_freed_memory() -> None:
    """glibc: hand the heap's freed pages back to the system (malloc keeps them)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


# -- what a worker process can be asked (each: (explorer, progress, *args) -> picklable) --


def _sample(ex, progress, seed: int):
    s = ex.sample(seed)
    loglik = None if s.mixture_loglik is None else s.mixture_loglik.numpy()
    return s.sample.numpy(), s.trajectory.numpy(), loglik


def _y(ex, progress, weights, seed: int):
    return ex.y(weights, seed, progress=progress).numpy()


def _attribution(ex, progress, seed: int, method: str):
    from .attribution import attribute

    return attribute(ex, seed, method, progress=progress)


def _candidate(ex, progress, seed: int, controls: int):
    from .candidate import candidate_test

    return candidate_test(ex, seed, controls=controls, chain_progress=progress)


def _verified(ex, progress, base, m: int):
    from .attribution import verify_topk

    return verify_topk(ex, base, m=m, progress=progress)


def _counterfactuals(ex, progress, att, rows, exact: bool):
    from .attribution import counterfactuals_for

    return counterfactuals_for(ex, att, rows, exact=exact).numpy()


def _evaluate(ex, progress, out: str, sizes, classifier_dir: str):
    from .evaluate import evaluate

    return evaluate(ex, out, sizes, classifier_dir=classifier_dir,
                    progress=lambda what, done, total: progress(done, total, f"{what}:"))


def _niceness(ex, progress):
    return os.getpriority(os.PRIO_PROCESS, 0), os.getpid()


OPS: dict[str, Callable[..., Any]] = {
    "sample": _sample,  # (sample, trajectory, mixture log-likelihoods or None) as numpy
    "y": _y,  # y(V, eps) of one seed, numpy [B, C, H, W]
    "attribution": _attribution,
    "candidate": _candidate,
    "verified": _verified,
    "counterfactuals": _counterfactuals,  # of training rows for an Attribution (chains)
    "evaluate": _evaluate,  # a report into the folder `out` (tda.evaluate); its dict
    "niceness": _niceness,  # (this process's niceness, its pid): for checks
}


class _Stop(Exception):
    """The caller no longer wants this answer."""


def run_path(key: str) -> str:
    """The run folder of a run key (`folder@manifest mtime`, as ui.state.run_key makes)."""
    return key.rsplit("@", 1)[0]


def _explorer(cache: OrderedDict, key: str, combine: str | None):
    from .api import Explorer

    k = (key, combine)
    if k in cache:
        cache.move_to_end(k)
    else:  # another rule of a run already here shares its loaded members
        loaded = next((ex.run for (other, _), ex in cache.items() if other == key), None)
        cache[k] = Explorer(loaded if loaded is not None else run_path(key), combine=combine)
        while len(cache) > EXPLORERS_KEPT:
            cache.popitem(last=False)
    return cache[k]


def yield_cpu(nice: int) -> None:
    """Run this process (and the threads it starts later) at niceness `nice`, in a
    scheduling group of its own with that niceness too.

    Where Linux groups processes by session (autogroup, on by default), it shares the CPU
    between groups first and applies niceness only within a group: a worker at nice 10
    in the server's session still took half the CPU from browsers in another session on
    the same machine (a visitor's own browser, or the load test's; measured with two such
    workers beside 20 browsers of a trivial app: Home p95 33 s -> 39 s, and 29 s once the
    workers had a group of their own). So the worker starts a session and gives its group
    the same niceness. Where there is no autogroup, or no right to it, niceness alone.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    nice = os.getpriority(os.PRIO_PROCESS, 0)  # more, where it was nicer already
    group = Path("/proc/self/autogroup")
    if nice <= 0 or not group.exists():
        return
    try:
        os.setsid()
    except OSError:
        return
    for _ in range(20):  # the kernel takes one such write per 0.1 s, machine-wide
        try:
            group.write_text(str(nice))
            return
        except BlockingIOError:
            time.sleep(0.1)
        except OSError:
            return


def _serve(conn, nice: int, threads: int) -> None:
    """A worker process: answer questions from `conn` until it closes."""
    import gc

    import torch

    gc.freeze()  # what the forkserver imported stays shared: the collector never touches it
    fewer_malloc_arenas()

    yield_cpu(nice)
    torch.set_num_threads(threads)
    explorers: OrderedDict = OrderedDict()

    def progress(done, total, text=None):
        while conn.poll():
            if conn.recv() == _CANCEL:
                raise _Stop
        conn.send(("progress", float(done), float(total), text))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg == _CANCEL:  # a late cancel for an answer already sent
            continue
        key, combine, op, args = msg
        value = None
        try:
            ex = _explorer(explorers, key, combine)
            t = time.perf_counter()
            value = OPS[op](ex, progress, *args)
            conn.send(("done", value, time.perf_counter() - t))
        except _Stop:
            conn.send(("stopped",))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            log.exception("worker: %s failed", op)
            conn.send(("error", isinstance(e, TdaError), f"{type(e).__name__}: {e}"))
        finally:  # a sweep's chunks are freed (stopped or not): not kept till the next
            value = None
            give_back_freed_memory()


class _Worker:
    def __init__(self, ctx, nice: int, threads: int, name: str):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, nice, threads), name=name,
                                daemon=True)
        with not_rerunning_main():
            self.proc.start()
        child.close()

    def call(self, key: str, combine: str | None, op: str, args: tuple, progress) -> Any:
        self.conn.send((key, combine, op, args))
        stop: BaseException | None = None
        while True:
            msg = self.conn.recv()  # EOFError if the process died
            if msg[0] == "progress":
                if stop is None and progress is not None:
                    try:
                        progress(*msg[1:])
                    except BaseException as e:  # noqa: BLE001 - re-raised once it stops
                        stop = e
                        self.conn.send(_CANCEL)
                continue
            if stop is not None:
                raise stop
            if msg[0] == "done":
                return msg[1], msg[2]
            if msg[0] == "error":
                raise TdaError(msg[2]) if msg[1] else RuntimeError(msg[2])
            raise RuntimeError(f"worker answered {msg[0]!r} unasked")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if hasattr(signal, "SIGCONT"):  # a stopped process (`tda.spare_cpu`) reads no EOF
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


LANES = ("page", "job")  # a page's own chains; the job manager's computations


class WorkerPool:
    """`size` worker processes at niceness `nice` with `threads` torch threads each,
    started when first needed, shared by two lanes. A "page" call (a page's own chain)
    takes any free process and goes before every waiting "job" call; "job" calls hold at
    most `size - 1` processes at once, so one is always left for pages (with `size` 1,
    they share it). Fewer processes than one pool per lane: each holds torch and a run."""

    def __init__(self, size: int, nice: int = 0, threads: int = 1, name: str = "tda-worker",
                 spare_cpu_s: float = 0.0):
        if size < 1:
            raise TdaError(f"a worker pool needs at least one process, got {size}")
        self.size, self.nice, self.threads, self.name = size, nice, threads, name
        # with spare_cpu_s, the processes wait (up to that long in a row) while the rest
        # of the machine keeps its cores busy (`tda.spare_cpu`)
        self._spare = SpareCpu(lambda: self.pids, longest=spare_cpu_s) if spare_cpu_s else None
        if "forkserver" in mp.get_all_start_methods():
            self._ctx = mp.get_context("forkserver")
            # the forkserver imports these once; every worker forked from it shares them
            self._ctx.set_forkserver_preload(
                ["tda.worker_forkserver", "tda.api", "tda.attribution", "tda.candidate"])
        else:  # Windows: each worker imports them itself
            self._ctx = mp.get_context("spawn")
        self._cv = threading.Condition()
        self._idle: list[_Worker] = []
        self._workers: list[_Worker] = []
        self._busy = dict.fromkeys(LANES, 0)
        self._waiting = dict.fromkeys(LANES, 0)
        self._started = 0
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The worker processes, read without the pool's lock (`_take` holds it while a
        process starts, which is when `tda.spare_cpu` must still see them). Not their
        forkserver: stopped, it would outlive a killed server; it starts only on spare
        CPU instead (`_take`)."""
        return [w.proc.pid for w in list(self._workers)]

    def _may_take(self, lane: str) -> bool:
        if not self._idle and len(self._workers) >= self.size:
            return False
        if lane == "page":
            return True
        return self._waiting["page"] == 0 and self._busy["job"] < max(1, self.size - 1)

    def _take(self, lane: str) -> _Worker:
        if self._spare is not None and not self._idle and len(self._workers) < self.size:
            # a process will likely start (the first also starts the forkserver, whose
            # imports are work too): on spare CPU, and outside the lock, which returning
            # workers need
            self._spare.wait_spare()
        with self._cv:
            self._waiting[lane] += 1
            try:
                while not self._may_take(lane):
                    if self._closed:
                        break
                    self._cv.wait()
                if self._closed:
                    raise TdaError("the worker pool is closed")
                if self._idle:
                    w = self._idle.pop()
                else:  # start one (a failed start takes nothing)
                    w = _Worker(self._ctx, self.nice, self.threads,
                                f"{self.name}-{self._started + 1}")
                    self._started += 1
                    self._workers.append(w)
                self._busy[lane] += 1
                return w
            finally:
                self._waiting[lane] -= 1

    def _give(self, w: _Worker, lane: str, alive: bool) -> None:
        with self._cv:
            self._busy[lane] -= 1
            keep = alive and not self._closed
            if keep:
                self._idle.append(w)
            elif w in self._workers:
                self._workers.remove(w)
            self._cv.notify_all()
        if not keep:
            w.stop()

    def call(self, key: str, combine: str | None, op: str, *args, lane: str = "page",
             progress: Callable[..., None] | None = None) -> Any:
        """OPS[op](explorer of run `key` under rule `combine`, progress, *args) in a free
        worker process of `lane`."""
        return self.timed(key, combine, op, *args, lane=lane, progress=progress)[0]

    def timed(self, key: str, combine: str | None, op: str, *args, lane: str = "page",
              progress: Callable[..., None] | None = None) -> tuple[Any, float]:
        """`call`, and the seconds the operation itself took in its process (no waiting
        for a process, starting one or loading the run)."""
        if op not in OPS:
            raise TdaError(f"unknown worker operation {op!r}")
        if lane not in LANES:
            raise TdaError(f"unknown lane {lane!r}: one of {', '.join(LANES)}")
        w = self._take(lane)
        alive = True
        try:
            return w.call(key, combine, op, args, progress)
        except (EOFError, OSError) as e:
            alive = False
            raise TdaError(f"a worker process stopped while computing {op} "
                           f"(exit code {w.proc.exitcode})") from e
        finally:
            self._give(w, lane, alive and w.proc.is_alive())

    def close(self) -> None:
        if self._spare is not None:  # stopped processes would not see their pipe close
            self._spare.close()
        with self._cv:
            self._closed = True
            workers, self._workers, self._idle = self._workers, [], []
            self._cv.notify_all()
        for w in workers:
            w.stop()


class InlinePool:
    """The same calls, run in the calling thread on `explorer_of(key, combine)`: for tests
    that replace a core function in this process, where a worker would not see it."""

    def __init__(self, explorer_of: Callable[[str, str | None], Any]):
        self._explorer_of = explorer_of

    def call(self, key: str, combine: str | None, op: str, *args, lane: str = "page",
             progress: Callable[..., None] | None = None) -> Any:
        return self.timed(key, combine, op, *args, lane=lane, progress=progress)[0]

    def timed(self, key: str, combine: str | None, op: str, *args, lane: str = "page",
              progress: Callable[..., None] | None = None) -> tuple[Any, float]:
        if op not in OPS:
            raise TdaError(f"unknown worker operation {op!r}")
        ex = self._explorer_of(key, combine)
        t = time.perf_counter()
        return OPS[op](ex, progress, *args), time.perf_counter() - t

    def close(self) -> None:
        pass
