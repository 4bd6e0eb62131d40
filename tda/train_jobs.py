"""Training as executor jobs: each model (the base, every member) of a run in training.

`train_in_place`: one job per model that reads and writes the run directory by its
path (local processes, or a Ray cluster whose nodes share the path); the base model
trains here, or in one job of a remote executor. `train_by_bytes`: chains of tasks of
`checkpoint_every` steps per model; each task starts from the checkpoint bytes this
process sends it and sends back the next checkpoint or the finished model's files,
which this process writes into the run directory, atomically, as they arrive. A lost
task is re-run from the checkpoint it was given, so the result does not change; an
interrupt keeps every checkpoint already written, and the same call resumes from them.
Every job sends (step, loss) every REPORT_EVERY steps to one progress bar per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from . import TdaError
from . import fit as tr
from .config import RunConfig
from .ensemble import member_dir
from .executor import Executor, Job, JobError, LocalExecutor

REPORT_EVERY = 10  # steps between progress messages of a model


class _Bar:
    """Progress of one model: a tqdm bar in this process."""

    def __init__(self, label: str, total: int, show: bool, position: int = 0):
        self.bar = None
        if show:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, position=position,
                            leave=True, dynamic_ncols=True)

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is not None and (step % REPORT_EVERY == 0 or step == self.bar.total):
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _Bars:
    """One bar per model in training ("base", "00", "01", ...), opened when it reports."""

    def __init__(self, config: RunConfig, show: bool):
        self.config, self.show = config, show
        self.open: dict[str, _Bar] = {}
        self.closed: set[str] = set()

    def __call__(self, name: str, step: int, loss: float) -> None:
        if name in self.closed:
            return
        if name not in self.open:
            total = self.config.train.pretrain_steps if name == "base" else self.config.train.steps
            self.open[name] = _Bar(_label(name), total, self.show, position=len(self.open))
        self.open[name](step, loss)

    def close(self, name: str, finished: bool = False) -> None:
        bar = self.open.pop(name, None)
        if bar is not None:
            if finished and bar.bar is not None:
                bar.bar.n = bar.bar.total
            bar.close()
        self.closed.add(name)

    def close_all(self) -> None:
        for name in list(self.open):
            self.close(name)


def _label(name: str) -> str:
    return "base" if name == "base" else f"member {name}"


def _run_training(executor: Executor, jobs: list[Job], bars: _Bars, done) -> None:
    """Run training jobs; a failed one is a TdaError saying that the run resumes."""
    try:
        executor.run(jobs, done, lambda key, msg: bars(str(key).split("@")[0], *msg))
    except JobError as e:
        name = str(e.key).split("@")[0]
        raise TdaError(f"training {_label(name)} failed ({e.detail}); "
                       "re-run the same command to resume") from e
    finally:
        bars.close_all()


def _every(report):
    """The (step, loss) messages a job sends: every REPORT_EVERY steps."""
    return lambda step, loss: report((step, loss)) if step % REPORT_EVERY == 0 else None


# --- training that reads and writes the run directory by its path (local processes) ---


def _base_job(out: str, config_json: str, threads: int, stop_after, device: str,
              report) -> bool:
    config = RunConfig.from_json(config_json)
    return tr.train_base(Path(out), config, threads, stop_after, _every(report), device)


def _member_job(out: str, config_json: str, i: int, threads: int, stop_after, device: str,
                report) -> bool:
    config = RunConfig.from_json(config_json)
    return tr.train_member(Path(out), config, i, threads, stop_after, _every(report), device)


def train_in_place(out, config, pending, stop_after, progress, device, executor, gpus) -> None:
    """The base model here (or in one remote job), then the members: one after another
    here, or in processes (or remote jobs) of their own."""
    cfg, bars = config.to_json(), _Bars(config, progress)

    def finished(job: Job, done: bool) -> None:
        bars.close(job.key, done)

    if config.train.init == "pretrained" and not (out / tr.BASE_DIR).is_dir():
        here = executor if executor.remote else LocalExecutor(1)
        threads = 1 if executor.remote else torch.get_num_threads()
        job = Job("base", _base_job, (str(out), cfg, threads, stop_after, device), gpus=gpus)
        _run_training(here, [job], bars, finished)
        if not (out / tr.BASE_DIR).is_dir():
            return
    if executor.remote:
        threads = 1
    else:  # torch's thread count honours OMP_NUM_THREADS and torch.set_num_threads
        executor = LocalExecutor(min(executor.workers, len(pending)))
        threads = max(1, torch.get_num_threads() // executor.workers)
    jobs = [Job(f"{i:02d}", _member_job, (str(out), cfg, i, threads, stop_after, device),
                gpus=gpus) for i in pending]
    _run_training(executor, jobs, bars, finished)


# --- training in tasks that send checkpoints and members back (Ray, no shared path) ---


@dataclass
class _Spec:
    """What a training task trains: everything but the tensors and the checkpoint."""

    name: str  # "base" or "NN": the folder and checkpoint name
    config_json: str
    model_seed: int
    gen_seed: int
    steps: int
    batch_size: int


def _fit_segment(spec: _Spec, data: torch.Tensor, replay: torch.Tensor | None,
                 base: bytes | None, ckpt: bytes | None, end: int, device: str, report):
    """Train from checkpoint bytes (None: from the start) to step `end`; send back
    (step, loss, checkpoint bytes, None), or (step, loss, None, folder files) once the
    model has all its steps."""
    config = RunConfig.from_json(spec.config_json)
    model = tr.new_member(config, spec.model_seed)
    if base is not None:
        model.load_state_dict(safetensors.torch.load(base))
    fit = tr.Fit(model, data, config, spec.gen_seed, spec.steps, spec.batch_size, replay, device)
    if ckpt is not None:
        fit.restore(safetensors.torch.load(ckpt))
    loss = fit.run(end, _every(report))
    if fit.step >= spec.steps:
        return fit.step, loss, None, tr.model_files(model)
    return fit.step, loss, safetensors.torch.save(fit.state()), None


def train_by_bytes(out, config, pending, stop_after, progress, device, executor, gpus) -> None:
    """The base model (init="pretrained"), then the members, in checkpoint-long tasks."""
    tc, cfg = config.train, config.to_json()
    bars = _Bars(config, progress)
    if tc.init == "pretrained" and not (out / tr.BASE_DIR).is_dir():
        spec = _Spec("base", cfg, tc.seed, tc.seed + 2, tc.pretrain_steps, tc.pretrain_batch_size)
        data = executor.share(tr.base_data(config))
        _fit_by_bytes(out, config, executor, [(spec, data, None, None)], stop_after, device, gpus,
                      bars)
        if not (out / tr.BASE_DIR).is_dir():
            return
    base = None
    if tc.init == "pretrained":
        base = executor.share((out / tr.BASE_DIR / tr.WEIGHTS).read_bytes())
    replay = executor.share(tr.base_data(config)) if tc.replay > 0 else None
    fits = []
    for i in pending:
        seed = tr.member_seed(config, i)
        spec = _Spec(f"{i:02d}", cfg, seed, seed + 1, tc.steps, tc.batch_size)
        fits.append((spec, executor.share(tr.member_data(out, i)), replay, base))
    _fit_by_bytes(out, config, executor, fits, stop_after, device, gpus, bars)


def _fit_by_bytes(out: Path, config: RunConfig, executor: Executor, fits: list[tuple],
                  stop_after: int | None, device: str, gpus: float, bars: _Bars) -> None:
    """Chains of `_fit_segment` tasks, one per model, each task `checkpoint_every` steps
    long; this process writes every checkpoint and finished folder as it arrives."""
    every = config.train.checkpoint_every
    target: dict[str, int] = {}
    tensors: dict[str, tuple] = {}

    def segment(spec: _Spec, ckpt: bytes | None, step: int) -> Job:
        end = min(target[spec.name], (step // every + 1) * every)
        return Job(f"{spec.name}@{step}", _fit_segment,
                   (spec, *tensors[spec.name], ckpt, end, device), cpus=1, gpus=gpus, threads=1)

    def arrived(job: Job, result) -> list[Job]:
        spec = job.args[0]
        step, loss, ckpt, files = result
        bars(spec.name, step, loss)
        path = tr.checkpoint_path(out, spec.name)
        if files is not None:
            dest = out / tr.BASE_DIR if spec.name == "base" else member_dir(out, int(spec.name))
            tr.write_folder(dest, files)
            path.unlink(missing_ok=True)
            bars.close(spec.name, finished=True)
            return []
        tr.write_bytes(path, ckpt)
        if step < target[spec.name]:
            return [segment(spec, ckpt, step)]
        bars.close(spec.name)
        return []

    jobs = []
    for spec, *rest in fits:
        ckpt, step = _read_checkpoint(tr.checkpoint_path(out, spec.name))
        target[spec.name] = spec.steps if stop_after is None else min(spec.steps, step + stop_after)
        tensors[spec.name] = tuple(rest)
        if step < target[spec.name] or step == spec.steps:
            jobs.append(segment(spec, ckpt, step))
    _run_training(executor, jobs, bars, arrived)


def _read_checkpoint(path: Path) -> tuple[bytes | None, int]:
    """A checkpoint's bytes and step; (None, 0) without one, or for an unreadable one."""
    if not path.is_file():
        return None, 0
    data = path.read_bytes()
    try:
        return data, int(safetensors.torch.load(data)["step"])
    except Exception as e:  # a truncated file from a hard kill: start this member over
        print(f"checkpoint {path} unreadable ({e}); restarting member from step 0")
        return None, 0

