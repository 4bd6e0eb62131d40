"""The app's compute layer: two `tda.pool` pools of worker processes, shared by every
session of the server (`st.cache_resource`).

- "cheap": one process for a page's own short chains (a sample with its trajectory,
  one counterfactual), so they never wait behind a sweep; its jobs take about a second,
  so its queue is `CHEAP_QUEUE_TIMES` longer;
- "long": `Limits.jobs` processes (at most the cores) for sweeps, member samples,
  verification, the candidate test and live evaluation, with `Limits.queue` places in
  its queue.
Each keeps its last `RESULTS_KEPT` results for everyone.
Both run one job per key whoever asks (a second session joins the first), at
niceness `Limits.nice` with `Limits.threads` torch threads, so serving pages goes
first. A waiting page shows its place in the queue or the job's progress; a job
nobody waits for any more is cancelled (`tda.pool`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import streamlit as st

from tda.limits import limits
from tda.pool import QUEUED, Busy, Job, Pool, Status

POLL_S = 0.5  # a waiting page redraws its place or progress this often
CHEAP_QUEUE_TIMES = 4  # the cheap lane's queue holds this many times `Limits.queue`
RESULTS_KEPT = 256  # finished results kept for everyone, per lane (least recently used go)
PRELOAD = ("tda.app_jobs", "tda.attribution", "tda.candidate")  # imported once, shared
BUSY = ("The server is busy: every worker is taken and the queue is full. Try again in a "
        "minute; results others computed meanwhile will be ready at once.")


@dataclass(frozen=True)
class Pools:
    cheap: Pool
    long: Pool


@st.cache_resource(show_spinner=False)
def pools() -> Pools:
    lim = limits()
    kw = dict(queue=lim.queue, nice=min(lim.nice, 19), threads=lim.threads, preload=PRELOAD,
              eager=True)  # workers start with the server's first page, not a visitor's job
    jobs = max(1, min(lim.jobs, os.cpu_count() or 1))
    cheap = kw | {"queue": CHEAP_QUEUE_TIMES * lim.queue}  # a second each: a longer line
    return Pools(Pool(1, keep=RESULTS_KEPT, name="tda-cheap", **cheap),
                 Pool(jobs, keep=RESULTS_KEPT, name="tda-long", **kw))


def _submit(pool: Pool, job: Job):
    try:
        return pool.submit(job)
    except Busy:
        st.warning(BUSY, icon=":material/hourglass_disabled:")
        st.stop()


def cheap(key: tuple, fn, *args, text: str = "Computing ...") -> Any:
    """fn(*args) in the cheap lane: a page's own short chain, never behind a sweep."""
    return _wait(pools().cheap, Job(key, fn, args), text)


def long(key: tuple, fn, *args, text: str) -> Any:
    """fn(*args) in the long lane: sweeps and other long jobs."""
    return _wait(pools().long, Job(key, fn, args), text)


def _wait(pool: Pool, job: Job, text: str) -> Any:
    """A known or joined result, or a new job. While it waits the page shows its place in
    the queue or its progress, redrawn every `POLL_S`; each draw is where Streamlit stops
    the run of a page its visitor left, which releases the ticket."""
    with _submit(pool, job) as ticket:
        if not ticket.wait(0.05):
            box = st.empty()
            while not ticket.wait(POLL_S):
                show(box, ticket.status(), text)
            box.empty()
        return ticket.result()


def kept(key: tuple, default: Any = None) -> Any:
    """The long lane's kept result of `key` (computed before, by anyone), else `default`."""
    return pools().long.result(key, default)


def show(box, s: Status, text: str) -> None:
    """A waiting page's view of its job: place in the queue, or progress."""
    if s.state == QUEUED:
        box.info(
            f"**Queued: place {s.place} of {s.queued}** ({s.running} computation(s) "
            "running). It starts by itself; anyone who asks the same gets the same result.",
            icon=":material/hourglass_top:",
        )
        return
    if s.report is None:  # started, nothing to count yet
        box.info(f"**Running:** {text}", icon=":material/hourglass_top:")
        return
    done, total, what = s.report
    fraction = min(1.0, done / total) if total else 0.0
    count = f" {done:.0f}/{total:.0f}" if total else ""
    box.progress(fraction, text=f"{what or text}{count}")
