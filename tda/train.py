"""Train the members of an encoded ensemble, in parallel local processes, resumably.

`train_run(out, config)` prepares the run directory (codes, training data, scheduler,
the config it was started with), trains every unfinished member and writes the
manifest and the FAISS index. Member i learns eps-prediction on the images whose
bit i is 1. `init="shared"`: every member starts from the same weights and draws
timesteps, noise and batch positions from the same random stream, so members differ
only through their data; `init="independent"`: each member has its own seed;
`init="pretrained"`: first one *base* model is trained (`pretrain_steps`) on the
dataset's held-out images, which no training image is among, and saved in `base/`;
every member then starts from it with the shared random stream. Members are then
small, data-driven departures from one common model, and the counterfactual "without
image x" stays exact, since the base never saw x. `replay` > 0 fills that share of
every member batch with those held-out images too (all members alike), so a member
keeps the common model's general skill while it learns its own images.

Checkpoints (`checkpoints/NN.safetensors`: weights, Adam state, step, RNG state) are
written atomically every `checkpoint_every` steps; re-running the same command resumes
from them and never retrains a finished member (`members/NN/` exists).

Where members train is an executor's choice (`executor.py`, jobs in `train_jobs.py`):
local processes read and write the run directory themselves; on a Ray cluster, each
member trains in tasks of `checkpoint_every` steps that start from the checkpoint this
process sends and send back the next checkpoint or the finished member's files, which
this process alone writes, atomically, as above. Both give the same files, bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from . import TdaError
from .config import RunConfig
from .data import load_images, to_model_space
from .encoding import check_code_params, make_codes
from .ensemble import (
    CODES,
    MANIFEST,
    SCHEDULER_DIR,
    TRAIN,
    check_device,
    member_dir,
    save_data,
    write_manifest,
)
from .executor import Executor, LocalExecutor
from .index import build_index, save_index

STARTED = "run_config.json"  # the config a run directory was started with
CKPT_DIR = "checkpoints"
BASE_DIR = "base"  # the pretrained starting point of every member (init="pretrained")
WEIGHTS = "diffusion_pytorch_model.safetensors"  # a member's (or the base's) weights file
INITS = ("shared", "independent", "pretrained")
LR_SCHEDULES = ("constant", "cosine")


def make_scheduler(config: RunConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=config.train.num_train_timesteps,
        clip_sample=config.sample.clip_sample,
    )


def member_seed(config: RunConfig, i: int) -> int:
    t = config.train
    if t.init not in INITS:
        raise TdaError(f"init must be one of {', '.join(INITS)}, got {t.init!r}")
    if (t.init == "pretrained") != (t.pretrain_steps > 0):
        raise TdaError("init 'pretrained' needs pretrain_steps > 0, and only it uses them "
                       f"(init={t.init!r}, pretrain_steps={t.pretrain_steps})")
    if t.lr_schedule not in LR_SCHEDULES:
        raise TdaError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {t.lr_schedule!r}")
    if not 0 <= t.replay < 1:
        raise TdaError(f"replay must be in [0, 1), got {t.replay}")
    if t.init == "independent":
        return t.seed + 7919 * (i + 1)
    return t.seed


def prepare_run(out: Path, config: RunConfig) -> None:
    """Create the run directory, or check that an existing one has the same config."""
    out = Path(out)
    member_seed(config, 0)  # validates init
    started = out / STARTED
    if started.is_file():
        old = RunConfig.from_json(started.read_text())
        if old != config:
            raise TdaError(f"{out} holds a run started with another config; "
                           "use a new --out directory (or delete it) to train this one")
        return
    if out.exists() and any(out.iterdir()):
        raise TdaError(f"{out} exists and is not a run directory; choose a new --out")
    d, e = config.data, config.ensemble
    check_code_params(d.n_train, e.n_members, e.weight)
    images, labels = load_images(d)
    codes = make_codes(d.n_train, e.n_members, e.weight, e.code_seed)
    out.mkdir(parents=True, exist_ok=True)
    save_data(out, codes, images, labels)
    make_scheduler(config).save_pretrained(out / SCHEDULER_DIR)
    tmp = out / (STARTED + ".tmp")
    tmp.write_text(config.to_json())
    os.replace(tmp, started)  # written last: its presence means the data is complete


def train_run(
    out: str | Path,
    config: RunConfig,
    workers: int | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    device: str = "cpu",
    executor: Executor | None = None,
    gpus_per_member: float = 0.0,
) -> bool:
    """Train every unfinished member, then write index and manifest.

    `stop_after`: train at most this many more steps per member in this call (a
    time-boxed session); the run finishes on a later call. Returns True when done.
    `device` ("cpu", "cuda", "cuda:1"): where the models train; the random stream
    stays on the CPU, so checkpoints resume on any device.
    `executor`: where members train; default `LocalExecutor(workers)`: here (1 worker)
    or in that many local processes (default: one per core). A remote one (Ray) runs
    one task per member and checkpoint interval, each on one CPU or `gpus_per_member`
    of a GPU (`device` cuda; 1 by default); this process writes what they send back.
    """
    out = Path(out)
    executor = executor or LocalExecutor(workers)
    device, gpus = _device_and_gpus(device, executor.remote, gpus_per_member)
    prepare_run(out, config)
    n = config.ensemble.n_members
    pending = [i for i in range(n) if not member_dir(out, i).is_dir()]
    t0 = time.time()
    if pending:
        from .train_jobs import train_by_bytes, train_in_place

        if executor.remote and not executor.shared_path:
            train_by_bytes(out, config, pending, stop_after, progress, device, executor, gpus)
        else:
            train_in_place(out, config, pending, stop_after, progress, device, executor, gpus)
    if any(not member_dir(out, i).is_dir() for i in range(n)):
        return False
    save_index(out, build_index(load_file_np(out / TRAIN)["images"]))
    stats = {"train_seconds_last_call": round(time.time() - t0, 1)}
    if (out / MANIFEST).is_file():
        stats = {**json.loads((out / MANIFEST).read_text()).get("stats", {}), **stats}
    write_manifest(out, config, {"stats": stats})
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)
    return True


def _device_and_gpus(device: str, remote: bool, gpus: float) -> tuple[str, float]:
    """A clear error before any work; a remote executor's device is its nodes', not ours."""
    if gpus < 0:
        raise TdaError(f"--gpus-per-member must be >= 0, got {gpus}")
    if not remote:
        if gpus:
            raise TdaError("--gpus-per-member needs --backend ray (a local run uses --device)")
        return str(check_device(device)), 0.0
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise TdaError(f"unknown device {device!r}: use cpu or cuda") from e
    if gpus and dev.type != "cuda":
        raise TdaError("--gpus-per-member needs --device cuda")
    if dev.type == "cuda":  # each task sees only the GPU Ray gave it
        return "cuda", gpus or 1.0
    return dev.type, 0.0


def set_sampling_defaults(run_dir: str | Path, combine: str | None = None) -> RunConfig:
    """Change a finished run's sampling defaults (its config and manifest, re-hashed)."""
    from .ensemble import load_run, read_manifest
    from .sampling import COMBINE_RULES

    run_dir = Path(run_dir)
    run = load_run(run_dir)  # refuses a damaged run before anything is written
    config = run.config
    if combine is not None:
        if combine not in COMBINE_RULES:
            raise TdaError(f"combine must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
        config.sample.combine = combine
    tmp = run_dir / (STARTED + ".tmp")
    tmp.write_text(config.to_json())
    os.replace(tmp, run_dir / STARTED)
    old = read_manifest(run_dir)
    fresh = write_manifest(run_dir, config)  # keeps what the old manifest added (stats, ...)
    write_manifest(run_dir, config, {k: v for k, v in old.items() if k not in fresh})
    return config


def load_file_np(path: Path) -> dict:
    from safetensors.numpy import load_file as load_np

    return load_np(str(path))


def member_data(out: Path, i: int) -> torch.Tensor:
    codes = load_file_np(out / CODES)["codes"]
    images = load_file_np(out / TRAIN)["images"]
    return to_model_space(images[codes[:, i] == 1])


def new_member(config: RunConfig, seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    d = config.data
    return UNet2DModel(**config.model.unet_kwargs(d.image_size, d.channels))


def base_data(config: RunConfig) -> torch.Tensor:
    """The pretraining images: every image of the dataset that is not a training image."""
    images, _ = load_images(config.data, held_out=True)
    if len(images) == 0:
        raise TdaError(f"dataset {config.data.dataset!r} has no images outside the training set "
                       "to pretrain on; use --init shared")
    return to_model_space(images)


def train_base(out: Path, config: RunConfig, threads: int = 1,
               stop_after: int | None = None, report=None, device: str = "cpu") -> bool:
    """Train the base model of an init="pretrained" run into `base/`, resumably."""
    tc = config.train
    model = new_member(config, tc.seed)
    return _fit(model, base_data(config), config, tc.seed + 2, tc.pretrain_steps,
                tc.pretrain_batch_size, out, Path(out) / BASE_DIR, threads, stop_after, report,
                device=device)


def train_member(
    out: Path, config: RunConfig, i: int, threads: int = 1,
    stop_after: int | None = None, report=None, device: str = "cpu",
) -> bool:
    """Train member i to `config.train.steps`, resuming from its checkpoint."""
    tc = config.train
    seed = member_seed(config, i)
    model = new_member(config, seed)
    if tc.init == "pretrained":
        model.load_state_dict(load_file(str(Path(out) / BASE_DIR / WEIGHTS)))
    replay = base_data(config) if tc.replay > 0 else None
    return _fit(model, member_data(out, i), config, seed + 1, tc.steps, tc.batch_size,
                out, member_dir(out, i), threads, stop_after, report, replay, device)


def _fit(model, data, config: RunConfig, seed: int, steps: int, batch_size: int, out: Path,
         dest: Path, threads: int, stop_after: int | None, report,
         replay: torch.Tensor | None = None, device: str = "cpu") -> bool:
    """Train `model` on `data` for `steps` steps into `dest` (save_pretrained), resuming
    from `out/checkpoints/<dest name>.safetensors`; returns True once `dest` is written.
    `replay`: images of which `round(config.train.replay * batch_size)` fill each batch."""
    torch.set_num_threads(threads)
    fit = Fit(model, data, config, seed, steps, batch_size, replay, device)
    ckpt = checkpoint_path(out, dest.name)
    if ckpt.is_file():
        _load_checkpoint(ckpt, fit)
    end = steps if stop_after is None else min(steps, fit.step + stop_after)
    fit.run(end, report, save=lambda: _save_checkpoint(ckpt, fit))
    if fit.step < steps:
        return False
    write_folder(dest, model_files(model))
    ckpt.unlink(missing_ok=True)
    return True


class Fit:
    """One model in training: weights, AdamW state, random stream (on the CPU), step."""

    def __init__(self, model, data, config: RunConfig, seed: int, steps: int, batch_size: int,
                 replay: torch.Tensor | None = None, device: str = "cpu"):
        self.tc = config.train
        self.model = model.to(device)
        self.data = data.to(device)
        self.replay = None if replay is None else replay.to(device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=self.tc.lr, weight_decay=0.0)
        self.gen = torch.Generator().manual_seed(seed)
        self.sched = make_scheduler(config)
        self.steps, self.batch_size, self.step = steps, batch_size, 0

    def run(self, end: int, report=None, save=None) -> float:
        """Train up to step `end`; `save()` at every checkpoint step and at `end`."""
        loss = float("nan")
        self.model.train()
        while self.step < end:
            for g in self.opt.param_groups:
                g["lr"] = learning_rate(self.tc, self.step, self.steps)
            loss = _train_step(self.model, self.opt, self.sched, self.data, self.gen, self.tc,
                               self.batch_size, self.replay)
            self.step += 1
            if report is not None:
                report(self.step, loss)
            if save is not None and (self.step % self.tc.checkpoint_every == 0 or self.step == end):
                save()
        return loss

    def state(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors."""
        t = {f"model.{k}": v.detach().cpu().contiguous()
             for k, v in self.model.state_dict().items()}
        for pid, st in self.opt.state_dict()["state"].items():
            for k, v in st.items():
                t[f"opt.{pid}.{k}"] = torch.as_tensor(v).cpu().contiguous()
        t["rng"] = self.gen.get_state()
        t["step"] = torch.tensor(self.step)
        return t

    def restore(self, t: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        sd = self.opt.state_dict()
        n_params = len(sd["param_groups"][0]["params"])
        sd["state"] = {
            pid: {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"opt.{pid}.")}
            for pid in range(n_params)
        }
        self.opt.load_state_dict(sd)
        self.gen.set_state(t["rng"])
        self.step = int(t["step"])


def learning_rate(tc, step: int, steps: int) -> float:
    """The learning rate of step `step` (0-based) of `steps`: linear warm-up, then
    constant or a cosine decay that reaches 0 after the last step."""
    lr = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
    if tc.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
    return lr


def _train_step(model, opt, sched, data, gen, tc, B, replay=None) -> float:
    n_replay = round(tc.replay * B) if replay is not None else 0
    # the random stream is drawn on the CPU (`gen`), the same on every device
    dev = data.device
    rows = (torch.rand(B - n_replay, generator=gen) * len(data)).long()  # same stream for any subset size
    x0 = data[rows.to(dev)]
    if n_replay:
        more = (torch.rand(n_replay, generator=gen) * len(replay)).long()
        x0 = torch.cat([x0, replay[more.to(dev)]])
    t = torch.randint(0, tc.num_train_timesteps, (B,), generator=gen).to(dev)
    noise = torch.randn((B, *data.shape[1:]), generator=gen).to(dev)
    x_t = sched.add_noise(x0, noise, t)
    loss = torch.nn.functional.mse_loss(model(x_t, t).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def checkpoint_path(out: Path, name: str) -> Path:
    """The checkpoint of the model whose folder is `name` ("base", "03")."""
    return Path(out) / CKPT_DIR / f"{name}.safetensors"


def _save_checkpoint(path: Path, fit: Fit) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(fit.state(), str(tmp))
    os.replace(tmp, path)


def _load_checkpoint(path: Path, fit: Fit) -> None:
    try:
        t = load_file(str(path))
    except Exception as e:  # a truncated file from a hard kill: start this member over
        print(f"checkpoint {path} unreadable ({e}); restarting member from step 0")
        return
    fit.restore(t)


def model_files(model) -> dict[str, bytes]:
    """A model's `save_pretrained` folder (safetensors) as {relative path: bytes}."""
    with tempfile.TemporaryDirectory() as d:
        model.eval().to("cpu").save_pretrained(d, safe_serialization=True)
        return {p.relative_to(d).as_posix(): p.read_bytes()
                for p in sorted(Path(d).rglob("*")) if p.is_file()}


def write_folder(dest: Path, files: dict[str, bytes]) -> None:
    """Write a folder at once: into `.name.tmp` first, then renamed to `dest`; an
    interrupt on the way leaves neither."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file at once (a temporary file renamed); an interrupt leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
