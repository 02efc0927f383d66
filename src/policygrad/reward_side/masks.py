"""Validation of per-token rewards and masks shared by the reward-side functions, and
the round-off rule that decides when a group of rewards is constant.

Every helper returns the mask as a **boolean selection** `(mask != 0)`: the reward
side masks by selection (`policygrad._tensor.select`), never by multiplication, so a
NaN, an infinity or garbage on a padded position can neither reach a result nor a
gradient (`inf * 0` is NaN; `where` drops it).
"""

from __future__ import annotations

import math

import torch

from .._checks import check_finite, check_float, check_mask, check_tensor
from .._tensor import CONSTANT_ULPS, _constant_groups  # noqa: F401 (re-exported)


def _check_rewards_mask(
    rewards: torch.Tensor, mask: torch.Tensor, name: str = "rewards"
) -> torch.Tensor:
    """Float `rewards (B, T)`, a 0/1 `mask` of the same shape, rewards finite where it
    is 1. Returns the boolean selection. An empty mask is allowed (every completion
    masked out): the results are all 0."""
    check_float(rewards, name, 2)
    sel = check_mask(mask, "mask", rewards.shape, allow_empty=True) != 0
    check_finite(rewards, name, mask=sel)
    return sel


def _check_seq_mask(mask: torch.Tensor, B: int) -> torch.Tensor:
    """A 0/1 `mask (B, T)` that may be empty. Returns the boolean selection."""
    check_tensor(mask, "mask", 2)
    if mask.shape[0] != B:
        raise ValueError(f"mask must have {B} rows, got shape {tuple(mask.shape)}")
    return check_mask(mask, "mask", allow_empty=True) != 0


def _check_like(
    x: torch.Tensor,
    name: str,
    shape: torch.Size,
    sel: torch.Tensor,
    ref: str = "rewards",
) -> None:
    """Float `x` of exactly `shape` (no broadcasting), finite where `sel` is True."""
    check_float(x, name, len(shape))
    if x.shape != shape:
        raise ValueError(
            f"{name} must have the shape of {ref} {tuple(shape)}, got {tuple(x.shape)}"
        )
    check_finite(x, name, mask=sel)


def _check_number(value, name: str, *, signed: bool = False) -> float:
    """A finite real number (not a bool); non-negative unless `signed`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not signed and value < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value
