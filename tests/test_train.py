"""Tests for policygrad.train: REINFORCE on enumerable toys, checked step by step and by its exact objective."""

import pytest
import torch

import policygrad as pg
from policygrad.train import BASELINES, train_toy_reinforce


def _same_history(a, b):
    """Histories equal entry by entry (the first mean_reward is NaN in both, and NaN != NaN)."""
    assert a["mean_reward"][0] != a["mean_reward"][0] and b["mean_reward"][0] != b["mean_reward"][0]
    return a["step"] == b["step"] and a["objective"] == b["objective"] and a["mean_reward"][1:] == b["mean_reward"][1:]


def _task(reward="fraction"):
    prob, _ = pg.toy.target_sequence_task(2, 3, 2, reward=reward, seed=0)
    return prob


@pytest.mark.parametrize(
    "reward, baseline, reward_to_go",
    [("fraction", b, False) for b in BASELINES] + [("per_step", b, True) for b in BASELINES],
)
def test_training_improves_the_exact_objective(reward, baseline, reward_to_go):
    # Over seeds 0..9 every configuration gained at least 0.46 (from J = 1/3, maximum 1) in 40 steps.
    prob = _task(reward)
    pol = pg.TabularPolicy(2, 3, 2)
    h = train_toy_reinforce(
        pol, prob, steps=40, batch_size=16, lr=1.0, baseline=baseline, reward_to_go=reward_to_go, seed=0
    )
    assert h["objective"][0] == pytest.approx(1 / 3, abs=1e-6)
    assert h["objective"][-1] - h["objective"][0] > 0.3
    assert h["objective"][-1] == pytest.approx(prob.objective(pol).item(), abs=1e-7)  # logs the trained policy


def test_training_with_eos_improves_the_objective():
    comp, mask = pg.enumerate_completions(3, 3, eos=0)
    R = torch.randn(2, comp.shape[0], generator=torch.Generator().manual_seed(0))
    prob = pg.ExactProblem(torch.arange(2), torch.tensor([0.5, 0.5]), comp, mask, R)
    for baseline in ("sequence_leave_one_out", "per_step_leave_one_out"):
        pol = pg.TabularPolicy(2, 3, 3, eos=0)
        h = train_toy_reinforce(pol, prob, steps=40, batch_size=16, lr=1.0, baseline=baseline, seed=0)
        best = R.max(1).values.mean().item()
        assert h["objective"][-1] - h["objective"][0] > 0.5 * (best - h["objective"][0])


def test_history_keys_and_lengths():
    prob = _task("per_step")
    h = train_toy_reinforce(pg.TabularPolicy(2, 3, 2), prob, steps=7, batch_size=4, seed=1)
    assert set(h) == {"step", "objective", "mean_reward"}
    assert h["step"] == list(range(8))
    assert len(h["objective"]) == len(h["mean_reward"]) == 8
    assert h["mean_reward"][0] != h["mean_reward"][0]  # NaN before the first step
    # per-step rewards of the target task sum to the fraction of matched tokens: in [0, 1], multiples of 1/8
    for v in h["mean_reward"][1:]:
        assert 0 <= v <= 1 and abs(v * 8 - round(v * 8)) < 1e-5


def test_training_is_deterministic():
    prob = _task()
    runs = []
    for _ in range(2):
        pol = pg.TabularPolicy(2, 3, 2)
        runs.append((train_toy_reinforce(pol, prob, steps=10, batch_size=8, baseline="learned", seed=3), pol))
    assert _same_history(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1].logits_table, runs[1][1].logits_table)
    other = train_toy_reinforce(pg.TabularPolicy(2, 3, 2), prob, steps=10, batch_size=8, baseline="learned", seed=4)
    assert other["objective"] != runs[0][0]["objective"]


