"""The reward side: what multiplies the score ∇_θ log π_θ(y_t | s_t).

Returns and GAE, baselines (leave-one-out, group leave-one-out (RLOO), learned), group
normalisers and whitening, KL reward shaping, the critic's loss, and the reward-side
variants after GRPO (`variants`). Padded `(B, T)`
batches with an explicit mask; 0 where the mask is 0.
"""

from __future__ import annotations

from . import (
    baselines,
    critic,
    critic_error,
    masks,
    normalise,
    returns,
    shaping,
    td,
    variants,
)
from .baselines import (
    TabularValue,
    group_leave_one_out_advantages,
    leave_one_out_baseline,
    optimal_constant_baseline,
    per_step_leave_one_out_baseline,
    sequence_leave_one_out_baseline,
)
from .critic import clipped_value_loss, explained_variance
from .critic_error import gae_error_weights, n_step_error_weights
from .normalise import group_advantages, group_step_advantages, whiten
from .returns import (
    broadcast_to_tokens,
    reinforce_weights,
    returns_to_go,
    terminal_to_steps,
    total_return,
)
from .shaping import kl_shaped_rewards
from .td import gae, n_step_returns, td_residuals
from .variants import (
    GPG_COUNTS,
    batch_std_advantages,
    dr_grpo_advantages,
    gdpo_advantages,
    gpg_advantages,
    opo_advantages,
    optimal_token_baseline_advantages,
    overlong_penalty,
    pass_at_k,
    pass_at_k_weight,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    rloo_advantages,
)

__all__ = [
    "masks",
    "returns",
    "td",
    "baselines",
    "normalise",
    "shaping",
    "critic",
    "critic_error",
    "returns_to_go",
    "total_return",
    "broadcast_to_tokens",
    "reinforce_weights",
    "terminal_to_steps",
    "td_residuals",
    "n_step_returns",
    "gae",
    "optimal_constant_baseline",
    "leave_one_out_baseline",
    "sequence_leave_one_out_baseline",
    "per_step_leave_one_out_baseline",
    "group_leave_one_out_advantages",
    "TabularValue",
    "whiten",
    "group_advantages",
    "group_step_advantages",
    "kl_shaped_rewards",
    "clipped_value_loss",
    "explained_variance",
    "gae_error_weights",
    "n_step_error_weights",
    "variants",
    "rloo_advantages",
    "dr_grpo_advantages",
    "batch_std_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "opo_advantages",
    "gpg_advantages",
    "GPG_COUNTS",
    "passk_advantages",
    "pass_at_k",
    "pass_at_k_weight",
    "gdpo_advantages",
    "overlong_penalty",
    "optimal_token_baseline_advantages",
]
