"""Tests for policygrad.rollout.Samples: the validated batch of sampled trajectories."""

import dataclasses

import pytest
import torch

from policygrad.rollout import Samples


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
