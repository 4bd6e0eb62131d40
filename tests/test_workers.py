"""Worker processes (tda.workers) against the same computations in this process."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch

from tda import TdaError
from tda.jobs import Cancelled
from tda.workers import InlinePool, WorkerPool
from tests.conftest import until


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(1, nice=3, name="tda-test")
    yield p
    p.close()


@pytest.fixture
def key(tiny_run_dir) -> str:
    return f"{tiny_run_dir}@0"


def test_answers_equal_the_explorer_here(pool, key, tiny_explorer):
    torch.set_num_threads(1)  # as the worker: the same summation order
    y, traj, loglik = pool.call(key, None, "sample", 5)
    here = tiny_explorer.sample(5)
    assert np.allclose(y, here.sample.numpy(), atol=1e-6)
    assert np.allclose(traj, here.trajectory.numpy(), atol=1e-6)
    assert (loglik is None) == (here.mixture_loglik is None)
    eye = torch.eye(tiny_explorer.n)
    assert np.allclose(pool.call(key, None, "y", eye, 5), tiny_explorer.y(eye, 5).numpy(),
                       atol=1e-6)
    theirs = pool.call(key, None, "attribution", 5, "jacobian")
    from tda.attribution import attribute

    ours = attribute(tiny_explorer, 5, "jacobian")
    assert np.allclose(theirs.scores, ours.scores, atol=1e-5)
    assert np.array_equal(theirs.order[:3], ours.order[:3])
    inline = InlinePool(lambda k, c: tiny_explorer)
    assert np.allclose(inline.call(key, None, "sample", 5)[0], y, atol=1e-6)
    # timed: the same answer and the seconds the chain took in its process
    for p in (pool, inline):
        (again, _, _), seconds = p.timed(key, None, "sample", 5)
        assert np.array_equal(again, y) and 0 < seconds < 60


def test_progress_is_relayed_and_a_stopped_call_frees_its_worker(pool, key, tiny_explorer):
    seen = []
    pool.call(key, None, "y", torch.eye(tiny_explorer.n), 6,
              progress=lambda done, total, text=None: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))

    def nobody_waits(done, total, text=None):
        raise Cancelled("nobody waits")

    pid = pool.pids[0]
    with pytest.raises(Cancelled):
        pool.call(key, None, "attribution", 7, "exact", progress=nobody_waits)
    assert pool.pids == [pid]  # the same process, stopped at its next report, is free again
    assert pool.call(key, None, "niceness")[1] == pid


def _autogroup(pid) -> list[str]:
    """The words of /proc/PID/autogroup ("/autogroup-7 nice 3"); none where the kernel has
    no autogroups, or keeps this process in a cgroup of its own (a container: empty file)."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return f.read().split()
    except OSError:
        return []


def test_a_failure_comes_back_and_a_dead_worker_is_replaced(pool, key):
    with pytest.raises(TdaError, match="seed must be between"):
        pool.call(key, None, "sample", -1)
    with pytest.raises(TdaError, match="unknown worker operation"):
        pool.call(key, None, "shell")
    nice, pid = pool.call(key, None, "niceness")
    assert nice >= 3 and pid != os.getpid()
    theirs, mine = _autogroup(pid), _autogroup("self")
    if theirs and mine:  # a scheduling group of its own, as nice as the process
        assert theirs[0] != mine[0] and theirs[-1] == str(nice)

    def kill_it(done, total, text=None):
        os.kill(pid, signal.SIGKILL)

    with pytest.raises(TdaError, match="worker process stopped"):
        pool.call(key, None, "attribution", 8, "exact", progress=kill_it)
    _, again = pool.call(key, None, "niceness")
    assert again != pid and pool.pids == [again]


def test_callers_wait_for_a_free_worker(pool, key):
    pids, errors = [], []

    def ask():
        try:
            pids.append(pool.call(key, None, "niceness")[1])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(pids) == 6 and len(set(pids)) == 1  # one process, in turn


def _held_job(pool, key, release: threading.Event, out: list):
    """A job call that holds its process until `release` (its caller waits in progress)."""
    def progress(done, total, text=None):
        release.wait(60)

    def run():
        out.append(pool.call(key, None, "y", torch.eye(6)[:1], 9, lane="job",
                             progress=progress))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_jobs_leave_a_process_to_pages_and_pages_go_first(key):
    two = WorkerPool(2, name="tda-test-lanes")
    release, held, order = threading.Event(), [], []
    try:
        first = _held_job(two, key, release, held)
        until(lambda: two._busy["job"] == 1, 60)
        second = threading.Thread(target=lambda: order.append(
            ("job", two.call(key, None, "niceness", lane="job"))))
        second.start()
        until(lambda: two._waiting["job"] == 1, 60)
        # a page is served at once by the process the jobs must leave free ...
        order.append(("page", two.call(key, None, "niceness", lane="page")))
        assert second.is_alive() and [o[0] for o in order] == ["page"]  # ... the job waits
        release.set()
        first.join(60)
        second.join(60)
        assert held and [o[0] for o in order] == ["page", "job"]
    finally:
        release.set()
        two.close()

    one = WorkerPool(1, name="tda-test-order")
    release, held, order = threading.Event(), [], []
    try:
        first = _held_job(one, key, release, held)
        until(lambda: one._busy["job"] == 1, 60)
        waiting = [threading.Thread(target=lambda lane=lane: order.append(
            (lane, one.call(key, None, "niceness", lane=lane)))) for lane in ("job", "page")]
        waiting[0].start()
        until(lambda: one._waiting["job"] == 1, 60)
        waiting[1].start()
        until(lambda: one._waiting["page"] == 1, 60)
        release.set()  # the job asked first, but the page goes first
        for t in (first, *waiting):
            t.join(60)
        assert [o[0] for o in order] == ["page", "job"]
    finally:
        release.set()
        one.close()


def test_a_worker_loads_a_run_once_for_both_rules(key):
    from collections import OrderedDict

    from tda.workers import _explorer

    cache: OrderedDict = OrderedDict()
    mean, mixture = _explorer(cache, key, "mean"), _explorer(cache, key, "mixture")
    assert mean.run is mixture.run and (mean.combine, mixture.combine) == ("mean", "mixture")
    assert _explorer(cache, key, "mean") is mean
