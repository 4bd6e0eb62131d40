"""Fitting one model of an encoded ensemble: a member (or the pretrained base) from
its data, with resumable checkpoints; the pieces `tda.train` and the executor jobs of
`tda.train_jobs` are built from. See `tda.train` for the recipe (inits, replay).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from . import TdaError
from .config import RunConfig
from .data import load_images, to_model_space
from .ensemble import (
    CODES,
    TRAIN,
    member_dir,
)

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
