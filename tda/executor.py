"""Where independent pieces of work run: local processes (the default) or a Ray cluster.

A `Job` (`tda.pool`) is a module-level function, its arguments and the resources it
needs. An
executor runs jobs and hands each result to the caller *in this process* as it arrives
(`done(job, result)`, which may return follow-up jobs), so this process can stay the
only writer of a run directory. A job sends progress with `report(msg)`; the executor
relays it here as `on_report(key, msg)`. On an error or Ctrl-C, the jobs not finished
are cancelled and the error is raised; whatever `done` wrote stays.

Backends (`open_executor`):
- `local` (`LocalExecutor`): one worker runs jobs here, one after another; more
  workers run them in a `tda.pool.Pool` of that many processes (the app's pool).
- `ray` (`RayExecutor`): one Ray task per job (`num_cpus`, `num_gpus` from the job),
  retried when its worker or node is lost; torch's threads are set inside the task.
  `ray` is imported only here, and only when this backend is chosen.

`run_source` / `open_explorer` bring a run to where a job runs: the loaded Explorer
itself (local), the run's path (a cluster whose nodes share it), or its files sent
once through Ray's object store and unpacked into a cache folder on each node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import torch

from . import TdaError
from .pool import Job, Pool  # noqa: F401 - Job (tda.pool): the one notion of a job

BACKENDS = ("local", "ray")
MAX_RETRIES = 3  # Ray re-runs a job this often when its worker or node is lost
FAULT_DIR_ENV = "TDA_FAULT_DIR"  # tests: a job whose key has a file `<key>` there dies once
POLL_S = 0.2  # how often the driver looks at progress while it waits
INBOX_TIMEOUT_S = 10  # the driver skips a round of progress rather than wait longer

Done = Callable[["Job", Any], Iterable["Job"] | None]
OnReport = Callable[[Hashable, Any], None]


class JobError(TdaError):
    """A job failed (its own error, or its worker lost more often than retries allow)."""

    def __init__(self, key: Hashable, detail: str):
        super().__init__(f"job {key} failed: {detail}")
        self.key, self.detail = key, detail


class Executor:
    """Runs jobs; `remote`: jobs see neither this process's objects nor its files."""

    name = "base"
    remote = False
    shared_path = True  # jobs may read and write the run directory by its path
    _shared: dict | None = None  # share_once's handles

    def run(self, jobs: Iterable[Job], done: Done | None = None,
            on_report: OnReport | None = None) -> None:
        raise NotImplementedError

    def share(self, value: Any) -> Any:
        """A handle to `value` that jobs receive as an argument (sent once, not per job)."""
        return value

    def share_once(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """`share(make())`, made and sent once per `key` while this executor is open."""
        if self._shared is None:
            self._shared = {}
        if key not in self._shared:
            self._shared[key] = self.share(make())
        return self._shared[key]

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_executor(backend: str = "local", address: str | None = None, workers: int | None = None,
                  shared_path: bool = False) -> Executor:
    """The executor of a backend name: `local` (`workers` processes) or `ray` (`address`)."""
    if backend == "local":
        if address or shared_path:
            raise TdaError("--ray-address and --ray-shared-path need --backend ray")
        return LocalExecutor(workers)
    if backend == "ray":
        return RayExecutor(address, shared_path=shared_path)
    raise TdaError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


# --- local ---------------------------------------------------------------------------


class LocalExecutor(Executor):
    """Jobs here, in order (`workers` <= 1), or one spawned process per job, `workers` at once."""

    name = "local"

    def __init__(self, workers: int | None = 1):
        self.workers = max(1, workers or (os.cpu_count() or 1))

    def run(self, jobs, done=None, on_report=None) -> None:
        if self.workers == 1:
            self._run_here(deque(jobs), done, on_report)
        else:
            self._run_processes(deque(jobs), done, on_report)

    def _run_here(self, todo: deque, done, on_report) -> None:
        before = torch.get_num_threads()
        try:
            while todo:
                job = todo.popleft()
                if job.threads:
                    torch.set_num_threads(job.threads)
                report = _relay(job.key, on_report)
                todo.extend(_follow(done, job, job.fn(*job.args, report=report)))
        finally:
            torch.set_num_threads(before)  # leave the caller's setting as it was

    def _run_processes(self, todo: deque, done, on_report) -> None:
        """The jobs in a `tda.pool.Pool` of `workers` processes; results handled here as
        they arrive, in this thread, as are the jobs' reports."""
        with Pool(self.workers, name="tda-job") as pool:
            running: dict[Hashable, tuple[Job, Any, int]] = {}
            while todo or running:
                while todo and len(running) < self.workers:
                    job = todo.popleft()
                    running[job.key] = (job, pool.submit(job), 0)
                for key, (job, ticket, seen) in list(running.items()):
                    if on_report is not None and ticket.reports != seen:
                        running[key] = (job, ticket, ticket.reports)
                        on_report(key, ticket.status().report)
                    if not ticket.wait(0):
                        continue
                    del running[key]
                    try:
                        result = ticket.result()
                    except Exception as e:
                        raise JobError(key, str(e)) from e  # "ValueError: ..." from the worker
                    todo.extend(_follow(done, job, result))
                time.sleep(POLL_S)


def _relay(key: Hashable, on_report: OnReport | None) -> Callable[[Any], None]:
    if on_report is None:
        return lambda msg: None
    return lambda msg: on_report(key, msg)


def _follow(done: Done | None, job: Job, result: Any) -> list[Job]:
    return list(done(job, result) or ()) if done is not None else []


# --- ray -------------------------------------------------------------------------------


class RayExecutor(Executor):
    """One Ray task per job on a Ray cluster: `address`, else $RAY_ADDRESS, else a local
    Ray started here (`local_cpus`: its CPUs, default all) and shut down by `close`. An
    already initialised Ray is used as is.
    `shared_path`: the run directory is at the same path on every node (a shared file
    system), so jobs may read and write it there instead of sending bytes."""

    name = "ray"
    remote = True

    def __init__(self, address: str | None = None, shared_path: bool = False,
                 max_retries: int = MAX_RETRIES, local_cpus: int | None = None):
        try:
            import ray
        except ImportError as e:
            raise TdaError("--backend ray needs Ray: pip install -r requirements-dev.txt "
                           "(or pip install ray)") from e
        self.ray = ray
        self.shared_path = shared_path
        self.max_retries = max_retries
        self.owns_ray = False
        self._inbox = None
        self._task = None
        if not ray.is_initialized():
            self._connect(address or os.environ.get("RAY_ADDRESS"), local_cpus)

    def _connect(self, address: str | None, local_cpus: int | None) -> None:
        import logging

        ray = self.ray
        if address:  # send this package along, so nodes need only the Python packages
            pkg = str(Path(__file__).resolve().parent)
            try:
                ray.init(address=address, runtime_env={"py_modules": [pkg]},
                         logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise TdaError(f"cannot connect to the Ray cluster at {address!r}: {e}") from e
        else:  # a fresh local Ray for this call, never a stray one left on this machine
            ray.init(address="local", num_cpus=local_cpus, include_dashboard=False,
                     logging_level=logging.WARNING)
        self.owns_ray = True

    def close(self) -> None:
        self._shared = None  # runs sent to the cluster: freed with their refs
        if self._inbox is not None:
            try:
                self.ray.kill(self._inbox)
            except Exception:  # the cluster may be gone already
                pass
            self._inbox = None
        if self.owns_ray:
            self.ray.shutdown()
            self.owns_ray = False

    def share(self, value: Any) -> Any:
        return self.ray.put(value)

    def run(self, jobs, done=None, on_report=None) -> None:
        ray = self.ray
        if self._task is None:
            self._task = ray.remote(_ray_main)
        inbox = self._get_inbox() if on_report is not None else None
        token = os.urandom(8).hex()  # this call's reports; late ones of an earlier call are dropped
        pending: dict[Any, Job] = {}

        def submit(job: Job) -> None:
            if job.gpus and not ray.cluster_resources().get("GPU"):
                raise TdaError("the Ray cluster has no GPU: join GPU nodes (ray start "
                               "--num-gpus=G) or train with --device cpu")
            threads = job.threads or max(1, int(job.cpus))
            ref = self._task.options(
                num_cpus=job.cpus, num_gpus=job.gpus, max_retries=self.max_retries,
                retry_exceptions=False, name=f"tda {job.key}",
            ).remote(job.fn, job.key, threads, inbox, token, *job.args)
            pending[ref] = job

        def relay() -> None:
            try:
                messages = ray.get(inbox.take.remote(), timeout=INBOX_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return  # its node was lost: it restarts elsewhere; progress is all it held
            for tok, key, msg in messages:
                if tok == token:
                    on_report(key, msg)

        try:
            for job in jobs:
                submit(job)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
                if inbox is not None:
                    relay()
                for ref in ready:
                    job = pending.pop(ref)
                    for nxt in _follow(done, job, self._result(ref, job)):
                        submit(nxt)
            if inbox is not None:
                relay()
        finally:
            if pending:
                self._cancel(list(pending))

    def _cancel(self, refs: list) -> None:
        """Cancel the tasks not finished yet, queued or running (a running job gets
        KeyboardInterrupt). Not force=True: Ray 2.60's driver can abort on a forced
        cancel that races the task's own completion."""
        ray = self.ray
        try:
            _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            for ref in unfinished:
                ray.cancel(ref, force=False)
        except Exception:  # the cluster is gone: nothing left to cancel; keep the first error
            pass

    def _result(self, ref, job: Job) -> Any:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the job's own error: no retry helps
            cause = e.cause if isinstance(e.cause, BaseException) else e
            if isinstance(cause, TdaError):
                raise cause from None
            raise JobError(job.key, f"{type(cause).__name__}: {cause}") from e
        except ray.exceptions.RayError as e:  # lost worker or node, after max_retries
            raise JobError(job.key, f"{type(e).__name__} after {self.max_retries} retries: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from e

    def _get_inbox(self):
        """A small actor, on this node where it can be, that collects the jobs' progress
        messages. Losing it costs progress messages only: when its node is lost it restarts
        (elsewhere if need be) and calls made meanwhile wait for it, so no job fails."""
        if self._inbox is None:
            ray = self.ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            self._inbox = ray.remote(_Inbox).options(
                num_cpus=0, max_restarts=-1, max_task_retries=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
            ).remote()
        return self._inbox


class _Inbox:
    def __init__(self):
        self.messages: list = []

    def put(self, token: str, key: Hashable, msg: Any) -> None:
        self.messages.append((token, key, msg))

    def take(self) -> list:
        out, self.messages = self.messages, []
        return out


def _ray_main(fn, key, threads, inbox, token, *args):
    """A job inside a Ray task."""
    _die_once_if_asked(key)
    torch.set_num_threads(threads)
    if inbox is None:
        return fn(*args, report=lambda msg: None)
    return fn(*args, report=lambda msg: inbox.put.remote(token, key, msg))


def _die_once_if_asked(key: Hashable) -> None:
    """Tests: a worker lost mid-job. With $TDA_FAULT_DIR/<key> present, the first attempt
    takes the file away and kills its own worker process; Ray then retries the job."""
    folder = os.environ.get(FAULT_DIR_ENV)
    if not folder:
        return
    marker = Path(folder) / str(key)
    try:
        os.replace(marker, marker.with_name(marker.name + ".died"))
    except OSError:
        return  # no such marker (or another attempt took it)
    os._exit(1)


# --- runs where jobs run ---------------------------------------------------------------

_EXPLORERS: OrderedDict[tuple, Any] = OrderedDict()
MAX_OPEN_RUNS = 2  # loaded runs kept per worker process
RUN_CACHE = "tda-runs"  # folder in the node's temp dir holding runs sent to it


def run_source(explorer, executor: Executor) -> Any:
    """What a job needs to open `explorer`'s run where it runs (see `open_explorer`)."""
    if not executor.remote:
        return explorer
    path = Path(explorer.run.path).resolve()
    if executor.shared_path:
        return str(path)
    from .ensemble import MANIFEST

    manifest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    return executor.share_once(("run", str(path), manifest), lambda: run_files(path))


def run_files(run_dir: str | Path) -> dict[str, bytes]:
    """The files of a run that sampling reads: manifest, codes, data, scheduler, members."""
    from .ensemble import CODES, MANIFEST, MEMBERS_DIR, SCHEDULER_DIR, TRAIN, read_manifest

    run_dir = Path(run_dir)
    listed = read_manifest(run_dir)["files"]
    files = {MANIFEST: (run_dir / MANIFEST).read_bytes()}
    for rel, digest in listed.items():
        if not (rel in (CODES, TRAIN) or rel.startswith((f"{SCHEDULER_DIR}/", f"{MEMBERS_DIR}/"))):
            continue  # not read by sampling (index, base/, report/, ...)
        files[rel] = (run_dir / rel).read_bytes()
        if hashlib.sha256(files[rel]).hexdigest() != digest:
            raise TdaError(f"run {run_dir}: file {rel} changed since the run was written "
                           f"(its sha256 differs from {MANIFEST}); restore or retrain it")
    return files


def open_explorer(source: Any, device: str, combine: str, chunk: int):
    """An Explorer from `run_source`'s answer, kept open for the next job of this process."""
    from .api import Explorer

    if isinstance(source, Explorer):
        return source.with_combine(combine)
    path = Path(source) if isinstance(source, str) else _unpack(source)
    key = (str(path), device, combine, chunk)
    if key not in _EXPLORERS:
        from .ensemble import load_run

        run = load_run(path, device=device, verify=isinstance(source, str))
        _EXPLORERS[key] = Explorer(run, device=device, chunk=chunk, combine=combine)
        while len(_EXPLORERS) > MAX_OPEN_RUNS:
            _EXPLORERS.popitem(last=False)
    _EXPLORERS.move_to_end(key)
    return _EXPLORERS[key]


def _unpack(files: dict[str, bytes]) -> Path:
    """Write a run's files once per node into a folder named by their content."""
    from .ensemble import MANIFEST

    digest = hashlib.sha256(files[MANIFEST]).hexdigest()[:24]
    dest = Path(tempfile.gettempdir()) / RUN_CACHE / digest
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{digest}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    try:
        os.rename(tmp, dest)  # atomic; another worker of this node may have won
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
