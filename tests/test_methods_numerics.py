"""Every registered method on the batches real training produces: an all-zero loss mask, garbage on padding.

For each method the wrapper unpacks the batch for plain-tensor losses; these tests run the method's own
reward side and trajectory side on a hand-made :class:`RolloutBatch`, as :func:`policygrad.train.train`
does, and check defined results (never NaN, never an exception mid-training).
"""

from __future__ import annotations

import pytest
import torch

import policygrad as pg
from policygrad.methods import get_method, method_names
from policygrad.rollout import RolloutBatch

B, T, G = 8, 5, 4


def _batch(*, loss_mask_zero: bool, garbage: bool, rewards: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5, 3, 4])
    mask = (torch.arange(T) < lengths.unsqueeze(1)).float()
    logp = -torch.rand(B, T, generator=g)
    pad = float("nan") if garbage else 0.0
    fill = torch.where(mask > 0, torch.zeros(B, T), torch.full((B, T), pad))
    batch = RolloutBatch(
        prompts=torch.zeros(B, 2, dtype=torch.long),
        completions=torch.randint(4, 9, (B, T), generator=g),
        mask=mask,
        loss_mask=torch.zeros_like(mask) if loss_mask_zero else mask,
        old_log_probs=torch.where(mask > 0, logp, fill),
        ref_log_probs=torch.where(mask > 0, logp - 0.1 * torch.rand(B, T, generator=g), fill),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]) if rewards is None else rewards,
        group_ids=torch.arange(B // G).repeat_interleave(G),
        truncated=torch.zeros(B, dtype=torch.bool),
        values=torch.where(mask > 0, torch.rand(B, T, generator=g), fill),
        rollout_log_probs=torch.where(mask > 0, logp, fill),
        # what remax, gdpo and optimal_token_baseline read (filled by train for them)
        greedy_rewards=torch.tensor([1.0, 0.0]).repeat_interleave(G),
        reward_components=torch.tensor(
            [
                [1.0, 1.0],
                [0.0, 1.0],
                [1.0, 0.0],
                [0.0, 1.0],
                [0.0, 1.0],
                [0.0, 0.0],
                [1.0, 1.0],
                [1.0, 1.0],
            ]
        ),  # fmt: skip
        sum_pi_squared=torch.where(
            mask > 0,
            0.2 + 0.7 * torch.rand(B, T, generator=torch.Generator().manual_seed(1)),
            fill,
        ),  # fmt: skip
        # what the 80/20 filter reads (filled by train for a method with needs_entropy)
        entropies=torch.where(
            mask > 0, 2 * torch.rand(B, T, generator=torch.Generator().manual_seed(2)), fill
        ),  # fmt: skip
    )
    new_logp = torch.where(mask > 0, logp + 0.05 * torch.randn(B, T, generator=g), fill).requires_grad_(True)
    return batch, new_logp


@pytest.mark.parametrize("name", method_names())
def test_an_all_zero_loss_mask_gives_zero_advantages_zero_loss_and_zero_gradient(name):
    m = get_method(name)
    batch, logp = _batch(loss_mask_zero=True, garbage=False)
    adv = m.advantages(batch)
    assert torch.equal(adv, torch.zeros(B, T)), name
    loss, stats = m.loss(logp, batch, adv)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(B, T)), name
    assert all(v == v for v in stats.values()), stats  # no NaN statistic
    if m.needs_critic:
        values = torch.rand(B, T, requires_grad=True)
        vloss = m.value_loss(values, batch, m.value_targets(batch))
        vloss.backward()
        assert vloss.item() == 0.0 and torch.equal(values.grad, torch.zeros(B, T))


@pytest.mark.parametrize("name", method_names())
def test_nan_on_padded_positions_never_reaches_a_loss_or_a_gradient(name):
    m = get_method(name)
    clean, logp_clean = _batch(loss_mask_zero=False, garbage=False)
    dirty, logp_dirty = _batch(loss_mask_zero=False, garbage=True)
    adv_clean, adv_dirty = m.advantages(clean), m.advantages(dirty)
    assert torch.equal(adv_clean, adv_dirty), name
    lc, sc = m.loss(logp_clean, clean, adv_clean)
    ld, sd = m.loss(logp_dirty, dirty, adv_dirty)
    lc.backward()
    ld.backward()
    assert torch.isfinite(ld) and torch.equal(lc, ld), name
    assert torch.equal(logp_clean.grad, logp_dirty.grad), name
    assert torch.equal(logp_dirty.grad[clean.mask == 0], torch.zeros(int((clean.mask == 0).sum()))), name
    assert sc == sd


@pytest.mark.parametrize("name", method_names())
def test_a_nan_on_a_trained_token_is_a_value_error_naming_it(name):
    m = get_method(name)
    batch, logp = _batch(loss_mask_zero=False, garbage=False)
    adv = m.advantages(batch)
    bad = logp.detach().clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="logp"):
        m.loss(bad.requires_grad_(True), batch, adv)
    adv_bad = adv.clone()
    adv_bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="advantages"):
        m.loss(logp, batch, adv_bad)
    with pytest.raises(ValueError, match="rewards"):
        _batch(loss_mask_zero=False, garbage=False, rewards=torch.tensor([float("nan")] + [0.0] * (B - 1)))


def test_the_wrappers_unpack_the_batch_for_the_plain_tensor_losses():
    batch, logp = _batch(loss_mask_zero=False, garbage=False)
    adv = get_method("ppo_clip").advantages(batch)
    via_method, _ = get_method("ppo_clip").loss(logp, batch, adv)
    direct, _ = pg.trajectory_side.ppo_clip_loss(logp, batch.old_log_probs, adv, batch.loss_mask, eps_low=0.2)
    assert torch.equal(via_method, direct)
    via_method, _ = get_method("reinforce").loss(logp, batch, adv)
    direct, _ = pg.trajectory_side.policy_gradient_loss(logp, adv, batch.loss_mask)
    assert torch.equal(via_method, direct)
