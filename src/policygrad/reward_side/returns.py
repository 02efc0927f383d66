"""Returns: the outcome reward on the last token, the return of a trajectory,
reward-to-go, and the REINFORCE weights built from them. Padded batches `(B, T)` with
an explicit mask (1 = real token); entries where the mask is 0 are returned as 0.
Derived in chapter 2 ("The Monte Carlo estimator and its surrogate loss") and
chapter 2 ("Reward-to-go: an action cannot affect the past").

Masks select, they never multiply: whatever sits on a padded position (0, garbage,
NaN, inf) is replaced by 0 before any arithmetic, so the result is bitwise the same
and its gradient there is exactly 0. Rewards must be floating-point tensors (an
integer reward tensor is refused, not promoted) and finite on real tokens.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_float, check_mask, check_unit_interval
from .._tensor import select
from .masks import _check_number, _check_rewards_mask, _check_seq_mask

__all__ = [
    "returns_to_go",
    "total_return",
    "broadcast_to_tokens",
    "reinforce_weights",
    "terminal_to_steps",
]


def returns_to_go(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """Reward-to-go R_t = Σ_{s≥t} γ^(s-t) r_s (equation (eq-reward-to-go) of
    chapter 2).

    rewards, mask: `(B, T)`. Returns `(B, T)`, 0 where the mask is 0. Derived in
    chapter 2 ("Reward-to-go: an action cannot affect the past").
    """
    sel = _check_rewards_mask(rewards, mask)
    gamma = check_unit_interval(gamma, "gamma")
    r = select(rewards, sel)  # padded rewards are 0, whatever they were
    running = torch.zeros_like(r[:, 0])
    out = []
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out.append(running)
    return select(torch.stack(out[::-1], 1), sel)


def total_return(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """Return of the whole trajectory R(τ) = R_0: `(B, T) -> (B,)`."""
    return returns_to_go(rewards, mask, gamma)[:, 0]


def broadcast_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every real token its sequence's value: `(B,)` and mask `(B, T)` ->
    `(B, T)`.

    A row whose mask is empty gets zeros, and its value is never read (it may be
    NaN); an entirely empty mask (every completion masked out) gives all zeros, so a
    training step on it has a defined, zero update.
    """
    check_float(values, "values", 1)
    m = check_mask(mask, "mask", allow_empty=True)
    if m.dim() != 2 or m.shape[0] != values.shape[0]:
        raise ValueError(
            f"mask must have shape ({values.shape[0]}, T), got {tuple(mask.shape)}"
        )
    sel = m != 0
    check_finite(values, "values", mask=sel.any(1))
    return select(values.unsqueeze(1).expand(sel.shape), sel)


def _check_baseline(baseline, sel: torch.Tensor):
    """A number, or a float tensor of shape (), (B,) or (B, T) (finite where it is
    used), as a broadcastable `(B, T)`-compatible value; any other shape is refused
    rather than broadcast."""
    if not isinstance(baseline, torch.Tensor):
        return _check_number(baseline, "baseline", signed=True)
    check_float(baseline, "baseline")
    B, T = sel.shape
    if baseline.dim() == 0:
        check_finite(baseline, "baseline")
        return baseline
    if baseline.dim() == 1:
        if baseline.shape[0] != B:
            raise ValueError(
                f"baseline (B,) must have shape ({B},), got {tuple(baseline.shape)}"
            )
        check_finite(baseline, "baseline", mask=sel.any(1))
        return select(baseline, sel.any(1)).unsqueeze(1)
    if baseline.dim() == 2:
        if baseline.shape != sel.shape:
            raise ValueError(
                f"baseline (B, T) must have shape {tuple(sel.shape)}, "
                f"got {tuple(baseline.shape)}"
            )
        check_finite(baseline, "baseline", mask=sel)
        return select(baseline, sel)
    raise ValueError(
        f"baseline must be a scalar, (B,) or (B, T), got shape {tuple(baseline.shape)}"
    )


def reinforce_weights(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    reward_to_go: bool = False,
    baseline: float | torch.Tensor = 0.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """The weight w_t that multiplies ∇log π_θ(y_t | s_t) in REINFORCE.

    rewards: `(B,)` terminal rewards or `(B, T)` per-step rewards; mask `(B, T)`.

    * `reward_to_go=False`: w_t = R(τ) - b (equation (eq-reinforce-baseline) of
      chapter 2);
    * `reward_to_go=True`: w_t = R_t - b_t (equation (eq-reward-to-go) of chapter 2),
      which drops rewards earned before the action.

    baseline: a constant, `(B,)` (one per trajectory, e.g. b(x)) or `(B, T)` (per
    state). Returns `(B, T)`, 0 where the mask is 0. Derived in chapter 2
    ("Baselines").
    """
    check_float(rewards, "rewards", (1, 2))
    m = check_mask(mask, "mask", allow_empty=True)
    if (
        m.dim() != 2
        or m.shape[0] != rewards.shape[0]
        or (rewards.dim() == 2 and rewards.shape != m.shape)
    ):
        raise ValueError(
            f"mask {tuple(mask.shape)} does not match rewards {tuple(rewards.shape)}"
        )
    sel = m != 0
    check_finite(rewards, "rewards", mask=sel if rewards.dim() == 2 else sel.any(1))
    b = _check_baseline(baseline, sel)
    if rewards.dim() == 1:
        if reward_to_go:
            raise ValueError(
                "reward_to_go needs per-step rewards of shape (B, T); "
                "got terminal rewards (B,)"
            )
        w = broadcast_to_tokens(rewards, sel)
    elif reward_to_go:
        w = returns_to_go(rewards, sel, gamma)
    else:
        w = broadcast_to_tokens(total_return(rewards, sel, gamma), sel)
    return select(w - b, sel)


def terminal_to_steps(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's outcome reward on its last real token: `(B,)` and mask
    `(B, T)` -> `(B, T)`.

    The language-model MDP of chapter 3 ("The token-level MDP of a language model:
    one reward at the end"): every step earns 0 except the last. A row with an empty
    mask gets no reward anywhere (and its reward is never read).
    """
    check_float(rewards, "rewards", 1)
    sel = _check_seq_mask(mask, rewards.shape[0])
    check_finite(rewards, "rewards", mask=sel.any(1))
    count = sel.long().cumsum(-1)
    last = sel & (count == count[:, -1:])  # (B, T) True on the last real token
    return select(rewards.unsqueeze(1).expand(sel.shape), last)
