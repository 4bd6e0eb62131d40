"""What a shared server keeps from its visitors: server paths, and more work than it can run.

`public_message` turns an error into text a visitor may read (the full text goes to
the server log). `Gate` lets at most `Limits.jobs` expensive computations run at once
and at most `Limits.queue` wait; a waiting page shows its place in the queue and can
still be stopped or rerun by its visitor.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

log = logging.getLogger("tda.app")

# an absolute POSIX or Windows path, or a home-relative one (at least one separator)
_PATH = re.compile(r"(?:(?<![\w.:/-])(?:~|[A-Za-z]:)?[/\\](?:[\w.@+-]+[/\\])*[\w.@+-]+)")


def public_message(error: BaseException | str, names: Mapping[str, str] | None = None) -> str:
    """`error` with each server path in `names` replaced by its public name (a run's label)
    and any other absolute path replaced by "…"; the original is logged."""
    text = str(error)
    log.warning("shown to a visitor as a scrubbed message: %s", text)
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return _PATH.sub("…", text)


class Busy(RuntimeError):
    """The queue of expensive computations is full."""


class Gate:
    """A bounded pool of slots for expensive work, with a bounded queue in front of it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.running = 0
        self.waiting = 0

    @contextmanager
    def slot(
        self, jobs: int, queue: int, wait: Callable[[int], None] | None = None
    ) -> Iterator[None]:
        """Hold one of `jobs` slots while the block runs; raise Busy if `queue` already wait.

        `wait(ahead)` is called about twice a second while waiting (a page shows the
        queue there, and Streamlit can stop the run at that call).
        """
        with self._cond:
            if self.running >= jobs and self.waiting >= queue:
                raise Busy(f"{self.waiting} computations are already waiting")
            self.waiting += 1
        try:
            while True:
                with self._cond:
                    if self.running < jobs:
                        self.running += 1
                        break
                    ahead = self.waiting
                if wait is not None:
                    wait(ahead)
                with self._cond:
                    self._cond.wait(timeout=0.5)
        finally:
            with self._cond:
                self.waiting -= 1
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self._cond.notify_all()
