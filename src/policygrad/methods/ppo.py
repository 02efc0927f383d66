"""Critic-free PPO: the clipped surrogate and the KL-penalty form (chapter 05)."""

from __future__ import annotations

import torch

from ..rollout import RolloutBatch
from ..trajectory_side.ppo import ppo_clip_loss, ppo_kl_penalty_loss
from .base import Method, register
from .recipes import Unsupported
from .reinforce import batch_loo_advantages

__all__ = ["ppo_loss", "ppo_kl_loss"]


def ppo_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    eps: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """PPO's clipped loss with ε = `eps` (0.2 in `ppo_clip`).

    `policygrad.trajectory_side.ppo_clip_loss` with token ratios against
    `batch.old_log_probs`, token-mean aggregation, on `batch.loss_mask`.
    """
    return ppo_clip_loss(
        logp, batch.old_log_probs, advantages, batch.loss_mask, eps_low=eps
    )


def ppo_kl_loss(
    logp: torch.Tensor, batch: RolloutBatch, advantages: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """The KL-penalty form of PPO, fixed β = 0.1, token-mean aggregation.

    `policygrad.trajectory_side.ppo_kl_penalty_loss` on the batch.
    """
    return ppo_kl_penalty_loss(
        logp, batch.old_log_probs, advantages, batch.loss_mask, beta=0.1
    )


register(
    Method(
        name="ppo_clip",
        title="PPO (clipped surrogate), critic-free advantages",
        advantages=batch_loo_advantages,
        loss=ppo_loss,
        inner_epochs=4,
        minibatches=4,
        changes=("reward", "trajectory"),
        paper="schulman2017ppo",
        why="reuse each batch for several optimiser steps: importance ratios correct "
        "for the policy having moved, and the clip removes the incentive to move a "
        "token's ratio beyond 1 +/- epsilon",
        unsolved="the clip bounds each token's ratio, not the distance between "
        "policies; advantages here are still a batch-average baseline (no critic, no "
        "per-prompt baseline)",
        trl=Unsupported(
            "trl",
            "its advantages (a batch leave-one-out baseline that ignores the prompt) "
            "are no TRL option: GRPOTrainer's baseline is the group mean",
            "GRPOTrainer with num_iterations > 1 (the same clip, group advantages)",
        ),
        verl=Unsupported(
            "verl",
            "no adv_estimator uses a leave-one-out baseline over the whole batch "
            "(reinforce_plus_plus whitens over the batch instead)",
            "policy_loss.loss_mode=vanilla with ppo_epochs > 1 (the same clip, plus "
            "dual-clip)",
        ),
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
        changes=("reward", "trajectory"),
        paper="schulman2017ppo",
        why="reuse each batch with importance ratios, and keep the new policy near the "
        "sampler with a KL penalty instead of a clip",
        unsolved="the right penalty strength changes during training (hence the "
        "adaptive coefficient)",
        trl=Unsupported(
            "trl", "GRPOTrainer has no penalty on the KL to the sampling policy", None
        ),
        verl=Unsupported(
            "verl",
            "no policy loss has PPO's penalty form r*A - beta*KL(pi_old || pi) (its KL "
            "loss is to the reference)",
            "policy_loss.loss_mode=dro (a k2 penalty to pi_old on a -log(pi)*A loss)",
        ),
        section="sec-ppo-kl-penalty",
    )
)
