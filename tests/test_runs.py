"""Run directories: round trip, plain-diffusers members, refusal of broken runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_config
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

from tda import TdaError
from tda.data import load_images
from tda.encoding import make_codes
from tda.ensemble import (
    CODES,
    MANIFEST,
    SCHEDULER_DIR,
    TRAIN,
    load_run,
    member_dir,
    save_data,
    write_manifest,
)
from tda.index import build_index, save_index
from tda.sampling import RecordedNoise, make_chain, sample_chains

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loaded_run_matches_its_sources(tiny_run_dir):
    run = load_run(tiny_run_dir)
    cfg = tiny_config()
    assert run.config == cfg
    assert (run.N, run.n, run.h) == (16, 6, 3)
    assert np.array_equal(run.codes, make_codes(16, 6, 3, seed=cfg.ensemble.code_seed))
    images, labels = load_images(cfg.data)
    assert np.array_equal(run.images, images) and np.array_equal(run.labels, labels)
    for i, m in enumerate(run.members):
        raw = load_file(str(member_dir(tiny_run_dir, i) / WEIGHTS))
        sd = m.state_dict()
        assert raw.keys() == sd.keys() and all(torch.equal(raw[k], sd[k]) for k in raw)
        assert not m.training and not any(p.requires_grad for p in m.parameters())
    s = run.summary()
    assert (s["N"], s["n"], s["h"], s["image"], s["steps"]) == (16, 6, 3, "1x8x8", 10)


def test_run_survives_a_save_load_round_trip(tiny_run_dir, tmp_path):
    run = load_run(tiny_run_dir)
    out = tmp_path / "copy"
    out.mkdir()
    save_data(out, run.codes, run.images, run.labels)
    run.scheduler.save_pretrained(out / SCHEDULER_DIR)
    for i, m in enumerate(run.members):
        m.save_pretrained(member_dir(out, i), safe_serialization=True)
    save_index(out, build_index(run.images))
    write_manifest(out, run.config)
    back = load_run(out)
    assert back.config == run.config
    assert np.array_equal(back.codes, run.codes) and back.codes.dtype == np.uint8
    assert np.array_equal(back.images, run.images) and back.images.dtype == np.uint8
    assert np.array_equal(back.labels, run.labels) and back.labels.dtype == np.int64
    assert dict(back.scheduler.config) == dict(run.scheduler.config)
    assert all(_same_weights(a, b) for a, b in zip(back.members, run.members, strict=True))
    files = json.loads((out / MANIFEST).read_text())["files"]
    assert {CODES, TRAIN, f"members/05/{WEIGHTS}", "index.faiss"} <= set(files)


def _pipeline_noise(gen_seed: int, shape, timesteps) -> RecordedNoise:
    """The noise DDPMPipeline draws: x_T, then one z per step with t > 0, one generator."""
    g = torch.Generator().manual_seed(gen_seed)
    x_T = torch.randn((1, *shape), generator=g)[0]
    z = [
        torch.randn((1, *shape), generator=g)[0] if t > 0 else torch.zeros(shape)
        for t in timesteps.tolist()
    ]
    return RecordedNoise(x_T, torch.stack(z), timesteps.clone(), gen_seed)


def test_members_run_in_plain_diffusers_pipeline(tiny_run_dir):
    """Each member folder is a plain UNet2DModel; DDPMPipeline samples with it, and our
    recorded-noise chain with v = e_i gives the pipeline's image for the same noise."""
    run = load_run(tiny_run_dir)
    scheduler = DDPMScheduler.from_pretrained(tiny_run_dir / SCHEDULER_DIR)
    steps = 10
    chain = make_chain(scheduler, steps)
    for i in range(run.n):
        unet = UNet2DModel.from_pretrained(member_dir(tiny_run_dir, i))
        assert _same_weights(unet, run.members[i])
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        seed = 100 + i
        images = pipe(
            batch_size=1,
            num_inference_steps=steps,
            output_type="pt",
            generator=torch.Generator().manual_seed(seed),
        ).images
        assert images.shape == (1, 1, 8, 8) and torch.isfinite(images).all()
        assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
        noise = _pipeline_noise(seed, run.image_shape, chain.timesteps)
        ours = sample_chains([unet.eval()], torch.ones(1), noise, chain)
        torch.testing.assert_close((ours / 2 + 0.5).clamp(0, 1), images, rtol=0, atol=1e-6)
        pil = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
        assert pil[0].size == (8, 8)


