"""Importance ratios at three levels: token, sequence, geometric.

Between the current policy and the one that sampled the tokens. Ratios are formed in log
space and exponentiated only through `safe_ratio`, which clamps the log-ratio to
±`LOG_RATIO_CLAMP` first (as verl does), so a log-ratio of 1000 from a stale or broken
sampler gives a large but finite ratio and a zero gradient instead of `inf` and `nan`.
Derived in chapter 5 ("What a reused batch estimates" and "Several epochs, minibatches,
and token versus sequence ratios").
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_float
from .._tensor import compute_dtype, select
from .masks import check_constant, check_per_token

__all__ = ["RATIO_LEVELS", "LOG_RATIO_CLAMP", "log_ratios", "safe_ratio"]

#: Levels at which an importance ratio can be formed (see `log_ratios`).
RATIO_LEVELS = ("token", "sequence", "geometric")

#: Log-ratios are clamped to `[-20, 20]` before `exp` (verl's `compute_policy_loss` uses
#: the same bound): e^20 ≈ 4.9·10^8 is finite in float32 and the gradient beyond the
#: bound is 0.
LOG_RATIO_CLAMP = 20.0


def safe_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """exp(clamp(log r, −20, 20)): finite for every finite input.

    Zero gradient outside the clamp. `log_ratio` must be a finite float tensor (select
    padded positions away first, as the losses do).
    """
    check_float(log_ratio, "log_ratio")
    check_finite(log_ratio, "log_ratio")
    return torch.exp(torch.clamp(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def log_ratios(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token"
) -> torch.Tensor:
    """Log importance ratios of the current policy to the one that sampled the tokens.

    logp `(B, T)` (with gradient), old_logp `(B, T)` (treated as constants), mask
    `(B, T)`:

    * `"token"`: log r_{i,t} = log π_θ(y_{i,t} | s_{i,t}) −
      log π_old(y_{i,t} | s_{i,t}), `(B, T)`, 0 where the mask is 0;
    * `"sequence"`: Σ_t log r_{i,t} = log (p_θ(y_i | x_i) / p_old(y_i | x_i)), the log
      of the *product* of token ratios (the exact sequence ratio), `(B,)`;
    * `"geometric"`: (1/|o_i|) Σ_t log r_{i,t}, the log of their *geometric mean*
      (GSPO's length-normalised sequence ratio), `(B,)`; 0 for a row with an empty mask.

    Computed in at least float32 (`policygrad._tensor.compute_dtype`). The sequence
    levels can be passed straight to `policygrad.trajectory_side.clip_loss`. Derived in
    chapter 5 ("What a reused batch estimates" and "Several epochs, minibatches, and
    token versus sequence ratios").
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
