"""Reward shaping: the KL to a reference put into the per-token reward (RLHF-style PPO).

Derived in {ref}`sec-rlhf-kl-gradients` and {ref}`sec-rlhf-ppo`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_tensor
from .masks import _check_seq_mask
from .returns import terminal_to_steps

__all__ = ["kl_shaped_rewards"]


def kl_shaped_rewards(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    kind: str = "k1",
) -> torch.Tensor:
    """KL to a reference as *reward shaping* (reward side): :math:`r_t \\leftarrow r_t - \\beta\\,k_t` per token.

    rewards ``(B,)`` outcome rewards (put on the last token by :func:`terminal_to_steps`) or ``(B, T)``
    per-step rewards; logp ``(B, T)`` of the sampling policy and ref_logp ``(B, T)``; the per-token
    estimate :math:`k_t` is :func:`policygrad.trajectory_side.kl_estimate` of ``kind`` (k1 in Ziegler et al.
    2019 and InstructGPT). Everything is treated as a constant (no gradient flows through a reward).
    Returns ``(B, T)``, 0 on padding. Derived in {ref}`sec-rlhf-kl-gradients` and {ref}`sec-rlhf-ppo`.
    """
    from ..trajectory_side.kl import kl_estimate  # the estimator is shared with the loss-term form

    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    check_tensor(logp, "logp", 2)
    m = _check_seq_mask(mask, logp.shape[0])
    if m.shape != logp.shape:
        raise ValueError(f"mask must have the shape of logp {tuple(logp.shape)}, got {tuple(m.shape)}")
    check_tensor(rewards, "rewards", (1, 2))
    steps = terminal_to_steps(rewards, m) if rewards.dim() == 1 else rewards
    if steps.shape != logp.shape:
        raise ValueError(f"per-step rewards must have shape {tuple(logp.shape)}, got {tuple(steps.shape)}")
    check_finite(steps, "rewards")
    m = m.to(logp.dtype)
    k = kl_estimate(logp.detach() * m, ref_logp.detach() * m, kind).detach()
    return (steps.detach().to(logp.dtype) - beta * k) * m
