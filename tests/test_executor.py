"""Executors: local processes and a Ray cluster train the same run, file for file, and
sweep the same counterfactuals; a lost worker, a lost node and Ctrl-C cost no result.

Every Ray test shares one small cluster (`ray.cluster_utils.Cluster`: a head that runs
no tasks and one 2-CPU node); skipped when Ray is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from tda import TdaError
from tda.attribution import attribute, exact_counterfactuals
from tda.candidate import candidate_tests
from tda.encoding import phantom_codes
from tda.ensemble import MANIFEST, member_dir
from tda.executor import FAULT_DIR_ENV, Job, JobError, LocalExecutor, RayExecutor
from tda.fit import CKPT_DIR
from tda.train import train_run

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


def _files(run: Path) -> dict[str, str]:
    return json.loads((run / MANIFEST).read_text())["files"]


def _assert_same_run(a: Path, b: Path) -> None:
    """Same files with the same sha256, and the same sample (a check of the check)."""
    assert _files(a) == _files(b)
    assert (a / "run_config.json").read_text() == (b / "run_config.json").read_text()
    from tda.api import Explorer

    assert torch.equal(Explorer(a).sample(3).sample, Explorer(b).sample(3).sample)


def _no_leftovers(run: Path) -> None:
    """Nothing half-written: no temporary file or folder anywhere in the run."""
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node without CPUs (so tasks run on worker nodes) and one 2-CPU node."""
    faults = tmp_path_factory.mktemp("faults")
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 0, "include_dashboard": False,
                                "object_store_memory": 100 * 1024**2})
    c.add_node(num_cpus=2, object_store_memory=150 * 1024**2)
    ray.init(address=c.address, logging_level="WARNING",
             runtime_env={"env_vars": {FAULT_DIR_ENV: str(faults), "OMP_NUM_THREADS": "1"}})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this file's jobs
    c.faults = faults
    yield c
    ray.shutdown()
    c.shutdown()


def _train_ray(out: Path, **kw) -> bool:
    with RayExecutor() as ex:  # the cluster's Ray, already initialised: kept running
        return train_run(out, tiny_config(), progress=False, executor=ex, **kw)


def test_local_processes_train_the_same_members_as_one_process(tiny_run_dir, tiny_run_copy):
    for i in (1, 4):  # two members in two processes
        shutil.rmtree(member_dir(tiny_run_copy, i))
    (tiny_run_copy / MANIFEST).unlink()
    assert train_run(tiny_run_copy, tiny_config(), workers=2, progress=False)
    _assert_same_run(tiny_run_copy, tiny_run_dir)


def test_local_jobs_run_here_in_order_and_pass_on_errors():
    seen = []
    jobs = [Job(k, _echo, (k,)) for k in range(3)]
    LocalExecutor(1).run(jobs, lambda job, r: seen.append(r), lambda k, m: seen.append(("r", m)))
    assert seen == [("r", 0), 0, ("r", 1), 1, ("r", 2), 2]
    with pytest.raises(JobError, match="job 7 failed: ValueError: no 7"):
        LocalExecutor(2).run([Job(7, _fail, (7,))])


