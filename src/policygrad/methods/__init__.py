"""Methods: one reward-side recipe + one trajectory-side recipe + sampling options.

Every method sits in one registry: `base` holds the `Method` type and the registry
(`get_method`); each family has its own module (`reinforce`, `ppo`, `rlhf`,
`group_relative` for GRPO, `variants` and `trajectory_variants` for the variants after
GRPO, `off_policy` for sequence ratios and sampler corrections); importing this package
registers them in order. `recipes` and `frameworks` say how each runs in TRL and verl.
"""

from __future__ import annotations

# the order of these imports is the registration order
# isort: off
from . import (
    recipes,
    base,
    reinforce,
    ppo,
    rlhf,
    group_relative,
    variants,
    trajectory_variants,
    off_policy,
    frameworks,
)

# isort: on
from .base import (
    METHODS,
    SIDES,
    AdvantageFn,
    LossFn,
    Method,
    framework_name,
    get_method,
    method_names,
    methods_table,
    policy_loss,
    register,
)
from .frameworks import (
    framework_details,
    frameworks_table,
    hydra_value,
    recipe,
    to_trl,
    to_verl,
)
from .group_relative import grpo, grpo_advantages, grpo_loss, grpo_trl, grpo_verl
from .ppo import ppo_kl_loss, ppo_loss
from .recipes import FRAMEWORKS, TRL_VERSION, VERL_VERSION, Recipe, Unsupported
from .reinforce import batch_loo_advantages, reinforce_advantages, reinforce_loss
from .rlhf import rlhf_advantages, rlhf_gae, rlhf_ppo, rlhf_value_targets

__all__ = [
    "base",
    "reinforce",
    "ppo",
    "rlhf",
    "group_relative",
    "variants",
    "trajectory_variants",
    "off_policy",
    "recipes",
    "frameworks",
    "SIDES",
    "AdvantageFn",
    "LossFn",
    "Method",
    "METHODS",
    "register",
    "get_method",
    "method_names",
    "methods_table",
    "policy_loss",
    "reinforce_advantages",
    "batch_loo_advantages",
    "reinforce_loss",
    "ppo_loss",
    "ppo_kl_loss",
    "rlhf_gae",
    "rlhf_advantages",
    "rlhf_value_targets",
    "rlhf_ppo",
    "grpo_advantages",
    "grpo_loss",
    "grpo",
    "grpo_trl",
    "grpo_verl",
    "framework_name",
    "FRAMEWORKS",
    "TRL_VERSION",
    "VERL_VERSION",
    "Recipe",
    "Unsupported",
    "recipe",
    "to_trl",
    "to_verl",
    "hydra_value",
    "frameworks_table",
    "framework_details",
]
