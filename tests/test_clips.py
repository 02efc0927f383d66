"""The clip zoo (policygrad.trajectory_side.clips): hand values, closed-form gradient weights against
autograd, and the edge cases (ratio overflow, garbage on padding, empty mask, bad parameters)."""

from __future__ import annotations

import math

import pytest
import torch

from policygrad.trajectory_side import ppo_clip_loss
from policygrad.trajectory_side.clips import (
    CLIP_FAMILIES,
    cispo_loss,
    gradient_weight,
    sapo_loss,
    two_sided_clip_loss,
)

DT = torch.float64
EXACT = {"rtol": 1e-12, "atol": 1e-12}
OLD = -2.0
# the hand batch: one row, ratios 0.5, 1.1, 2, 5 with advantages -1, 1, 1, -1
R = (0.5, 1.1, 2.0, 5.0)
A = (-1.0, 1.0, 1.0, -1.0)


def close(actual, expected, **tol):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=DT), **(tol or EXACT))


def hand():
    old = torch.full((1, 4), OLD, dtype=DT)
    logp = (old + torch.log(torch.tensor([R], dtype=DT))).requires_grad_(True)
    return logp, old, torch.tensor([A], dtype=DT), torch.ones(1, 4, dtype=DT)


def value_and_grad(fn, logp, *args, **kw):
    out = fn(logp, *args, **kw)
    (grad,) = torch.autograd.grad(out[0], logp)
    return out, grad


# ------------------------------------------------------------------------------------ hand values


def test_two_sided_hand_values():
    """delta=3, eps=0.2, token-sum: -min(min(r, 3) A, clip(r, 0.8, 1.2) A) per token is 0.8, -1.1,
    -1.2, 3 (the last one capped at delta |A|; PPO would give 5). Only the unclipped token (r=1.1,
    A=1) has a gradient, -r A."""
    logp, old, adv, mask = hand()
    (loss, stats), grad = value_and_grad(
        two_sided_clip_loss, logp, old, adv, mask, delta=3.0, aggregation="token-sum"
    )
    close(loss, 0.8 - 1.1 - 1.2 + 3.0)
    close(grad, [[0.0, -1.1, 0.0, 0.0]])
    assert stats["clip_frac"] == 0.5  # r=0.5 with A<0 and r=2 with A>0
    assert stats["delta_clip_frac"] == 0.25  # r=5 with A<0
    (ppo, _), ppo_grad = value_and_grad(ppo_clip_loss, logp, old, adv, mask, aggregation="token-sum")
    close(ppo, 0.8 - 1.1 - 1.2 + 5.0)
    close(ppo_grad, [[0.0, -1.1, 0.0, 5.0]])


def test_two_sided_small_delta_hand_values():
    """delta=1.05 < 1 + eps_high: TRL's formula then also caps A>0 at r=delta (r=1.1: loss -1.05,
    no gradient) and, for A<0, keeps r in (delta, 1.2) live and stops at 1.2 |A| beyond."""
    logp, old, adv, mask = hand()
    (loss, stats), grad = value_and_grad(
        two_sided_clip_loss, logp, old, adv, mask, delta=1.05, aggregation="token-sum"
    )
    close(loss, 0.8 - 1.05 - 1.05 + 1.2)
    close(grad, [[0.0, 0.0, 0.0, 0.0]])
    assert stats["clip_frac"] == 0.75 and stats["delta_clip_frac"] == 0.25


def test_cispo_hand_values():
    """L = -sg(w) A log pi. verl: w = clip(r, 0.8, 1.2) = 0.8, 1.1, 1.2, 1.2 (all but the
    second clipped); TRL with eps_max=2: w = min(r, 2) = 0.5, 1.1, 2, 2 (the last one capped). The gradient
    with respect to log pi is -w A, never 0."""
    logp, old, adv, mask = hand()
    lp = [OLD + math.log(r) for r in R]
    for kw, w in (({}, (0.8, 1.1, 1.2, 1.2)), ({"variant": "trl", "eps_max": 2.0}, (0.5, 1.1, 2.0, 2.0))):
        (loss, stats), grad = value_and_grad(cispo_loss, logp, old, adv, mask, aggregation="token-sum", **kw)
        close(loss, sum(-wi * ai * li for wi, ai, li in zip(w, A, lp, strict=True)))
        close(grad, [[-wi * ai for wi, ai in zip(w, A, strict=True)]])
        assert stats["clip_frac"] == (0.75 if not kw else 0.25)


