"""The trajectory side: how the score :math:`\\nabla_\\theta\\log p_\\theta(\\tau)` is formed and aggregated.

Per-token log-probabilities and entropies, the REINFORCE surrogate, importance ratios, PPO's clip
family, aggregation modes, KL estimators, masks. Depends only on :mod:`policygrad.rollout` and the
low-level helpers. Loss = −surrogate, always.
"""

from __future__ import annotations

from . import aggregation, kl, logprobs, masks, ppo, ratios, surrogates
from .aggregation import AGGREGATIONS, aggregate
from .kl import KL_ESTIMATORS, AdaptiveKLController, kl_estimate, kl_loss
from .logprobs import sequence_log_probs, token_entropy, token_log_probs
from .ppo import ppo_clip_loss, ppo_kl_penalty_loss
from .ratios import RATIO_LEVELS, log_ratios
from .surrogates import pg_surrogate, score_function_gradient

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
