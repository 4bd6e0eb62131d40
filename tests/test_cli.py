"""python -m tda: what info/sample/counterfactual write, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tda.cli import main
from tda.encoding import members_on, unseen_rows, without_rows

ROOT = Path(__file__).resolve().parents[1]


def test_info_prints_the_run_summary(tiny_run_dir, capsys):
    assert main(["info", "--run", str(tiny_run_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["N"], info["n"], info["h"], info["dataset"]) == (16, 6, 3, "digits")
    assert info["image"] == "1x8x8" and info["params_per_member"] > 0


@pytest.mark.parametrize("steps", [None, 4])
def test_sample_writes_the_documented_tensors(tiny_run_dir, tiny_explorer, tmp_path, steps):
    out = tmp_path / "sample.safetensors"
    extra = [] if steps is None else ["--steps", str(steps)]
    assert (
        main(["sample", "--run", str(tiny_run_dir), "--seed", "9", *extra, "--out", str(out)]) == 0
    )
    t = load_file(str(out))
    K = steps or 10
    assert set(t) == {"sample", "x_T", "noise", "timesteps"}
    assert t["sample"].shape == (1, 8, 8) and t["sample"].dtype == torch.float32
    assert t["x_T"].shape == (1, 8, 8) and t["x_T"].dtype == torch.float32
    assert t["noise"].shape == (K, 1, 8, 8) and t["noise"].dtype == torch.float32
    assert t["timesteps"].shape == (K,) and t["timesteps"].dtype == torch.int64
    last = t["timesteps"] == 0
    assert (t["noise"][last] == 0).all() and (t["noise"][~last].abs().sum((1, 2, 3)) > 0).all()
    assert torch.equal(t["timesteps"], tiny_explorer.chain(K).timesteps.to(torch.int64))
    s = tiny_explorer.sample(9, K)
    assert torch.equal(t["sample"], s.sample) and torch.equal(t["x_T"], s.noise.x_T)
    assert torch.equal(t["noise"], s.noise.noise)


def test_counterfactual_excluding_members(tiny_run_dir, tiny_explorer, tmp_path):
    out = tmp_path / "cf.safetensors"
    run = ["--run", str(tiny_run_dir), "--out", str(out)]
    assert main(["counterfactual", *run, "--seed", "2", "--exclude-members", "0,3"]) == 0
    t = load_file(str(out))
    assert set(t) == {"sample", "counterfactual", "weights", "excluded_train"}
    assert t["sample"].shape == t["counterfactual"].shape == (1, 8, 8)
    assert t["weights"].shape == (6,) and t["weights"].dtype == torch.float32
    assert torch.equal(t["weights"], members_on([0, 1, 1, 0, 1, 1]))
    assert t["excluded_train"].dtype == torch.int64 and t["excluded_train"].ndim == 1
    codes = tiny_explorer.run.codes
    assert t["excluded_train"].tolist() == unseen_rows(codes, t["weights"]).tolist()
    assert torch.equal(t["sample"], tiny_explorer.sample(2).sample)
    assert torch.equal(t["counterfactual"], tiny_explorer.y(t["weights"], 2)[0])


def test_counterfactual_removing_a_training_image(tiny_run_dir, tiny_explorer, tmp_path):
    codes = tiny_explorer.run.codes
    for rows in ([5], [5, 9]):
        out = tmp_path / f"rm{len(rows)}.safetensors"
        remove = ["--remove-train", ",".join(map(str, rows))]
        assert main(["counterfactual", "--run", str(tiny_run_dir), *remove, "--out", str(out)]) == 0
        t = load_file(str(out))
        assert torch.equal(t["weights"], without_rows(codes, rows))
        saw = codes[rows].any(0)
        assert torch.equal(t["weights"] != 0, torch.as_tensor(~saw))  # exactly the 0-bit members
        brute = [m for m in range(len(codes)) if not (codes[m].astype(bool) & ~saw).any()]
        assert t["excluded_train"].tolist() == brute
        assert set(rows) <= set(brute)
        assert t["excluded_train"].dtype == torch.int64
        assert not torch.equal(t["counterfactual"], t["sample"])


def test_counterfactual_can_write_into_a_new_folder(tiny_run_dir, tmp_path):
    out = tmp_path / "new" / "deeper" / "cf.safetensors"
    run = ["--run", str(tiny_run_dir), "--out", str(out)]
    assert main(["counterfactual", *run, "--remove-train", "1"]) == 0
    assert out.is_file()


BAD = [
    (["info", "--run", "{missing}"], "does not exist"),
    (["sample", "--run", "{missing}", "--out", "{out}"], "does not exist"),
    (["counterfactual", "--run", "{run}", "--exclude-members", "6", "--out", "{out}"], "0..5"),
    (
        ["counterfactual", "--run", "{run}", "--exclude-members", "1,x", "--out", "{out}"],
        "comma-separated",
    ),
    (
        ["counterfactual", "--run", "{run}", "--exclude-members", "0,1,2,3,4,5", "--out", "{out}"],
        "at least one",
    ),
    (["counterfactual", "--run", "{run}", "--remove-train", "16", "--out", "{out}"], "0..15"),
    (
        ["counterfactual", "--run", "{run}", "--remove-train", "a;b", "--out", "{out}"],
        "comma-separated",
    ),
    (["sample", "--run", "{run}", "--seed", "-1", "--out", "{out}"], "seed"),
    (["sample", "--run", "{run}", "--steps", "0", "--out", "{out}"], "steps"),
    (["sample", "--run", "{run}", "--steps", "1001", "--out", "{out}"], "steps"),
    (["sample", "--run", "{run}", "--device", "nonsense", "--out", "{out}"], "device"),
    (["candidate", "--run", "{run}", "--ray-address", "auto", "--out", "{out}"],
     "need --backend ray"),
    (["evaluate", "--run", "{run}", "--ray-shared-path", "--out", "{out}"], "need --backend ray"),
]


@pytest.mark.parametrize(("argv", "needle"), BAD)
def test_user_errors_are_one_line_with_status_2(tiny_run_dir, tmp_path, capsys, argv, needle):
    out = tmp_path / "x.safetensors"
    fill = {"run": str(tiny_run_dir), "missing": str(tmp_path / "nope"), "out": str(out)}
    code = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out.exists()


def test_errors_from_a_real_process_have_no_traceback(tiny_run_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--run", str(tiny_run_dir), "--exclude-members", "7", "--out", str(tmp_path / "x")]
    p = subprocess.run(
        [sys.executable, "-m", "tda", "counterfactual", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert "[7]" in p.stderr  # names the bad member


def test_candidate_command_prints_verdicts_and_writes_tar(tiny_run_dir, tiny_explorer, tmp_path,
                                                          capsys):
    from tda.candidate import candidate_test

    out = tmp_path / "cand.json"
    argv = ["candidate", "--run", str(tiny_run_dir), "--seed", "0-2,5", "--controls", "4",
            "--combine", "mixture", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "TAR" in printed and "s per sample" in printed
    report = json.loads(out.read_text())
    assert report["combine"] == "mixture" and [t["seed"] for t in report["tests"]] == [0, 1, 2, 5]
    one = candidate_test(tiny_explorer.with_combine("mixture"), 5, controls=4)
    assert report["tests"][3]["candidate"] == one.candidate
    assert report["tests"][3]["flip_rate"] == pytest.approx(one.flip_rate)
    assert -1 <= report["tar"]["tar"] <= 1


def test_configure_sets_the_runs_default_rule(tiny_run_copy, capsys):
    from tda.api import Explorer
    from tda.ensemble import read_manifest

    stats = read_manifest(tiny_run_copy).get("stats")
    assert main(["configure", "--run", str(tiny_run_copy), "--combine", "mixture"]) == 0
    assert Explorer(tiny_run_copy).combine == "mixture"  # loads: every hash still matches
    assert read_manifest(tiny_run_copy).get("stats") == stats
    assert main(["candidate", "--run", str(tiny_run_copy), "--seed", "x"]) == 2
    assert "--seed must be" in capsys.readouterr().err


def _children(pid: int) -> list[int]:
    """Every process below `pid` (workers may be children of a forkserver)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in _children(k)]


