"""Normalisers: whitening over a batch's tokens, and group-relative advantages (GRPO
and Dr.GRPO).

**Convention.** Every standard deviation here is Bessel-corrected by default,
`unbiased=True` (divide by n-1), as in TRL and verl: TRL's GRPO divides by `nanstd`
(`trl/trainer/utils.py:nanstd`, corrected by `count / (count - 1)`), verl's GRPO by
`torch.std` (`verl/trainer/ppo/core_algos.py:compute_grpo_outcome_advantage`), and
verl's `masked_whiten` uses `masked_var(..., unbiased=True)`
(`verl/utils/torch_functional.py`; TRL 1.16 has no token whitening).
`unbiased=False` gives the population standard deviation. Where the frameworks
differ from each other and from us: **eps** — TRL's GRPO divides by `std + 1e-4`,
verl's by `std + 1e-6` (our default); verl's `masked_whiten` multiplies by
`rsqrt(var + 1e-8)` (TRL's batch normalisations divide by `nanstd + 1e-4`), whereas
`whiten` divides by the standard deviation itself and uses `eps` only as the
threshold below which the values count as constant; **shift_mean=False** —
`masked_whiten` returns (x - μ) / σ + μ (the mean re-added after scaling), ours
returns x / σ (only rescaled, so every sign is kept). A group, or a whitened batch,
whose values are equal up to round-off (spread max - min ≤ 16 ε_dtype max(1, max|x|))
is constant: its advantages are exactly 0, never NaN nor round-off divided by a tiny
std.

Derived in chapter 6 ("RLHF-style PPO: critic, GAE, KL in the reward"), chapter 7
("The group mean is a Monte Carlo value") and chapter 7 ("Dividing by the group's
standard deviation").
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_float, check_mask, check_positive_int
from .._tensor import _spread_is_round_off, compute_dtype, select
from .masks import _check_flag, _check_number, _check_seq_mask

__all__ = ["whiten", "group_advantages", "group_step_advantages"]


def _centre(
    x: torch.Tensor, sel: torch.Tensor, n: torch.Tensor, dim=None
) -> torch.Tensor:
    """`x` minus its mean over the selected entries (0 elsewhere), in two passes: the
    second removes the round-off of the first, so the centred values sum to 0 up to
    round-off of their own size, not of `|x|`."""
    red = {} if dim is None else {"dim": dim, "keepdim": True}
    c = select(x - select(x, sel).sum(**red) / n, sel)
    return select(c - c.sum(**red) / n, sel)


def whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
    unbiased: bool = True,
) -> torch.Tensor:
    """Normalise `values (B, T)` to mean 0 and standard deviation 1 over the tokens
    where `mask` is 1.

    The advantage whitening of RLHF-PPO. `shift_mean=False` only rescales, x / σ
    (keeps the sign of every advantage); verl's `masked_whiten(shift_mean=False)`
    (`verl/utils/torch_functional.py`) instead re-adds the mean after scaling,
    (x - μ) / σ + μ. `unbiased=True` (the default, as verl's
    `masked_var(unbiased=True)`) divides the variance by n-1, `unbiased=False` by n.
    We divide by σ itself; verl multiplies by (σ^2 + 10^-8)^(-1/2). Never NaN: if the
    masked values are constant (all equal up to round-off, the rule of the module
    docstring, or std at most `eps`), or only one token is selected, the result is
    zeros with `shift_mean` and the masked input unchanged without it; an empty mask
    returns zeros. Values on padded positions are never read (they may be NaN). Used
    in chapter 6 ("RLHF-style PPO: critic, GAE, KL in the reward").
    """
    check_float(values, "values", 2)
    sel = _check_seq_mask(mask, values.shape[0])
    if sel.shape != values.shape:
        raise ValueError(
            f"mask must have the shape of values {tuple(values.shape)}, "
            f"got {tuple(sel.shape)}"
        )
    check_finite(values, "values", mask=sel)
    _check_flag(shift_mean, "shift_mean")
    _check_flag(unbiased, "unbiased")
    eps = _check_number(eps, "eps")
    x = select(values, sel)
    n = int(sel.sum())
    if n == 0:
        return torch.zeros_like(x)
    xc = x.to(compute_dtype(x))
    centred = _centre(xc, sel, n)
    std = ((centred * centred).sum() / max(n - 1 if unbiased else n, 1)).sqrt()
    if n < 2 or bool(std <= eps) or bool(_spread_is_round_off(xc, sel, values.dtype)):
        return torch.zeros_like(x) if shift_mean else x
    return select((centred if shift_mean else xc) / std, sel).to(values.dtype)


def _check_group_options(group_size, rows: int, scale, unbiased, eps) -> int:
    """Validate the options every group advantage shares; returns `G`."""
    G = check_positive_int(group_size, "group_size")
    if G < 2:
        raise ValueError(
            "group advantages need group_size >= 2: "
            "a group of one has no one to compare with"
        )
    if rows == 0 or rows % G:
        raise ValueError(f"group_size={G} does not divide the batch of {rows} rows")
    if scale not in ("std", None):
        raise ValueError(f"scale must be 'std' or None, got {scale!r}")
    _check_flag(unbiased, "unbiased")
    _check_number(eps, "eps")
    return G


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages: each reward minus the mean of its group, optionally
    divided by the group's std.

    rewards `(B,)`: `B = n_groups * G` sequence rewards, the `G` completions of a
    prompt contiguous (the layout of `sample(group_size=G)`). `scale="std"`:
    A_i = (R_i - R̄_g) / (σ_g + ε) (GRPO); `scale=None`: A_i = R_i - R̄_g (Dr.GRPO).
    `unbiased=True` (the default) takes the standard deviation with 1/(G-1), as TRL
    (`nanstd`, eps `1e-4`) and verl (`torch.std`, eps `1e-6`) do; `unbiased=False`
    with 1/G.

    A group whose rewards are all equal up to round-off, i.e. whose spread satisfies

        max_g R - min_g R ≤ 16 ε_dtype max(1, max_g |R|)

    (ε_dtype the machine epsilon of the rewards' dtype), carries no signal and gets
    advantage exactly 0 (never NaN, and never the round-off of the mean divided by a
    std of 1e-17 or by ε). Advantages sum to 0 within every group up to round-off of
    their own size (computed in float64, returned in the rewards' dtype). Needs
    `G >= 2`. Returns `(B,)`. Derived in chapter 7 ("The group mean is a Monte Carlo
    value") and chapter 7 ("Dividing by the group's standard deviation").
    """
    check_float(rewards, "rewards", 1)
    check_finite(rewards, "rewards")
    G = _check_group_options(group_size, rewards.shape[0], scale, unbiased, eps)
    g = rewards.to(torch.float64).reshape(-1, G)
    every = torch.ones_like(g, dtype=torch.bool)
    # (n_groups, 1): no signal
    constant = _spread_is_round_off(g.detach(), every, rewards.dtype, dim=1)
    adv = _centre(g, every, G, dim=1)
    if scale == "std":
        var = (adv * adv).sum(1, keepdim=True) / (G - 1 if unbiased else G)
        # no sqrt(0): its gradient is inf
        std = torch.where(constant, torch.ones_like(var), var).sqrt()
        adv = adv / torch.where(constant, torch.ones_like(std), std + eps)
    return (
        torch.where(constant, torch.zeros_like(adv), adv).reshape(-1).to(rewards.dtype)
    )