def test_local_processes_do_not_rerun_a_page_script_that_streamlit_left_as_main(
        tmp_path, monkeypatch):
    """Streamlit (and AppTest) leaves the page script it ran last as __main__; a spawned
    job must not run it again (it did: every job failed with exit code 1)."""
    import types

    page = tmp_path / "page.py"
    page.write_text("raise SystemExit('a page script ran in a job process')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(page)
    monkeypatch.setitem(sys.modules, "__main__", fake)
    seen = []
    LocalExecutor(2).run([Job(k, _echo, (k,)) for k in range(2)],
                         lambda job, r: seen.append(r))
    assert sorted(seen) == [0, 1]


def _echo(x, report):
    report(x)
    return x


def _fail(x, report):
    raise ValueError(f"no {x}")


def test_ray_run_equals_the_local_run_file_for_file(cluster, tiny_run_dir, tmp_path):
    out = tmp_path / "ray"
    assert _train_ray(out)
    _assert_same_run(out, tiny_run_dir)
    assert not (out / CKPT_DIR).exists()


def test_ray_on_a_shared_path_writes_in_place_the_same_run(cluster, tiny_run_dir, tmp_path):
    out = tmp_path / "shared"
    with RayExecutor(shared_path=True) as ex:
        assert train_run(out, tiny_config(), progress=False, executor=ex)
    _assert_same_run(out, tiny_run_dir)


def test_ray_pretrained_base_replay_and_stop_after_equal_local(cluster, tmp_path):
    cfg = tiny_config(steps=6, init="pretrained", pretrain_steps=12, pretrain_batch_size=8,
                      replay=0.5)
    ref, out = tmp_path / "ref", tmp_path / "ray"
    assert train_run(ref, cfg, workers=1, progress=False)
    with RayExecutor() as ex:
        assert train_run(out, cfg, progress=False, executor=ex, stop_after=5) is False
        assert _checkpoints(out) == [out / CKPT_DIR / "base.safetensors"]
        assert train_run(out, cfg, progress=False, executor=ex) is True
    _assert_same_run(out, ref)


def test_ray_sweep_equals_the_local_sweep(cluster, tiny_explorer, monkeypatch):
    import tda.attribution

    monkeypatch.setattr(tda.attribution, "SWEEP_CHUNK", 7)
    phantoms = phantom_codes(tiny_explorer.run.codes, 8, 1)  # the 4 codes C(6,3) has left
    codes = np.concatenate([tiny_explorer.run.codes, phantoms])  # 20 chains: 3 tasks
    local = exact_counterfactuals(tiny_explorer, 5, None, codes)
    seen = []
    with RayExecutor() as ex:
        remote = exact_counterfactuals(tiny_explorer, 5, None, codes,
                                       progress=lambda k, K: seen.append((k, K)), executor=ex)
        att = attribute(tiny_explorer, 5, "exact", n_phantoms=8, executor=ex)
    with RayExecutor(shared_path=True) as ex:  # the nodes read the run from its path
        assert torch.equal(exact_counterfactuals(tiny_explorer, 5, None, codes, executor=ex), local)
    assert torch.equal(remote, local)
    assert len(codes) == 20 and seen[-1] == (30, 30)  # 3 sweeps of 10 steps each
    ref = attribute(tiny_explorer, 5, "exact", n_phantoms=8)
    assert np.array_equal(att.scores, ref.scores) and np.array_equal(att.null_scores, ref.null_scores)


# A Ray task runs the same chains as the local path, but batched differently (tasks of
# SWEEP_CHUNK chains where the candidate test runs all its chains in one pass here), and
# a kernel's float32 sums may then round differently (unit roundoff 6e-8 per operation).
# Samples lie in [-1, 1]; through 10 steps of the tiny UNet the differences stay far
# below 1e-5, the bound test_candidate uses for the same chain in another batch.
# Measured here: 6.4e-7 (candidate test, 21 chains in one pass vs tasks of 8); 0 where
# both sides batch alike (the evaluate parts below).
ATOL = 1e-5


def _assert_same_tests(remote, local) -> None:
    """Same candidates, ablation outcomes and verdicts; the same images within ATOL."""
    assert [t.summary()["verdict"] for t in remote] == [t.summary()["verdict"] for t in local]
    for r, t in zip(remote, local, strict=True):
        assert (r.seed, r.candidate, r.nearest_after) == (t.seed, t.candidate, t.nearest_after)
        for name in ("control_rows", "control_nearest", "phantom_nearest"):
            np.testing.assert_array_equal(getattr(r, name), getattr(t, name))
        for name in ("sample", "counterfactual"):
            torch.testing.assert_close(getattr(r, name), getattr(t, name), rtol=0, atol=ATOL)
        for name in ("control_effects", "phantom_effects"):
            np.testing.assert_allclose(getattr(r, name), getattr(t, name), rtol=0, atol=ATOL)


def test_ray_candidate_test_equals_the_local_one(cluster, tiny_run_dir, tiny_explorer, tmp_path,
                                                 monkeypatch):
    import tda.attribution
    from tda.cli import main

    monkeypatch.setattr(tda.attribution, "SWEEP_CHUNK", 8)
    ex = tiny_explorer.with_combine("mixture")
    seeds = [1, 2, 11]  # 3 samples x (candidate + 4 controls + 2 phantoms) = 21 chains: 3 tasks
    local = candidate_tests(ex, seeds, controls=4, phantoms=2)
    seen = []
    with RayExecutor() as executor:
        remote = candidate_tests(ex, seeds, controls=4, phantoms=2, executor=executor,
                                 progress=lambda d, t: seen.append((d, t)))
    _assert_same_tests(remote, local)
    assert seen[-1] == (3, 3) and len(seen) > 1  # samples count up as the chain tasks finish
    out = tmp_path / "cand.json"
    assert main(["candidate", "--run", str(tiny_run_dir), "--seed", "1,2,11", "--controls", "4",
                 "--phantoms", "2", "--combine", "mixture", "--backend", "ray",
                 "--out", str(out)]) == 0
    printed = json.loads(out.read_text())["tests"]
    assert [t["candidate"] for t in printed] == [t.candidate for t in local]
    assert [t["verdict"] for t in printed] == [t.verdict for t in local]


def test_ray_evaluate_parts_equal_the_local_ones(cluster, tiny_run_dir, tmp_path, monkeypatch):
    """The candidate, samples (fidelity) and exact attribution parts through Ray."""
    from safetensors.torch import load_file

    import tda.attribution
    from tda.evaluate import CACHE_DIR, EvalSizes, evaluate
    from tda.metrics import fit_classifier

    monkeypatch.setattr(tda.attribution, "SWEEP_CHUNK", 24)  # samples: 2 tasks, exact: 12
    clf = tmp_path / "classifier"
    fit_classifier(tiny_config().data, clf, steps=20)
    sizes = EvalSizes(samples=4, seeds=1, other_rule_seeds=0, draws=1, sizes=(2,), tar_samples=3,
                      tar_controls=2, parts=("candidate", "fidelity", "attribution"))
    local = evaluate(tiny_run_dir, tmp_path / "local", sizes, classifier_dir=clf)
    with RayExecutor() as executor:
        remote = evaluate(tiny_run_dir, tmp_path / "ray", sizes, classifier_dir=clf,
                          executor=executor)
    for rule in ("mean", "mixture"):
        a, b = remote["candidate"]["rules"][rule], local["candidate"]["rules"][rule]
        for key in ("candidate", "changed", "flip_rate", "p_value", "verdict"):
            assert a["per_sample"][key] == b["per_sample"][key], (rule, key)
        assert (a["tar"], a["tar_low"], a["tar_high"]) == (b["tar"], b["tar_low"], b["tar_high"])
    block = f"{CACHE_DIR}/samples/block_000000.safetensors"  # 8 weight rows x 4 seeds: 32 chains
    ys = [load_file(str(tmp_path / side / block))["samples"] for side in ("ray", "local")]
    torch.testing.assert_close(ys[0], ys[1], rtol=0, atol=ATOL)
    assert remote["fidelity"]["fd_ensemble"] == pytest.approx(local["fidelity"]["fd_ensemble"],
                                                              rel=1e-3)
    attribution = f"{CACHE_DIR}/attributions/mean_seed_200000.safetensors"  # exact: 16 chains
    scores = [load_file(str(tmp_path / side / attribution)) for side in ("ray", "local")]
    for key in ("exact.magnitude", "exact.resemblance", "jacobian.magnitude"):
        torch.testing.assert_close(scores[0][key], scores[1][key], rtol=0, atol=ATOL)
    assert not (tiny_run_dir / "report").exists()  # only the driver wrote, into `out`


def test_a_worker_lost_on_first_attempt_is_retried(cluster, tiny_run_dir, tmp_path):
    doomed = ["01@10", "04@0"]  # member 01's second task and member 04's first die once
    for key in doomed:
        (cluster.faults / key).touch()
    out = tmp_path / "lost-worker"
    assert _train_ray(out)
    assert all((cluster.faults / f"{k}.died").exists() for k in doomed)
    _assert_same_run(out, tiny_run_dir)


def test_a_node_removed_mid_training_costs_no_result(cluster, tiny_run_dir, tmp_path):
    node = cluster.add_node(num_cpus=2, object_store_memory=150 * 1024**2)
    out = tmp_path / "lost-node"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("done", _train_ray(out)))
    worker.start()
    deadline = time.time() + 240
    # both nodes busy (4 CPUs for 6 members) and some checkpoints back: remove one node
    while time.time() < deadline and worker.is_alive():
        if ray.available_resources().get("CPU", 0) == 0 and len(_checkpoints(out)) >= 2:
            break
        time.sleep(0.05)
    assert worker.is_alive(), "training ended before the node could be removed"
    cluster.remove_node(node)
    worker.join(300)
    assert result.get("done") is True
    _assert_same_run(out, tiny_run_dir)


