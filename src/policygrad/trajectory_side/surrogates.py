"""The score-function (REINFORCE) surrogate.

Its gradient is the Monte Carlo estimate of the gradient of J. Derived in chapter 2
("The Monte Carlo estimator and its surrogate loss").
"""

from __future__ import annotations

import torch

from .._tensor import flat_grad, flat_params, select
from ..rollout import Samples
from .aggregation import aggregate, aggregation_weights
from .logprobs import token_log_probs
from .masks import TokenLosses, check_constant, check_per_token

__all__ = ["pg_surrogate", "policy_gradient_loss", "score_function_gradient"]


def pg_surrogate(
    logp: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    *,
    aggregation: str = "seq-mean-token-sum",
    max_len: int | None = None,
) -> torch.Tensor:
    """The REINFORCE surrogate:

        (1/B) Σ_i Σ_t m_{i,t} w_{i,t} log π_θ(y_{i,t} | s_{i,t})

    logp: `(B, T)` with gradient; weights: `(B, T)` treated as constants (detached);
    mask `(B, T)`. Its gradient is the Monte Carlo estimate of ∇J
    (equation (eq-reinforce) of chapter 2, ∇J(θ) = E_τ[R(τ) ∇ log p_θ(τ)]); its
    *value* means nothing on its own. The default `aggregation="seq-mean-token-sum"` is
    the (1/B) Σ_i Σ_t above (a sum over a sequence's tokens is its log-probability);
    any mode of `policygrad.trajectory_side.aggregate` can be asked for. Derived in
    chapter 2 ("The Monte Carlo estimator and its surrogate loss").
    """
    m = check_per_token(logp, mask, "logp")
    w = check_constant(weights, logp, "weights", m)
    return aggregate(select(w * logp.to(w.dtype), m), m, aggregation, max_len=max_len)


def policy_gradient_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    aggregation: str = "seq-mean-token-sum",
    max_len: int | None = None,
    per_token: bool = False,
):
    """The REINFORCE loss on plain tensors: −`pg_surrogate`, per token

        L_{i,t} = −A_{i,t} log π_θ(y_{i,t} | s_{i,t})

    Returns `(loss, stats)` like every other loss (stats is empty: there is no ratio),
    or `(loss, stats, TokenLosses)` with `per_token=True`. An empty mask gives 0 with a
    zero gradient.
    """
    m = check_per_token(logp, mask, "logp")
    A = check_constant(advantages, logp, "advantages", m)
    loss_t = select(-A * logp.to(A.dtype), m)
    loss = aggregate(loss_t, m, aggregation, max_len=max_len)
    if not per_token:
        return loss, {}
    return (
        loss,
        {},
        TokenLosses(
            loss_t,
            aggregation_weights(m, aggregation, max_len=max_len, dtype=loss_t.dtype),
        ),
    )


def score_function_gradient(
    policy: torch.nn.Module, samples: Samples, weights: torch.Tensor
) -> torch.Tensor:
    """The Monte Carlo policy-gradient estimate as a flat vector `(d,)`.

    The gradient of `pg_surrogate`. weights `(B, T)` come from the reward side (e.g.
    `policygrad.reward_side.reinforce_weights`).
    """
    logits = policy(samples.prompts, samples.completions)
    logp = token_log_probs(logits, samples.completions)
    return flat_grad(
        pg_surrogate(logp, weights, samples.mask), flat_params(policy)
    ).detach()
