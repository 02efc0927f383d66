"""Validation of per-token inputs (shapes, 0/1 masks, finite trained values) shared by the losses.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_mask, check_tensor


def _check_per_token(x: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    check_tensor(x, name, 2)
    check_tensor(mask, "mask", 2)
    if mask.shape != x.shape:
        raise ValueError(f"mask must have the shape of {name} {tuple(x.shape)}, got {tuple(mask.shape)}")
    m = check_mask(mask, "mask", allow_empty=True)
    return m.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())


def _check_advantages(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    check_tensor(advantages, "advantages", 2)
    if advantages.shape != logp.shape:
        raise ValueError(f"advantages must have the shape of logp {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    check_finite(advantages, "advantages")
    return advantages.detach().to(logp.dtype)
