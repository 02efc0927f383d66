"""Tests for policygrad.toy.tasks: the contextual bandit and the target-sequence task."""

import itertools

import pytest
import torch

import policygrad as pg
from policygrad.toy.tasks import contextual_bandit, target_sequence_task


def test_contextual_bandit_shapes_and_seed():
    prob = contextual_bandit(3, 4, seed=5)
    assert prob.num_prompts == 3 and prob.num_completions == 4
    assert prob.completions.shape == (4, 1) and prob.rewards.shape == (3, 4)
    assert torch.equal(prob.completions[:, 0], torch.arange(4))
    assert torch.allclose(prob.prompt_probs, torch.full((3,), 1 / 3))
    assert torch.equal(prob.rewards, contextual_bandit(3, 4, seed=5).rewards)
    assert not torch.equal(prob.rewards, contextual_bandit(3, 4, seed=6).rewards)
    assert torch.equal(prob.rewards, torch.randn(3, 4, generator=torch.Generator().manual_seed(5)))
    pol = pg.TabularPolicy(3, 4, 1)
    assert prob.objective(pol).item() == pytest.approx(prob.rewards.mean().item(), abs=1e-6)


def test_contextual_bandit_explicit_table():
    R = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    prob = contextual_bandit(2, 2, rewards=R)
    assert prob.rewards.dtype == torch.get_default_dtype()
    assert torch.equal(prob.rewards, R.float())
    assert torch.equal(prob.rewards_for(torch.tensor([1, 0]), torch.tensor([[1], [1]])), torch.tensor([2.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        contextual_bandit(2, 3, rewards=R)
    with pytest.raises(ValueError, match="NaN"):
        contextual_bandit(2, 2, rewards=torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError):
        contextual_bandit(0, 2)
    with pytest.raises(ValueError):
        contextual_bandit(2, 1)


def test_target_sequence_rewards():
    fr, targets = target_sequence_task(3, 3, 3, reward="fraction", seed=2)
    ps, t2 = target_sequence_task(3, 3, 3, reward="per_step", seed=2)
    em, t3 = target_sequence_task(3, 3, 3, reward="exact_match", seed=2)
    assert torch.equal(targets, t2) and torch.equal(targets, t3)
    assert targets.shape == (3, 3) and int(targets.max()) < 3
    assert fr.rewards.shape == (3, 27) and ps.rewards.shape == (3, 27, 3) and ps.per_step
    # fraction = sum of the per-step rewards = return of the per-step problem (gamma = 1)
    assert torch.allclose(fr.rewards, ps.rewards.sum(-1), atol=1e-7)
    assert torch.allclose(fr.rewards, ps.returns(), atol=1e-6)
    comps = [tuple(c) for c in fr.completions.tolist()]
    assert set(comps) == set(itertools.product(range(3), repeat=3))
    for x in range(3):
        tgt = tuple(targets[x].tolist())
        for k, c in enumerate(comps):
            matches = sum(a == b for a, b in zip(c, tgt, strict=True))
            assert em.rewards[x, k].item() == (1.0 if c == tgt else 0.0)
            assert fr.rewards[x, k].item() == pytest.approx(matches / 3)
            for t in range(3):
                assert ps.rewards[x, k, t].item() == pytest.approx((c[t] == tgt[t]) / 3)
    assert em.rewards.sum().item() == 3.0  # exactly one target per prompt


def test_target_sequence_task_seed_gamma_and_policy_shape():
    a, ta = target_sequence_task(2, 4, 2, seed=0)
    b, tb = target_sequence_task(2, 4, 2, seed=0)
    assert torch.equal(ta, tb) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(target_sequence_task(4, 4, 3, seed=0)[1], target_sequence_task(4, 4, 3, seed=1)[1])
    ps, _ = target_sequence_task(2, 3, 2, reward="per_step", gamma=0.5)
    assert ps.gamma == 0.5
    pol = pg.TabularPolicy(2, 4, 2)
    # a uniform policy matches each token with probability 1/V
    assert a.objective(pol).item() == pytest.approx(1 / 4, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reward": "match"}, "reward must be"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.5}, "gamma"),
        ({"num_prompts": 0}, "num_prompts"),
        ({"length": 0}, "length"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": 10, "length": 6}, "limit"),
    ],
)
def test_target_sequence_task_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        target_sequence_task(**kwargs)
