"""The worker pool (tda.pool): one job per key, a bounded queue, cancellation, a dead
worker replaced, and the app's jobs (tda.app_jobs) equal to the same work here.

Timeouts are generous: the suite must pass while other work keeps the cores busy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tda import TdaError, app_jobs
from tda.pool import CANCELLED, DONE, QUEUED, RUNNING, Busy, Cancelled, Job, Pool
from tests.conftest import until

WAIT = 120  # seconds a test waits for a worker process at most (a busy machine)


# -- jobs (module-level: a worker process imports them by name) ---------------------------


def wait_for(path: str, report=None) -> int:
    """Report until the file `path` exists, then answer this process's id."""
    while not Path(path).exists():
        report((0, 1, "waiting"))
        time.sleep(0.02)
    return os.getpid()


def count(path: str, report=None) -> int:
    """Append a line to `path` (how often the job ran), then answer its pid."""
    with open(path, "a") as f:
        f.write("ran\n")
    return os.getpid()


def niceness(report=None) -> tuple[int, int]:
    return os.nice(0), torch.get_num_threads()


def fail(report=None):
    raise TdaError("no such thing")


def die(report=None):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def pool():
    p = Pool(1, queue=2, nice=3, grace=0.2, name="tda-test")
    yield p
    p.close()


def test_two_sessions_asking_the_same_key_run_one_job(pool, tmp_path):
    gate, log = tmp_path / "gate", tmp_path / "log"
    first = pool.submit(Job("k", wait_for, (str(gate),)))
    second = pool.submit(Job("k", wait_for, (str(gate),)))  # another session, same key
    until(lambda: first.status().state == RUNNING, WAIT)
    gate.touch()
    assert first.result() == second.result()
    assert pool.started == 1
    with first, second:
        pass
    pool.submit(Job("c", count, (str(log),))).result()
    assert log.read_text() == "ran\n"


def test_a_full_queue_refuses_with_a_message_and_places_are_shown(pool, tmp_path):
    gate = tmp_path / "gate"
    running = pool.submit(Job("run", wait_for, (str(gate),)))
    until(lambda: running.status().state == RUNNING, WAIT)
    a = pool.submit(Job("a", count, (str(tmp_path / "a"),)))
    b = pool.submit(Job("b", count, (str(tmp_path / "b"),)))
    assert (a.status().state, a.status().place, b.status().place) == (QUEUED, 1, 2)
    assert b.status().queued == 2 and b.status().running == 1
    with pytest.raises(Busy, match="2 computations are already waiting"):
        pool.submit(Job("c", count, (str(tmp_path / "c"),)))
    assert pool.submit(Job("a", count, ())).status().place == 1  # joining is never refused
    gate.touch()
    for t in (running, a, b):
        t.result()


def test_a_cancelled_job_frees_its_worker(pool, tmp_path):
    never = pool.submit(Job("never", wait_for, (str(tmp_path / "never"),)))
    until(lambda: never.status().report is not None, WAIT)  # it runs and reports
    queued = pool.submit(Job("queued", count, (str(tmp_path / "q"),)))
    queued.release()  # nobody waits for the queued one ...
    never.release()  # ... nor for the running one: stopped at its next report
    until(never.wait, WAIT)
    with pytest.raises(Cancelled):
        never.result()
    assert pool.submit(Job("after", count, (str(tmp_path / "log"),))).result() > 0  # free
    assert queued.status().state == CANCELLED
    assert not (tmp_path / "q").exists()
    assert pool.processes == 1  # stopped by its report, not killed


def test_a_job_someone_still_waits_for_is_not_cancelled(pool, tmp_path):
    gate = tmp_path / "gate"
    first = pool.submit(Job("k", wait_for, (str(gate),)))
    with pool.submit(Job("k", wait_for, (str(gate),))):
        pass  # one of two sessions leaves
    time.sleep(0.5)
    gate.touch()
    assert first.result() > 0 and first.status().state == DONE


def test_a_killed_worker_is_replaced_and_its_question_refused_with_a_message(pool, tmp_path):
    gate = tmp_path / "gate"
    t = pool.submit(Job("k", wait_for, (str(gate),)))
    until(lambda: t.status().report is not None, WAIT)
    os.kill(_worker_pid(pool), signal.SIGKILL)
    with pytest.raises(TdaError, match="worker process computing k stopped.*ask again"):
        assert t.wait(WAIT)
        t.result()
    gate.touch()
    assert pool.submit(Job("k", wait_for, (str(gate),))).result() > 0  # asked again: answered
    with pytest.raises(TdaError, match="stopped"):
        pool.submit(Job("die", die)).result()
    with pytest.raises(TdaError, match="no such thing"):
        pool.submit(Job("fail", fail)).result()
    assert pool.submit(Job("nice", niceness)).result() == (3, 1)
    assert pool.processes == 3


def _worker_pid(pool: Pool) -> int:
    import multiprocessing as mp

    (child,) = [c for c in mp.active_children() if c.name.startswith("tda-test-")]
    return child.pid


def test_kept_results_are_bounded_and_failures_not_kept(tmp_path):
    with Pool(1, keep=2) as p:
        for k in "abc":
            p.submit(Job(k, count, (str(tmp_path / k),))).result()
        assert p.result("a") is None and p.result("c") is not None
        with pytest.raises(TdaError):
            p.submit(Job("f", fail)).result()
        assert p.result("f") is None and p.stats()["kept"] == 2


def test_the_app_jobs_equal_the_explorer_here(tiny_run_dir, tiny_explorer):
    torch.set_num_threads(1)  # as the worker: the same summation order
    key = f"{tiny_run_dir}@0"
    seen = []
    with Pool(1) as p:
        y, traj, loglik, seconds = p.submit(Job(1, app_jobs.sample, (key, None, 5))).result()
        here = tiny_explorer.sample(5)
        assert np.allclose(y, here.sample.numpy(), atol=1e-6) and 0 < seconds < WAIT
        assert np.allclose(traj, here.trajectory.numpy(), atol=1e-6)
        assert (loglik is None) == (here.mixture_loglik is None)
        eye = torch.eye(tiny_explorer.n)
        t = p.submit(Job(2, app_jobs.y, (key, None, eye, 5)))
        while not t.wait(0.01):
            seen.append(t.status().report)
        assert np.allclose(t.result()[0], tiny_explorer.y(eye, 5).numpy(), atol=1e-6)
        theirs = p.submit(Job(3, app_jobs.attribution, (key, None, 5, "jacobian"))).result()
    from tda.attribution import attribute

    ours = attribute(tiny_explorer, 5, "jacobian")
    assert np.allclose(theirs.scores, ours.scores, atol=1e-5)
    assert np.array_equal(theirs.order[:3], ours.order[:3])


def test_closing_stops_every_worker(tmp_path):
    import multiprocessing as mp

    p = Pool(2, name="tda-close")
    busy = p.submit(Job("k", wait_for, (str(tmp_path / "never"),)))
    until(lambda: busy.status().state == RUNNING, WAIT)
    p.close()
    assert not [c for c in mp.active_children() if c.name.startswith("tda-close")]
    with pytest.raises(Cancelled):
        busy.result()
