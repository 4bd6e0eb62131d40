"""The job manager (tda/jobs.py): shared jobs, a bounded pool and queue, cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from tda.jobs import CANCELLED, DONE, QUEUED, RUNNING, Busy, Cancelled, JobManager
from tests.conftest import until

WAIT = 10  # seconds any single event may take on a busy machine


def blocker(gate: threading.Event, calls: list | None = None, value=None):
    """A job that reports progress until `gate` is set (a progress call can cancel it)."""

    def fn(progress):
        if calls is not None:
            calls.append(1)
        k = 0
        while not gate.is_set():
            progress(k, 100)
            k += 1
            time.sleep(0.01)
        progress(100, 100)
        return value

    return fn


def test_two_sessions_asking_the_same_key_run_one_job():
    jobs = JobManager(workers=2, queue=4)
    calls, gate = [], threading.Event()
    results = []

    def session():
        with jobs.submit(("attribution", "run", 0), blocker(gate, calls, "scores")) as t:
            results.append(t.result())

    sessions = [threading.Thread(target=session) for _ in range(2)]
    for s in sessions:
        s.start()
    until(lambda: jobs.status(("attribution", "run", 0)).waiters == 2)
    gate.set()
    for s in sessions:
        s.join(WAIT)
    assert results == ["scores", "scores"] and len(calls) == 1 and jobs.started == 1
    # a third asker later gets the kept result at once, without a job
    with jobs.submit(("attribution", "run", 0), blocker(gate, calls)) as t:
        assert t.done and t.result() == "scores"
    assert len(calls) == 1 and jobs.result(("attribution", "run", 0)) == "scores"


def test_a_cancelled_job_frees_its_worker():
    jobs = JobManager(workers=1, queue=4, grace=0)
    never, gate = threading.Event(), threading.Event()
    first = jobs.submit("sweep", blocker(never))
    until(lambda: first.status().state == RUNNING and first.status().total == 100)
    second = jobs.submit("other", blocker(gate, value=2))
    assert second.status().state == QUEUED
    first.release()  # its only waiter leaves: the next progress report stops it
    until(lambda: second.status().state == RUNNING)
    assert first.status().state == CANCELLED and jobs.stats()["running"] == 1
    with pytest.raises(Cancelled):
        first.result()
    gate.set()
    assert second.result() == 2
    assert jobs.result("sweep") is None  # nothing kept of the cancelled job
    again = jobs.submit("sweep", blocker(gate, value=3))  # asked again: a fresh job
    assert again.result() == 3 and jobs.started == 3


def test_a_job_someone_still_waits_for_is_not_cancelled():
    jobs = JobManager(workers=1, queue=4, grace=0)
    gate = threading.Event()
    a, b = jobs.submit("k", blocker(gate, value=1)), jobs.submit("k", blocker(gate, value=9))
    until(lambda: a.status().total == 100)
    a.release()
    time.sleep(0.1)
    assert b.status().state == RUNNING
    gate.set()
    assert b.result() == 1


def test_a_rerunning_page_rejoins_within_the_grace():
    jobs = JobManager(workers=1, queue=4, grace=5)
    gate = threading.Event()
    calls = []
    first = jobs.submit("k", blocker(gate, calls, 7))
    until(lambda: first.status().total == 100)
    first.release()  # the page reruns ...
    time.sleep(0.1)
    second = jobs.submit("k", blocker(gate, calls, 8))  # ... and asks again at once
    gate.set()
    assert second.result() == 7 and len(calls) == 1


def test_the_queue_reports_positions_and_priority():
    jobs = JobManager(workers=1, queue=8)
    gate = threading.Event()
    running = jobs.submit("a", blocker(gate))
    until(lambda: running.status().state == RUNNING)
    b, c = jobs.submit("b", blocker(gate)), jobs.submit("c", blocker(gate))
    assert (b.status().position, c.status().position) == (1, 2)
    assert c.status().queued == 2 and c.status().running == 1
    urgent = jobs.submit("d", blocker(gate), priority=-1)  # e.g. a cheap, short job
    assert (urgent.status().position, b.status().position, c.status().position) == (1, 2, 3)
    b.release()  # a waiter leaves the queue: those behind move up
    assert c.status().position == 2
    gate.set()
    for t in (running, urgent, c):
        t.result()
        t.release()
    assert jobs.stats()["running"] == 0 and jobs.stats()["queued"] == 0


def test_a_full_queue_says_busy():
    jobs = JobManager(workers=1, queue=1)
    gate = threading.Event()
    first = jobs.submit("a", blocker(gate))
    until(lambda: first.status().state == RUNNING)
    jobs.submit("b", blocker(gate))
    with pytest.raises(Busy):
        jobs.submit("c", blocker(gate))
    jobs.submit("b", blocker(gate))  # joining a queued job takes no new place
    gate.set()


def test_a_queued_job_nobody_waits_for_leaves_the_queue():
    jobs = JobManager(workers=1, queue=4, grace=0.2)
    gate, calls = threading.Event(), []
    first = jobs.submit("a", blocker(gate))
    until(lambda: first.status().state == RUNNING)
    queued = jobs.submit("b", blocker(gate, calls))
    queued.release()
    until(lambda: queued.status().state == CANCELLED, timeout=5)
    gate.set()
    first.result()
    time.sleep(0.1)
    assert not calls  # never started


def test_a_failure_reaches_every_waiter_and_is_not_kept():
    jobs = JobManager(workers=1, queue=4)
    calls = []

    def broken(progress):
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        jobs.submit("k", broken).result()
    assert jobs.result("k") is None
    assert jobs.submit("k", lambda progress: 5).result() == 5 and len(calls) == 1


def test_finished_results_are_bounded():
    jobs = JobManager(workers=2, queue=4, keep=2)
    for k in range(3):
        assert jobs.submit(k, lambda progress, k=k: k * 10).result() == k * 10
    assert jobs.result(0) is None and jobs.result(2) == 20 and jobs.stats()["kept"] == 2
    assert jobs.status(2).state == DONE and jobs.status(0) is None


def test_progress_text_and_fraction_are_seen_by_waiters():
    jobs = JobManager(workers=1, queue=1)
    gate = threading.Event()

    def fn(progress):
        progress(3, 4, "chains")
        gate.wait(WAIT)
        return 1

    t = jobs.submit("k", fn)
    until(lambda: t.status().done == 3)
    s = t.status()
    assert (s.text, s.fraction, s.state) == ("chains", 0.75, RUNNING)
    gate.set()
    assert t.result() == 1


# -- the app's use of it (AppTest on the tiny run) ------------------------------------------


@pytest.fixture
def app_jobs(tiny_run_dir, tmp_path, monkeypatch):
    """The app on the tiny run with a fresh one-worker job manager; records what waiting
    pages were shown (their job's status)."""
    from ui import state

    monkeypatch.setenv("TDA_RUNS", str(tiny_run_dir.parent))
    monkeypatch.setenv("TDA_ASSETS", str(tmp_path / "no-assets"))
    jobs = JobManager(workers=1, queue=4)
    monkeypatch.setattr(state, "jobs", lambda: jobs)
    shown = []
    real = state._show
    monkeypatch.setattr(state, "_show", lambda box, s, text: (shown.append(s), real(box, s, text)))
    return jobs, shown


def open_page(page: str, seed: int):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import ROOT, TIMEOUT
    from ui.nav import BY_URL

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["seed"] = str(seed)
    at.run()
    at.switch_page(BY_URL[page].path).run()
    assert not at.exception, at.exception
    return at


def test_a_page_draws_its_unchanged_place_every_poll_so_leaving_it_lets_the_job_go(
    monkeypatch,
):
    """Streamlit stops the run of a page its visitor has left only when the page draws
    something: a page that drew only changes would hold its queued job for good."""
    from ui import state

    jobs = JobManager(workers=1, queue=4, grace=0.2)
    monkeypatch.setattr(state, "jobs", lambda: jobs)
    monkeypatch.setattr(state, "POLL_S", 0.05)
    gate, calls, drawn = threading.Event(), [], []
    first = jobs.submit("another visitor's sweep", blocker(gate))
    until(lambda: first.status().state == RUNNING)

    class Left(Exception):
        """What Streamlit raises at a draw once the visitor has gone."""

    def show(box, s, text):
        drawn.append(s)
        if len(drawn) == 3:
            raise Left

    def visit() -> None:
        try:
            state.run_job(("mine",), blocker(gate, calls), "mine")
        except Left as e:
            left.append(e)

    left: list = []
    monkeypatch.setattr(state, "_show", show)
    page = threading.Thread(target=visit, daemon=True)
    page.start()
    page.join(WAIT)
    assert left, "the page stopped drawing while its place stayed the same"
    assert [(s.state, s.position) for s in drawn] == [(QUEUED, 1)] * 3  # unchanged, drawn
    until(lambda: jobs.status(("mine",)) is None, timeout=5)  # nobody waits: cancelled
    gate.set()
    first.result()
    time.sleep(0.1)
    assert not calls  # never started


def test_the_attribution_page_waits_in_the_queue_then_shares_its_results(app_jobs):
    jobs, shown = app_jobs
    gate = threading.Event()
    other = jobs.submit("another visitor's sweep", lambda progress: gate.wait(WAIT))

    def release_when_the_page_waits() -> None:  # and the page has shown its place
        until(lambda: any(s.state == QUEUED for s in shown), timeout=60)
        gate.set()

    threading.Thread(target=release_when_the_page_waits, daemon=True).start()
    at = open_page("attribution", seed=21)  # waits for the worker, then computes
    assert any(s.state == QUEUED and s.position == 1 for s in shown)
    figures = [m.value for m in at.markdown if m.value.startswith("| Top-1 / phantom p99 |")]
    assert len(figures) == 1  # the attribution's figures are shown
    other.release()
    started = jobs.started  # the sweep, the candidate test and the jacobian scores
    assert started == 3
    again = open_page("attribution", seed=21)  # a second visitor: nothing computed again
    assert jobs.started == started
    assert [m.value for m in again.markdown if m.value.startswith("| Top-1 ")] == figures
