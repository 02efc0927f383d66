"""Tests for policygrad.rollout: Samples (sampler output) and RolloutBatch (the validated RL batch)."""

import dataclasses

import pytest
import torch

from policygrad.rollout import RolloutBatch, Samples


def _parts(B=3, T=4):
    return dict(
        prompts=torch.arange(B),
        completions=torch.zeros(B, T, dtype=torch.long),
        mask=torch.tensor([[1.0] * T] + [[1.0, 1.0] + [0.0] * (T - 2)] * (B - 1)),
        log_probs=torch.zeros(B, T),
        truncated=torch.zeros(B, dtype=torch.bool),
    )


def test_valid_samples_and_lengths():
    s = Samples(**_parts())
    assert len(s) == 3
    assert torch.equal(s.lengths, torch.tensor([4.0, 2.0, 2.0]))
    tokens = Samples(**{**_parts(), "prompts": torch.zeros(3, 5, dtype=torch.long)})  # (B, P) prompt tokens
    assert len(tokens) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.mask = torch.ones(3, 4)  # frozen


@pytest.mark.parametrize(
    "change, match",
    [
        ({"completions": torch.zeros(3, dtype=torch.long)}, "completions"),
        ({"prompts": torch.arange(2)}, "rows"),
        ({"prompts": torch.zeros(3, 2, 2)}, "prompts"),
        ({"mask": torch.ones(3, 5)}, "mask must have shape"),
        ({"mask": torch.ones(3)}, "mask"),
        ({"mask": torch.zeros(3, 4)}, "empty"),
        ({"mask": torch.full((3, 4), 0.5)}, "0 and 1"),
        ({"log_probs": torch.zeros(3, 3)}, "log_probs must have shape"),
        ({"log_probs": torch.zeros(12)}, "log_probs"),
        ({"truncated": torch.zeros(2, dtype=torch.bool)}, "truncated must have shape"),
        ({"truncated": torch.zeros(3, 1, dtype=torch.bool)}, "truncated"),
        ({"completions": [[0, 0, 0, 0]] * 3}, "torch.Tensor"),
    ],
)
def test_samples_validation(change, match):
    parts = _parts()
    parts.update(change)
    with pytest.raises(ValueError, match=match):
        Samples(**parts)


# -- RolloutBatch ----------------------------------------------------------------------------------------------


