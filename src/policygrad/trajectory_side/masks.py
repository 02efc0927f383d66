"""Per-token inputs: validation shared by every loss, and the rule that masks select.

Every loss takes per-token tensors `(B, T)` and a 0/1 `mask` of the same shape (1 = a
trained token). What sits on a position where the mask is 0 — a NaN from a padded
forward pass, an infinity, garbage — never reaches a value or a gradient: the losses
select with `torch.where` before any arithmetic (`policygrad._tensor.select`).
Non-finite values on *trained* positions are a ValueError that names the argument; so
are integer or boolean tensors where floats are expected, and shapes that would
broadcast.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_finite, check_float, check_mask, check_tensor
from .._tensor import compute_dtype, select

__all__ = ["TokenLosses", "check_token_mask", "check_per_token", "check_constant"]


class TokenLosses(NamedTuple):
    """What a loss returns besides its aggregate when called with `per_token=True`.

    `values (B, T)`: the per-token losses (0 off the mask); `weights (B, T)`: the
    weights the aggregation gives each token (0 off the mask), so that
    `loss == (values * weights).sum()`.
    """

    values: torch.Tensor
    weights: torch.Tensor


def check_token_mask(
    mask: torch.Tensor, shape: torch.Size, of: str = "logp"
) -> torch.Tensor:
    """Validate a 0/1 mask of exactly `shape`; return it as bool.

    `shape` is the shape of `of`, with at least one row.
    """
    check_tensor(mask, "mask", 2)
    if mask.shape != shape:
        raise ValueError(
            f"mask must have the shape of {of} {tuple(shape)}, got {tuple(mask.shape)}"
        )
    if mask.shape[0] == 0:
        raise ValueError(f"{of} has no rows")
    return check_mask(mask, "mask", allow_empty=True) != 0


def check_per_token(
    x: torch.Tensor, mask: torch.Tensor, name: str = "logp"
) -> torch.Tensor:
    """Validate a per-token float tensor `x (B, T)` and its 0/1 mask.

    Returns the mask as bool. `x` must be floating point and finite where the mask is 1;
    the mask must have `x`'s exact shape.
    """
    check_float(x, name, 2)
    m = check_token_mask(mask, x.shape, name)
    check_finite(x, name, mask=m)
    return m


def check_constant(
    x: torch.Tensor, like: torch.Tensor, name: str, mask: torch.Tensor
) -> torch.Tensor:
    """Validate a per-token constant (`old_logp`, `ref_logp`, `advantages`).

    It must have `like`'s shape. Returns it detached, in the loss's compute dtype, with
    every padded position replaced by 0.
    """
    check_float(x, name)
    if x.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape {tuple(like.shape)}, got {tuple(x.shape)}"
        )
    check_finite(x, name, mask=mask)
    return select(x.detach().to(compute_dtype(like, x)), mask)
