"""The two batch leave-one-out baselines of chapter 2: hand values, how they differ, and
exact unbiasedness by enumerating every batch of two trajectories."""

import dataclasses
import itertools

import pytest
import torch

import policygrad as pg
from policygrad import reward_side


def test_sequence_leave_one_out_baseline_hand_values_and_rloo_identity():
    R = torch.tensor([1.0, 0.0, 0.5, 2.0])
    b = reward_side.sequence_leave_one_out_baseline(R)
    torch.testing.assert_close(b, torch.tensor([2.5, 3.5, 3.0, 1.5]) / 3)
    torch.testing.assert_close(R - b, 4 / 3 * (R - R.mean()))


def test_per_step_leave_one_out_baseline_hand_values():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
    b = reward_side.per_step_leave_one_out_baseline(w)
    torch.testing.assert_close(b, torch.tensor([[4.0, 2.0], [3.0, 1.0], [2.0, 3.0]]))


def test_the_two_baselines_differ_on_reward_to_go():
    # two completions of two tokens; per-step rewards r = (1, 0) and (0, 1)
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.ones(2, 2)
    rtg = reward_side.reinforce_weights(rewards, mask, reward_to_go=True)
    torch.testing.assert_close(rtg, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    seq = reward_side.sequence_leave_one_out_baseline(rtg[:, 0])  # R(τ_j) = R_0
    step = reward_side.per_step_leave_one_out_baseline(rtg)
    torch.testing.assert_close(seq, torch.tensor([1.0, 1.0]))
    # at t = 1 the other completion's reward-to-go, not its whole return
    torch.testing.assert_close(step, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def _token_scores(problem, policy):
    """(M K, T, d): ∇ log π(y_t | s_t) of every enumerated pair and position."""
    M, K, T = problem.num_prompts, problem.num_completions, problem.completions.shape[1]
    eye = torch.eye(T, dtype=torch.float64)
    per_t = [
        problem.per_sample_gradients(policy, eye[t].expand(M, K, T).clone())
        for t in range(T)
    ]
    return torch.stack(per_t, 2).reshape(M * K, T, -1)


def _expected_estimate(problem, policy, weights_fn, n=2):
    """E over every batch of n i.i.d. pairs of (1/n) Σ_i Σ_t w_{i,t} ∇ log π(y_{i,t})."""
    M, K = problem.num_prompts, problem.num_completions
    with torch.no_grad():
        pair_p = (problem.prompt_probs.unsqueeze(1) * problem.probs(policy)).reshape(-1)
    scores = _token_scores(problem, policy)
    step_r = problem.step_rewards().reshape(M * K, -1).double()
    mask = problem.mask.repeat(M, 1).double()
    total = torch.zeros(scores.shape[-1], dtype=torch.float64)
    for batch in itertools.product(range(M * K), repeat=n):
        idx = torch.tensor(batch)
        w = weights_fn(step_r[idx], mask[idx])  # (n, T)
        est = torch.einsum("nt,ntd->d", w, scores[idx]) / n
        total += pair_p[idx].prod() * est
    return total


@pytest.fixture
def toy():
    problem, _ = pg.toy.target_sequence_task(2, 2, 2, reward="per_step", seed=0)
    problem = dataclasses.replace(
        problem, prompt_probs=torch.tensor([0.7, 0.3], dtype=torch.float64)
    )
    policy = pg.TabularPolicy(
        2, 2, 2, init_scale=1.0, generator=torch.Generator().manual_seed(0)
    ).double()
    return problem, policy


def _rtg(r, m):
    return reward_side.reinforce_weights(r, m, reward_to_go=True)


@pytest.mark.parametrize(
    "name, weights_fn",
    [
        (
            "sequence",
            lambda r, m: _rtg(r, m)
            - reward_side.sequence_leave_one_out_baseline(_rtg(r, m)[:, 0])[:, None],
        ),
        (
            "per_step",
            lambda r, m: _rtg(r, m) - reward_side.per_step_leave_one_out_baseline(_rtg(r, m)),
        ),
    ],
)
def test_both_baselines_are_exactly_unbiased_over_every_batch(toy, name, weights_fn):
    problem, policy = toy
    exact = problem.gradient(policy)
    mean = _expected_estimate(problem, policy, weights_fn)
    assert exact.norm() > 0.05
    torch.testing.assert_close(mean, exact, atol=1e-12, rtol=0)


def test_negative_control_the_batch_mean_including_the_sample_is_biased(toy):
    # b_i = mean over all rows, itself included: the expectation is (1 - 1/n) ∇J
    problem, policy = toy
    exact = problem.gradient(policy)

    def with_self(r, m):
        R = r.sum(1)
        return (R - R.mean())[:, None] * m

    mean = _expected_estimate(problem, policy, with_self)
    torch.testing.assert_close(mean, 0.5 * exact, atol=1e-12, rtol=0)
    assert (mean - exact).norm() > 0.02


@pytest.mark.parametrize(
    "fn, bad",
    [
        (reward_side.sequence_leave_one_out_baseline, torch.tensor([1.0])),
        (reward_side.sequence_leave_one_out_baseline, torch.zeros(3, 2)),
        (reward_side.sequence_leave_one_out_baseline, torch.tensor([1.0, float("nan")])),
        (reward_side.sequence_leave_one_out_baseline, torch.tensor([1, 2])),
        (reward_side.per_step_leave_one_out_baseline, torch.zeros(1, 3)),
        (reward_side.per_step_leave_one_out_baseline, torch.zeros(3)),
        (reward_side.per_step_leave_one_out_baseline, torch.tensor([[1.0], [float("inf")]])),
        (reward_side.per_step_leave_one_out_baseline, torch.ones(2, 2, dtype=torch.long)),
    ],
)
def test_bad_input_raises_value_error(fn, bad):
    with pytest.raises(ValueError):
        fn(bad)
