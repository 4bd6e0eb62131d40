"""Shared fixtures: tiny runs (8x8 digits, a few members, tens of steps) trained once."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from tda.config import DataConfig, EnsembleConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig

# Tiny models run fastest on one thread; on a busy 2-core machine two threads per
# process are ~40x slower (measured), and train_run follows this setting.
torch.set_num_threads(1)


def tiny_config(**train) -> RunConfig:
    """16 digits at 8x8, 6 members of weight 3, a 2-level UNet, 10 sampling steps."""
    return RunConfig(
        data=DataConfig("digits", n_train=16, image_size=8, channels=1, seed=0),
        model=ModelConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
        ensemble=EnsembleConfig(n_members=6, weight=3, code_seed=0),
        train=TrainConfig(**{"steps": 40, "batch_size": 16, "checkpoint_every": 10, **train}),
        sample=SampleConfig(num_inference_steps=10),
    )


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (shared init). Tests must not modify it: copy it first."""
    from tda.train import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert train_run(out, tiny_config(), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_ladder_dir(tiny_run_dir, tmp_path_factory) -> Path:
    """Two rungs of the tiny recipe, N = 16 and N = 20, each with a report holding the
    candidate test of 8 held-out seeds (4 controls), as `evaluate --parts candidate`
    writes it. Tests must not modify it."""
    import json

    from tda.api import Explorer
    from tda.candidate import candidate_tests, tar
    from tda.train import train_run

    root = tmp_path_factory.mktemp("ladder")
    shutil.copytree(tiny_run_dir, root / "tiny16")
    config = tiny_config()
    config.data.n_train = 20  # C(6, 3): every code of the recipe
    assert train_run(root / "tiny20", config, workers=1, progress=False)
    for rung in ("tiny16", "tiny20"):
        ex = Explorer(root / rung)
        rules = {ex.combine: tar(candidate_tests(ex, range(100_000, 100_008), controls=4))}
        if rung == "tiny20":  # the other rule too, as the shipped rungs have it
            other = next(r for r in ("mean", "mixture") if r != ex.combine)
            rules[other] = tar(candidate_tests(Explorer(root / rung, combine=other),
                                               range(100_000, 100_006), controls=4))
        (root / rung / "report").mkdir()
        (root / rung / "report" / "report.json").write_text(json.dumps(
            {"candidate": {"default_rule": ex.combine, "rules": rules}}))
    return root


@pytest.fixture
def tiny_run_copy(tiny_run_dir, tmp_path) -> Path:
    """A private copy of the tiny run that a test may tamper with."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_run_dir, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_explorer(tiny_run_dir):
    from tda.api import Explorer

    return Explorer(tiny_run_dir)


CHROMIUM = Path("/usr/bin/chromium")  # Debian's, installed by scripts/test.sh


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium through Playwright (skipped where it is missing)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def until(condition, timeout: float = 10.0, message: str = "timed out") -> None:
    """Poll `condition` until it holds; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def spy_jobs(monkeypatch) -> list[str]:
    """The name of every job function submitted to any worker pool from now on."""
    from tda.pool import Pool

    names: list[str] = []
    real = Pool.submit
    monkeypatch.setattr(Pool, "submit", lambda self, job: names.append(job.fn.__name__)
                        or real(self, job))
    return names


class InlinePool:
    """A pool that runs each job at once in this process: for tests that replace a core
    function here, where a worker process would not see the replacement."""

    def __init__(self):
        self.kept: dict = {}

    def submit(self, job):
        from tda.pool import DONE, Status

        value = self.kept.get(job.key)
        if value is None:
            value = self.kept[job.key] = job.fn(*job.args, report=lambda msg: None)
        status = Status(DONE, 0, 0, 0, None)
        return type("Done", (), {"wait": lambda self, t=None: True, "result": lambda self: value,
                                 "status": lambda self: status, "release": lambda self: None,
                                 "__enter__": lambda self: self, "__exit__": lambda self, *e: None})()

    def result(self, key, default=None):
        return self.kept.get(key, default)
