"""The trajectory side on the inputs real training produces: overflowing ratios, padded garbage, half precision,
per-token outputs, sequence-level ratios. Each test fails on the losses before Foundation v2."""

from __future__ import annotations

import math

import pytest
import torch

from policygrad.trajectory_side import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    aggregate,
    aggregation_weights,
    clip_loss,
    kl_estimate,
    kl_loss,
    log_ratios,
    policy_gradient_loss,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
)

MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
ADV = torch.tensor([[1.0, 1.0, 1.0, 0.0], [-2.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.5, -0.5]])


def _losses(logp, old, adv, mask, agg="token-mean"):
    """Every loss of the trajectory side on the same inputs, as (name, scalar)."""
    yield "ppo_clip", ppo_clip_loss(logp, old, adv, mask, aggregation=agg)[0]
    yield "ppo_clip_dual", ppo_clip_loss(logp, old, adv, mask, dual_clip=3.0, eps_high=0.28, aggregation=agg)[0]
    yield "ppo_geometric", ppo_clip_loss(logp, old, adv, mask, level="geometric", aggregation=agg)[0]
    yield "ppo_kl", ppo_kl_penalty_loss(logp, old, adv, mask, beta=0.1, aggregation=agg)[0]
    yield "pg", policy_gradient_loss(logp, adv, mask, aggregation=agg)[0]
    for kind in KL_ESTIMATORS:
        yield f"kl_{kind}", kl_loss(logp, old, mask, kind=kind, aggregation=agg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_huge_log_ratios_give_finite_losses_and_gradients(dtype, scale):
    old = torch.zeros(3, 4, dtype=dtype)
    logp = (torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 0.0, 0.0, 0.0], [1.0, 1.0, -1.0, -1.0]]) * scale).to(dtype)
    for name, _ in _losses(logp, old, ADV.to(dtype), MASK):
        lp = logp.clone().requires_grad_(True)
        loss = dict(_losses(lp, old, ADV.to(dtype), MASK))[name]
        loss.backward()
        assert torch.isfinite(loss) and loss.dtype in (torch.float32, torch.float64), (name, loss)
        assert torch.isfinite(lp.grad).all() and lp.grad.dtype == dtype, name


def test_where_the_clip_removes_the_gradient_it_is_exactly_zero_even_for_huge_ratios():
    logp = torch.tensor([[50.0, -50.0]], requires_grad=True)  # r = e^50 with A > 0, r = e^-50 with A < 0
    loss, stats = ppo_clip_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2)) and stats["clip_frac"] == 1.0
    assert loss.item() == pytest.approx(-(1.2 * 1.0 + 0.8 * -1.0) / 2)


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_garbage_on_padded_positions_changes_nothing(garbage):
    g = torch.Generator().manual_seed(0)
    logp0 = -torch.rand(3, 4, generator=g)
    old0 = logp0 - 0.1 * torch.randn(3, 4, generator=g)
    pad = MASK == 0
    for agg in AGGREGATIONS:
        clean = dict(_losses(logp0.clone().requires_grad_(True), old0, ADV, MASK, agg))
        for name in clean:
            lc = logp0.clone().requires_grad_(True)
            ld = torch.where(pad, torch.full_like(logp0, garbage), logp0).requires_grad_(True)
            od = torch.where(pad, torch.full_like(old0, garbage), old0)
            ad = torch.where(pad, torch.full_like(ADV, garbage), ADV)
            a = dict(_losses(lc, old0, ADV, MASK, agg))[name]
            b = dict(_losses(ld, od, ad, MASK, agg))[name]
            a.backward()
            b.backward()
            assert torch.equal(a, b), (agg, name)
            assert torch.equal(lc.grad, ld.grad) and torch.equal(ld.grad[pad], torch.zeros(int(pad.sum()))), name


