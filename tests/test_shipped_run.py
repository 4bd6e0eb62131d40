"""The shipped run in assets/default loads, validates and reproduces its reference sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tda import views
from tda.api import Explorer
from tda.ensemble import load_run

DEFAULT = Path(__file__).resolve().parents[1] / "assets" / "default"


@pytest.fixture(scope="module")
def shipped() -> Explorer:
    return Explorer(load_run(DEFAULT))


def test_shipped_run_is_the_documented_recipe(shipped):
    run = shipped.run
    assert (run.n, run.h) == (16, 8)
    assert run.config.data.dataset == "mnist" and run.config.data.image_size >= 16
    assert run.config.sample.num_inference_steps == 50
    assert run.config.train.num_train_timesteps == 1000
    assert not run.config.model.attention
    assert all(not hasattr(b, "attentions") or not b.attentions for b in run.members[0].down_blocks)
    assert sorted(set(run.labels.tolist())) == list(range(10))  # class-balanced digits


def test_shipped_run_reproduces_its_reference_sample(shipped):
    ref = load_file(str(DEFAULT / "reference.safetensors"))
    seed = int(json.loads((DEFAULT / "reference.json").read_text())["seed"])
    s = shipped.sample(seed)
    torch.testing.assert_close(s.noise.x_T, ref["x_T"], rtol=0, atol=0)
    torch.testing.assert_close(s.noise.noise, ref["noise"], rtol=0, atol=0)
    torch.testing.assert_close(s.sample, ref["sample"], rtol=0, atol=1e-4)


def test_assets_stay_small():
    total = sum(p.stat().st_size for p in DEFAULT.parent.rglob("*") if p.is_file())
    assert total < 40 * 2**20, f"assets/ is {total / 2**20:.1f} MB"


def test_home_page_tells_whether_attribution_means_something(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("TDA_RUNS", raising=False)
    monkeypatch.delenv("TDA_ASSETS", raising=False)
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    at = AppTest.from_file(str(root / "app.py"), default_timeout=120).run()
    assert not at.exception
    shown = " ".join(w.value for w in at.warning) + " ".join(s.value for s in at.success)
    assert "phantoms' 99th percentile" in shown
    metrics = {m.label: m.value for m in at.metric}
    run = load_run(DEFAULT)
    assert metrics["Training images N"] == str(run.N) and metrics["Members n"] == "16"
    level = views.floor_finding(DEFAULT)[0]
    headline = {"ok": "rises above the noise floor", "partly": "Partly", "weak": "Mostly not"}[level]
    assert headline in shown
