"""Baselines: the optimal constant, leave-one-out, and a learned tabular value.

Three leave-one-out baselines, which differ in what they average over the other rows:

* `sequence_leave_one_out_baseline`: the whole returns R(τ_j) of the other rows of
  the batch, one number per completion (equation (eq-loo-baseline) of chapter 2);
* `per_step_leave_one_out_baseline`: the per-step weights w_{j,t} (e.g. the
  reward-to-go R_{j,t}) of the other rows at the same position t, one number per token;
* `group_leave_one_out_advantages`: the returns of the other rows of the *same
  prompt's group* (RLOO); the first two ignore which prompt a row belongs to.

Subtracting a baseline that does not depend on the sample keeps the estimator unbiased.
Derived in chapter 2 ("Baselines").
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import (
    check_finite,
    check_float,
    check_mask,
    check_positive_int,
    check_tensor,
)
from .._tensor import select
from .masks import _constant_groups

__all__ = [
    "optimal_constant_baseline",
    "leave_one_out_baseline",
    "sequence_leave_one_out_baseline",
    "per_step_leave_one_out_baseline",
    "group_leave_one_out_advantages",
    "TabularValue",
]


def optimal_constant_baseline(
    returns: torch.Tensor,
    score_sq_norms: torch.Tensor,
    probs: torch.Tensor | None = None,
) -> float:
    """The constant b* minimising the total variance of (R - b) ∇log p_θ(τ).

        b* = E[‖∇log p‖² R] / E[‖∇log p‖²]

    (equation (eq-optimal-baseline) of chapter 2). returns, score_sq_norms: `(K,)`;
    probs `(K,)` makes the expectation exact (over an enumeration); without it,
    sample means are used. Derived in chapter 2 ("Baselines").

    All three are finite float tensors; `score_sq_norms` (squared norms) must be
    non-negative, and `probs` non-negative weights, not all zero: b* is a ratio of
    two expectations under the same weights, so they need not be normalised (joint
    probabilities of one prompt's completions, summing to ρ(x), give that prompt's
    b*).
    """
    check_float(returns, "returns", 1)
    check_float(score_sq_norms, "score_sq_norms", 1)
    returns, score_sq_norms = (
        returns.detach().double(),
        score_sq_norms.detach().double(),
    )
    check_finite(returns, "returns")
    check_finite(score_sq_norms, "score_sq_norms")
    if returns.shape != score_sq_norms.shape:
        raise ValueError("returns and score_sq_norms must have the same shape")
    if bool((score_sq_norms < 0).any()):
        raise ValueError("score_sq_norms must be non-negative (they are squared norms)")
    if probs is None:
        w = torch.ones_like(returns) / returns.numel()
    else:
        check_float(probs, "probs")
        w = probs.detach().double()
        if w.shape != returns.shape:
            raise ValueError("probs must have the shape of returns")
        check_finite(w, "probs")
        if bool((w < 0).any()):
            raise ValueError("probs must be non-negative")
        if not float(w.sum()) > 0:
            raise ValueError("probs are all zero: they weigh nothing")
    den = (w * score_sq_norms).sum()
    if float(den) <= 0:
        raise ValueError(
            "all score norms are zero: the baseline is undefined "
            "(the gradient is zero anyway)"
        )
    return float((w * score_sq_norms * returns).sum() / den)


def leave_one_out_baseline(values: torch.Tensor) -> torch.Tensor:
    """For each row of a batch, the mean of the *other* rows:
    b_i = 1/(N-1) Σ_{j≠i} v_j.

    values: `(N,)` returns, or `(N, T)` per-token weights (averaged over the batch
    dimension only, position by position). The shared computation of
    `sequence_leave_one_out_baseline` (`(N,)` returns) and
    `per_step_leave_one_out_baseline` (`(N, T)` per-step weights); call those by name
    when the difference matters. Because b_i does not depend on sample i, subtracting it
    keeps REINFORCE unbiased (equation (eq-loo-baseline) of chapter 2). Needs `N >= 2`.
    Derived in chapter 2 ("Baselines").
    """
    check_float(values, "values", (1, 2))
    check_finite(values, "values")
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples, got {n}")
    return (values.sum(0, keepdim=True) - values) / (n - 1)


def sequence_leave_one_out_baseline(returns: torch.Tensor) -> torch.Tensor:
    """The batch leave-one-out baseline of whole returns, one number per completion:

        b_i = 1/(N-1) Σ_{j≠i} R(τ_j)

    (equation (eq-loo-baseline) of chapter 2). `returns` `(N,)`: the return of each of
    the N sampled completions; the result `(N,)` is subtracted from the weight of
    *every* token of completion i. It averages over the whole batch, whatever prompt
    each row answers (the per-prompt version is `group_leave_one_out_advantages`), and
    it compares whole returns: unlike `per_step_leave_one_out_baseline` it does not
    look at the position t of a token. b_i does not depend on τ_i, so R_i - b_i keeps
    REINFORCE unbiased; R_i - b_i = N/(N-1) (R_i - R̄). Needs `N >= 2` finite float
    returns. Derived in chapter 2 ("Baselines").
    """
    check_float(returns, "returns", 1)
    check_finite(returns, "returns")
    n = returns.shape[0]
    if n < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 returns, got {n}")
    return (returns.sum() - returns) / (n - 1)


def per_step_leave_one_out_baseline(weights: torch.Tensor) -> torch.Tensor:
    """The batch leave-one-out baseline of per-step weights, one number per token:

        b_{i,t} = 1/(N-1) Σ_{j≠i} w_{j,t}

    `weights` `(N, T)`: a per-token weight of each of the N sampled completions, e.g.
    the reward-to-go R_{j,t} (`policygrad.reward_side.reinforce_weights` with
    `reward_to_go=True`, which is 0 past a completion's end, and such zeros are
    averaged like any other value). The result `(N, T)` is subtracted from w_{i,t}.
    Unlike `sequence_leave_one_out_baseline`, which gives every token of completion i
    the mean of the other *whole returns*, this baseline compares token t with the other
    completions' weights *at the same position t*: for the reward-to-go it estimates
    the expected reward still to come after t tokens, which a whole return
    overestimates for late tokens. It averages over the whole batch, whatever prompt
    each row answers. b_{i,t} does not depend on τ_i, so the estimate stays unbiased.
    Needs `N >= 2` rows of finite floats. Derived in chapter 2 ("REINFORCE training on
    the toy").
    """
    check_float(weights, "weights", 2)
    check_finite(weights, "weights")
    n = weights.shape[0]
    if n < 2:
        raise ValueError(
            f"a leave-one-out baseline needs at least 2 rows of weights, got {n}"
        )
    return (weights.sum(0, keepdim=True) - weights) / (n - 1)


def group_leave_one_out_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor
) -> torch.Tensor:
    """RLOO: each reward minus the mean reward of the *other* rows of its group.

        A_i = R_i - 1/(G_g-1) Σ_{j∈g, j≠i} R_j = G_g/(G_g-1) · (R_i - R̄_g)

    This is the leave-one-out baseline b_i = 1/(N-1) Σ_{j≠i} R_j of chapter 2 within
    each group (the completions of one prompt). rewards `(B,)` finite floats; group_ids
    `(B,)` an integer tensor: rows with the same id form a group (they need not be
    contiguous, and groups may differ in size). A group of one row has no one to compare
    with and is a ValueError. The baseline of row i does not depend on R_i
    (∂A_i/∂R_i = 1, ∂A_j/∂R_i = -1/(G_g-1)), so the estimate stays unbiased.
    Advantages sum to 0 within every group, and are exactly 0 for a group whose rewards
    are equal up to round-off (spread ≤ 16 ε_dtype max(1, max|R|), the rule of
    `policygrad.reward_side.group_advantages`). Computed in float64, returned in the
    dtype of rewards.

    The same estimator as verl's `compute_rloo_outcome_advantage`
    (`verl/trainer/ppo/core_algos.py`: `R * G/(G-1) - mean * G/(G-1)`, groups by an
    index array; a group of one keeps its raw reward there, and gets 0 in
    `compute_rloo_vectorized_outcome_advantage`) and TRL's `RLOOTrainer`
    (`trl/trainer/rloo_trainer.py`, `_generate_and_score_completions`:
    `R - (sum_g - R)/(G - 1)` over contiguous groups of `num_generations`, then
    optionally whitened over the batch; with `beta=0.0`, as its default `beta=0.05`
    first subtracts the sequence's summed k1 KL from the reward). Returns `(B,)`.
    Derived in chapter 2 ("Baselines"); GRPO's group mean rescaled to it in
    chapter 7: R_i - R̄ = (G-1)/G · (R_i - R̄_-i).
    """
    check_float(rewards, "rewards", 1)
    check_tensor(group_ids, "group_ids", 1)
    if (
        group_ids.dtype == torch.bool
        or group_ids.is_floating_point()
        or group_ids.is_complex()
    ):
        raise ValueError(
            f"group_ids must be an integer tensor, got dtype {group_ids.dtype}"
        )
    if group_ids.shape != rewards.shape:
        raise ValueError(
            f"group_ids must have shape {tuple(rewards.shape)}, "
            f"got {tuple(group_ids.shape)}"
        )
    if rewards.numel() == 0:
        raise ValueError("rewards is empty: there is no group to compare within")
    check_finite(rewards, "rewards")
    ids, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        lone = ids[counts < 2].tolist()
        raise ValueError(
            f"group id {lone[0]} has a single row: "
            f"leave-one-out needs >= 2 rows per group (lone: {lone})"
        )
    r = rewards.to(torch.float64)
    n = counts.to(torch.float64)

    def group_mean(x):
        return (x.new_zeros(len(ids)).index_add(0, inv, x) / n)[inv]

    centred = r - group_mean(r)
    # a second pass: the group sums are 0 to round-off of |A|, not |R|
    centred = centred - group_mean(centred)
    adv = centred * (n / (n - 1))[inv]
    inf = torch.full_like(n, float("inf"))
    lo = inf.scatter_reduce(0, inv, r.detach(), "amin")
    hi = (-inf).scatter_reduce(0, inv, r.detach(), "amax")
    top = torch.zeros_like(n).scatter_reduce(0, inv, r.detach().abs(), "amax")
    constant = _constant_groups(lo, hi, top, rewards.dtype)[inv]
    return torch.where(constant, torch.zeros_like(adv), adv).to(rewards.dtype)


class TabularValue(nn.Module):
    """A learned state-dependent baseline b_φ(s): one number per state, fitted by
    regression.

    `fit` takes SGD steps on the squared error to the observed returns. Used as a
    baseline it keeps REINFORCE unbiased as long as it is fitted on *earlier* samples
    than those it is applied to. Derived in chapter 2 ("Baselines").
    """

    def __init__(self, num_states: int, init: float = 0.0) -> None:
        super().__init__()
        check_positive_int(num_states, "num_states")
        self.table = nn.Parameter(torch.full((num_states,), float(init)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Values of integer `states` (any shape)."""
        if states.numel() and (
            int(states.min()) < 0 or int(states.max()) >= self.table.shape[0]
        ):
            raise ValueError(f"states must lie in [0, {self.table.shape[0] - 1}]")
        return self.table[states.long()]

    @torch.no_grad()
    def fit(
        self, states: torch.Tensor, targets: torch.Tensor, lr: float = 0.1, mask=None
    ) -> float:
        """One step of b(s) ← b(s) + lr · mean(R_t - b(s)) per visited state.

        Returns the mean squared error before the step.
        """
        if states.shape != targets.shape:
            raise ValueError(
                "states and targets must have the same shape, "
                f"got {tuple(states.shape)} and {tuple(targets.shape)}"
            )
        check_float(targets, "targets")
        sel = torch.ones_like(targets, dtype=torch.bool)
        if mask is not None:
            sel = check_mask(mask, "mask", targets.shape) != 0
        check_finite(targets, "targets", mask=sel)
        m = sel.to(targets.dtype)
        err = select(targets - self(states), sel)
        s = states.reshape(-1).long()
        num = torch.zeros_like(self.table).index_add_(0, s, err.reshape(-1))
        cnt = torch.zeros_like(self.table).index_add_(0, s, m.reshape(-1))
        self.table += lr * num / cnt.clamp_min(1.0)
        return float((err**2).sum() / m.sum())