def test_cispo_token_mean_and_sequence_advantages():
    """token-mean divides the token-sum by 4; a (B,) advantage is the per-token one broadcast."""
    logp, old, adv, mask = hand()
    total, _ = cispo_loss(logp, old, adv, mask, aggregation="token-sum")
    mean, _ = cispo_loss(logp, old, adv, mask)
    close(mean, total / 4)
    row, _ = cispo_loss(logp, old, torch.tensor([0.7], dtype=DT), mask)
    full, _ = cispo_loss(logp, old, torch.full((1, 4), 0.7, dtype=DT), mask)
    close(row, full)


def test_sapo_hand_values():
    """L = -(4/tau) sigmoid(tau (r - 1)) A, tau = tau_pos for A > 0, tau_neg otherwise; the default
    aggregation (seq-mean-token-mean) of one row is the mean. Weight r sech^2(tau (r-1)/2) A."""
    logp, old, adv, mask = hand()

    def sig(x):
        return 1.0 / (1.0 + math.exp(-x))

    for tp, tn in ((1.0, 1.05), (2.0, 0.5)):
        taus = [tp if a > 0 else tn for a in A]
        (loss, _), grad = value_and_grad(sapo_loss, logp, old, adv, mask, tau_pos=tp, tau_neg=tn)
        per = [-(4 / t) * sig(t * (r - 1)) * a for r, a, t in zip(R, A, taus, strict=True)]
        close(loss, sum(per) / 4)
        w = [r * a / math.cosh(t * (r - 1) / 2) ** 2 for r, a, t in zip(R, A, taus, strict=True)]
        close(grad, [[-wi / 4 for wi in w]])


def test_sapo_on_policy_is_the_policy_gradient():
    """At r = 1 the gate's slope is 1: the gradient is -A (per token, token-sum), the value -2A/tau."""
    old = torch.tensor([[-1.0, -2.0, -3.0]], dtype=DT)
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([[1.5, -0.5, 0.0]], dtype=DT)
    (loss, _), grad = value_and_grad(sapo_loss, logp, old, adv, torch.ones(1, 3), aggregation="token-sum")
    close(grad, -adv)
    close(loss, -2 * 1.5 / 1.0 + 2 * 0.5 / 1.05)


def test_per_token_diagnostics():
    """per_token=True: values (0 off the mask) and aggregation weights with sum(values * weights) ==
    loss, for each loss."""
    logp, old, adv, _ = hand()
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=DT)
    for fn, kw in ((two_sided_clip_loss, {"delta": 3.0}), (cispo_loss, {}), (sapo_loss, {})):
        loss, _, tl = fn(logp, old, adv, mask, per_token=True, **kw)
        close((tl.values * tl.weights).sum(), loss)
        assert tl.values[0, 2] == 0 and tl.weights[0, 2] == 0
        close(tl.weights, [[1 / 3, 1 / 3, 0.0, 1 / 3]])


def test_two_sided_is_dual_clip_when_delta_is_above_the_clip():
    """With delta >= 1 + eps_high the two-sided clip is the dual clip with c = delta, exactly (value
    and gradient) on random ratios in [0.2, 5] of both advantage signs."""
    g = torch.Generator().manual_seed(0)
    old = -3 + torch.rand(6, 9, generator=g, dtype=DT)
    logp = (old + 3.2 * torch.rand(6, 9, generator=g, dtype=DT) - 1.6).requires_grad_(True)
    adv = torch.randn(6, 9, generator=g, dtype=DT)
    mask = torch.ones(6, 9)
    for delta, eps_high in ((3.0, None), (1.28, 0.28), (4.0, 0.28)):
        (a, _), ga = value_and_grad(two_sided_clip_loss, logp, old, adv, mask, delta=delta, eps_high=eps_high)
        (b, _), gb = value_and_grad(ppo_clip_loss, logp, old, adv, mask, dual_clip=delta, eps_high=eps_high)
        close(a, b)
        close(ga, gb)
    (a, _), ga = value_and_grad(two_sided_clip_loss, logp, old, adv, mask, delta=1.1)
    (b, _), gb = value_and_grad(ppo_clip_loss, logp, old, adv, mask, dual_clip=1.1)
    assert not torch.allclose(ga, gb)  # delta < 1 + eps_high: not the dual clip


