"""Importance ratios between the current policy and the one that sampled the tokens: token, sequence, geometric.

Ratios are formed in log space and exponentiated only through :func:`safe_ratio`, which clamps the
log-ratio to :math:`\\pm` :data:`LOG_RATIO_CLAMP` first (as verl does), so a log-ratio of 1000 from a stale or
broken sampler gives a large but finite ratio and a zero gradient instead of ``inf`` and ``nan``.
Derived in {ref}`sec-ppo-reuse` and {ref}`sec-ppo-epochs`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_float
from .._tensor import compute_dtype, select
from .masks import check_constant, check_per_token

__all__ = ["RATIO_LEVELS", "LOG_RATIO_CLAMP", "log_ratios", "safe_ratio"]

#: Levels at which an importance ratio can be formed (see :func:`log_ratios`).
RATIO_LEVELS = ("token", "sequence", "geometric")

#: Log-ratios are clamped to ``[-20, 20]`` before ``exp`` (verl's ``compute_policy_loss`` uses the same bound):
#: :math:`e^{20}\\approx 4.9\\cdot10^8` is finite in float32 and the gradient beyond the bound is 0.
LOG_RATIO_CLAMP = 20.0


def safe_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """:math:`\\exp(\\mathrm{clamp}(\\log r, -20, 20))`: finite for every finite input, 0 gradient outside the clamp.

    ``log_ratio`` must be a finite float tensor (select padded positions away first, as the losses do).
    """
    check_float(log_ratio, "log_ratio")
    check_finite(log_ratio, "log_ratio")
    return torch.exp(torch.clamp(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def log_ratios(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token") -> torch.Tensor:
    """Log importance ratios between the current policy and the one that sampled the tokens.

    logp ``(B, T)`` (with gradient), old_logp ``(B, T)`` (treated as constants), mask ``(B, T)``:

    * ``"token"``: :math:`\\log r_{i,t} = \\log\\pi_\\theta(y_{i,t}\\mid s_{i,t}) - \\log\\pi_\\text{old}(y_{i,t}\\mid s_{i,t})`,
      ``(B, T)``, 0 where the mask is 0;
    * ``"sequence"``: :math:`\\sum_t \\log r_{i,t} = \\log\\frac{p_\\theta(y_i\\mid x_i)}{p_\\text{old}(y_i\\mid x_i)}`, the
      log of the *product* of token ratios (the exact sequence ratio), ``(B,)``;
    * ``"geometric"``: :math:`\\frac{1}{|o_i|}\\sum_t \\log r_{i,t}`, the log of their *geometric mean*
      (GSPO's length-normalised sequence ratio), ``(B,)``; 0 for a row with an empty mask.

    Computed in at least float32 (:func:`policygrad._tensor.compute_dtype`). The sequence levels can be
    passed straight to :func:`policygrad.trajectory_side.clip_loss`. Derived in {ref}`sec-ppo-reuse` and
    {ref}`sec-ppo-epochs`.
    """
    m = check_per_token(logp, mask, "logp")
    old = check_constant(old_logp, logp, "old_logp", m)
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; choose one of {RATIO_LEVELS}")
    lr = select(logp.to(compute_dtype(logp)) - old, m)
    if level == "token":
        return lr
    if level == "sequence":
        return lr.sum(-1)
    return lr.sum(-1) / m.sum(-1).clamp_min(1).to(lr.dtype)
