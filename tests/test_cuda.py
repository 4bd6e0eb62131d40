"""The same code on a CUDA GPU: samples, sweeps, Jacobian and training agree with the CPU.

Skipped where no GPU is present (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
Tolerances are those of float32 kernels that sum in another order, not of the method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from tda import TdaError
from tda.api import Explorer
from tda.attribution import attribute, exact_counterfactuals, jacobian
from tda.encoding import without_codes
from tda.ensemble import load_run, member_dir
from tda.fit import CKPT_DIR
from tda.train import train_run

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def test_training_on_a_missing_gpu_is_refused_before_any_work(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TdaError, match="CUDA is not available"):
        train_run(tmp_path / "run", tiny_config(), workers=1, progress=False, device="cuda")
    assert not (tmp_path / "run").exists()


@needs_cuda
def test_gpu_samples_and_sweeps_match_the_cpu(tiny_run_dir):
    cpu, gpu = Explorer(tiny_run_dir), Explorer(tiny_run_dir, device="cuda")
    for seed in (0, 3):
        a, b = cpu.sample(seed).sample, gpu.sample(seed).sample
        assert b.device.type == "cpu"  # results come back to the host
        torch.testing.assert_close(b, a, atol=2e-4, rtol=0)
    codes = cpu.run.codes[:5]
    ya = exact_counterfactuals(cpu, 1, None, codes)
    yb = exact_counterfactuals(gpu, 1, None, codes)
    torch.testing.assert_close(yb, ya, atol=2e-4, rtol=0)
    # the batched sweep on the GPU equals one counterfactual at a time on the GPU
    one = torch.stack([gpu.y(w[None], 1)[0] for w in without_codes(codes)])
    torch.testing.assert_close(yb, one, atol=1e-4, rtol=0)
    # central differences (step 1e-2): checked on an H200; forward differences divide the
    # devices' rounding differences by a smaller step
    ja, jb = jacobian(cpu, 2, central=True), jacobian(gpu, 2, central=True)
    assert torch.linalg.norm(jb - ja) <= 1e-2 * torch.linalg.norm(ja)


@needs_cuda
def test_gpu_attribution_ranks_like_the_cpu(tiny_run_dir):
    cpu, gpu = Explorer(tiny_run_dir), Explorer(tiny_run_dir, device="cuda")
    a = attribute(cpu, 0, "exact")
    b = attribute(gpu, 0, "exact")
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-3)
    assert np.array_equal(b.order[:3], a.order[:3])


@needs_cuda
def test_training_on_the_gpu_resumes_on_the_cpu(tiny_run_dir, tmp_path):
    out = tmp_path / "gpu"
    cfg = tiny_config()
    assert train_run(out, cfg, workers=1, progress=False, stop_after=15, device="cuda") is False
    assert int(load_file(str(out / CKPT_DIR / "00.safetensors"))["step"]) == 15
    assert train_run(out, cfg, workers=2, progress=False, device="cpu") is True
    run, ref = load_run(out), load_run(tiny_run_dir)
    # the same random stream (drawn on the CPU): the GPU-trained members stay close to
    # the CPU-trained ones; only summation order differs
    for i in range(cfg.ensemble.n_members):
        assert member_dir(out, i).is_dir()
        wa = torch.nn.utils.parameters_to_vector(run.members[i].parameters())
        wb = torch.nn.utils.parameters_to_vector(ref.members[i].parameters())
        assert torch.linalg.norm(wa - wb) <= 1e-2 * torch.linalg.norm(wb)
