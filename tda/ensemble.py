"""A run directory: save, validate and load an encoded ensemble.

Layout (file names are the constants below): the manifest `ensemble.json` holds the
format version, the `RunConfig`, summary facts and the sha256 of every other file;
`codes.safetensors` (B, N x n), `train.safetensors` (uint8 images and labels in code
order), `scheduler/` (DDPMScheduler.save_pretrained), `members/NN/`
(UNet2DModel.save_pretrained, safetensors), `base/` (init="pretrained": the members'
common start, trained on held-out images; hashed, not loaded), `index.faiss` +
`index.json`.
Loading checks every hash and shape and never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.numpy import load_file, save_file

from . import TdaError
from .config import RunConfig

FORMAT_VERSION = 1
MANIFEST = "ensemble.json"
CODES = "codes.safetensors"
TRAIN = "train.safetensors"
SCHEDULER_DIR = "scheduler"
MEMBERS_DIR = "members"
INDEX = "index.faiss"
INDEX_META = "index.json"
MANIFEST_KEYS = ("files", "config", "N", "n", "h", "image_size", "channels")
# folders the manifest does not hash: training checkpoints, and results derived from the run
# that are rebuilt often and carry their own check (tda.featured: the run's fingerprint)
UNHASHED = ("checkpoints", "featured")


def member_dir(run_dir: Path, i: int) -> Path:
    return Path(run_dir) / MEMBERS_DIR / f"{i:02d}"


@dataclass
class Run:
    """A loaded, validated run: config, codes, training data, scheduler and members."""

    path: Path
    config: RunConfig
    codes: np.ndarray  # uint8 [N, n]
    images: np.ndarray  # uint8 [N, C, S, S], code order
    labels: np.ndarray  # int64 [N]
    scheduler: DDPMScheduler
    members: list[UNet2DModel]
    manifest: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.codes.shape[1]

    @property
    def h(self) -> int:
        return int(self.codes[0].sum())

    @property
    def N(self) -> int:
        return self.codes.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def summary(self) -> dict:
        c = self.config
        return {
            "path": str(self.path),
            "dataset": c.data.dataset,
            "N": self.N,
            "n": self.n,
            "h": self.h,
            "image": "x".join(map(str, self.image_shape)),
            "steps": c.sample.num_inference_steps,
            "T": c.train.num_train_timesteps,
            "init": c.train.init,
            "train_steps": c.train.steps,
            "params_per_member": sum(p.numel() for p in self.members[0].parameters()),
            "stored_weights": self.manifest.get("weights", "float32"),
        }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_data(run_dir: Path, codes: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
    save_file({"codes": np.ascontiguousarray(codes, dtype=np.uint8)}, str(run_dir / CODES))
    save_file(
        {"images": np.ascontiguousarray(images, dtype=np.uint8),
         "labels": np.ascontiguousarray(labels, dtype=np.int64)},
        str(run_dir / TRAIN),
    )


def write_manifest(run_dir: Path, config: RunConfig, extra: dict | None = None) -> dict:
    """Hash every file of the run and write `ensemble.json` (atomically)."""
    run_dir = Path(run_dir)
    files = {
        p.relative_to(run_dir).as_posix(): sha256(p)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")
        and not any(part.startswith(".") or part in UNHASHED for part in p.relative_to(run_dir).parts)
    }
    codes = load_file(str(run_dir / CODES))["codes"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "n": int(codes.shape[1]),
        "h": int(codes[0].sum()),
        "N": int(codes.shape[0]),
        "dataset": config.data.dataset,
        "image_size": config.data.image_size,
        "channels": config.data.channels,
        "num_inference_steps": config.sample.num_inference_steps,
        "config": config.to_dict(),
        "files": files,
        **(extra or {}),
    }
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / MANIFEST)
    return manifest


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise TdaError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise TdaError(f"{path} is missing: not a finished run (train it or pick another)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TdaError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise TdaError(f"{path} is not a run manifest (expected a JSON object)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TdaError(f"{path}: format version {manifest.get('format_version')!r}, "
                       f"this tda reads {FORMAT_VERSION}")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing or not isinstance(manifest["files"], dict):
        raise TdaError(f"{path} is corrupt: missing or bad {', '.join(missing) or 'files'}")
    for rel in manifest["files"]:
        if not inside(run_dir, rel):
            raise TdaError(f"{path} names a file outside the run's folder ({rel!r}): "
                           "refused; a run only lists its own files")
    return manifest


def inside(run_dir: Path, rel: str) -> bool:
    """`rel` is a relative path that stays inside `run_dir`, links resolved."""
    p = PurePosixPath(rel)
    if not rel or "\\" in rel or p.is_absolute() or ".." in p.parts:
        return False
    root = Path(run_dir).resolve()
    return (root / p).resolve().is_relative_to(root)


def verify_files(run_dir: Path, manifest: dict) -> None:
    """Every file listed in the manifest exists and has its recorded sha256."""
    for rel, digest in manifest["files"].items():
        p = Path(run_dir) / rel
        if not p.is_file():
            raise TdaError(f"run {run_dir}: file {rel} is missing")
        if sha256(p) != digest:
            raise TdaError(f"run {run_dir}: file {rel} does not match its sha256 in "
                           f"{MANIFEST} (corrupt or modified); restore or retrain it")


def check_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, or a TdaError saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise TdaError(f"unknown device {device!r}: use cpu or cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TdaError(f"device {device!r} asked for, but CUDA is not available here: use cpu")
    return dev


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> Run:
    """Load and validate a run; refuse it with a message naming the file at fault."""
    run_dir = Path(run_dir)
    device = check_device(device)
    manifest = read_manifest(run_dir)
    if verify:
        verify_files(run_dir, manifest)
    try:
        config = RunConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise TdaError(f"{run_dir / MANIFEST}: bad config: {e}") from e
    codes, images, labels = _load_data(run_dir, manifest)
    scheduler = DDPMScheduler.from_pretrained(run_dir / SCHEDULER_DIR)
    members = [_load_member(run_dir, i, config, device) for i in range(codes.shape[1])]
    return Run(run_dir, config, codes, images, labels, scheduler, members, manifest)


def _load_data(run_dir: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for name in (CODES, TRAIN):
        if not (run_dir / name).is_file():
            raise TdaError(f"run {run_dir}: file {name} is missing")
    codes = load_file(str(run_dir / CODES)).get("codes")
    train = load_file(str(run_dir / TRAIN))
    images, labels = train.get("images"), train.get("labels")
    N, n, h = manifest["N"], manifest["n"], manifest["h"]
    S, C = manifest["image_size"], manifest["channels"]
    if codes is None or codes.shape != (N, n):
        raise TdaError(f"run {run_dir}: {CODES} should hold codes of shape ({N}, {n})")
    if not (codes.sum(1) == h).all() or len({r.tobytes() for r in codes}) != N:
        raise TdaError(f"run {run_dir}: {CODES} codes are not unique codes of weight {h}")
    if images is None or images.shape != (N, C, S, S) or images.dtype != np.uint8:
        raise TdaError(f"run {run_dir}: {TRAIN} should hold uint8 images ({N}, {C}, {S}, {S})")
    if labels is None or labels.shape != (N,):
        raise TdaError(f"run {run_dir}: {TRAIN} should hold {N} labels")
    return codes, images, labels


def _load_member(run_dir: Path, i: int, config: RunConfig, device) -> UNet2DModel:
    folder = member_dir(run_dir, i)
    if not folder.is_dir():
        raise TdaError(f"run {run_dir}: member folder {folder.relative_to(run_dir)} is missing")
    try:
        model = UNet2DModel.from_pretrained(folder, use_safetensors=True, torch_dtype=torch.float32,
                                            low_cpu_mem_usage=False)
    except (OSError, ValueError) as e:
        raise TdaError(f"run {run_dir}: member {folder.relative_to(run_dir)} cannot be loaded: {e}") from e
    S, C = config.data.image_size, config.data.channels
    if model.config.sample_size != S or model.config.in_channels != C:
        raise TdaError(f"run {run_dir}: member {i:02d} is for {model.config.in_channels}x"
                       f"{model.config.sample_size} images, the run has {C}x{S}")
    return model.to(device).eval().requires_grad_(False)
