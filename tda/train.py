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

Where members train is an executor's choice (`executor.py`, jobs in `train_jobs.py`, fitting in `fit.py`):
local processes read and write the run directory themselves; on a Ray cluster, each
member trains in tasks of `checkpoint_every` steps that start from the checkpoint this
process sends and send back the next checkpoint or the finished member's files, which
this process alone writes, atomically, as above. Both give the same files, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from . import TdaError
from .config import RunConfig
from .data import load_images
from .encoding import check_code_params, make_codes
from .ensemble import (
    MANIFEST,
    SCHEDULER_DIR,
    TRAIN,
    check_device,
    member_dir,
    save_data,
    write_manifest,
)
from .executor import Executor, LocalExecutor
from .fit import CKPT_DIR, STARTED, load_file_np, make_scheduler, member_seed
from .index import build_index, save_index


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
    from .ensemble import load_run
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
    _rehash(run_dir, config)
    return config


def _rehash(run_dir: Path, config: RunConfig, extra: dict | None = None) -> None:
    """Rewrite the manifest's hashes, keeping what it added (stats, weights, ...)."""
    from .ensemble import read_manifest

    old = read_manifest(run_dir)
    fresh = write_manifest(run_dir, config)
    keep = {k: v for k, v in old.items() if k not in fresh}
    write_manifest(run_dir, config, keep | (extra or {}))


def store_half(run_dir: str | Path) -> int:
    """Store a finished run's member weights in half precision (float16), in place.

    Members load as float32 (`ensemble._load_member`), and every float16 value is a
    float32 value, so every chain runs on exactly the stored weights: the run stays
    exact, only its samples move by the rounding (re-record reference samples,
    featured seeds and the report, whose fingerprints no longer match). Plain
    `UNet2DModel.from_pretrained` still loads a member (as float16). Returns the bytes
    saved; a run already in half precision is left as it is.
    """
    from safetensors.torch import load_file, save_file

    from .ensemble import load_run
    from .fit import WEIGHTS

    run_dir = Path(run_dir)
    run = load_run(run_dir)  # refuses a damaged run before anything is written
    saved = 0
    for i in range(run.n):
        path = member_dir(run_dir, i) / WEIGHTS
        weights = load_file(str(path))
        if all(v.dtype != torch.float32 for v in weights.values()):
            continue
        before = path.stat().st_size
        half = {k: v.half() if v.dtype == torch.float32 else v for k, v in weights.items()}
        tmp = path.with_suffix(".tmp")
        save_file(half, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        saved += before - path.stat().st_size
    if saved:
        _rehash(run_dir, run.config, {"weights": "float16"})
    return saved


