"""Tests for the KL-regularised objective J - beta KL(p || p_ref): its closed-form maximiser
(kl_exact.regularised_optimum) and exact gradient ascent on it (train.exact_gradient_ascent with a reference).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import policygrad as pg
from policygrad.exact import flat_grad, flat_params
from policygrad.exact.kl import regularised_optimum
from policygrad.train import exact_gradient_ascent

F64 = torch.float64


def _bandit():
    prob = pg.toy.contextual_bandit(2, 4, seed=1)
    ref = pg.TabularPolicy(2, 4, 1, init_scale=1.0, generator=torch.Generator().manual_seed(0)).double()
    return prob, ref


def _regularised(prob, pol, ref, beta):
    return prob.objective(pol) - beta * prob.expected_kl(pol, ref)


@pytest.mark.parametrize("beta", [0.1, 0.5, 3.0])
def test_the_closed_form_optimum_is_a_stationary_point_and_beats_other_policies(beta):
    prob, ref = _bandit()
    p_star = regularised_optimum(prob, ref, beta)
    torch.testing.assert_close(p_star.sum(-1), torch.ones(2, dtype=F64), atol=1e-12, rtol=0)
    # by hand: p_ref * exp(R / beta), normalised
    q = torch.softmax(ref.logits_table.detach()[:, 0], -1)
    want = q * torch.exp(prob.rewards.to(F64) / beta)
    torch.testing.assert_close(p_star, want / want.sum(-1, keepdim=True), atol=1e-12, rtol=0)
    opt = copy.deepcopy(ref)
    with torch.no_grad():
        opt.logits_table[:, 0] = p_star.log()
    g = flat_grad(_regularised(prob, opt, ref, beta), flat_params(opt))
    assert float(g.norm()) < 1e-12  # the gradient of J - beta KL vanishes at p*
    best = _regularised(prob, opt, ref, beta).item()
    # its value: beta * log E_ref[exp(R / beta)], averaged over prompts
    value = (prob.prompt_probs.to(F64) * beta * torch.log((q * torch.exp(prob.rewards.to(F64) / beta)).sum(-1))).sum()
    assert best == pytest.approx(float(value), abs=1e-12)
    for seed in range(5):  # negative control: other policies are worse
        other = pg.TabularPolicy(2, 4, 1, init_scale=1.0, generator=torch.Generator().manual_seed(10 + seed)).double()
        assert _regularised(prob, other, ref, beta).item() < best


def test_exact_gradient_ascent_on_the_regularised_objective_reaches_the_closed_form():
    prob, _ = pg.toy.target_sequence_task(2, 3, 2, reward="fraction", seed=1)
    ref = pg.TabularPolicy(2, 3, 2, init_scale=1.0, generator=torch.Generator().manual_seed(0)).double()
    pol = copy.deepcopy(ref)
    beta = 0.2
    hist = exact_gradient_ascent(pol, prob, steps=400, lr=0.1, optimizer="adam", reference=ref, beta=beta)
    assert hist[-1] > hist[0]
    with torch.no_grad():
        gap = (prob.probs(pol) - regularised_optimum(prob, ref, beta)).abs().max()
        assert float(gap) < 1e-3
        assert hist[-1] == pytest.approx(float(_regularised(prob, pol, ref, beta)), abs=1e-12)
    # beta = 0 is plain J: ascent without a reference moves further from it (negative control)
    plain = copy.deepcopy(ref)
    exact_gradient_ascent(plain, prob, steps=400, lr=0.1, optimizer="adam")
    with torch.no_grad():
        assert float(prob.expected_kl(plain, ref)) > float(prob.expected_kl(pol, ref)) + 0.1


def test_regularised_inputs_are_checked():
    prob, ref = _bandit()
    for beta in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="beta"):
            regularised_optimum(prob, ref, beta)
    with pytest.raises(ValueError, match="problem"):
        regularised_optimum("p", ref, 1.0)
    with pytest.raises(ValueError, match="reference"):
        exact_gradient_ascent(copy.deepcopy(ref), prob, steps=1, lr=0.1, beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        exact_gradient_ascent(copy.deepcopy(ref), prob, steps=1, lr=0.1, reference=ref, beta=-0.5)
