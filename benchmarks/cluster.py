"""Cluster benchmark: local processes vs Ray on this machine, and per-step rates of a
larger UNet for the on-paper estimate of a GPU cluster (README, "Running on a cluster").

    python benchmarks/cluster.py [--parts startup,tiny,medium,unet] [--cpus 2] [--json OUT]

startup: `import ray`, a fresh local Ray (`ray.init`), the first and a warm task, and
`ray.shutdown`, as `--backend ray` pays them once per command. tiny / medium: one run
trained by local processes (`--workers CPUS`) and by Ray tasks on a local Ray of CPUS
CPUs (started and stopped inside the timing, and the training alone), both checked to
give the same files; then the exact sweep of one sample (N images + phantoms) here and
as Ray tasks, checked equal. unet: seconds per training step (batch 32, one thread)
and per forward (batch 64) of UNets from this project's default up to the size of
DDPM's CIFAR-10 model, in float32 on this CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tda.config import (  # noqa: E402
    DataConfig,
    EnsembleConfig,
    ModelConfig,
    RunConfig,
    SampleConfig,
    TrainConfig,
)
from tda.ensemble import MANIFEST  # noqa: E402

PARTS = ("startup", "tiny", "medium", "unet")
RUNS = {
    "tiny": RunConfig(  # the tests' tiny run
        data=DataConfig("digits", n_train=16, image_size=8, channels=1, seed=0),
        model=ModelConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
        ensemble=EnsembleConfig(n_members=6, weight=3, code_seed=0),
        train=TrainConfig(steps=40, batch_size=16, checkpoint_every=10),
        sample=SampleConfig(num_inference_steps=10),
    ),
    "medium": RunConfig(  # the shipped run's scale: N = 256 MNIST digits, 16 members
        data=DataConfig("mnist", n_train=256, image_size=16, channels=1, seed=0),
        model=ModelConfig(),  # (16, 32, 32): 263k parameters
        ensemble=EnsembleConfig(n_members=16, weight=8, code_seed=0),
        train=TrainConfig(steps=200, batch_size=64),
        sample=SampleConfig(num_inference_steps=50),
    ),
}
UNETS = {  # block_out_channels, layers_per_block, attention
    "default 16,32,32": ((16, 32, 32), 1, False),
    "medium 64,128,128": ((64, 128, 128), 2, False),
    "ddpm-cifar10 128,256,256,256": ((128, 256, 256, 256), 2, True),
}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def startup(cpus: int) -> dict:
    out = {}
    _, out["import_ray_s"] = timed(lambda: __import__("ray"))
    import ray

    from tda.executor import Job, RayExecutor

    def init():
        ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                 logging_level="WARNING")

    _, out["init_s"] = timed(init)
    ex = RayExecutor()  # uses the Ray just started
    got = []
    _, out["first_task_s"] = timed(lambda: ex.run([Job(0, _noop)], lambda j, r: got.append(r)))
    _, out["warm_task_s"] = timed(lambda: ex.run([Job(1, _noop)], lambda j, r: got.append(r)))
    _, out["shutdown_s"] = timed(ray.shutdown)
    return out


def _noop(report):
    return torch.get_num_threads()


def train_and_sweep(name: str, cpus: int) -> dict:
    from tda.api import Explorer
    from tda.attribution import default_phantoms, exact_counterfactuals
    from tda.encoding import phantom_codes
    from tda.executor import RayExecutor
    from tda.train import train_run

    config = RUNS[name]
    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        local, remote = Path(d) / "local", Path(d) / "ray"
        _, out["local_train_s"] = timed(
            lambda: train_run(local, config, workers=cpus, progress=False))
        t0 = time.perf_counter()
        ex = RayExecutor(local_cpus=cpus)  # a local Ray, started here
        out["ray_start_s"] = time.perf_counter() - t0
        _, out["ray_train_s"] = timed(
            lambda: train_run(remote, config, progress=False, executor=ex))
        files = [json.loads((p / MANIFEST).read_text())["files"] for p in (local, remote)]
        out["same_files"] = files[0] == files[1]
        explorer = Explorer(local)
        codes = explorer.run.codes
        codes = np.concatenate([codes, phantom_codes(codes, default_phantoms(len(codes)), 1)])
        out["sweep_chains"] = len(codes)
        y_local, out["local_sweep_s"] = timed(
            lambda: exact_counterfactuals(explorer, 0, None, codes))
        y_ray, out["ray_sweep_s"] = timed(
            lambda: exact_counterfactuals(explorer, 0, None, codes, executor=ex))
        out["sweep_max_abs_diff"] = float((y_local - y_ray).abs().max())
        _, out["ray_stop_s"] = timed(ex.close)
        out["ray_total_s"] = out["ray_start_s"] + out["ray_train_s"] + out["ray_stop_s"]
    return out


def unet_rates(image_size: int = 32, channels: int = 3) -> dict:
    from diffusers import UNet2DModel

    torch.set_num_threads(1)
    out = {}
    for name, (blocks, layers, attention) in UNETS.items():
        cfg = ModelConfig(tuple(blocks), layers, 32 if blocks[0] >= 32 else 8, attention)
        torch.manual_seed(0)
        model = UNet2DModel(**cfg.unet_kwargs(image_size, channels))
        out[name] = {"params": sum(p.numel() for p in model.parameters()),
                     **_rates(model, channels, image_size)}
        print(name, out[name], flush=True)
    return out


def _rates(model, channels: int, size: int) -> dict:
    """Fastest of 3 training steps (batch 32, AdamW) and of 3 forwards (batch 64)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(32, channels, size, size)
    t = torch.randint(0, 1000, (32,))

    def step():
        loss = torch.nn.functional.mse_loss(model(x, t).sample, x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    steps = [timed(step)[1] for _ in range(3)]
    xf = torch.randn(64, channels, size, size)
    with torch.inference_mode():
        model(xf, t[:1])
        fwd = [timed(lambda: model(xf, t[:1]))[1] for _ in range(3)]
    return {"train_step_s_batch32": min(steps), "forward_s_batch64": min(fwd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--cpus", type=int, default=2, help="local workers and Ray CPUs")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.cpus)
    results = {"cpus": a.cpus}
    for part in a.parts.split(","):
        if part == "startup":
            results[part] = startup(a.cpus)
        elif part in RUNS:
            results[part] = train_and_sweep(part, a.cpus)
        elif part == "unet":
            results[part] = unet_rates()
        else:
            raise SystemExit(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
        print(part, json.dumps(results[part], indent=1), flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