def _refused(path, *needles: str) -> str:
    with pytest.raises(TdaError) as e:
        load_run(path)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_tampered_member_file_is_refused(tiny_run_copy):
    f = member_dir(tiny_run_copy, 2) / WEIGHTS
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last weight
    f.write_bytes(bytes(data))
    _refused(tiny_run_copy, f"members/02/{WEIGHTS}", "sha256")


def test_tampered_codes_are_refused(tiny_run_copy):
    codes = load_file(str(tiny_run_copy / CODES))["codes"]
    codes[[0, 1]] = codes[[1, 0]]
    from safetensors.torch import save_file

    save_file({"codes": codes}, str(tiny_run_copy / CODES))
    _refused(tiny_run_copy, CODES, "sha256")


@pytest.mark.parametrize(
    "rel",
    [f"members/04/{WEIGHTS}", "members/01/config.json", CODES, "scheduler/scheduler_config.json"],
)
def test_missing_file_is_refused(tiny_run_copy, rel):
    (tiny_run_copy / rel).unlink()
    _refused(tiny_run_copy, rel, "missing")


def test_missing_member_folder_is_refused(tiny_run_copy):
    shutil.rmtree(member_dir(tiny_run_copy, 3))
    _refused(tiny_run_copy, "members/03/", "missing")


@pytest.mark.parametrize(
    "text",
    [
        '{"format_version": 1, "files": {',
        "[1, 2]",
        '{"format_version": 1}',
        '{"format_version": 99}',
        "",
    ],
)
def test_corrupt_manifest_is_refused(tiny_run_copy, text):
    (tiny_run_copy / MANIFEST).write_text(text)
    _refused(tiny_run_copy, MANIFEST)


def test_nonexistent_and_unfinished_paths_are_refused(tmp_path):
    _refused(tmp_path / "nope", str(tmp_path / "nope"), "does not exist")
    _refused(tmp_path, MANIFEST, "missing")


def test_unknown_device_is_refused(tiny_run_dir):
    with pytest.raises(TdaError, match="device"):
        load_run(tiny_run_dir, device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(TdaError, match="CUDA is not available"):
            load_run(tiny_run_dir, device="cuda")


def test_tampered_file_loads_only_without_verification(tiny_run_copy):
    """verify=False skips the hashes (for speed), not the shape checks."""
    manifest = json.loads((tiny_run_copy / MANIFEST).read_text())
    manifest["N"] = 17
    (tiny_run_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TdaError, match=CODES):
        load_run(tiny_run_copy, verify=False)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_manifest_naming_a_file_outside_the_run_is_refused(tiny_run_copy, how):
    """An edited ensemble.json must not make the loader read (and hash) another file.

    The outside file's hash is recorded correctly, so only the path check can refuse it.
    """
    from tda.ensemble import sha256

    outside = tiny_run_copy.parent / "outside.txt"
    outside.write_text("not part of the run")
    rel = {
        "absolute": str(outside),
        "dotdot": "members/../../outside.txt",
        "symlink": "linked.txt",
    }[how]
    if how == "symlink":
        (tiny_run_copy / "linked.txt").symlink_to(outside)
    manifest = json.loads((tiny_run_copy / MANIFEST).read_text())
    manifest["files"][rel] = sha256(outside)
    (tiny_run_copy / MANIFEST).write_text(json.dumps(manifest))
    _refused(tiny_run_copy, MANIFEST, "outside the run's folder")
    with pytest.raises(TdaError, match="outside the run's folder"):
        load_run(tiny_run_copy, verify=False)
