"""The score-function (REINFORCE) surrogate whose gradient is the Monte Carlo estimate of the gradient of J.

Derived in {ref}`sec-reinforce-estimator`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_mask, check_tensor
from .._tensor import flat_grad, flat_params
from ..rollout import Samples
from .logprobs import token_log_probs

__all__ = ["pg_surrogate", "score_function_gradient"]


def pg_surrogate(logp: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate :math:`\\frac1B\\sum_i\\sum_t m_{i,t}\\, w_{i,t}\\, \\log\\pi_\\theta(y_{i,t}\\mid s_{i,t})`.

    logp: ``(B, T)`` with gradient; weights: ``(B, T)`` treated as constants (detached); mask ``(B, T)``.
    Its gradient is the Monte Carlo estimate of :math:`\\nabla J` (eq. {eq}`eq-reinforce`); its *value*
    means nothing on its own. Derived in {ref}`sec-reinforce-estimator`.
    """
    check_tensor(logp, "logp", 2)
    check_tensor(weights, "weights", 2)
    if weights.shape != logp.shape:
        raise ValueError(f"weights must have the shape of logp {tuple(logp.shape)}, got {tuple(weights.shape)}")
    check_finite(weights, "weights")
    m = check_mask(mask, "mask", logp.shape).to(logp.dtype)
    return (m * weights.detach().to(logp.dtype) * logp).sum() / logp.shape[0]


def score_function_gradient(policy: torch.nn.Module, samples: Samples, weights: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo policy-gradient estimate as a flat vector ``(P,)``: the gradient of :func:`pg_surrogate`.

    weights ``(B, T)`` come from the reward side (e.g. :func:`policygrad.reward_side.reinforce_weights`).
    """
    logits = policy(samples.prompts, samples.completions)
    logp = token_log_probs(logits, samples.completions)
    return flat_grad(pg_surrogate(logp, weights, samples.mask), flat_params(policy)).detach()