def test_cispo_variants_agree_where_their_weights_do():
    """verl's clip with eps_low=1 (lower bound 0) and eps_high=eps_max-1 is TRL's cap min(r, eps_max)."""
    logp, old, adv, mask = hand()
    (a, _), ga = value_and_grad(cispo_loss, logp, old, adv, mask, variant="trl", eps_max=2.0)
    (b, _), gb = value_and_grad(cispo_loss, logp, old, adv, mask, variant="verl", eps_low=1.0, eps_high=1.0)
    close(a, b)
    close(ga, gb)


# ------------------------------------------------------------------------- weights against autograd

KINKS = (0.8, 1.2, 1.28, 1.5, 3.0, 4.0)
GRID = [r for r in torch.linspace(0.2, 5.0, 97, dtype=DT).tolist() if min(abs(r - k) for k in KINKS) > 1e-3]
SIGNS = (-1.3, 0.7, 0.0)

CASES = {
    "ppo": [({}, ppo_clip_loss, {}), ({"eps_low": 0.2, "eps_high": 0.5}, ppo_clip_loss, {"eps_high": 0.5})],
    "clip-higher": [({}, ppo_clip_loss, {"eps_high": 0.28})],
    "dual-clip": [({}, ppo_clip_loss, {"dual_clip": 3.0}), ({"dual_clip": 1.5}, ppo_clip_loss, {"dual_clip": 1.5})],
    "two-sided": [
        ({"delta": 4.0}, two_sided_clip_loss, {"delta": 4.0}),
        ({"delta": 1.1, "eps_high": 0.28}, two_sided_clip_loss, {"delta": 1.1, "eps_high": 0.28}),
    ],
    "cispo-trl": [({}, cispo_loss, {"variant": "trl"}), ({"eps_max": 1.5}, cispo_loss, {"variant": "trl", "eps_max": 1.5})],
    "cispo-verl": [
        ({}, cispo_loss, {}),
        ({"eps_low": 0.2, "eps_high": 2.0}, cispo_loss, {"eps_low": 0.2, "eps_high": 2.0}),
    ],
    "sapo": [({}, sapo_loss, {}), ({"tau_pos": 3.0, "tau_neg": 0.5}, sapo_loss, {"tau_pos": 3.0, "tau_neg": 0.5})],
}


def test_every_family_is_covered():
    assert set(CASES) == set(CLIP_FAMILIES)


@pytest.mark.parametrize("family", CLIP_FAMILIES)
def test_gradient_weight_is_autograd_of_the_loss(family):
    """The per-token gradient of the token-sum loss with respect to log pi is -w(r, A), on a grid of
    ratios in [0.2, 5] (off the kinks) for A < 0, A > 0 and A = 0."""
    r = torch.tensor(GRID, dtype=DT).repeat(len(SIGNS), 1)
    adv = torch.tensor(SIGNS, dtype=DT)[:, None].expand_as(r).contiguous()
    old = torch.full_like(r, -4.0)
    for params, fn, kw in CASES[family]:
        logp = (old + r.log()).requires_grad_(True)
        out = fn(logp, old, adv, torch.ones_like(r), aggregation="token-sum", **kw)
        (grad,) = torch.autograd.grad(out[0], logp)
        w = gradient_weight(family, r, adv, **params)
        close(grad, -w)
        assert bool((w[2] == 0).all())  # A = 0
        if family.startswith(("cispo", "sapo")):
            assert bool((w[:2] != 0).all())  # never cut
        else:
            assert bool((w[:2] == 0).any()) and bool((w[:2] != 0).any())


def test_gradient_weight_hand_values():
    """A few values read off the table of the module docstring."""
    r = torch.tensor([0.5, 1.1, 2.0, 5.0], dtype=DT)
    a = torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=DT)
    close(gradient_weight("ppo", r, a), [0.0, 1.1, 0.0, -5.0])
    close(gradient_weight("clip-higher", r, a), [0.0, 1.1, 0.0, -5.0])
    close(gradient_weight("dual-clip", r, a), [0.0, 1.1, 0.0, 0.0])
    close(gradient_weight("two-sided", r, a, delta=6.0), [0.0, 1.1, 0.0, -5.0])
    close(gradient_weight("two-sided", r, a, delta=4.0), [0.0, 1.1, 0.0, 0.0])
    close(gradient_weight("cispo-verl", r, a), [-0.8, 1.1, 1.2, -1.2])
    close(gradient_weight("cispo-trl", r, a), [-0.5, 1.1, 2.0, -5.0])
    close(gradient_weight("cispo-trl", r, a, eps_max=1.0), [-0.5, 1.0, 1.0, -1.0])
    w = gradient_weight("sapo", r, a)
    close(w, [-0.5 / math.cosh(1.05 * 0.25) ** 2, 1.1 / math.cosh(0.05) ** 2, 2 / math.cosh(0.5) ** 2,
              -5 / math.cosh(1.05 * 2) ** 2])
    close(gradient_weight("sapo", torch.ones(1, dtype=DT), torch.tensor([0.3], dtype=DT)), [0.3])


