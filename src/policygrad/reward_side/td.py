"""TD residuals, n-step returns and generalised advantage estimation (GAE) over padded batches.

Derived in {ref}`sec-gae-td` and {ref}`sec-gae-derivation`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_positive_int, check_tensor, check_unit_interval
from .masks import _check_rewards_mask

__all__ = ["td_residuals", "n_step_returns", "gae"]


def _next_values(values: torch.Tensor, m: torch.Tensor, last_value: torch.Tensor | None) -> torch.Tensor:
    """V(s_{t+1}) with 0 after the end of each sequence (or ``last_value`` to bootstrap a truncation)."""
    nxt = torch.cat([values[:, 1:] * m[:, 1:], torch.zeros_like(values[:, :1])], 1)
    if last_value is not None:
        check_tensor(last_value, "last_value", 1)
        check_finite(last_value, "last_value")
        if last_value.shape[0] != values.shape[0]:
            raise ValueError(f"last_value must have shape ({values.shape[0]},), got {tuple(last_value.shape)}")
        # the last real token of each row bootstraps from last_value
        is_last = (m > 0) & (torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1) == 0)
        nxt = torch.where(is_last, last_value.unsqueeze(1).to(values.dtype), nxt)
    return nxt


def _check_values(values: torch.Tensor, rewards: torch.Tensor) -> None:
    check_tensor(values, "values", 2)
    if values.shape != rewards.shape:
        raise ValueError(f"values must have the shape of rewards {tuple(rewards.shape)}, got {tuple(values.shape)}")
    check_finite(values, "values")


def td_residuals(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """TD residuals :math:`\\delta_t = r_t + \\gamma V(s_{t+1}) - V(s_t)` (eq. {eq}`eq-td-residual`).

    rewards, values, mask: ``(B, T)``; ``values[:, t]`` is :math:`V(s_t)`. After the last real token the
    next state is terminal (value 0) unless ``last_value (B,)`` bootstraps a truncated sequence.
    Returns ``(B, T)``. Derived in {ref}`sec-gae-td`.
    """
    m = _check_rewards_mask(rewards, mask)
    _check_values(values, rewards)
    gamma = check_unit_interval(gamma, "gamma")
    return (rewards + gamma * _next_values(values, m, last_value) - values) * m


def n_step_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    gamma: float = 1.0,
) -> torch.Tensor:
    """n-step return :math:`G^{(n)}_t = \\sum_{k<n} \\gamma^k r_{t+k} + \\gamma^n V(s_{t+n})` (eq. {eq}`eq-n-step`).

    Shapes ``(B, T)``; steps past the end of a sequence contribute nothing (terminal value 0).
    Derived in {ref}`sec-gae-td`.
    """
    m = _check_rewards_mask(rewards, mask)
    _check_values(values, rewards)
    n = check_positive_int(n, "n")
    gamma = check_unit_interval(gamma, "gamma")
    B, T = rewards.shape
    r = rewards * m
    v = values * m
    out = torch.zeros_like(r)
    for t in range(T):
        acc = torch.zeros(B, dtype=r.dtype)
        for k in range(n):
            if t + k < T:
                acc = acc + gamma**k * r[:, t + k]
        if t + n < T:
            acc = acc + gamma**n * v[:, t + n]
        out[:, t] = acc
    return out * m


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimation :math:`\\hat A_t = \\sum_{k\\ge0} (\\gamma\\lambda)^k \\delta_{t+k}` (eq. {eq}`eq-gae`).

    ``lam=0`` gives the TD residual; ``lam=1`` gives :math:`G_t - V(s_t)`. Shapes ``(B, T)``; computed
    by the backward recursion :math:`\\hat A_t = \\delta_t + \\gamma\\lambda \\hat A_{t+1}`.
    Derived in {ref}`sec-gae-derivation`.
    """
    lam = check_unit_interval(lam, "lam")
    delta = td_residuals(rewards, values, mask, gamma, last_value)
    m = mask.to(delta.dtype)
    out = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in range(delta.shape[1] - 1, -1, -1):
        nxt_m = m[:, t + 1] if t + 1 < delta.shape[1] else torch.zeros_like(running)
        running = delta[:, t] + gamma * lam * nxt_m * running
        out[:, t] = running
    return out * m
