"""Monte Carlo gradient estimates against the exact gradient: bias, variance, cosine, relative error.

Introduced in {ref}`sec-reinforce-unbiased`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._checks import check_finite, check_positive_int, check_tensor
from .exact import ExactProblem
from .rollout import Samples
from .trajectory_side import score_function_gradient

__all__ = ["gradient_error_stats", "collect_estimates", "convergence", "sampled_estimator", "exact_bias_variance"]


def gradient_error_stats(estimates: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Compare ``M`` independent estimates ``(M, P)`` with the exact gradient ``(P,)``.

    Returns a dict with

    * ``bias_norm`` :math:`\\lVert \\bar g - \\nabla J\\rVert` and ``bias_se``, its Monte Carlo noise level
      :math:`\\sqrt{\\mathrm{tr\\,Cov}/M}` (an unbiased estimator has ``bias_norm`` of the order of ``bias_se``);
    * ``variance``: total variance :math:`\\mathrm{tr}\\,\\mathrm{Cov}[g]` (unbiased, divides by ``M-1``);
    * ``mse`` :math:`\\mathbb E\\lVert g-\\nabla J\\rVert^2`, ``relative_error`` :math:`\\sqrt{\\mathrm{mse}}/\\lVert\\nabla J\\rVert`;
    * ``cosine``: mean cosine similarity between each estimate and :math:`\\nabla J`.
    """
    check_tensor(estimates, "estimates", 2)
    check_tensor(exact, "exact", 1)
    if estimates.shape[1] != exact.shape[0]:
        raise ValueError(f"estimates (M, P) and exact (P,) disagree: {tuple(estimates.shape)} vs {tuple(exact.shape)}")
    if estimates.shape[0] < 2:
        raise ValueError("need at least 2 estimates to measure a variance")
    check_finite(estimates, "estimates")
    check_finite(exact, "exact")
    est = estimates.double()
    ex = exact.double()
    M = est.shape[0]
    mean = est.mean(0)
    variance = float(((est - mean) ** 2).sum(1).sum() / (M - 1))
    mse = float(((est - ex) ** 2).sum(1).mean())
    norm = float(ex.norm())
    est_norms = est.norm(dim=1)
    if norm == 0:
        cosine = float("nan")
    else:
        cos = (est @ ex) / (est_norms.clamp_min(1e-300) * norm)
        cosine = float(torch.where(est_norms > 0, cos, torch.zeros_like(cos)).mean())
    return {
        "bias_norm": float((mean - ex).norm()),
        "bias_se": math.sqrt(variance / M),
        "variance": variance,
        "mse": mse,
        "relative_error": math.sqrt(mse) / norm if norm > 0 else float("inf"),
        "cosine": cosine,
    }


def collect_estimates(
    estimate_fn: Callable[[int, torch.Generator], torch.Tensor], n: int, trials: int, seed: int = 0
) -> torch.Tensor:
    """Call ``estimate_fn(n, generator)`` ``trials`` times with independent seeded generators: ``(trials, P)``."""
    check_positive_int(n, "n")
    check_positive_int(trials, "trials")
    out = []
    for k in range(trials):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        out.append(estimate_fn(n, g).detach().reshape(-1))
    return torch.stack(out)


def convergence(
    estimate_fn: Callable[[int, torch.Generator], torch.Tensor],
    exact: torch.Tensor,
    ns: Sequence[int],
    trials: int = 50,
    seed: int = 0,
) -> list[dict[str, float]]:
    """:func:`gradient_error_stats` for each batch size in ``ns`` (one row per ``n``, with key ``"n"``)."""
    if len(ns) == 0:
        raise ValueError("ns must list at least one batch size")
    rows = []
    for n in ns:
        stats = gradient_error_stats(collect_estimates(estimate_fn, n, trials, seed), exact)
        rows.append({"n": int(n), **stats})
    return rows


def sampled_estimator(
    problem: ExactProblem,
    policy: torch.nn.Module,
    weights_fn: Callable[[Samples, torch.Tensor], torch.Tensor],
) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Turn a reward-side recipe into a Monte Carlo gradient estimator ``estimate(n, generator) -> (P,)``.

    Each call draws ``n`` prompts from :math:`\\rho`, one completion each from ``policy``, looks up their
    rewards (``(n,)`` terminal or ``(n, T)`` per step), asks ``weights_fn(samples, rewards)`` for the
    ``(n, T)`` weights :math:`w_{i,t}` and returns the gradient of the REINFORCE surrogate
    (:func:`policygrad.trajectory_side.score_function_gradient`). The result plugs into
    :func:`collect_estimates` and :func:`convergence`. Introduced in {ref}`sec-reinforce-unbiased`.
    """
    if not callable(weights_fn):
        raise ValueError("weights_fn must be a callable (samples, rewards) -> weights (B, T)")

    def estimate(n: int, generator: torch.Generator) -> torch.Tensor:
        prompts = problem.sample_prompts(n, generator)
        samples = policy.sample(prompts, generator=generator)
        rewards = problem.rewards_for(prompts, samples.completions)
        return score_function_gradient(policy, samples, weights_fn(samples, rewards))

    return estimate


def exact_bias_variance(problem: ExactProblem, policy: torch.nn.Module, weights: torch.Tensor) -> tuple[float, float]:
    """Exact bias norm :math:`\\lVert\\mathbb E[g]-\\nabla J\\rVert` and total variance of a one-sample estimator.

    weights: ``(N, K)`` or ``(N, K, L)`` over the enumeration, as in
    :meth:`policygrad.exact.ExactProblem.estimator_moments`. No sampling is involved.
    """
    mean, variance = problem.estimator_moments(policy, weights)
    return float((mean - problem.gradient(policy).to(mean.device)).norm()), variance
