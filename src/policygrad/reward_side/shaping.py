"""Reward shaping: the KL to a reference put into the per-token reward (RLHF-style
PPO).

Derived in chapter 6 ("KL in the reward or KL in the loss: which gradient do you
get?") and chapter 6 ("RLHF-style PPO: critic, GAE, KL in the reward").
"""

from __future__ import annotations

import torch

from .._checks import check_float
from .._tensor import select
from .masks import _check_like, _check_number, _check_seq_mask
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
    """KL to a reference as *reward shaping* (reward side): r_t ← r_t - β k_t per
    token.

    rewards `(B,)` outcome rewards (put on the last token by `terminal_to_steps`) or
    `(B, T)` per-step rewards; logp `(B, T)` of the sampling policy and ref_logp
    `(B, T)`; the per-token estimate k_t is `policygrad.trajectory_side.kl_estimate`
    of `kind` (k1 in Ziegler et al. 2019 and InstructGPT). Everything is treated as a
    constant (no gradient flows through a reward). All are floats, finite on real
    tokens; padded positions are selected away before any arithmetic. Returns
    `(B, T)`, 0 on padding. Derived in chapter 6 ("KL in the reward or KL in the
    loss: which gradient do you get?") and chapter 6 ("RLHF-style PPO: critic, GAE,
    KL in the reward").
    """
    # the estimator is shared with the loss-term form
    from ..trajectory_side.kl import kl_estimate

    beta = _check_number(beta, "beta")
    check_float(logp, "logp", 2)
    sel = _check_seq_mask(mask, logp.shape[0])
    if sel.shape != logp.shape:
        raise ValueError(
            f"mask must have the shape of logp {tuple(logp.shape)}, "
            f"got {tuple(sel.shape)}"
        )
    _check_like(logp, "logp", logp.shape, sel, ref="logp")
    _check_like(ref_logp, "ref_logp", logp.shape, sel, ref="logp")
    check_float(rewards, "rewards", (1, 2))
    if rewards.dim() == 1:
        # validates rewards (B,) on the rows that have a real token
        steps = terminal_to_steps(rewards, sel)
    else:
        _check_like(rewards, "rewards", logp.shape, sel, ref="logp")
        steps = rewards
    k = kl_estimate(
        select(logp.detach(), sel), select(ref_logp.detach(), sel), kind
    ).detach()
    return select(select(steps.detach(), sel).to(logp.dtype) - beta * k, sel)
