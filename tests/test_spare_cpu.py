"""tda.spare_cpu: processes stopped while the rest of the machine keeps its cores busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tda.spare_cpu import SpareCpu, proc_stat
from tests.conftest import until

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")

SPIN = "while True: pass"
IDLE = "import time\nwhile True: time.sleep(0.01)"


def _state(pid: int) -> str:
    """R, S, T (stopped), Z ...; "gone" once the process has been reaped."""
    f = proc_stat(pid)
    return "gone" if f is None else f[0]


@pytest.fixture
def spawn():
    procs = []

    def start(code: str) -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_watched_process_waits_while_others_fill_the_cores_and_goes_on_after(spawn):
    watched = spawn(IDLE)
    spare = SpareCpu(lambda: [watched.pid], longest=60)
    try:
        burners = [spawn(SPIN) for _ in range(os.cpu_count() or 1)]
        until(lambda: _state(watched.pid) == "T", message="not stopped on a full machine")
        assert spare.stopped and spare.stops >= 1
        for b in burners:
            b.kill()
            b.wait()
        until(lambda: _state(watched.pid) != "T", message="not let go on a quiet machine")
    finally:
        spare.close()


def test_it_never_waits_longer_than_longest_and_close_lets_everything_go(spawn):
    watched = spawn(IDLE)
    spare = SpareCpu(lambda: [watched.pid], longest=1.0, grace=1.0)
    try:
        for _ in range(os.cpu_count() or 1):
            spawn(SPIN)
        until(lambda: _state(watched.pid) == "T")
        until(lambda: _state(watched.pid) != "T", 5, "starved")
        until(lambda: spare.stops >= 2)  # stopped again after its grace
    finally:
        spare.close()
    assert _state(watched.pid) != "T" and not spare.stopped  # the burners go with `spawn`


def test_a_pool_on_spare_cpu_answers_and_closes_with_its_workers_stopped(tiny_run_dir):
    from tda.workers import WorkerPool

    pool = WorkerPool(1, nice=3, name="tda-test-spare", spare_cpu_s=30)
    key = f"{tiny_run_dir}@0"
    y, _, _ = pool.call(key, None, "sample", 5)
    assert y.shape[0] >= 1
    (pid,) = pool.pids
    os.kill(pid, signal.SIGSTOP)  # as a full machine would
    t = time.monotonic()
    pool.close()
    assert time.monotonic() - t < 4  # not the 5 s a stopped process takes to be killed
    until(lambda: _state(pid) in ("gone", "Z"))


def test_new_processes_start_on_spare_cpu(spawn):
    spare = SpareCpu(lambda: [], longest=60)
    try:
        assert spare.wait_spare()  # a quiet machine: at once
        burners = [spawn(SPIN) for _ in range(os.cpu_count() or 1)]
        until(lambda: not spare._has_spare.is_set())
        waited = []
        t = threading.Thread(target=lambda: waited.append(spare.wait_spare()))
        t.start()
        time.sleep(0.5)
        assert not waited  # still waiting on a full machine
        for b in burners:
            b.kill()
            b.wait()
        t.join(10)
        assert waited == [True]
    finally:
        spare.close()


SERVER = """
import sys, time
from tda.workers import WorkerPool
if __name__ == "__main__":
    pool = WorkerPool(1, nice=3, spare_cpu_s=30)
    print(pool.call(sys.argv[1] + "@0", None, "niceness")[1], flush=True)
    time.sleep(600)
"""


def test_a_killed_server_leaves_no_stopped_worker_behind(tiny_run_dir, tmp_path):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    root = Path(__file__).resolve().parent.parent
    server = subprocess.Popen([sys.executable, str(script), str(tiny_run_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        pid = int(server.stdout.readline())
        os.kill(pid, signal.SIGSTOP)  # a worker waiting for spare CPU
        until(lambda: _state(pid) == "T")
    finally:
        server.kill()
        server.wait()
    until(lambda: _state(pid) in ("gone", "Z"), 15, "a stopped worker outlived its server")
