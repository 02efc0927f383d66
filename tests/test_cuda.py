"""The same code on a GPU: runs only where torch sees CUDA (CI has none; it is skipped there)."""

from __future__ import annotations

import pytest
import torch

import policygrad as pg
from policygrad.toy import tasks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def _setup():
    problem, _ = tasks.target_sequence_task(2, 3, 3, reward="per_step")
    cpu = pg.TabularPolicy(2, 3, 3, init_scale=0.7, generator=torch.Generator().manual_seed(3))
    gpu = pg.TabularPolicy(2, 3, 3).to(pg.get_device("cuda"))
    gpu.load_state_dict(cpu.state_dict())
    return problem, cpu, gpu


def test_exact_quantities_agree_between_cpu_and_cuda():
    problem, cpu, gpu = _setup()
    torch.testing.assert_close(problem.gradient(gpu).cpu(), problem.gradient(cpu), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(problem.values(gpu), problem.values(cpu), rtol=1e-5, atol=1e-6)
    mean_c, var_c = problem.estimator_moments(cpu, problem.returns_to_go())
    mean_g, var_g = problem.estimator_moments(gpu, problem.returns_to_go())
    torch.testing.assert_close(mean_g.cpu(), mean_c, rtol=1e-5, atol=1e-6)
    assert var_g == pytest.approx(var_c, rel=1e-5)


def test_cpu_seeded_sampling_is_identical_on_cuda():
    problem, cpu, gpu = _setup()
    prompts = problem.sample_prompts(64, torch.Generator().manual_seed(0))
    a = cpu.sample(prompts, generator=torch.Generator().manual_seed(1))
    b = gpu.sample(prompts, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.completions, b.completions.cpu())


def test_reinforce_training_runs_on_cuda():
    problem, cpu, gpu = _setup()
    hist_gpu = pg.train.train_toy_reinforce(gpu, problem, steps=20, batch_size=16, baseline="learned",
                                            reward_to_go=True, seed=0)
    hist_cpu = pg.train.train_toy_reinforce(cpu, problem, steps=20, batch_size=16, baseline="learned",
                                            reward_to_go=True, seed=0)
    assert hist_gpu["objective"][-1] > hist_gpu["objective"][0]
    assert hist_gpu["objective"][-1] == pytest.approx(hist_cpu["objective"][-1], abs=1e-4)
