"""Chains in worker processes, so that a server's threads keep the CPU and the GIL for
serving pages.

A chain of small UNets is mostly Python glue between short torch calls, and holds the
GIL for much of its time. Run in a thread of the Streamlit server at a low priority, it
is descheduled while holding the GIL and every page of every session waits for it (on
2 cores with 20 browsers: featured pages 6-16 s over the floor). A `WorkerPool` runs
named operations (`OPS`) on a run's Explorer in `size` processes forked from a
forkserver that has imported torch and tda once (so the processes share those pages),
each at niceness `nice` for all its threads, so the kernel gives serving first claim on
the CPU.

`pool.call(run_key, combine, op, *args, progress=...)` waits for a free process, sends
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
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import TdaError
from .executor import not_rerunning_main

log = logging.getLogger(__name__)

EXPLORERS_KEPT = 4  # runs (with a rule) a worker process keeps loaded
_CANCEL = "cancel"


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
    "evaluate": _evaluate,  # a report into the folder `out` (tda.evaluate); its dict
    "niceness": _niceness,  # (this process's niceness, its pid): for checks
}


class _Stop(Exception):
    """The caller no longer wants this answer."""


def _explorer(cache: OrderedDict, key: str, combine: str | None):
    from .api import Explorer

    k = (key, combine)
    if k in cache:
        cache.move_to_end(k)
    else:
        cache[k] = Explorer(key.rsplit("@", 1)[0], combine=combine)
        while len(cache) > EXPLORERS_KEPT:
            cache.popitem(last=False)
    return cache[k]


def _serve(conn, nice: int, threads: int) -> None:
    """A worker process: answer questions from `conn` until it closes."""
    import torch

    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
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
        try:
            value = OPS[op](_explorer(explorers, key, combine), progress, *args)
            conn.send(("done", value))
        except _Stop:
            conn.send(("stopped",))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller
            log.exception("worker: %s failed", op)
            conn.send(("error", isinstance(e, TdaError), f"{type(e).__name__}: {e}"))


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
                return msg[1]
            if msg[0] == "error":
                raise TdaError(msg[2]) if msg[1] else RuntimeError(msg[2])
            raise RuntimeError(f"worker answered {msg[0]!r} unasked")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class WorkerPool:
    """`size` worker processes at niceness `nice` with `threads` torch threads each,
    started when first needed."""

    def __init__(self, size: int, nice: int = 0, threads: int = 1, name: str = "tda-worker"):
        if size < 1:
            raise TdaError(f"a worker pool needs at least one process, got {size}")
        self.size, self.nice, self.threads, self.name = size, nice, threads, name
        if "forkserver" in mp.get_all_start_methods():
            self._ctx = mp.get_context("forkserver")
            # the forkserver imports these once; every worker forked from it shares them
            self._ctx.set_forkserver_preload(["tda.api", "tda.attribution", "tda.candidate"])
        else:  # Windows: each worker imports them itself
            self._ctx = mp.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._closed = False

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._workers]

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise TdaError("the worker pool is closed")
            if self._idle.empty() and len(self._workers) < self.size:
                w = _Worker(self._ctx, self.nice, self.threads,
                            f"{self.name}-{len(self._workers)}")
                self._workers.append(w)
                return w
        return self._idle.get()

    def _give(self, w: _Worker, alive: bool) -> None:
        if alive:
            self._idle.put(w)
            return
        with self._lock:
            self._workers.remove(w)
        w.stop()

    def call(self, key: str, combine: str | None, op: str, *args,
             progress: Callable[..., None] | None = None) -> Any:
        """OPS[op](explorer of run `key` under rule `combine`, progress, *args) in a free
        worker process."""
        if op not in OPS:
            raise TdaError(f"unknown worker operation {op!r}")
        w = self._take()
        alive = True
        try:
            return w.call(key, combine, op, args, progress)
        except (EOFError, OSError) as e:
            alive = False
            raise TdaError(f"a worker process stopped while computing {op} "
                           f"(exit code {w.proc.exitcode})") from e
        finally:
            self._give(w, alive and w.proc.is_alive())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for w in workers:
            w.stop()


class InlinePool:
    """The same calls, run in the calling thread on `explorer_of(key, combine)`: for tests
    that replace a core function in this process, where a worker would not see it."""

    def __init__(self, explorer_of: Callable[[str, str | None], Any]):
        self._explorer_of = explorer_of

    def call(self, key: str, combine: str | None, op: str, *args,
             progress: Callable[..., None] | None = None) -> Any:
        if op not in OPS:
            raise TdaError(f"unknown worker operation {op!r}")
        return OPS[op](self._explorer_of(key, combine), progress, *args)

    def close(self) -> None:
        pass