@pytest.mark.parametrize("arg", ["logp", "old_logp", "advantages"])
def test_a_non_finite_value_on_a_trained_token_is_a_value_error_naming_it(arg):
    x = {"logp": torch.zeros(3, 4), "old_logp": torch.zeros(3, 4), "advantages": ADV.clone()}
    x[arg][0, 1] = float("nan")
    with pytest.raises(ValueError, match=arg):
        ppo_clip_loss(x["logp"], x["old_logp"], x["advantages"], MASK)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"logp": torch.zeros(3, 4, dtype=torch.long)}, "logp must be a floating-point"),
        ({"old_logp": torch.zeros(3, 4, dtype=torch.bool)}, "old_logp must be a floating-point"),
        ({"advantages": torch.ones(3, 4, dtype=torch.int32)}, "advantages must be a floating-point"),
        ({"advantages": torch.ones(3, 1)}, "advantages must have the shape"),
        ({"old_logp": torch.zeros(3, 1)}, "old_logp must have the shape"),
        ({"mask": torch.ones(3, 1)}, "mask must have the shape"),
        ({"mask": MASK * 0.5}, "only 0 and 1"),
    ],
)
def test_int_bool_and_broadcasting_inputs_are_refused(kwargs, match):
    x = {"logp": torch.zeros(3, 4), "old_logp": torch.zeros(3, 4), "advantages": ADV, "mask": MASK, **kwargs}
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(x["logp"], x["old_logp"], x["advantages"], x["mask"])


def test_kl_estimators_stay_finite_for_huge_log_ratios():
    x = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    for kind in KL_ESTIMATORS:
        v = kl_estimate(x.clone().requires_grad_(True), torch.zeros(5), kind)
        assert torch.isfinite(v).all(), kind
    k3 = kl_estimate(x, torch.zeros(5), "k3")
    assert torch.all(k3 >= 0) and k3[2] == 0.0


def test_token_sum_is_an_aggregation_and_every_mode_has_consistent_per_token_weights():
    assert "token-sum" in AGGREGATIONS
    L = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 50.0, 60.0, 70.0], [-1.0, 0.5, 2.5, 6.0]])
    assert aggregate(L, MASK, "token-sum").item() == 18.0
    for mode in AGGREGATIONS:
        w = aggregation_weights(MASK, mode)
        assert torch.allclose((L * w).sum(), aggregate(L, MASK, mode), rtol=1e-6) and torch.equal(w[MASK == 0], w[MASK == 0] * 0)
    logp = -torch.rand(3, 4, generator=torch.Generator().manual_seed(1))
    old = logp - 0.2
    for mode in AGGREGATIONS:
        for fn in (
            lambda **k: ppo_clip_loss(logp, old, ADV, MASK, **k),
            lambda **k: ppo_kl_penalty_loss(logp, old, ADV, MASK, beta=0.1, **k),
            lambda **k: policy_gradient_loss(logp, ADV, MASK, **k),
        ):
            loss, _, terms = fn(aggregation=mode, per_token=True)
            assert terms.values.shape == terms.weights.shape == (3, 4)
            assert torch.allclose((terms.values * terms.weights).sum(), loss, rtol=1e-6, atol=1e-7), mode
        loss, terms = kl_loss(logp, old, MASK, aggregation=mode, per_token=True)
        assert torch.allclose((terms.values * terms.weights).sum(), loss, rtol=1e-6, atol=1e-7), mode


def test_sequence_level_ratios_plug_into_the_clip_gspo_by_hand():
    g = torch.Generator().manual_seed(2)
    logp = (-torch.rand(3, 4, generator=g)).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(3, 4, generator=g)
    A_seq = torch.tensor([1.0, -2.0, 0.5])
    A = A_seq.unsqueeze(1) * MASK
    s = log_ratios(logp, old, MASK, "geometric")
    loss, stats = clip_loss(s, A, MASK, aggregation="seq-mean-token-mean")
    r = torch.exp(((logp - old) * MASK).sum(-1) / MASK.sum(-1))
    by_hand = torch.maximum(-r * A_seq, -torch.clamp(r, 0.8, 1.2) * A_seq).mean()
    assert torch.allclose(loss, by_hand, rtol=1e-6)
    assert torch.allclose(loss, ppo_clip_loss(logp, old, A, MASK, level="geometric", aggregation="seq-mean-token-mean")[0])
    assert 0.0 <= stats["clip_frac"] <= 1.0
    with pytest.raises(ValueError, match="sequence log_ratio must have shape"):
        clip_loss(s[:2], A, MASK)


def test_half_precision_inputs_are_computed_in_float32():
    logp = torch.full((3, 4), -0.5, dtype=torch.bfloat16, requires_grad=True)
    loss, _ = ppo_clip_loss(logp, logp.detach() - 1.0, ADV.to(torch.bfloat16), MASK, aggregation="token-sum")
    loss.backward()
    assert loss.dtype == torch.float32 and logp.grad.dtype == torch.bfloat16 and math.isfinite(loss.item())
