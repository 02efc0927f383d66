"""Normalisers: whitening over a batch's tokens, and group-relative advantages (GRPO and Dr.GRPO).

Derived in {ref}`sec-rlhf-ppo`, {ref}`sec-grpo-baseline` and {ref}`sec-grpo-std`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_mask, check_positive_int, check_tensor
from .masks import _check_seq_mask

__all__ = ["whiten", "group_advantages", "group_step_advantages"]


def whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values (B, T)`` to mean 0 and standard deviation 1 over the tokens where ``mask`` is 1.

    The advantage whitening of RLHF-PPO. ``shift_mean=False`` only rescales (keeps the sign of every
    advantage). Uses the population standard deviation. Never NaN: if the masked values are all equal
    (std at most ``eps``) the result is zeros with ``shift_mean`` and the masked input unchanged without it;
    an empty mask returns zeros. Used in {ref}`sec-rlhf-ppo`.
    """
    check_tensor(values, "values", 2)
    check_finite(values, "values")
    m = _check_seq_mask(mask, values.shape[0])
    if m.shape != values.shape:
        raise ValueError(f"mask must have the shape of values {tuple(values.shape)}, got {tuple(m.shape)}")
    m = m.to(values.dtype)
    n = m.sum()
    if n == 0:
        return torch.zeros_like(values)
    mean = (values * m).sum() / n
    var = (((values - mean) * m) ** 2).sum() / n
    std = var.sqrt()
    if std <= eps:
        return (values - mean) * 0.0 * m if shift_mean else values * m
    centred = values - mean if shift_mean else values
    return centred / std * m


def _check_group_options(group_size, rows: int, scale, unbiased, eps) -> int:
    """Validate the options every group advantage shares; returns ``G``."""
    G = check_positive_int(group_size, "group_size")
    if G < 2:
        raise ValueError("group advantages need group_size >= 2: a group of one has no one to compare with")
    if rows == 0 or rows % G:
        raise ValueError(f"group_size={G} does not divide the batch of {rows} rows")
    if scale not in ("std", None):
        raise ValueError(f"scale must be 'std' or None, got {scale!r}")
    if not isinstance(unbiased, bool):
        raise ValueError(f"unbiased must be True or False, got {unbiased!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
    return G


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages: each reward minus the mean of its group, optionally divided by the group's std.

    rewards ``(B,)``: ``B = n_groups * G`` sequence rewards, the ``G`` completions of a prompt contiguous (the
    layout of ``sample(group_size=G)``). ``scale="std"``: :math:`A_i = (R_i - \\bar R_g)/(\\sigma_g + \\varepsilon)`
    (GRPO); ``scale=None``: :math:`A_i = R_i - \\bar R_g` (Dr.GRPO). ``unbiased`` picks the standard deviation
    with :math:`1/(G-1)` (TRL and verl call ``torch.std``, which is unbiased) instead of :math:`1/G`.

    A group whose rewards are all equal carries no signal and gets advantage exactly 0 (never NaN, and never
    the round-off of the mean divided by :math:`\\varepsilon`). Advantages sum to 0 within every group. Needs
    ``G >= 2``. Returns ``(B,)``. Derived in {ref}`sec-grpo-baseline` and {ref}`sec-grpo-std`.
    """
    check_tensor(rewards, "rewards", 1)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    check_finite(rewards, "rewards")
    G = _check_group_options(group_size, rewards.shape[0], scale, unbiased, eps)
    g = rewards.reshape(-1, G)
    constant = (g == g[:, :1]).all(1, keepdim=True)  # (n_groups, 1): no signal in this group
    adv = g - g.mean(1, keepdim=True)
    if scale == "std":
        std = g.std(1, keepdim=True, correction=1 if unbiased else 0)
        adv = adv / torch.where(constant, torch.ones_like(std), std + eps)
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(-1)


def group_step_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    step_mask: torch.Tensor | None = None,
    scale: str | None = "std",
    unbiased: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO's process-supervision advantages: group-normalised step rewards, summed from each token on.

    rewards ``(B, T)``: the reward of each step, on the step's last token (0 elsewhere); mask ``(B, T)``: the
    tokens that get an advantage (the loss mask); step_mask ``(B, T)``: where a step ends (default ``mask``:
    every trained token is a step). Every step reward of a group (all its completions, all their steps) is
    normalised with the mean and (``scale="std"``) standard deviation of that group's step rewards,
    :math:`\\tilde r = (r - \\mu_g)/(\\sigma_g + \\varepsilon)`; a token's advantage is the sum of the normalised
    rewards of the steps that end at or after it, :math:`A_{i,t} = \\sum_{j:\\ t_j \\ge t} \\tilde r_{i,j}`
    (Shao et al., 2024). A group whose step rewards are all equal (or that has fewer than two steps) gets 0
    everywhere, as in :func:`group_advantages`. Returns ``(B, T)``, 0 where ``mask`` is 0. Derived in
    {ref}`sec-grpo-objective`.
    """
    check_tensor(rewards, "rewards", 2)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    check_finite(rewards, "rewards")
    m = check_mask(mask, "mask", rewards.shape, allow_empty=True).to(rewards.dtype)
    s = m if step_mask is None else check_mask(step_mask, "step_mask", rewards.shape, allow_empty=True).to(rewards.dtype)
    if bool(((s != 0) & (m == 0)).any()):
        raise ValueError("step_mask must be 0 wherever mask is 0 (a step ends on a trained token)")
    if bool((rewards * (1 - s) != 0).any()):
        raise ValueError("rewards must be 0 where step_mask is 0 (a step reward sits on the step's last token)")
    B, T = rewards.shape
    G = _check_group_options(group_size, B, scale, unbiased, eps)
    r = rewards.reshape(-1, G * T)  # one row per group: all its step rewards
    w = s.reshape(-1, G * T)
    n = w.sum(1, keepdim=True)
    mean = (r * w).sum(1, keepdim=True) / n.clamp_min(1.0)
    dev = (r - mean) * w
    big = torch.finfo(r.dtype).max
    lo = torch.where(w > 0, r, torch.full_like(r, big)).amin(1, keepdim=True)
    hi = torch.where(w > 0, r, torch.full_like(r, -big)).amax(1, keepdim=True)
    constant = (n < 2) | (lo == hi)  # (n_groups, 1): no signal in this group
    if scale == "std":
        var = (dev * dev).sum(1, keepdim=True) / (n - (1.0 if unbiased else 0.0)).clamp_min(1.0)
        dev = dev / torch.where(constant, torch.ones_like(var), var.sqrt() + eps)
    normed = torch.where(constant, torch.zeros_like(dev), dev).reshape(B, T)
    to_go = normed.flip(-1).cumsum(-1).flip(-1)  # sum over steps ending at or after t
    return to_go * m
