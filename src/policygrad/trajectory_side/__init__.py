"""The trajectory side: how the score ∇_θ log p_θ(τ) is formed and aggregated.

Log-probabilities, entropies, the REINFORCE surrogate, importance ratios, PPO's clip and
the later clips, aggregations, KL estimators and masks; chapter 9's filters (dynamic
sampling, truncation, high-entropy tokens, Clip-Cov, KL-Cov, the entropy bonus);
chapter 10's sequence-ratio losses (GSPO-token, GMPO) and sampler/trainer
corrections (truncated and masked IS, off-policy and rejection masks). Depends only
on `policygrad.rollout` and the low-level helpers. Loss = −surrogate, always.
"""

from __future__ import annotations

from . import (
    aggregation,
    clips,
    corrections,
    filters,
    kl,
    logprobs,
    masks,
    ppo,
    ratios,
    sequence_ratios,
    surrogates,
)
from .aggregation import AGGREGATIONS, aggregate, aggregation_weights
from .clips import (
    CISPO_VARIANTS,
    CLIP_FAMILIES,
    cispo_loss,
    gradient_weight,
    sapo_loss,
    two_sided_clip_loss,
)
from .corrections import (
    CORRECTION_LEVELS,
    REJECTION_STATISTICS,
    masked_is_weights,
    off_policy_sequence_mask,
    rejection_mask,
    rollout_log_ratios,
    truncated_is_weights,
)
from .filters import (
    AdaptiveEntropyController,
    DynamicSampling,
    clip_cov_loss,
    clip_cov_selection,
    entropy_bonus_loss,
    expected_draws_per_informative_group,
    fill_informative,
    high_entropy_token_mask,
    informative_groups,
    kl_cov_loss,
    kl_cov_selection,
    truncation_loss_mask,
)
from .kl import KL_ESTIMATORS, AdaptiveKLController, kl_estimate, kl_loss
from .logprobs import sequence_log_probs, token_entropy, token_log_probs
from .masks import TokenLosses
from .ppo import clip_loss, ppo_clip_loss, ppo_kl_penalty_loss
from .ratios import LOG_RATIO_CLAMP, RATIO_LEVELS, log_ratios, safe_ratio
from .sequence_ratios import gmpo_loss, gspo_token_loss
from .surrogates import pg_surrogate, policy_gradient_loss, score_function_gradient

__all__ = [
    "logprobs",
    "masks",
    "aggregation",
    "ratios",
    "surrogates",
    "ppo",
    "kl",
    "clips",
    "filters",
    "sequence_ratios",
    "corrections",
    "CORRECTION_LEVELS",
    "REJECTION_STATISTICS",
    "rollout_log_ratios",
    "truncated_is_weights",
    "masked_is_weights",
    "off_policy_sequence_mask",
    "rejection_mask",
    "gspo_token_loss",
    "gmpo_loss",
    "two_sided_clip_loss",
    "cispo_loss",
    "sapo_loss",
    "gradient_weight",
    "CLIP_FAMILIES",
    "CISPO_VARIANTS",
    "informative_groups",
    "expected_draws_per_informative_group",
    "DynamicSampling",
    "fill_informative",
    "truncation_loss_mask",
    "high_entropy_token_mask",
    "clip_cov_selection",
    "clip_cov_loss",
    "kl_cov_selection",
    "kl_cov_loss",
    "entropy_bonus_loss",
    "AdaptiveEntropyController",
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
