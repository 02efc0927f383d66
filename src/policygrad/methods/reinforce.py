"""REINFORCE, and REINFORCE with a batch leave-one-out baseline.

Part I's estimator as a registered method.
"""

from __future__ import annotations

import torch

from ..reward_side.baselines import leave_one_out_baseline
from ..reward_side.returns import broadcast_to_tokens
from ..rollout import RolloutBatch
from ..trajectory_side.surrogates import policy_gradient_loss
from .base import Method, register
from .recipes import Recipe, Unsupported

__all__ = ["reinforce_advantages", "batch_loo_advantages", "reinforce_loss"]


def reinforce_advantages(batch: RolloutBatch) -> torch.Tensor:
    """Every trained token of a completion gets its return: A_{i,t} = R(τ_i). `(B, T)`.

    Per-step rewards are summed into the return (no reward-to-go). This is the estimator
    of equation (eq-reinforce) of chapter 2:

        ∇J(θ) = E_{τ∼p_θ}[R(τ) ∇ log p_θ(τ)]
    """
    return broadcast_to_tokens(batch.sequence_rewards, batch.loss_mask)


def batch_loo_advantages(batch: RolloutBatch) -> torch.Tensor:
    """The return minus the mean return of the *other* rows of the batch.

        A_i = R_i − 1/(B−1) Σ_{j≠i} R_j

    The baseline ignores which prompt a row belongs to, so it is the Part I
    leave-one-out baseline (b_i = 1/(N−1) Σ_{j≠i} R(τ_j),
    equation (eq-loo-baseline) of chapter 2) applied to the whole batch: unbiased, but
    it cannot tell an easy prompt from a hard one. Needs `B >= 2`. `(B, T)`.
    """
    R = batch.sequence_rewards
    return broadcast_to_tokens(R - leave_one_out_baseline(R), batch.loss_mask)


def reinforce_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    aggregation: str = "seq-mean-token-sum",
) -> tuple[torch.Tensor, dict]:
    """Loss = −`policygrad.trajectory_side.pg_surrogate`:

        L = −(1/B) Σ_{i,t} m_{i,t} A_{i,t} log π_θ(y_{i,t} | s_{i,t})

    The sum over a sequence's tokens is the sequence's log-probability, so the gradient
    is the REINFORCE estimate of ∇J itself (no per-token averaging, no ratio). This
    wrapper only unpacks the batch for
    `policygrad.trajectory_side.policy_gradient_loss`; an empty loss mask gives loss 0
    with a zero gradient.
    """
    return policy_gradient_loss(
        logp, advantages, batch.loss_mask, aggregation=aggregation
    )


register(
    Method(
        name="reinforce",
        title="REINFORCE",
        advantages=reinforce_advantages,
        loss=reinforce_loss,
        paper="williams1992",
        trl=Unsupported(
            "trl",
            "every GRPOTrainer loss subtracts the group mean from the reward",
            None,
        ),
        verl=Recipe(
            "verl",
            "python -m verl.trainer.main_ppo",
            {
                "algorithm.adv_estimator": "rloo",
                "algorithm.use_kl_in_reward": False,
                "actor_rollout_ref.rollout.n": 1,
                "actor_rollout_ref.actor.policy_loss.loss_mode": "gpg",
                "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum",
                "actor_rollout_ref.actor.use_kl_loss": False,
                "actor_rollout_ref.actor.ppo_epochs": 1,
            },
            (),
            (
                "it rests on verl's rloo keeping the raw reward of a group of one "
                "(rloo_vectorized gives 0)",
                "policy_loss.loss_mode=gpg is the plain -log(pi)*A loss; vanilla would "
                "give the same gradient only at ratio 1",
            ),
            (
                "tests/parity/test_verl_recipes.py::"
                "test_to_verl_settings_reproduce_the_method_in_verl",
            ),
        ),
        why="the plain score-function estimator of the gradient of J: unbiased, "
        "nothing changed",
        unsolved="high variance: every sample is pushed up in proportion to its raw "
        "reward",
        section="sec-reinforce-estimator",
    )
)


register(
    Method(
        name="reinforce_baseline",
        title="REINFORCE with a batch leave-one-out baseline",
        advantages=batch_loo_advantages,
        loss=reinforce_loss,
        changes=("reward",),
        paper="williams1992",
        trl=Unsupported(
            "trl",
            "GRPOTrainer's baseline is per prompt (the group mean), not over the batch",
            None,
        ),
        verl=Unsupported(
            "verl",
            "no adv_estimator uses a leave-one-out baseline over the whole batch "
            "regardless of the prompt (reinforce_plus_plus whitens over the batch "
            "instead)",
            "algorithm.adv_estimator=rloo (leave-one-out within each prompt's group)",
        ),
        why="subtracting a baseline that does not depend on the sample keeps the "
        "estimate unbiased and cuts its variance",
        unsolved="one baseline for all prompts: an easy prompt's successes and a hard "
        "prompt's failures are compared with the same number",
        section="sec-reinforce-baselines",
    )
)
