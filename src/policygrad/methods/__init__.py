"""Methods: one reward-side recipe + one trajectory-side recipe + sampling options, in one registry.

:mod:`.base` holds the :class:`Method` type and the registry (:func:`get_method`); each family has its
own module (:mod:`.reinforce`, :mod:`.ppo`, :mod:`.rlhf`, :mod:`.group_relative` for GRPO);
importing this package registers them in that order.
"""

from __future__ import annotations

# the order of these imports is the registration order
# isort: off
from . import base, reinforce, ppo, rlhf, group_relative
# isort: on
from .base import METHODS, SIDES, AdvantageFn, LossFn, Method, get_method, method_names, methods_table, register
from .group_relative import grpo, grpo_advantages, grpo_loss
from .ppo import ppo_kl_loss, ppo_loss
from .reinforce import batch_loo_advantages, reinforce_advantages, reinforce_loss
from .rlhf import rlhf_advantages, rlhf_gae, rlhf_ppo, rlhf_value_targets

__all__ = [
    "base",
    "reinforce",
    "ppo",
    "rlhf",
    "group_relative",
    "SIDES",
    "AdvantageFn",
    "LossFn",
    "Method",
    "METHODS",
    "register",
    "get_method",
    "method_names",
    "methods_table",
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
]