def group_step_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    step_mask: torch.Tensor | None = None,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO's process-supervision advantages: group-normalised step rewards, summed
    from each token on.

    rewards `(B, T)`: the reward of each step, on the step's last token (0
    elsewhere); mask `(B, T)`: the tokens that get an advantage (the loss mask);
    step_mask `(B, T)`: where a step ends (default `mask`: every trained token is a
    step). Every step reward of a group (all its completions, all their steps) is
    normalised with the mean and (`scale="std"`) standard deviation of that group's
    step rewards, r̃ = (r - μ_g) / (σ_g + ε); a token's advantage is the sum of the
    normalised rewards of the steps that end at or after it,
    A_{i,t} = Σ_{j: t_j ≥ t} r̃_{i,j} (Shao et al., 2024). `unbiased=True` (the
    default) divides the variance by the number of steps minus 1. A group whose step
    rewards are all equal up to round-off (the rule of `group_advantages`), or that
    has fewer than two steps, gets 0 everywhere; the normalised step rewards of a
    group sum to 0. Rewards on tokens where `mask` is 0 are never read (they may be
    NaN); on trained tokens that end no step they must be 0. Returns `(B, T)`, 0
    where `mask` is 0. Derived in chapter 7 ("The DeepSeekMath objective").
    """
    check_float(rewards, "rewards", 2)
    m = check_mask(mask, "mask", rewards.shape, allow_empty=True) != 0
    s = (
        m
        if step_mask is None
        else check_mask(step_mask, "step_mask", rewards.shape, allow_empty=True) != 0
    )
    if bool((s & ~m).any()):
        raise ValueError(
            "step_mask must be 0 wherever mask is 0 (a step ends on a trained token)"
        )
    check_finite(rewards, "rewards", mask=m)
    if bool((select(rewards, m & ~s) != 0).any()):
        raise ValueError(
            "rewards must be 0 where step_mask is 0 "
            "(a step reward sits on the step's last token)"
        )
    B, T = rewards.shape
    G = _check_group_options(group_size, B, scale, unbiased, eps)
    w = s.reshape(-1, G * T)  # one row per group: all its step rewards
    r = select(rewards, s).to(torch.float64).reshape(-1, G * T)
    n = w.sum(1, keepdim=True)
    # (n_groups, 1): no signal
    constant = (n < 2) | _spread_is_round_off(r.detach(), w, rewards.dtype, dim=1)
    dev = _centre(r, w, n.clamp_min(1), dim=1)
    if scale == "std":
        var = (dev * dev).sum(1, keepdim=True) / (n - (1 if unbiased else 0)).clamp_min(
            1
        )
        # no sqrt(0) (inf gradient)
        dev = dev / (torch.where(constant, torch.ones_like(var), var).sqrt() + eps)
    normed = torch.where(constant, torch.zeros_like(dev), dev).reshape(B, T)
    to_go = normed.flip(-1).cumsum(-1).flip(-1)  # sum over steps ending at or after t
    return select(to_go, m).to(rewards.dtype)