def test_gradient_weight_beyond_the_ratio_clamp():
    """Log-ratio 25 > 20: the losses' gradient is 0 (safe_ratio), and so is the weight, except for
    CISPO, whose weight is that of the clamped ratio."""
    lr = torch.tensor([[25.0, -25.0]], dtype=DT)
    adv = torch.tensor([[-1.0, 1.0]], dtype=DT)
    old = torch.full_like(lr, -30.0)
    for family in CLIP_FAMILIES:
        params, fn, kw = CASES[family][0]
        params = {"delta": 4.0} if family == "two-sided" else params
        logp = (old + lr).requires_grad_(True)
        out = fn(logp, old, adv, torch.ones_like(lr), aggregation="token-sum", **kw)
        (grad,) = torch.autograd.grad(out[0], logp)
        close(grad, -gradient_weight(family, lr.exp(), adv, **params))
    close(gradient_weight("ppo", lr.exp(), adv), [[0.0, 0.0]])
    close(gradient_weight("cispo-trl", lr.exp(), adv), [[-5.0, math.exp(-20.0)]])


# ------------------------------------------------------------------------------------- edge cases

LOSSES = (
    (two_sided_clip_loss, {"delta": 3.0}),
    (cispo_loss, {"variant": "verl"}),
    (cispo_loss, {"variant": "trl"}),
    (sapo_loss, {}),
)


@pytest.mark.parametrize("fn, kw", LOSSES)
@pytest.mark.parametrize("big", [1e4, -1e4])
def test_ratio_overflow_is_finite(fn, kw, big):
    """A log-ratio of +-1e4 (a broken sampler) gives a finite loss and a finite gradient."""
    old = torch.tensor([[-1.0 - big, -2.0]], dtype=DT) if big > 0 else torch.tensor([[-1.0, -2.0]], dtype=DT)
    logp = (old + torch.tensor([[big, 0.1]], dtype=DT)).requires_grad_(True)
    for adv in ([[1.0, -1.0]], [[-1.0, 1.0]]):
        (loss, stats), grad = value_and_grad(fn, logp, old, torch.tensor(adv, dtype=DT), torch.ones(1, 2), **kw)
        assert math.isfinite(float(loss.detach())) and bool(torch.isfinite(grad).all())
        assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("fn, kw", LOSSES)
def test_garbage_on_padding_is_ignored(fn, kw):
    """inf and nan on padded positions of logp, old_logp and advantages change nothing: the same loss
    as with zeros there, and a zero gradient on the padding."""
    logp, old, adv, _ = hand()
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=DT)
    pad = ~mask.bool()
    dirty = [torch.where(pad, torch.tensor([[0.0, 0.0, math.inf, math.nan]], dtype=DT), x.detach())
             for x in (logp, old, adv)]
    clean = [torch.where(pad, torch.zeros((), dtype=DT), x.detach()) for x in (logp, old, adv)]
    (a, _), ga = value_and_grad(fn, dirty[0].requires_grad_(True), *dirty[1:], mask, **kw)
    (b, _), gb = value_and_grad(fn, clean[0].requires_grad_(True), *clean[1:], mask, **kw)
    close(a, b)
    close(ga, gb)
    assert bool((ga[pad] == 0).all()) and bool(torch.isfinite(ga).all())


@pytest.mark.parametrize("fn, kw", LOSSES)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "token-sum"])
def test_empty_mask_is_zero(fn, kw, mode):
    """An all-zero mask: loss 0 with zero gradient (not NaN), finite stats."""
    logp, old, adv, _ = hand()
    (loss, stats), grad = value_and_grad(fn, logp, old, adv, torch.zeros(1, 4), aggregation=mode, **kw)
    assert float(loss.detach()) == 0.0 and bool((grad == 0).all())
    assert all(math.isfinite(v) for v in stats.values())


