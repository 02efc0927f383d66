"""The trajectory side: how the score ∇_θ log p_θ(τ) is formed and aggregated.

Per-token log-probabilities and entropies, the REINFORCE surrogate, importance ratios,
PPO's clip family, aggregation modes, KL estimators, masks. Depends only on
`policygrad.rollout` and the low-level helpers. Loss = −surrogate, always.
"""

from __future__ import annotations

from . import aggregation, kl, logprobs, masks, ppo, ratios, surrogates
from .aggregation import AGGREGATIONS, aggregate, aggregation_weights
from .kl import KL_ESTIMATORS, AdaptiveKLController, kl_estimate, kl_loss
from .logprobs import sequence_log_probs, token_entropy, token_log_probs
from .masks import TokenLosses
from .ppo import clip_loss, ppo_clip_loss, ppo_kl_penalty_loss
from .ratios import LOG_RATIO_CLAMP, RATIO_LEVELS, log_ratios, safe_ratio
from .surrogates import pg_surrogate, policy_gradient_loss, score_function_gradient

__all__ = [
    "logprobs",
    "masks",
    "aggregation",
    "ratios",
    "surrogates",
    "ppo",
    "kl",
    "token_log_probs",
    "token_entropy",
    "sequence_log_probs",
    "AGGREGATIONS",
    "aggregate",
    "aggregation_weights",
    "TokenLosses",
    "clip_loss",
    "LOG_RATIO_CLAMP",
    "safe_ratio",
    "policy_gradient_loss",
    "RATIO_LEVELS",
    "log_ratios",
    "pg_surrogate",
    "score_function_gradient",
    "ppo_clip_loss",
    "ppo_kl_penalty_loss",
    "KL_ESTIMATORS",
    "kl_estimate",
    "kl_loss",
    "AdaptiveKLController",
]
