"""Baselines: the optimal constant, leave-one-out, and a learned tabular value.

Subtracting a baseline that does not depend on the sample keeps the estimator unbiased.
Derived in {ref}`sec-reinforce-baselines`.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_finite, check_mask, check_positive_int, check_tensor

__all__ = ["optimal_constant_baseline", "leave_one_out_baseline", "TabularValue"]


def optimal_constant_baseline(
    returns: torch.Tensor, score_sq_norms: torch.Tensor, probs: torch.Tensor | None = None
) -> float:
    """The constant :math:`b^*` minimising the total variance of :math:`(R-b)\\nabla\\log p_\\theta(\\tau)`.

    :math:`b^* = \\mathbb E[\\lVert\\nabla\\log p\\rVert^2 R] / \\mathbb E[\\lVert\\nabla\\log p\\rVert^2]`
    (eq. {eq}`eq-optimal-baseline`). returns, score_sq_norms: ``(K,)``; probs ``(K,)`` makes the
    expectation exact (over an enumeration); without it, sample means are used. Derived in
    {ref}`sec-reinforce-baselines`.
    """
    check_tensor(returns, "returns", 1)
    check_tensor(score_sq_norms, "score_sq_norms", 1)
    returns, score_sq_norms = returns.detach(), score_sq_norms.detach()
    probs = None if probs is None else probs.detach()
    check_finite(returns, "returns")
    check_finite(score_sq_norms, "score_sq_norms")
    if returns.shape != score_sq_norms.shape:
        raise ValueError("returns and score_sq_norms must have the same shape")
    w = torch.ones_like(returns) / returns.numel() if probs is None else probs
    if w.shape != returns.shape:
        raise ValueError("probs must have the shape of returns")
    den = (w * score_sq_norms).sum()
    if float(den) <= 0:
        raise ValueError("all score norms are zero: the baseline is undefined (the gradient is zero anyway)")
    return float((w * score_sq_norms * returns).sum() / den)


def leave_one_out_baseline(values: torch.Tensor) -> torch.Tensor:
    """For each sample, the mean of the *other* samples: :math:`b_i = \\frac{1}{N-1}\\sum_{j\\ne i} v_j`.

    values: ``(N,)`` returns, or ``(N, T)`` per-token weights (averaged over the batch dimension only).
    Because :math:`b_i` does not depend on sample :math:`i`, subtracting it keeps REINFORCE unbiased
    (eq. {eq}`eq-loo-baseline`). Needs ``N >= 2``. Derived in {ref}`sec-reinforce-baselines`.
    """
    check_tensor(values, "values", (1, 2))
    check_finite(values, "values")
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples, got {n}")
    return (values.sum(0, keepdim=True) - values) / (n - 1)


class TabularValue(nn.Module):
    """A learned state-dependent baseline :math:`b_\\phi(s)`: one number per state, fitted by regression.

    ``fit`` takes SGD steps on the squared error to the observed returns. Used as a baseline it keeps
    REINFORCE unbiased as long as it is fitted on *earlier* samples than those it is applied to.
    Derived in {ref}`sec-reinforce-baselines`.
    """

    def __init__(self, num_states: int, init: float = 0.0) -> None:
        super().__init__()
        check_positive_int(num_states, "num_states")
        self.table = nn.Parameter(torch.full((num_states,), float(init)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Values of integer ``states`` (any shape)."""
        if states.numel() and (int(states.min()) < 0 or int(states.max()) >= self.table.shape[0]):
            raise ValueError(f"states must lie in [0, {self.table.shape[0] - 1}]")
        return self.table[states.long()]

    @torch.no_grad()
    def fit(self, states: torch.Tensor, targets: torch.Tensor, lr: float = 0.1, mask=None) -> float:
        """One step of :math:`b(s) \\leftarrow b(s) + \\text{lr}\\cdot\\text{mean}(G - b(s))` per visited state.

        Returns the mean squared error before the step.
        """
        if states.shape != targets.shape:
            raise ValueError(f"states and targets must have the same shape, got {tuple(states.shape)} and {tuple(targets.shape)}")
        check_finite(targets, "targets")
        m = torch.ones_like(targets) if mask is None else check_mask(mask, "mask", targets.shape).to(targets.dtype)
        err = (targets - self(states)) * m
        s = states.reshape(-1).long()
        num = torch.zeros_like(self.table).index_add_(0, s, err.reshape(-1))
        cnt = torch.zeros_like(self.table).index_add_(0, s, m.reshape(-1))
        self.table += lr * num / cnt.clamp_min(1.0)
        return float((err**2).sum() / m.sum())
