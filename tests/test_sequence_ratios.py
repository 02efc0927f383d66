"""GSPO-token and GMPO (``policygrad.trajectory_side.sequence_ratios``) against hand computations.

GSPO-token's value is the sequence's geometric-mean ratio s_i and its gradient s_i times each token's score;
with a row-constant advantage it is the package's GSPO (``ppo_clip_loss(level="geometric")``). GMPO's loss is
-(1/B) sum_i mean_t(A) exp(mean_t of the log-space clipped log-ratio), computed here by hand on 2 rows.
"""

from __future__ import annotations

import math

import pytest
import torch

import policygrad as pg
from policygrad.trajectory_side.sequence_ratios import gmpo_loss, gspo_token_loss

F64 = torch.float64


def _inputs(seed=0, B=6, T=5):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5])[:B]
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.1
    logp = old + 0.6 * (2 * torch.rand(B, T, generator=g, dtype=F64) - 1)
    logp[0] = old[0]  # a row on-policy: s = 1, inside any clip range
    junk = float("nan")
    pad = mask == 0
    return logp.masked_fill(pad, junk), old.masked_fill(pad, 1e4), mask


def grad_of(fn, logp, *args, **kw):
    x = logp.clone().requires_grad_(True)
    loss, stats = fn(x, *args, **kw)
    (g,) = torch.autograd.grad(loss, x)
    return loss.detach(), g, stats


def test_gspo_token_equals_gspo_for_row_advantages_in_value_and_gradient():
    logp, old, mask = _inputs()
    A = torch.tensor([1.0, -0.5, 2.0, -1.5, 0.7, -0.2], dtype=F64)
    for eps in ((3e-4, 4e-4), (0.2, 0.2), (0.05, 0.1)):
        v1, g1, st = grad_of(gspo_token_loss, logp, old, A, mask, eps_low=eps[0], eps_high=eps[1])
        v2, g2, _ = grad_of(pg.trajectory_side.ppo_clip_loss, logp, old, A[:, None].expand(6, 5), mask,
                            eps_low=eps[0], eps_high=eps[1], level="geometric", aggregation="seq-mean-token-mean")  # fmt: skip
        torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)
        assert torch.isfinite(g1).all() and bool((g1[mask == 0] == 0).all())


def test_gspo_token_gradient_is_s_times_the_token_advantage_where_unclipped():
    logp, old, mask = _inputs(seed=1)
    A = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=F64)  # per-token advantages
    v, g, stats = grad_of(gspo_token_loss, logp, old, A, mask, eps_low=0.99, eps_high=0.99, aggregation="token-sum")
    real = mask.bool()
    lr = torch.where(real, logp - old, torch.zeros((), dtype=F64))
    s = (lr.sum(-1) / mask.sum(-1)).exp()
    torch.testing.assert_close(g, torch.where(real, -A * s[:, None], torch.zeros((), dtype=F64)))
    torch.testing.assert_close(v, -(torch.where(real, A, torch.zeros((), dtype=F64)) * s[:, None]).sum())
    assert stats["clip_frac"] == 0.0


def test_gmpo_by_hand_on_two_rows():
    # row 0: log-ratios 0.5, -0.1 (A = +1: 0.5 stops at 0.4); row 1: -0.6, 0.2, 0.1 (A = -2: -0.6 stops at -0.4)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    old = torch.full((2, 3), -1.0, dtype=F64)
    logp = old + torch.tensor([[0.5, -0.1, 7.0], [-0.6, 0.2, 0.1]], dtype=F64)
    A = torch.tensor([1.0, -2.0], dtype=F64)
    v, g, stats = grad_of(gmpo_loss, logp, old, A, mask)
    s0, s1 = math.exp((0.4 - 0.1) / 2), math.exp((-0.4 + 0.2 + 0.1) / 3)
    assert float(v) == pytest.approx((-1.0 * s0 + 2.0 * s1) / 2, rel=1e-12)
    # d/d logp: -A_bar s / (|o| B) on unclipped tokens, 0 on clipped ones and padding
    expected = torch.tensor([[0.0, -s0 / 4, 0.0], [0.0, 2 * s1 / 6, 2 * s1 / 6]], dtype=F64)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-14)
    assert stats["clip_frac"] == pytest.approx(2 / 5)


def test_gmpo_empty_rows_and_garbage_give_finite_results():
    logp, old, mask = _inputs(seed=3)
    mask[2] = 0
    A = torch.ones(6, dtype=F64)
    v, g, _ = grad_of(gmpo_loss, logp, old, A, mask)
    assert math.isfinite(float(v)) and torch.isfinite(g).all() and bool((g[2] == 0).all())
    v0, _, _ = grad_of(gmpo_loss, logp, old, A, torch.zeros_like(mask))
    assert float(v0) == 0.0


@pytest.mark.parametrize("fn, kw, match", [
    (gspo_token_loss, {"eps_low": 1.0}, "eps_low"), (gspo_token_loss, {"eps_high": -0.1}, "eps_high"),
    (gmpo_loss, {"clip_low": -0.1}, "clip_low"), (gmpo_loss, {"clip_high": 25.0}, "clip_high"),
    (gmpo_loss, {"clip_high": True}, "clip_high"),
])  # fmt: skip
def test_bad_bounds_are_value_errors(fn, kw, match):
    logp, old, mask = _inputs()
    with pytest.raises(ValueError, match=match):
        fn(logp, old, torch.ones(6, dtype=F64), mask, **kw)


def test_a_nan_on_a_trained_token_is_a_value_error():
    logp, old, mask = _inputs()
    logp[1, 0] = float("nan")
    for fn in (gspo_token_loss, gmpo_loss):
        with pytest.raises(ValueError, match="NaN"):
            fn(logp, old, torch.ones(6, dtype=F64), mask)
