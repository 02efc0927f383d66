"""How a critic's errors enter the advantage estimators built from it.

With a critic V̂ = V + e, every estimator of chapter 3 is linear in the values, so
Â_t(V̂) − Â_t(V) = Σ_j C[t, j] e(s_j) for a fixed matrix C. These functions compute C
for n-step and GAE advantages by running the estimators themselves on unit errors.
Derived in chapter 3 ("Bias and variance"), as functions of λ.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int, check_unit_interval
from .td import gae, n_step_returns

__all__ = ["gae_error_weights", "n_step_error_weights"]


def _unit_errors(T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero rewards, the T unit errors as `(T, T)` values (row j is e = 1 at s_j), and
    a full mask, in float64."""
    T = check_positive_int(T, "T")
    eye = torch.eye(T, dtype=torch.float64)
    return torch.zeros_like(eye), eye, torch.ones_like(eye)


def gae_error_weights(T: int, lam: float, gamma: float = 1.0) -> torch.Tensor:
    """The weight of each state's critic error in GAE(γ, λ): `(T, T)`, float64.

    `C[t, j]` is the coefficient of e(s_j) = V̂(s_j) − V(s_j) in Â_t(V̂) − Â_t(V) on a
    sequence of `T` tokens, equation (eq-gae-critic-error) of chapter 3:

        C[t, t] = −1,   C[t, t + k] = γ^k λ^(k−1) (1 − λ)   for 1 ≤ k < T − t,

    and 0 elsewhere (the terminal value V(s_T) = 0 is known, so it has no error).
    Computed with `gae` itself, on zero rewards with the unit error of state s_j as
    the values: GAE is linear in the values. For k = 1 the weight 1 − λ is largest at
    λ = 0; for k ≥ 2 it is 0 at λ = 0 and at λ = 1 and largest at λ = (k − 1)/k.
    """
    lam = check_unit_interval(lam, "lam")
    gamma = check_unit_interval(gamma, "gamma")
    rewards, errors, mask = _unit_errors(T)
    # row j: the change of every Â_t when only e(s_j) = 1; transpose to C[t, j]
    return gae(rewards, errors, mask, gamma=gamma, lam=lam).T.contiguous()


def n_step_error_weights(T: int, n: int, gamma: float = 1.0) -> torch.Tensor:
    """The weight of each state's critic error in the n-step advantage: `(T, T)`.

    `C[t, j]` is the coefficient of e(s_j) in Â^(n)_t(V̂) − Â^(n)_t(V), where
    Â^(n)_t = R^(n)_t − V̂(s_t) (equation (eq-n-step-advantage) of chapter 3):

        C[t, t] = −1,   C[t, t + n] = γ^n   when t + n < T,

    and 0 elsewhere, float64. At γ = 1 the error n steps ahead enters at full size:
    a longer lookahead moves the error to a later state, it does not shrink it.
    Computed with `n_step_returns` on zero rewards and unit errors.
    """
    n = check_positive_int(n, "n")
    gamma = check_unit_interval(gamma, "gamma")
    rewards, errors, mask = _unit_errors(T)
    change = n_step_returns(rewards, errors, mask, n=n, gamma=gamma) - errors
    return change.T.contiguous()
