"""Tests for policygrad.exact.ascent: the exact-ascent loop the chapters share."""

from __future__ import annotations

import pytest
import torch

import policygrad as pg
from policygrad.exact import ascend


class Quadratic(torch.nn.Module):
    """objective(θ) = −½‖θ − c‖², whose plain ascent has a closed form."""

    def __init__(self, start):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))


C = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def objective(m):
    return -0.5 * ((m.theta - C) ** 2).sum()


def test_plain_ascent_matches_the_closed_form():
    m = Quadratic([0.0, 0.0, 0.0])
    lr, steps = 0.1, 7
    recs = ascend(m, objective, steps, lr=lr, record=lambda s, p: p.theta.clone())
    # θ_k − c = (1 − lr)^k (θ_0 − c)
    for k, theta in recs:
        assert torch.allclose(theta, C - (1 - lr) ** k * C, atol=1e-14)
    assert [k for k, _ in recs] == list(range(steps + 1))


def test_record_every_and_last_step():
    m = Quadratic([0.0, 0.0, 0.0])
    recs = ascend(m, objective, 7, lr=0.1, record=lambda s, p: s, record_every=3)
    assert [k for k, _ in recs] == [0, 3, 6, 7]
    assert ascend(m, objective, 3, lr=0.1) == []  # no record: nothing returned


def test_grad_mask_freezes_coordinates():
    m = Quadratic([0.0, 0.0, 0.0])
    mask = {m.theta: torch.tensor([1.0, 0.0, 1.0])}
    ascend(m, objective, 5, lr=0.5, grad_mask=mask)
    assert m.theta[1].item() == 0.0
    assert torch.allclose(m.theta[[0, 2]], C[[0, 2]] * (1 - 0.5**5))


def test_optimizer_path_equals_a_hand_written_loop():
    a, b = Quadratic([3.0, 1.0, -1.0]), Quadratic([3.0, 1.0, -1.0])
    opt_a = torch.optim.Adam(a.parameters(), lr=0.05)
    ascend(a, objective, 20, optimizer=opt_a)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.05)
    for _ in range(20):
        opt_b.zero_grad()
        (-objective(b)).backward()
        opt_b.step()
    assert torch.equal(a.theta, b.theta)


def test_exact_problem_ascent_increases_J():
    problem = pg.toy.contextual_bandit(1, 3, rewards=torch.tensor([[0.1, 0.5, 0.9]]))
    policy = pg.toy.TabularPolicy(1, 3, max_len=1)
    recs = ascend(
        policy,
        problem.objective,
        30,
        lr=1.0,
        record=lambda s, p: problem.objective(p).item(),
    )
    js = [j for _, j in recs]
    assert all(b > a for a, b in zip(js, js[1:], strict=False))
    assert js[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": None}, "positive finite lr"),
        ({"lr": -1.0}, "positive finite lr"),
        ({"lr": float("nan")}, "positive finite lr"),
        ({"lr": 0.1, "record_every": 0}, "record_every"),
        ({"lr": 0.1, "record": 3}, "record must be callable"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ascend(Quadratic([0.0, 0.0, 0.0]), objective, 2, **kwargs)


def test_validation_of_optimizer_steps_and_objective():
    m = Quadratic([0.0, 0.0, 0.0])
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="give lr to the optimizer"):
        ascend(m, objective, 2, lr=0.1, optimizer=opt)
    with pytest.raises(ValueError, match="plain ascent only"):
        ascend(m, objective, 2, optimizer=opt, grad_mask={m.theta: torch.ones(3)})
    with pytest.raises(ValueError, match="steps"):
        ascend(m, objective, -1, lr=0.1)
    with pytest.raises(ValueError, match="scalar"):
        ascend(m, lambda p: p.theta, 2, lr=0.1)
    with pytest.raises(ValueError, match="not finite"):
        ascend(m, lambda p: p.theta.sum() * float("inf"), 2, lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        ascend(m, objective, 2, lr=0.1, grad_mask={m.theta: torch.ones(2)})
    with pytest.raises(ValueError, match="not a policy parameter"):
        stranger = torch.nn.Parameter(torch.ones(3))
        ascend(m, objective, 2, lr=0.1, grad_mask={stranger: torch.ones(3)})