def test_sigterm_during_training_stops_every_worker_and_keeps_the_run(tmp_path):
    """`kill` on a parallel training ends its worker processes too (none left orphaned);
    the same command then resumes."""
    import signal
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "tda", "train", "--dataset", "digits", "--n", "16",
            "--members", "6", "--weight", "3", "--image-size", "8", "--steps", "100000",
            "--batch-size", "8", "--channels-per-block", "8,16", "--workers", "2",
            "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300  # imports alone take a while on a busy machine
        while len(_children(proc.pid)) < 3 and time.time() < deadline:  # both workers up
            time.sleep(0.5)
        workers = _children(proc.pid)  # two workers, the forkserver, the resource tracker
        assert len(workers) >= 3
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert "interrupted" in proc.stderr.read()
        deadline = time.time() + 10
        while any(Path(f"/proc/{w}").exists() for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{w}").exists() and "Z" not in
                       Path(f"/proc/{w}/stat").read_text().split()[2] for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (out / "run_config.json").is_file()  # the run is kept, to be resumed


def test_half_precision_weights_keep_chains_exact_on_the_stored_values(tiny_run_copy, capsys):
    """`configure --half` stores float16 members; chains then run on exactly those values:
    the same as float32 members rounded to float16 by hand, bit for bit."""
    from diffusers import UNet2DModel

    from tda.api import Explorer
    from tda.ensemble import load_run, member_dir

    before = load_run(tiny_run_copy)
    size = sum(p.stat().st_size for p in (tiny_run_copy / "members").rglob("*.safetensors"))
    assert main(["configure", "--run", str(tiny_run_copy), "--half"]) == 0
    assert "float16" in capsys.readouterr().out
    after = load_run(tiny_run_copy)  # every hash matches the rewritten manifest
    assert after.summary()["stored_weights"] == "float16"
    half = sum(p.stat().st_size for p in (tiny_run_copy / "members").rglob("*.safetensors"))
    assert half < 0.6 * size
    for m0, m1 in zip(before.members, after.members, strict=True):
        for p0, p1 in zip(m0.parameters(), m1.parameters(), strict=True):
            assert p1.dtype == torch.float32
            assert torch.equal(p1, p0.half().float())  # loaded values are the stored ones
    for m in before.members:  # the reference: round the float32 run by hand
        for p in m.parameters():
            p.copy_(p.half().float())
    ref, got = Explorer(before), Explorer(tiny_run_copy)
    assert torch.equal(ref.sample(3).sample, got.sample(3).sample)
    assert torch.equal(ref.counterfactual(3, remove_rows=[2]).sample,
                       got.counterfactual(3, remove_rows=[2]).sample)
    plain = UNet2DModel.from_pretrained(member_dir(tiny_run_copy, 0), use_safetensors=True)
    for p0, p1 in zip(plain.parameters(), after.members[0].parameters(), strict=True):
        assert torch.equal(p0.float(), p1)  # plain diffusers loading reads the same weights
    assert main(["configure", "--run", str(tiny_run_copy), "--half"]) == 0  # idempotent
    assert "already" in capsys.readouterr().out
    assert main(["configure", "--run", str(tiny_run_copy)]) == 2