def test_nan_on_a_trained_position_is_refused():
    logp, old, adv, mask = hand()
    bad = adv.clone()
    bad[0, 1] = math.nan
    with pytest.raises(ValueError, match="advantages contains 1 NaN"):
        sapo_loss(logp, old, bad, mask)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda i: two_sided_clip_loss(*i, delta=3.0, eps_low=-0.1), "eps_low must be a number in"),
        (lambda i: two_sided_clip_loss(*i, delta=3.0, eps_high=-0.2), "eps_high must be a number in"),
        (lambda i: two_sided_clip_loss(*i, delta=1.0), "delta must be a finite number > 1"),
        (lambda i: two_sided_clip_loss(*i, delta=0.5), "delta must be a finite number > 1"),
        (lambda i: two_sided_clip_loss(*i, delta=math.inf), "delta must be a finite number > 1"),
        (lambda i: cispo_loss(*i, variant="minimax"), "unknown CISPO variant 'minimax'"),
        (lambda i: cispo_loss(*i, eps_low=-0.1), "eps_low must be a number in"),
        (lambda i: cispo_loss(*i, eps_low=1.5), "eps_low must be a number in"),
        (lambda i: cispo_loss(*i, eps_high=-0.1), "eps_high must be a finite number >= 0"),
        (lambda i: cispo_loss(*i, variant="trl", eps_max=-1.0), "eps_max must be a finite number > 0"),
        (lambda i: cispo_loss(*i, variant="trl", eps_high=0.3), "eps_low and eps_high belong"),
        (lambda i: cispo_loss(*i, variant="verl", eps_max=5.0), "eps_max belongs"),
        (lambda i: sapo_loss(*i, tau_pos=0.0), "tau_pos must be a finite number > 0"),
        (lambda i: sapo_loss(*i, tau_neg=-1.0), "tau_neg must be a finite number > 0"),
        (lambda i: sapo_loss(*i, tau_neg=True), "tau_neg must be a finite number > 0"),
        (lambda i: sapo_loss(*i, aggregation="mean"), "unknown aggregation 'mean'"),
        (lambda i: sapo_loss(i[0], i[1], i[2][:, :2], i[3]), "advantages must have the shape"),
        (lambda i: sapo_loss(i[0], i[1], torch.ones(2, dtype=DT), i[3]), r"per-sequence advantages must have shape \(1,\)"),
    ],
)
def test_bad_parameters(call, match):
    logp, old, adv, mask = hand()
    with pytest.raises(ValueError, match=match):
        call((logp, old, adv, mask))


@pytest.mark.parametrize(
    "family, params, match",
    [
        ("grpo", {}, "unknown family 'grpo'"),
        ("sapo", {"eps_low": 0.2}, r"family 'sapo' takes the parameters \['tau_neg', 'tau_pos'\]"),
        ("two-sided", {}, "family 'two-sided' needs delta"),
        ("two-sided", {"delta": 1.0}, "delta must be a finite number > 1"),
        ("ppo", {"eps_low": -0.2}, "eps_low must be a number in"),
        ("dual-clip", {"dual_clip": 0.9}, "dual_clip must be a number > 1"),
        ("cispo-trl", {"eps_max": 0.0}, "eps_max must be a finite number > 0"),
        ("cispo-verl", {"eps_high": -1.0}, "eps_high must be a finite number >= 0"),
        ("sapo", {"tau_pos": 0.0}, "tau_pos must be a finite number > 0"),
    ],
)
def test_gradient_weight_bad_parameters(family, params, match):
    with pytest.raises(ValueError, match=match):
        gradient_weight(family, torch.ones(3, dtype=DT), torch.ones(3, dtype=DT), **params)


def test_gradient_weight_refuses_bad_ratios():
    with pytest.raises(ValueError, match="ratio must be positive"):
        gradient_weight("ppo", torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError, match="ratio contains 1 NaN"):
        gradient_weight("ppo", torch.tensor([1.0, math.nan]), torch.ones(2))
    with pytest.raises(ValueError, match="advantage must be a floating-point tensor"):
        gradient_weight("ppo", torch.ones(2), torch.ones(2, dtype=torch.int64))
