"""Importance ratios between the current policy and the one that sampled the tokens: token, sequence, geometric.

Derived in {ref}`sec-ppo-reuse` and {ref}`sec-ppo-epochs`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_tensor
from .masks import _check_per_token

__all__ = ["RATIO_LEVELS", "log_ratios"]


#: Levels at which an importance ratio can be formed (see :func:`log_ratios`).
RATIO_LEVELS = ("token", "sequence", "geometric")


def log_ratios(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token") -> torch.Tensor:
    """Log importance ratios between the current policy and the one that sampled the tokens.

    logp ``(B, T)`` (with gradient), old_logp ``(B, T)`` (treated as constants), mask ``(B, T)``:

    * ``"token"``: :math:`\\log r_{i,t} = \\log\\pi_\\theta(y_{i,t}\\mid s_{i,t}) - \\log\\pi_\\text{old}(y_{i,t}\\mid s_{i,t})`,
      ``(B, T)``, 0 where the mask is 0;
    * ``"sequence"``: :math:`\\sum_t \\log r_{i,t} = \\log\\frac{p_\\theta(y_i\\mid x_i)}{p_\\text{old}(y_i\\mid x_i)}`, the
      log of the *product* of token ratios (the exact sequence ratio), ``(B,)``;
    * ``"geometric"``: :math:`\\frac{1}{|o_i|}\\sum_t \\log r_{i,t}`, the log of their *geometric mean*
      (GSPO's length-normalised sequence ratio), ``(B,)``; 0 for a row with an empty mask.

    Derived in {ref}`sec-ppo-reuse` and {ref}`sec-ppo-epochs`.
    """
    check_tensor(logp, "logp", 2)
    check_tensor(old_logp, "old_logp", 2)
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
    m = _check_per_token(logp, mask, "logp")
    check_finite(old_logp, "old_logp")
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; choose one of {RATIO_LEVELS}")
    lr = (logp - old_logp.detach().to(logp.dtype)) * m
    if level == "token":
        return lr
    if level == "sequence":
        return lr.sum(-1)
    return lr.sum(-1) / m.sum(-1).clamp_min(1.0)
