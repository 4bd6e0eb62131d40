"""Training: resumable to the bit, never redoing finished work, shared, independent and
pretrained init."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from tda import TdaError
from tda.config import DataConfig, EnsembleConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig
from tda.data import load_images, load_raw
from tda.ensemble import MANIFEST, load_run, member_dir
from tda.fit import BASE_DIR, CKPT_DIR, STARTED, base_data, learning_rate, member_seed, new_member
from tda.train import train_run

WEIGHTS = "diffusion_pytorch_model.safetensors"
ROOT = Path(__file__).resolve().parents[1]


def _weights(run_dir: Path, i: int) -> dict[str, torch.Tensor]:
    return load_file(str(member_dir(run_dir, i) / WEIGHTS))


def _assert_identical_members(a: Path, b: Path, n: int) -> None:
    for i in range(n):
        wa, wb = _weights(a, i), _weights(b, i)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"member {i:02d} differs"


def test_interrupted_training_resumes_to_the_same_bits(tiny_run_dir, tmp_path, capsys):
    out = tmp_path / "resumed"
    cfg = tiny_config()
    assert train_run(out, cfg, workers=1, progress=False, stop_after=15) is False
    assert not (out / MANIFEST).exists()
    ckpts = sorted(p.name for p in (out / CKPT_DIR).iterdir())
    assert ckpts == [f"{i:02d}.safetensors" for i in range(6)]
    assert all(int(load_file(str(out / CKPT_DIR / c))["step"]) == 15 for c in ckpts)
    ckpt = out / CKPT_DIR / "01.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # as if killed mid-write: 01 starts over
    assert train_run(out, cfg, workers=1, progress=False, stop_after=15) is False
    assert "restarting member from step 0" in capsys.readouterr().out
    assert int(load_file(str(ckpt))["step"]) == 15
    assert int(load_file(str(out / CKPT_DIR / "00.safetensors"))["step"]) == 30
    assert train_run(out, cfg, workers=1, progress=False) is True
    assert not (out / CKPT_DIR).exists()
    _assert_identical_members(out, tiny_run_dir, 6)
    load_run(out)  # a complete, valid run


def test_finished_members_are_never_retrained(tiny_run_dir, tiny_run_copy, monkeypatch):
    import tda.fit

    shutil.rmtree(member_dir(tiny_run_copy, 3))
    (tiny_run_copy / MANIFEST).unlink()
    before = {
        i: os.stat(member_dir(tiny_run_copy, i) / WEIGHTS).st_mtime_ns for i in range(6) if i != 3
    }
    trained = []
    real = tda.fit.train_member

    def spy(out, config, i, *a, **kw):
        trained.append(i)
        return real(out, config, i, *a, **kw)

    monkeypatch.setattr(tda.fit, "train_member", spy)
    assert train_run(tiny_run_copy, tiny_config(), workers=1, progress=False)
    assert trained == [3]
    after = {i: os.stat(member_dir(tiny_run_copy, i) / WEIGHTS).st_mtime_ns for i in before}
    assert after == before
    _assert_identical_members(tiny_run_copy, tiny_run_dir, 6)  # 03 retrained from scratch
    trained.clear()
    assert train_run(tiny_run_copy, tiny_config(), workers=1, progress=False)  # all done
    assert trained == []
    load_run(tiny_run_copy)


def test_another_config_into_the_same_directory_is_refused(tiny_run_copy, tmp_path):
    with pytest.raises(TdaError, match="another config"):
        train_run(tiny_run_copy, tiny_config(steps=41), workers=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TdaError, match="not a run directory"):
        train_run(tmp_path / "other", tiny_config(), workers=1, progress=False)
    too_many = tiny_config()
    too_many.data.n_train = 21
    with pytest.raises(TdaError, match=r"C\(6,3\)=20"):
        train_run(tmp_path / "big", too_many, workers=1, progress=False)
    assert not (tmp_path / "big").exists()


def _initial_weights(tmp_path: Path, init: str) -> list[dict[str, torch.Tensor]]:
    out = tmp_path / init
    assert train_run(out, tiny_config(steps=0, init=init), workers=1, progress=False)
    return [_weights(out, i) for i in range(6)]


def test_shared_init_gives_every_member_the_same_start(tmp_path):
    w = _initial_weights(tmp_path, "shared")
    for i in range(1, 6):
        assert all(torch.equal(w[0][k], w[i][k]) for k in w[0]), f"member {i}"
    ref = new_member(tiny_config(), member_seed(tiny_config(), 0)).state_dict()
    assert all(torch.equal(ref[k], w[0][k]) for k in ref)


def test_independent_init_gives_each_member_its_own_start(tmp_path):
    w = _initial_weights(tmp_path, "independent")
    for i in range(6):
        for j in range(i + 1, 6):
            differ = [k for k in w[i] if w[i][k].numel() > 1 and not torch.equal(w[i][k], w[j][k])]
            assert differ, f"members {i} and {j} start alike"


def test_trained_shared_members_differ_through_their_data(tiny_run_dir, tmp_path):
    w = [_weights(tiny_run_dir, i) for i in range(6)]
    k = "conv_in.weight"
    assert all(not torch.equal(w[0][k], w[i][k]) for i in range(1, 6))


def _cli_config(steps: int) -> RunConfig:
    """The RunConfig that the CLI command in the next test builds."""
    return RunConfig(
        data=DataConfig("digits", 16, 8, 1, 0),
        model=ModelConfig((8, 16)),
        ensemble=EnsembleConfig(6, 3, 0),
        train=TrainConfig(steps=steps, batch_size=16),
        sample=SampleConfig(num_inference_steps=10),
    )


def test_cli_training_stopped_and_resumed_matches_uninterrupted(tmp_path):
    """A real `python -m tda train --stop-after` process, then the same command resumed."""
    from tda.cli import main

    out = tmp_path / "cli"
    args = (
        "train --dataset digits --n 16 --members 6 --weight 3 --image-size 8 --steps 20 "
        "--batch-size 16 --channels-per-block 8,16 --sample-steps 10 --workers 1"
    ).split() + ["--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.run(
        [sys.executable, "-m", "tda", *args, "--stop-after", "7"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    assert "paused" in first.stdout
    assert not (out / MANIFEST).exists() and (out / STARTED).exists()
    assert all(int(load_file(str(p))["step"]) == 7 for p in (out / CKPT_DIR).iterdir())
    assert main(args) == 0  # the same command again, in this process
    ref = tmp_path / "ref"
    assert train_run(ref, _cli_config(20), workers=1, progress=False)
    assert load_run(out).config == _cli_config(20)
    _assert_identical_members(out, ref, 6)


def test_pretrained_init_starts_every_member_from_a_base_that_saw_no_training_image(tmp_path):
    cfg = tiny_config(steps=0, init="pretrained", pretrain_steps=12, pretrain_batch_size=8)
    out = tmp_path / "pre"
    assert train_run(out, cfg, workers=1, progress=False)
    base = load_file(str(out / BASE_DIR / WEIGHTS))
    fresh = new_member(cfg, member_seed(cfg, 0)).state_dict()
    assert any(not torch.equal(base[k], fresh[k]) for k in base if base[k].numel() > 1)
    for i in range(6):
        w = _weights(out, i)
        assert all(torch.equal(base[k], w[k]) for k in base), f"member {i} does not start at base"
    # the base's data is exactly the dataset minus the training rows: disjoint from them
    raw, _ = load_raw("digits")
    train, _ = load_images(cfg.data)
    held = base_data(cfg)
    assert len(held) + len(train) == len(raw)
    train_set = {t.tobytes() for t in train}
    held_u8 = load_images(cfg.data, held_out=True)[0]
    overlap = sum(h.tobytes() in train_set for h in held_u8)
    dupes_in_raw = len(raw) - len({r.tobytes() for r in raw})
    assert overlap <= dupes_in_raw  # only images the dataset itself holds twice
    load_run(out)  # base/ is hashed with the rest of the run


def test_pretraining_and_replay_resume_to_the_same_bits(tmp_path):
    cfg = tiny_config(steps=6, init="pretrained", pretrain_steps=12, pretrain_batch_size=8,
                      replay=0.5)
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    assert train_run(ref, cfg, workers=1, progress=False)
    assert train_run(out, cfg, workers=1, progress=False, stop_after=5) is False
    assert int(load_file(str(out / CKPT_DIR / "base.safetensors"))["step"]) == 5
    assert not (out / BASE_DIR).exists()
    assert train_run(out, cfg, workers=1, progress=False) is True
    a, b = load_file(str(out / BASE_DIR / WEIGHTS)), load_file(str(ref / BASE_DIR / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _assert_identical_members(out, ref, 6)
    # replay changes what members learn (half of each batch is held-out images)
    plain = tmp_path / "no-replay"
    cfg.train.replay = 0.0
    assert train_run(plain, cfg, workers=1, progress=False)
    k = "conv_in.weight"
    assert not torch.equal(_weights(plain, 0)[k], _weights(ref, 0)[k])


def test_pretrained_init_needs_pretrain_steps_and_others_refuse_them(tmp_path):
    with pytest.raises(TdaError, match="pretrain_steps"):
        train_run(tmp_path / "a", tiny_config(init="pretrained"), workers=1, progress=False)
    with pytest.raises(TdaError, match="pretrain_steps"):
        train_run(tmp_path / "b", tiny_config(pretrain_steps=5), workers=1, progress=False)
    with pytest.raises(TdaError, match="replay must be in"):
        train_run(tmp_path / "d", tiny_config(replay=1.0), workers=1, progress=False)
    with pytest.raises(TdaError, match="init must be one of"):
        train_run(tmp_path / "c", tiny_config(init="warm"), workers=1, progress=False)
    assert not any(tmp_path.iterdir())


def test_cosine_schedule_warms_up_then_decays_to_zero_and_bad_names_are_refused(tmp_path):
    tc = tiny_config(lr_schedule="cosine", warmup_steps=10).train
    lrs = [learning_rate(tc, s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(tc.lr / 10)  # warm-up
    assert lrs[50] == pytest.approx(tc.lr * 0.5)  # half-way down the cosine
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 1e-3 * tc.lr
    flat = tiny_config(warmup_steps=10).train
    assert learning_rate(flat, 99, 100) == flat.lr
    with pytest.raises(TdaError, match="lr_schedule must be one of"):
        train_run(tmp_path / "e", tiny_config(lr_schedule="step"), workers=1, progress=False)
    assert not any(tmp_path.iterdir())
