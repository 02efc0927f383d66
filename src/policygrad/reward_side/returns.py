"""Returns: the outcome reward on the last token, the return of a trajectory, reward-to-go, and the
REINFORCE weights built from them. Padded batches ``(B, T)`` with an explicit mask (1 = real token);
entries where the mask is 0 are returned as 0. Derived in {ref}`sec-reinforce-estimator` and {ref}`sec-reward-to-go`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_mask, check_tensor, check_unit_interval
from .masks import _check_rewards_mask, _check_seq_mask

__all__ = ["returns_to_go", "total_return", "broadcast_to_tokens", "reinforce_weights", "terminal_to_steps"]


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go :math:`G_t = \\sum_{s \\ge t} \\gamma^{s-t} r_s` (eq. {eq}`eq-reward-to-go`).

    rewards, mask: ``(B, T)``. Returns ``(B, T)``, 0 where the mask is 0. Derived in {ref}`sec-reward-to-go`.
    """
    m = _check_rewards_mask(rewards, mask)
    gamma = check_unit_interval(gamma, "gamma")
    r = rewards * m
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * m


def total_return(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return of the whole trajectory :math:`R(\\tau) = G_0`: ``(B, T) -> (B,)``."""
    return returns_to_go(rewards, mask, gamma)[:, 0]


def broadcast_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every real token its sequence's value: ``(B,)`` and mask ``(B, T)`` -> ``(B, T)``."""
    check_tensor(values, "values", 1)
    check_finite(values, "values")
    m = check_mask(mask, "mask")
    if m.dim() != 2 or m.shape[0] != values.shape[0]:
        raise ValueError(f"mask must have shape ({values.shape[0]}, T), got {tuple(mask.shape)}")
    return values.unsqueeze(1) * m.to(values.dtype)


def reinforce_weights(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    reward_to_go: bool = False,
    baseline: float | torch.Tensor = 0.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """The weight :math:`w_t` that multiplies :math:`\\nabla\\log\\pi_\\theta(y_t\\mid s_t)` in REINFORCE.

    rewards: ``(B,)`` terminal rewards or ``(B, T)`` per-step rewards; mask ``(B, T)``.

    * ``reward_to_go=False``: :math:`w_t = R(\\tau) - b` (eq. {eq}`eq-reinforce-baseline`);
    * ``reward_to_go=True``: :math:`w_t = G_t - b_t` (eq. {eq}`eq-reward-to-go`), which drops rewards
      earned before the action.

    baseline: a constant, ``(B,)`` (one per trajectory, e.g. :math:`b(x)`) or ``(B, T)`` (per state).
    Returns ``(B, T)``. Derived in {ref}`sec-reinforce-baselines`.
    """
    check_tensor(rewards, "rewards", (1, 2))
    check_finite(rewards, "rewards")
    m = check_mask(mask, "mask")
    if m.dim() != 2 or m.shape[0] != rewards.shape[0] or (rewards.dim() == 2 and rewards.shape != m.shape):
        raise ValueError(f"mask {tuple(mask.shape)} does not match rewards {tuple(rewards.shape)}")
    m = m.to(rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype())
    r = rewards.to(m.dtype)
    if r.dim() == 1:
        if reward_to_go:
            raise ValueError("reward_to_go needs per-step rewards of shape (B, T); got terminal rewards (B,)")
        w = broadcast_to_tokens(r, m)
    elif reward_to_go:
        w = returns_to_go(r, m, gamma)
    else:
        w = broadcast_to_tokens(total_return(r, m, gamma), m)
    if isinstance(baseline, torch.Tensor):
        check_finite(baseline, "baseline")
        if baseline.dim() == 1:
            if baseline.shape[0] != m.shape[0]:
                raise ValueError(f"baseline (B,) must have B={m.shape[0]}, got {tuple(baseline.shape)}")
            baseline = baseline.unsqueeze(1)
        elif baseline.dim() == 2:
            if baseline.shape != m.shape:
                raise ValueError(f"baseline (B, T) must have shape {tuple(m.shape)}, got {tuple(baseline.shape)}")
        elif baseline.dim() != 0:
            raise ValueError(f"baseline must be a scalar, (B,) or (B, T), got shape {tuple(baseline.shape)}")
    return (w - baseline) * m


def terminal_to_steps(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's outcome reward on its last real token: ``(B,)`` and mask ``(B, T)`` -> ``(B, T)``.

    The language-model MDP of {ref}`sec-gae-lm-mdp`: every step earns 0 except the last. A row with an
    empty mask gets no reward anywhere.
    """
    check_tensor(rewards, "rewards", 1)
    check_finite(rewards, "rewards")
    m = _check_seq_mask(mask, rewards.shape[0]).to(rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype())
    last = (m.cumsum(-1) == m.sum(-1, keepdim=True)) & (m > 0)  # (B, T) True on the last real token
    return rewards.to(m.dtype).unsqueeze(1) * last.to(m.dtype)
