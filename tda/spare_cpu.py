"""Worker processes that compute on CPU nobody else on the machine wants.

Niceness is not enough on a small shared server. Linux shares the CPU between
scheduling groups first (autogroup), so even at niceness 19 in a group of their own the
worker processes kept 5-15% of a 2-core machine whose browsers wanted all of it, and
that cost more than its share: with 20 browsers on the server's two cores (the load
test), a class's featured Home finished at 40 s with ten own seeds' chains running and
at 27 s with the same workers stopped by hand (benchmarks/README.md, "Chains on spare
CPU").
Linux's own SCHED_IDLE does not cross scheduling groups.

`SpareCpu(pids)` watches the machine four times a second: while the other processes
(the server serving pages, browsers, anything else) keep all but `spare` of its cores
busy, it stops the processes `pids()` names (SIGSTOP) and lets them go on (SIGCONT)
once CPU has been left over for `calm` seconds (browsers drawing pages pause for the
network now and then, and going on at each such pause let the chains back in: featured
Home 9.5-12.4 s over the floor, +3.5 s with the pause). A chain then finishes later,
never wrongly: nothing it holds is shared with the processes it waits for. At most
`longest` seconds in a row, then they run for `grace` seconds whatever the load, so a
machine that is busy for good slows chains down but never starves them. `wait_spare()`
holds back work that cannot be stopped once begun (starting the processes, whose
forkserver imports torch) until CPU is left over, for at most `longest` seconds.
`close()` lets every process go on. Where /proc/stat cannot be read (not Linux) it
does nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

TICK_S = 0.25  # how often the machine is looked at
WINDOW = 2  # ticks a decision averages over (0.5 s)


def _busy_ticks() -> tuple[int, int] | None:
    """(clock ticks every core spent busy, the number of cores) from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    head = lines[0].split()
    if head[0] != "cpu":
        return None
    v = [int(x) for x in head[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle, iowait
    busy = sum(v[:8]) - idle  # user nice system idle iowait irq softirq steal
    cores = sum(1 for line in lines[1:] if line.startswith("cpu") and line[3:4].isdigit())
    return busy, max(1, cores)


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...; utime is
    [11]); None where the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _process_ticks(pid: int) -> int:
    """Clock ticks process `pid` (all its threads) has run; 0 where it is gone."""
    f = proc_stat(pid)
    return 0 if f is None else int(f[11]) + int(f[12])  # utime, stime


class SpareCpu:
    """Stops the processes `pids()` once the rest of the machine keeps all but `spare`
    cores busy, until it has left CPU over for `calm` seconds, for at most `longest`
    seconds in a row (then `grace` seconds of running)."""

    def __init__(self, pids: Callable[[], list[int]], spare: float = 0.5,
                 longest: float = 60.0, grace: float = 2.0, calm: float = 2.0):
        self._pids, self.spare, self.longest, self.grace = pids, spare, longest, grace
        self.calm = calm
        self._stopped: set[int] = set()
        self._since: float | None = None  # when the current stop began
        self._calm_since: float | None = None  # since when CPU has been left over
        self._free_until = 0.0
        self._closed = threading.Event()
        self._has_spare = threading.Event()  # set while the machine has CPU to spare (from
        # the first look on: a pool starts its forkserver on a busy machine's first chain)
        self._lock = threading.Lock()
        self.stops = 0  # how many times the processes were stopped (for checks)
        self._thread: threading.Thread | None = None
        if _busy_ticks() is not None:
            self._thread = threading.Thread(target=self._watch, name="tda-spare-cpu",
                                            daemon=True)
            self._thread.start()
        else:
            self._has_spare.set()

    @property
    def stopped(self) -> bool:
        with self._lock:
            return bool(self._stopped)

    def _watch(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        history: list[tuple[float, int, int]] = []  # (time, machine busy, ours)
        while not self._closed.wait(TICK_S):
            machine = _busy_ticks()
            if machine is None:
                break
            pids = self._pids()
            ours = sum(_process_ticks(p) for p in pids)
            now = time.monotonic()
            history = [*history[-WINDOW:], (now, machine[0], ours)]
            if len(history) <= WINDOW:
                continue
            t0, busy0, ours0 = history[0]
            # ours can fall (a process ended and took its ticks along): count none then
            others = (machine[0] - busy0 - max(0, ours - ours0)) / hz / (now - t0)
            self._decide(others >= machine[1] - self.spare, pids, now)
        self._has_spare.set()
        self._go_on()

    def wait_spare(self) -> bool:
        """Wait (at most `longest` seconds) until the machine has CPU to spare: for work
        that cannot be stopped once it starts. False if the wait ran out."""
        return self._has_spare.wait(self.longest)

    def _decide(self, crowded: bool, pids: list[int], now: float) -> None:
        if crowded:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        calm = self._calm_since is not None and now - self._calm_since >= self.calm
        if self._since is None:  # running
            if crowded and now >= self._free_until:
                self._since = now
                self.stops += 1
                self._has_spare.clear()
                self._stop(pids)
            elif not crowded:
                self._has_spare.set()
            return
        if calm or now - self._since >= self.longest:  # CPU left over, or waited enough
            if not calm:
                self._free_until = now + self.grace
            self._since = None
            self._has_spare.set()
            self._go_on()
        else:
            self._stop(pids)  # and any process started meanwhile

    def _stop(self, pids: list[int]) -> None:
        """SIGSTOP each of `pids` not stopped yet; forget those no longer named."""
        with self._lock:
            for pid in pids:
                if pid not in self._stopped:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGSTOP)
                        self._stopped.add(pid)
            self._stopped &= set(pids)

    def _go_on(self) -> None:
        with self._lock:
            for pid in self._stopped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            self._stopped.clear()

    def close(self) -> None:
        """Stop watching; every process goes on."""
        self._closed.set()
        self._has_spare.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._go_on()
