"""Tests for the helpers that keep notebook code in the package: leave-one-out baseline, sampled
estimators, exact bias/variance, exact gradient ascent, round-off formatting."""

from __future__ import annotations

import pytest
import torch

import policygrad as pg
from policygrad import diagnostics, reward_side, train
from policygrad.toy import tasks


def _toy():
    problem, _ = tasks.target_sequence_task(2, 3, 3, reward="per_step")
    policy = pg.TabularPolicy(2, 3, 3, init_scale=1.0, generator=torch.Generator().manual_seed(1))
    return problem, policy


def test_leave_one_out_baseline_values_and_rloo_identity():
    R = torch.tensor([1.0, 0.0, 0.5, 2.0])
    b = reward_side.leave_one_out_baseline(R)
    torch.testing.assert_close(b, torch.tensor([2.5, 3.5, 3.0, 1.5]) / 3)
    # R_i - b_i = N/(N-1) (R_i - mean R): the RLOO identity
    torch.testing.assert_close(R - b, 4 / 3 * (R - R.mean()))
    per_token = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    torch.testing.assert_close(reward_side.leave_one_out_baseline(per_token), torch.tensor([[4.0, 2.0], [3.0, 1.0], [2.0, 3.0]]))


@pytest.mark.parametrize("bad", [torch.tensor([1.0]), torch.tensor([1.0, float("nan")]), torch.zeros(2, 2, 2)])
def test_leave_one_out_baseline_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        reward_side.leave_one_out_baseline(bad)


def test_sampled_estimator_equals_the_manual_pipeline():
    problem, policy = _toy()
    est = diagnostics.sampled_estimator(
        problem, policy, lambda s, r: reward_side.reinforce_weights(r, s.mask, reward_to_go=True)
    )
    g = torch.Generator().manual_seed(5)
    prompts = problem.sample_prompts(32, g)
    samples = policy.sample(prompts, generator=g)
    rewards = problem.rewards_for(prompts, samples.completions)
    w = reward_side.reinforce_weights(rewards, samples.mask, reward_to_go=True)
    manual = pg.trajectory_side.score_function_gradient(policy, samples, w)
    torch.testing.assert_close(est(32, torch.Generator().manual_seed(5)), manual)


def test_sampled_estimator_rejects_non_callable():
    problem, policy = _toy()
    with pytest.raises(ValueError, match="callable"):
        diagnostics.sampled_estimator(problem, policy, "not a function")


def test_exact_bias_variance_detects_a_wrong_estimator():
    problem, policy = _toy()
    R = problem.returns()
    bias, var = diagnostics.exact_bias_variance(problem, policy, R)
    assert bias < 1e-6
    _, var_ref = problem.estimator_moments(policy, R)
    assert var == pytest.approx(var_ref)
    # doubling the reward doubles the mean: the bias is exactly ||grad J||
    bias2, var2 = diagnostics.exact_bias_variance(problem, policy, 2 * R)
    assert bias2 == pytest.approx(problem.gradient(policy).norm().item(), rel=1e-5)
    assert var2 == pytest.approx(4 * var, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_exact_gradient_ascent_increases_J_and_reports_it(optimizer):
    problem, policy = _toy()
    hist = train.exact_gradient_ascent(policy, problem, steps=20, lr=0.5 if optimizer == "sgd" else 0.05,
                                       optimizer=optimizer)
    assert len(hist) == 21
    with torch.no_grad():
        assert hist[-1] == pytest.approx(problem.objective(policy).item())
    assert hist[-1] > hist[0] + 0.05
    if optimizer == "sgd":  # small exact steps on a smooth objective never go down
        assert all(b >= a - 1e-7 for a, b in zip(hist, hist[1:], strict=False))


@pytest.mark.parametrize("kwargs", [{"steps": -1, "lr": 0.1}, {"steps": 2, "lr": 0.0}, {"steps": 2, "lr": 0.1, "optimizer": "lbfgs"}])
def test_exact_gradient_ascent_rejects_bad_arguments(kwargs):
    problem, policy = _toy()
    with pytest.raises(ValueError):
        train.exact_gradient_ascent(policy, problem, **kwargs)


def test_near_zero_formatting():
    assert pg.near_zero(3e-9) == "0 (< 1e-05)"
    assert pg.near_zero(-2e-6, tol=1e-5) == "0 (< 1e-05)"
    assert pg.near_zero(0.012345) == "0.01235"
    with pytest.raises(ValueError):
        pg.near_zero(1.0, tol=0.0)