def _batch_parts(B=4, T=3, G=2, P=2):
    """A valid batch of B rows in groups of G: every field distinct per row so misalignment is visible."""
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])[:B, :T]
    return dict(
        prompts=torch.arange(B // G).repeat_interleave(G).unsqueeze(1).repeat(1, P),
        completions=torch.arange(B * T).reshape(B, T) % 5,
        mask=mask,
        loss_mask=mask.clone(),
        old_log_probs=-torch.arange(1, B * T + 1, dtype=torch.float32).reshape(B, T) / 10 * mask,
        ref_log_probs=-torch.arange(1, B * T + 1, dtype=torch.float32).reshape(B, T) / 7 * mask,
        rewards=torch.arange(B, dtype=torch.float32),
        group_ids=torch.arange(B // G).repeat_interleave(G),
        truncated=torch.tensor([True, False, False, True])[:B],
    )


def test_rollout_batch_direct_construction_and_properties():
    b = RolloutBatch(**_batch_parts())
    assert len(b) == 4 and b.group_size == 2 and b.num_groups == 2
    assert torch.equal(b.lengths, torch.tensor([3.0, 1.0, 2.0, 3.0]))
    assert torch.equal(b.sequence_rewards, torch.tensor([0.0, 1.0, 2.0, 3.0]))  # outcome rewards as given
    per_step = torch.tensor([[0.5, 0.0, 1.0], [2.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 1.0, 1.0]])
    b2 = RolloutBatch(**{**_batch_parts(), "rewards": per_step})
    assert torch.equal(b2.sequence_rewards, torch.tensor([1.5, 2.0, -1.0, 3.0]))  # per-step rewards summed
    single = RolloutBatch(**{**_batch_parts(), "group_ids": torch.tensor([7, 3, 9, 0])})
    assert single.group_size == 1 and single.num_groups == 4
    whole = RolloutBatch(**{**_batch_parts(), "group_ids": torch.zeros(4, dtype=torch.long)})
    assert whole.group_size == 4 and whole.num_groups == 1
    assert RolloutBatch(**{**_batch_parts(), "ref_log_probs": None}).ref_log_probs is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.rewards = torch.zeros(4)


def test_rollout_batch_from_samples():
    B, T, G = 6, 4, 3
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3 + [[1.0, 1.0, 1.0, 1.0]] * 3)
    lp = -torch.rand(B, T, generator=torch.Generator().manual_seed(0)) * mask
    lp.requires_grad_(True)
    s = Samples(
        prompts=torch.tensor([[1, 2]] * 3 + [[3, 4]] * 3),
        completions=torch.randint(0, 5, (B, T), generator=torch.Generator().manual_seed(1)),
        mask=mask,
        log_probs=lp,
        truncated=torch.tensor([False] * 3 + [True] * 3),
    )
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    ref = (lp * 2).detach().requires_grad_(True)
    b = RolloutBatch.from_samples(s, rewards, group_size=G, ref_log_probs=ref)
    assert torch.equal(b.group_ids, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert b.group_size == 3 and b.num_groups == 2
    assert torch.equal(b.loss_mask, s.mask) and torch.equal(b.mask, s.mask)  # loss mask defaults to the mask
    assert torch.equal(b.old_log_probs, lp.detach()) and not b.old_log_probs.requires_grad
    assert torch.equal(b.ref_log_probs, ref.detach()) and not b.ref_log_probs.requires_grad
    assert b.prompts is s.prompts and b.completions is s.completions and b.truncated is s.truncated
    assert b.rewards is rewards
    only_first = mask * torch.tensor([1.0, 0.0, 0.0, 0.0])
    b1 = RolloutBatch.from_samples(s, rewards, loss_mask=only_first)
    assert torch.equal(b1.loss_mask, only_first) and b1.group_size == 1 and b1.ref_log_probs is None
    with pytest.raises(ValueError, match="does not divide"):
        RolloutBatch.from_samples(s, rewards, group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        RolloutBatch.from_samples(s, rewards, group_size=0)
    with pytest.raises(ValueError, match="Samples"):
        RolloutBatch.from_samples(_batch_parts(), rewards)
    with pytest.raises(ValueError, match="rewards"):
        RolloutBatch.from_samples(s, rewards[:5])


@pytest.mark.parametrize(
    "change, match",
    [
        # shapes, field by field
        ({"completions": torch.zeros(4, dtype=torch.long)}, "completions"),
        ({"completions": torch.zeros(4, 3)}, "completions must hold integer"),
        ({"completions": torch.zeros(0, 3, dtype=torch.long)}, "at least one row"),
        ({"prompts": torch.zeros(4, dtype=torch.long)}, "prompts"),
        ({"prompts": torch.zeros(3, 2, dtype=torch.long)}, "prompts has 3 rows"),
        ({"mask": torch.ones(4, 4)}, "mask must have shape"),
        ({"mask": torch.ones(4)}, "mask"),
        ({"loss_mask": torch.ones(3, 3)}, "loss_mask must have shape"),
        ({"old_log_probs": torch.zeros(4, 2)}, "old_log_probs must have shape"),
        ({"old_log_probs": torch.zeros(4, 3, dtype=torch.long)}, "old_log_probs must be a floating"),
        ({"ref_log_probs": torch.zeros(4, 4)}, "ref_log_probs must have shape"),
        ({"rewards": torch.zeros(3)}, "rewards must have shape"),
        ({"rewards": torch.zeros(4, 2)}, "rewards must have shape"),
        ({"rewards": torch.zeros(4, 3, 1)}, "rewards"),
        ({"rewards": torch.zeros(4, dtype=torch.long)}, "rewards must be a floating"),
        ({"group_ids": torch.zeros(3, dtype=torch.long)}, "group_ids"),
        ({"truncated": torch.zeros(3, dtype=torch.bool)}, "truncated"),
        ({"truncated": torch.zeros(4, 1, dtype=torch.bool)}, "truncated"),
        ({"rewards": [0.0, 1.0, 2.0, 3.0]}, "rewards must be a torch.Tensor"),
        ({"values": torch.zeros(4, 2)}, "values must be a floating-point tensor of shape"),
        ({"values": torch.zeros(4, 3, dtype=torch.long)}, "values must be a floating-point"),
        ({"values": torch.full((4, 3), float("nan"))}, "values contains"),
        # masks
        ({"mask": torch.full((4, 3), 0.5)}, "mask must contain only 0 and 1"),
        ({"loss_mask": torch.full((4, 3), 2.0)}, "loss_mask must contain only 0 and 1"),
        ({"loss_mask": torch.ones(4, 3)}, "loss_mask must be 0 wherever mask is 0"),
        # non-finite values and log-probabilities
        ({"rewards": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, "rewards contains 1 NaN"),
        ({"rewards": torch.tensor([0.0, 0.0, float("inf"), 0.0])}, "rewards contains 1 NaN or infinite"),
        ({"old_log_probs": torch.full((4, 3), float("nan"))}, "old_log_probs contains"),
        ({"ref_log_probs": torch.full((4, 3), -float("inf"))}, "ref_log_probs contains"),
        ({"old_log_probs": torch.full((4, 3), 0.5)}, "old_log_probs must be log-probabilities"),
        ({"ref_log_probs": torch.full((4, 3), 0.1)}, "ref_log_probs must be log-probabilities"),
        # groups
        ({"group_ids": torch.tensor([0.0, 0.0, 1.0, 1.0])}, "group_ids must be an integer"),
        ({"group_ids": torch.tensor([True, True, False, False])}, "group_ids must be an integer"),
        ({"group_ids": torch.tensor([0, 1, 0, 1])}, "contiguous"),
        ({"group_ids": torch.tensor([0, 0, 0, 1])}, "same size"),
        ({"truncated": torch.zeros(4)}, "truncated must be a bool"),
        ({"truncated": torch.zeros(4, dtype=torch.long)}, "truncated must be a bool"),
        # per-step rewards on padding (row 1 has one real token)
        (
            {"rewards": torch.tensor([[0.0] * 3, [0.0, 1.0, 0.0], [0.0] * 3, [0.0] * 3])},
            "per-step rewards must be 0 on padding",
        ),
    ],
)
def test_rollout_batch_validation(change, match):
    parts = _batch_parts()
    parts.update(change)
    with pytest.raises(ValueError, match=match):
        RolloutBatch(**parts)


def test_rollout_batch_positive_log_probs_on_padding_are_ignored_but_not_on_real_tokens():
    parts = _batch_parts()
    pad = parts["mask"] == 0
    RolloutBatch(**{**parts, "old_log_probs": torch.where(pad, torch.tensor(3.0), parts["old_log_probs"])})
    real = parts["old_log_probs"].clone()
    real[1, 0] = 0.01  # row 1's only real token
    with pytest.raises(ValueError, match="old_log_probs must be log-probabilities"):
        RolloutBatch(**{**parts, "old_log_probs": real})


def test_rollout_batch_group_size_not_dividing_the_batch_is_rejected():
    parts = _batch_parts()
    # 4 rows cannot form equal groups of 3: any id layout has unequal or non-contiguous groups
    with pytest.raises(ValueError, match="same size"):
        RolloutBatch(**{**parts, "group_ids": torch.tensor([0, 0, 0, 1])})
    three = {k: v[:3] for k, v in parts.items()}
    three["group_ids"] = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match="same size"):
        RolloutBatch(**three)


def test_rollout_batch_row_with_empty_loss_mask_is_allowed():
    parts = _batch_parts()
    lm = parts["mask"].clone()
    lm[2] = 0.0  # e.g. a row made only of tool output
    b = RolloutBatch(**{**parts, "loss_mask": lm})
    assert float(b.loss_mask[2].sum()) == 0.0 and float(b.lengths[2]) == 2.0
    # a loss mask that is a strict subset of the mask (prompt-side tokens the policy did not choose)
    lm2 = parts["mask"].clone()
    lm2[0, 1] = 0.0
    assert float(RolloutBatch(**{**parts, "loss_mask": lm2}).loss_mask.sum()) == float(parts["mask"].sum()) - 1


def test_rollout_batch_select_whole_groups_keeps_rows_aligned():
    B, T, G = 6, 3, 2
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(T) < torch.tensor([3, 1, 2, 3, 2, 1]).unsqueeze(1)).float()
    full = RolloutBatch(
        prompts=torch.arange(B // G).repeat_interleave(G).unsqueeze(1) * torch.ones(1, 2, dtype=torch.long),
        completions=torch.randint(0, 9, (B, T), generator=g),
        mask=mask,
        loss_mask=mask,
        old_log_probs=-torch.rand(B, T, generator=g) * mask,
        ref_log_probs=-torch.rand(B, T, generator=g) * mask,
        rewards=torch.randn(B, T, generator=g) * mask,
        group_ids=torch.tensor([10, 10, 20, 20, 30, 30]),
        truncated=torch.tensor([True, False, False, True, False, True]),
        values=torch.randn(B, T, generator=g) * mask,
        rollout_log_probs=-torch.rand(B, T, generator=g) * mask,
        greedy_rewards=torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.5]),
        reward_components=torch.rand(B, 2, generator=g),
        sum_pi_squared=torch.rand(B, T, generator=g) * mask,
        entropies=2 * torch.rand(B, T, generator=g) * mask,
    )
    rows = torch.tensor([4, 5, 0, 1])  # groups 30 and 10, in that order
    sub = full.select(rows)
    assert len(sub) == 4 and sub.group_size == 2 and sub.num_groups == 2
    assert torch.equal(sub.group_ids, torch.tensor([30, 30, 10, 10]))
    for f in dataclasses.fields(RolloutBatch):
        assert torch.equal(getattr(sub, f.name), getattr(full, f.name)[rows]), f.name
    assert torch.equal(sub.sequence_rewards, full.sequence_rewards[rows])
    assert torch.equal(sub.lengths, full.lengths[rows])
    no_ref = RolloutBatch(
        **{
            **{f.name: getattr(full, f.name) for f in dataclasses.fields(RolloutBatch)},
            "ref_log_probs": None,
            "values": None,
            "rollout_log_probs": None,
        }
    )
    sub = no_ref.select(rows)
    assert sub.ref_log_probs is None and sub.values is None and sub.rollout_log_probs is None
    with pytest.raises(ValueError, match="contiguous"):
        full.select(torch.tensor([0, 2, 1, 3]))  # splits and interleaves groups
    with pytest.raises(ValueError, match="same size"):
        full.select(torch.tensor([0, 1, 2]))  # half a group
    with pytest.raises(ValueError, match="no row"):
        full.select(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        full.select(torch.tensor([[0, 1]]))
