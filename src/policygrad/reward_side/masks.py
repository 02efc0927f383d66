"""Validation of per-token rewards and masks shared by the reward-side functions.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_mask, check_tensor


def _check_rewards_mask(rewards: torch.Tensor, mask: torch.Tensor, name: str = "rewards") -> torch.Tensor:
    check_tensor(rewards, name, 2)
    check_finite(rewards, name)
    return check_mask(mask, "mask", rewards.shape).to(rewards.dtype)


def _check_seq_mask(mask: torch.Tensor, B: int) -> torch.Tensor:
    check_tensor(mask, "mask", 2)
    if mask.shape[0] != B:
        raise ValueError(f"mask must have {B} rows, got shape {tuple(mask.shape)}")
    return check_mask(mask, "mask", allow_empty=True)
