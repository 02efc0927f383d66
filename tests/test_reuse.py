"""Tests for diagnostics.reuse_gradients: what a reused batch estimates once the policy has moved.

Everything is exact (enumeration, float64). Identities: at theta = theta_old the three surrogates give the
policy gradient; away from it sequence-level importance sampling still gives it exactly, while the naive
and the token-ratio surrogates are off by an error that is first order in the step (halving the step halves
it): the token-ratio surrogate's *value* agrees with J to second order, its gradient only to first.
"""

from __future__ import annotations

import copy

import pytest
import torch

import policygrad as pg
from policygrad.diagnostics import REUSE_SURROGATES, reuse_gradients
from policygrad.exact import ExactProblem

F64 = torch.float64


def _setup():
    comp, mask = pg.enumerate_completions(3, 3, eos=0)  # variable lengths 1..3
    R = torch.rand(2, comp.shape[0], generator=torch.Generator().manual_seed(3), dtype=F64)
    prob = ExactProblem(torch.arange(2), torch.tensor([0.35, 0.65], dtype=F64), comp, mask.to(F64), R)
    old = pg.TabularPolicy(2, 3, 3, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(1)).double()
    direction = torch.randn(old.logits_table.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    return prob, old, direction


def _moved(old, direction, step):
    new = copy.deepcopy(old)
    with torch.no_grad():
        new.logits_table.add_(step * direction)
    return new


def test_at_the_sampler_every_surrogate_gives_the_policy_gradient():
    prob, old, _ = _setup()
    g = reuse_gradients(prob, copy.deepcopy(old), old)
    assert set(g) == {*REUSE_SURROGATES, "exact"}
    for k in REUSE_SURROGATES:
        torch.testing.assert_close(g[k], g["exact"], atol=1e-12, rtol=0)
    assert g["exact"].norm() > 0.05


def test_away_from_the_sampler_only_sequence_is_stays_exact_and_the_others_err_at_first_order():
    prob, old, d = _setup()
    err = {}
    for step in (0.1, 0.05):
        g = reuse_gradients(prob, _moved(old, d, step), old)
        torch.testing.assert_close(g["sequence_is"], g["exact"], atol=1e-12, rtol=0)
        err[step] = {k: float((g[k] - g["exact"]).norm()) for k in ("naive", "token_is")}
        assert err[step]["naive"] > 1e-3 and err[step]["token_is"] > 1e-5  # negative controls
    naive_ratio = err[0.1]["naive"] / err[0.05]["naive"]
    token_ratio = err[0.1]["token_is"] / err[0.05]["token_is"]
    assert naive_ratio == pytest.approx(2.0, rel=0.05)  # first order in the step
    assert token_ratio == pytest.approx(2.0, rel=0.05)  # also first order (a second-order error would give 4)


def test_reuse_gradients_rejects_bad_input():
    prob, old, _ = _setup()
    with pytest.raises(ValueError, match="problem must be an ExactProblem"):
        reuse_gradients("problem", old, old)
    with pytest.raises(ValueError, match="sampler must be"):
        reuse_gradients(prob, old, lambda *a: None)
