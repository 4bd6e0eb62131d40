"""Imported first by the worker processes' forkserver (`tda.workers`), before torch: it,
and every process it forks, runs at niceness 19 in a scheduling group of its own, and
it ends with the server, taking its workers along.

Niceness: the forkserver starts when a page first needs a chain, which on a shared
server is when visitors are opening pages; its imports (torch, diffusers, tda) took 26 s
of a 2-core machine at normal priority while 20 browsers drew Home beside it. It only
imports and forks, never computes for a visitor, so it always yields.

Ending: multiprocessing's forkserver ends once the server and every worker have closed
their end of its "alive" pipe; a worker ends when the server's end of its own pipe
closes. A worker stopped for spare CPU (`tda.spare_cpu`, SIGSTOP) sees neither, so a
killed server would leave it, and the forkserver, behind for good. So a thread here
watches the server and, once it is gone, kills this forkserver's children and ends it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

from .spare_cpu import proc_stat
from .workers import yield_cpu

NICE = 19
WATCH_S = 1.0


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (proc_stat(e.name) or ["", ""])[1] == str(pid)]


def _end_with(server: int) -> None:
    while os.getppid() == server:
        time.sleep(WATCH_S)
    for child in children(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    os._exit(0)


yield_cpu(NICE)
if Path("/proc/self/stat").exists():
    threading.Thread(target=_end_with, args=(os.getppid(),), name="tda-end-with-server",
                     daemon=True).start()