def _reference_training(prob, baseline, steps, batch_size, lr, value_lr, seed, reward_to_go=False):
    """REINFORCE written out directly: explicit baselines, explicit per-parameter SGD update."""
    pol = pg.TabularPolicy(2, 3, 2)
    g = torch.Generator().manual_seed(seed)
    table = {}
    for _ in range(steps):
        prompts = prob.sample_prompts(batch_size, g)
        s = pol.sample(prompts, generator=g)
        rewards = prob.rewards_for(prompts, s.completions)
        if rewards.dim() == 1:
            G = rewards.unsqueeze(1).expand(-1, 2).clone()
        elif reward_to_go:
            G = torch.stack([rewards[:, 0] + rewards[:, 1], rewards[:, 1]], 1)
        else:
            G = rewards.sum(1, keepdim=True).expand(-1, 2).clone()
        states = pol.state_index(s.prompts, s.completions)
        b = torch.zeros_like(G)
        for i in range(batch_size):
            for t in range(2):
                if baseline == "per_step_leave_one_out":  # the others' weight at position t
                    b[i, t] = sum(G[j, t] for j in range(batch_size) if j != i) / (batch_size - 1)
                elif baseline == "sequence_leave_one_out":  # the others' whole return
                    ret = rewards if rewards.dim() == 1 else rewards.sum(1)
                    b[i, t] = sum(ret[j] for j in range(batch_size) if j != i) / (batch_size - 1)
                elif baseline == "learned":
                    b[i, t] = table.get(int(states[i, t]), 0.0)
        logp = pg.trajectory_side.token_log_probs(pol(s.prompts, s.completions), s.completions)
        grad = torch.autograd.grad(((G - b) * logp).sum() / batch_size, pol.logits_table)[0]
        with torch.no_grad():
            pol.logits_table += lr * grad  # ascent on the surrogate = descent on the loss
        if baseline == "learned":
            visits = {}
            for i in range(batch_size):
                for t in range(2):
                    visits.setdefault(int(states[i, t]), []).append(G[i, t].item())
            for st, gs in visits.items():
                old = table.get(st, 0.0)
                table[st] = old + value_lr * (sum(gs) / len(gs) - old)
    return pol


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("reward, reward_to_go", [("fraction", False), ("per_step", True), ("per_step", False)])
def test_training_steps_match_a_reference_loop(baseline, reward, reward_to_go):
    prob = _task(reward)
    pol = pg.TabularPolicy(2, 3, 2)
    train_toy_reinforce(
        pol, prob, steps=3, batch_size=5, lr=0.7, baseline=baseline, value_lr=0.3, seed=2, reward_to_go=reward_to_go
    )
    ref = _reference_training(prob, baseline, 3, 5, 0.7, 0.3, 2, reward_to_go)
    assert torch.allclose(pol.logits_table, ref.logits_table, atol=1e-6)
    assert pol.logits_table.abs().max() > 0.01


def test_learned_baseline_is_only_applied_to_later_samples():
    # on the first step the value table is still 0, so the update equals that of no baseline
    prob = _task()
    a, b = pg.TabularPolicy(2, 3, 2), pg.TabularPolicy(2, 3, 2)
    ha = train_toy_reinforce(a, prob, steps=1, batch_size=8, baseline="learned", seed=5)
    hb = train_toy_reinforce(b, prob, steps=1, batch_size=8, baseline="none", seed=5)
    assert _same_history(ha, hb) and torch.equal(a.logits_table, b.logits_table)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"baseline": "mean"}, "baseline"),
        ({"baseline": "sequence_leave_one_out", "batch_size": 1}, "leave-one-out"),
        ({"baseline": "per_step_leave_one_out", "batch_size": 1}, "leave-one-out"),
        ({"baseline": "leave_one_out"}, "baseline"),  # the old name, which meant either
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"reward_to_go": True}, "reward_to_go"),  # terminal rewards have no reward-to-go
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_toy_reinforce(pg.TabularPolicy(2, 3, 2), _task(), **{"steps": 2, **kwargs})
