"""TD residuals, n-step returns and generalised advantage estimation (GAE) over padded
batches.

rewards, values and mask are `(B, T)` (exactly that shape: nothing is broadcast),
rewards and values floating point and finite on real tokens; padded positions are
selected away before any arithmetic, so what sits there never reaches a result or a
gradient. Derived in chapter 3 ("TD residuals"), with n-step returns, and in
chapter 3 ("GAE"), the section on GAE(λ) as an average of all n-step estimators.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_float, check_positive_int, check_unit_interval
from .._tensor import select
from .masks import _check_like, _check_rewards_mask

__all__ = ["td_residuals", "n_step_returns", "gae"]


def _next_real(x: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every position, `x` at the next real (selected) position of its row, and
    whether there is one.

    A gap in the mask (tokens the policy did not choose, e.g. a tool's output inside a
    trajectory) is bridged: the next state is the next real token's, as in verl's
    GAE. For a contiguous mask this is `x[:, t + 1]` up to the last real token, and
    "none" after it.
    """
    carry = torch.zeros_like(x[:, 0])
    has = torch.zeros_like(sel[:, 0])
    values, exists = [], []
    for t in range(x.shape[1] - 1, -1, -1):
        values.append(carry)
        exists.append(has)
        carry = torch.where(sel[:, t], x[:, t], carry)
        has = has | sel[:, t]
    return torch.stack(values[::-1], 1), torch.stack(exists[::-1], 1)


def _next_values(
    v: torch.Tensor, sel: torch.Tensor, last_value: torch.Tensor | None
) -> torch.Tensor:
    """V(s_{t+1}) with 0 after the end of each sequence (or `last_value` to bootstrap
    a truncation).

    `v` is already selected (0 on padding); `sel` is the boolean mask. s_{t+1} is the
    state of the next real token, so a gap in the mask is bridged (see
    `_next_real`).
    """
    nxt, has_next = _next_real(v, sel)
    if last_value is not None:
        check_float(last_value, "last_value", 1)
        if last_value.shape[0] != v.shape[0]:
            raise ValueError(
                f"last_value must have shape ({v.shape[0]},), "
                f"got {tuple(last_value.shape)}"
            )
        check_finite(last_value, "last_value", mask=sel.any(1))
        # the last real token of each row bootstraps from last_value
        is_last = sel & ~has_next
        lv = select(last_value, sel.any(1)).to(v.dtype)
        nxt = torch.where(is_last, lv.unsqueeze(1), nxt)
    return nxt


def _checked(rewards, values, mask):
    """Validate rewards, values and mask; return them with padding selected away, and
    the boolean mask."""
    sel = _check_rewards_mask(rewards, mask)
    _check_like(values, "values", rewards.shape, sel)
    return select(rewards, sel), select(values, sel), sel


def td_residuals(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """TD residuals δ_t = r_t + γ V(s_{t+1}) - V(s_t) (equation (eq-td-residual) of
    chapter 3).

    rewards, values, mask: `(B, T)`; `values[:, t]` is V(s_t). After the last real
    token the next state is terminal (value 0) unless `last_value (B,)` bootstraps a
    truncated sequence. Returns `(B, T)`. Derived in chapter 3 ("TD residuals").
    """
    r, v, sel = _checked(rewards, values, mask)
    gamma = check_unit_interval(gamma, "gamma")
    return select(r + gamma * _next_values(v, sel, last_value) - v, sel)


def n_step_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    gamma: float = 1.0,
) -> torch.Tensor:
    """n-step return (equation (eq-n-step) of chapter 3):

        R^(n)_t = Σ_{k<n} γ^k r_{t+k} + γ^n V(s_{t+n})

    Shapes `(B, T)`; steps past the end of a sequence contribute nothing (terminal
    value 0). Derived in chapter 3 ("TD residuals").
    """
    r, v, sel = _checked(rewards, values, mask)
    n = check_positive_int(n, "n")
    gamma = check_unit_interval(gamma, "gamma")
    B, T = r.shape
    out = []
    for t in range(T):
        acc = r.new_zeros(B)
        for k in range(n):
            if t + k < T:
                acc = acc + gamma**k * r[:, t + k]
        if t + n < T:
            acc = acc + gamma**n * v[:, t + n]
        out.append(acc)
    return select(torch.stack(out, 1), sel)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimation (equation (eq-gae) of chapter 3):

        Â_t = Σ_{k≥0} (γλ)^k δ_{t+k}

    `lam=0` gives the TD residual; `lam=1` gives R_t - V(s_t). Shapes `(B, T)`; computed
    by the backward recursion Â_t = δ_t + γλ Â_{t+1}, where t+1 is the next real
    token: a gap in the mask (tokens the policy did not choose) is bridged, as in verl's
    `compute_gae_advantage_return`. Derived in chapter 3 ("GAE"), the section on
    GAE(λ) as an average of all n-step estimators.
    """
    lam = check_unit_interval(lam, "lam")
    # validates everything; 0 on padding
    delta = td_residuals(rewards, values, mask, gamma, last_value)
    sel = mask != 0
    # the GAE of the next real token (0 past the last one)
    running = torch.zeros_like(delta[:, 0])
    out = []
    for t in range(delta.shape[1] - 1, -1, -1):
        # a gap in the mask is bridged: a real token continues from the next real
        # token's GAE
        running = torch.where(sel[:, t], delta[:, t] + gamma * lam * running, running)
        out.append(running)
    return select(torch.stack(out[::-1], 1), sel)