def _checkpoints(out: Path) -> list[Path]:
    return list((out / CKPT_DIR).glob("*.safetensors")) if (out / CKPT_DIR).is_dir() else []


def test_ctrl_c_leaves_a_run_that_the_same_command_resumes(cluster, tiny_run_dir, tmp_path,
                                                           monkeypatch):
    """An interrupt in the driver mid-training (here as it takes in the first result after
    a checkpoint was written, where a Ctrl-C lands as KeyboardInterrupt; the CLI test
    below sends a real SIGINT) leaves checkpoints that the same command resumes."""
    from tda import train_jobs

    out = tmp_path / "interrupted"
    real = train_jobs._Bars.__call__

    def interrupt_once_checkpoints_arrive(self, name, step, loss):
        if _checkpoints(out):
            raise KeyboardInterrupt
        return real(self, name, step, loss)

    monkeypatch.setattr(train_jobs._Bars, "__call__", interrupt_once_checkpoints_arrive)
    with pytest.raises(KeyboardInterrupt):
        _train_ray(out)
    monkeypatch.setattr(train_jobs._Bars, "__call__", real)
    assert not (out / MANIFEST).exists()
    assert _checkpoints(out)
    _no_leftovers(out)
    assert _train_ray(out)  # the same command again
    _assert_same_run(out, tiny_run_dir)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_stops_the_ray_a_command_started_and_every_process_of_it(tmp_path):
    """A real `python -m tda train --backend ray` (a local Ray of its own) and Ctrl-C.
    Long enough (5,000 steps) that it cannot end before the signal on a busy machine."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tda", *(
        "train --dataset digits --n 16 --members 6 --weight 3 --image-size 8 --steps 5000 "
        "--batch-size 16 --channels-per-block 8,16 --backend ray").split(), "--out", str(out)]
    root = Path(__file__).resolve().parents[1]
    # SIGINT as a terminal gives it: a suite started in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and Python then keeps ignoring it in the command
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not _checkpoints(out):
            time.sleep(0.2)
        assert _checkpoints(out), "no checkpoint before the deadline"
        family = _descendants(proc.pid)  # its Ray: GCS, raylet, workers, ...
        assert family
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)  # stopping a local Ray is slow on a busy machine
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted: finished work is kept" in err
    time.sleep(2)
    assert not [p for p in family if _alive(p)], "processes of the command's Ray remain"
    _no_leftovers(out)
    assert not (out / MANIFEST).exists() and _checkpoints(out)


def _descendants(pid: int) -> set[int]:
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.update(kids)
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited


def test_cli_backend_ray_and_its_errors(cluster, tmp_path, capsys):
    from tda.cli import main

    args = ("train --dataset digits --n 16 --members 6 --weight 3 --image-size 8 --steps 5 "
            "--batch-size 16 --channels-per-block 8,16 --sample-steps 10 --workers 1").split()
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--backend", "ray"]) == 0
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert ray.is_initialized()  # a Ray the command did not start is left running
    run = str(tmp_path / "ray")
    out = tmp_path / "att.safetensors"
    assert main(["attribute", "--run", run, "--method", "exact", "--phantoms", "4",
                 "--backend", "ray", "--out", str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "x"), "--gpus-per-member", "0.5"]) == 2
    assert "--gpus-per-member needs --backend ray" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x"), "--backend", "ray",
                 "--gpus-per-member", "0.5"]) == 2
    assert "--gpus-per-member needs --device cuda" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x"), "--backend", "ray", "--device", "cuda",
                 "--gpus-per-member", "0.5"]) == 2
    assert "the Ray cluster has no GPU" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x"), "--ray-address", "auto"]) == 2
    assert "need --backend ray" in capsys.readouterr().err


def test_a_failing_job_fails_the_call_with_its_own_error(cluster):
    with RayExecutor() as ex:
        with pytest.raises(JobError, match="job 3 failed: ValueError: no 3"):
            ex.run([Job(3, _fail, (3,)), Job(4, _echo, (4,))])
        with pytest.raises(TdaError, match="bad input"):  # a user's error stays itself
            ex.run([Job(5, _user_error, ())])


def _user_error(report):
    raise TdaError("bad input")
