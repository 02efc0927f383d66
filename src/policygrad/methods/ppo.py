"""Critic-free PPO: the clipped surrogate and the KL-penalty form (chapter 05).
"""

from __future__ import annotations

import torch

from ..rollout import RolloutBatch
from ..trajectory_side.ppo import ppo_clip_loss, ppo_kl_penalty_loss
from .base import Method, register
from .reinforce import batch_loo_advantages

__all__ = ["ppo_loss", "ppo_kl_loss"]


def ppo_loss(
    logp: torch.Tensor, batch: RolloutBatch, advantages: torch.Tensor, *, eps: float = 0.2
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped loss (:func:`policygrad.trajectory_side.ppo_clip_loss`) with :math:`\\varepsilon` = ``eps``
    (0.2 in ``ppo_clip``), token ratios against ``batch.old_log_probs``, token-mean aggregation, on
    ``batch.loss_mask``."""
    return ppo_clip_loss(logp, batch.old_log_probs, advantages, batch.loss_mask, eps_low=eps)


def ppo_kl_loss(logp: torch.Tensor, batch: RolloutBatch, advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The KL-penalty form of PPO (:func:`policygrad.trajectory_side.ppo_kl_penalty_loss`), fixed
    :math:`\\beta = 0.1`, token-mean aggregation."""
    return ppo_kl_penalty_loss(logp, batch.old_log_probs, advantages, batch.loss_mask, beta=0.1)


register(
    Method(
        name="ppo_clip",
        title="PPO (clipped surrogate), critic-free advantages",
        advantages=batch_loo_advantages,
        loss=ppo_loss,
        inner_epochs=4,
        minibatches=4,
        changes=("trajectory",),
        paper="schulman2017ppo",
        why="reuse each batch for several optimiser steps: importance ratios correct for the policy having moved, "
        "and the clip removes the incentive to move a token's ratio beyond 1 +/- epsilon",
        unsolved="the clip bounds each token's ratio, not the distance between policies; advantages here are still "
        "a batch-average baseline (no critic, no per-prompt baseline)",
        trl="experimental PPOTrainer (cliprange)",
        verl="policy_loss=vanilla (clip_ratio)",
        section="sec-ppo-clip",
    )
)


register(
    Method(
        name="ppo_kl",
        title="PPO with a fixed KL penalty (beta = 0.1), critic-free advantages",
        advantages=batch_loo_advantages,
        loss=ppo_kl_loss,
        inner_epochs=4,
        minibatches=4,
        changes=("trajectory",),
        paper="schulman2017ppo",
        why="reuse each batch with importance ratios, and keep the new policy near the sampler with a KL penalty "
        "instead of a clip",
        unsolved="the right penalty strength changes during training (hence the adaptive coefficient)",
        trl=None,
        verl=None,
        section="sec-ppo-kl-penalty",
    )
)
