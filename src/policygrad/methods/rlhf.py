"""RLHF-style PPO (chapter 06).

A critic, token-level GAE, the reference KL in the reward, whitened advantages.
"""

from __future__ import annotations

import functools

import torch

from ..reward_side.critic import clipped_value_loss
from ..reward_side.normalise import whiten
from ..reward_side.shaping import kl_shaped_rewards
from ..reward_side.td import gae
from ..rollout import RolloutBatch
from .base import Method, register
from .ppo import ppo_loss
from .recipes import VERL_KL_NAMES, Recipe, Unsupported

__all__ = ["rlhf_gae", "rlhf_advantages", "rlhf_value_targets", "rlhf_ppo"]


def rlhf_gae(
    batch: RolloutBatch,
    *,
    beta: float = 0.05,
    kl_kind: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
) -> torch.Tensor:
    """Token-level GAE on the KL-shaped rewards of the language-model MDP. `(B, T)`.

    Before any whitening. Per-token rewards: the outcome reward on the last trained
    token, minus β·k_t on every trained token
    (`policygrad.reward_side.kl_shaped_rewards`, k1 by default, from
    `batch.old_log_probs` and `batch.ref_log_probs`); then `policygrad.reward_side.gae`
    with the critic's `batch.values`. The state after the last token is terminal
    (value 0), truncated completions included: their outcome reward is final. Derived in
    chapter 6 ("RLHF-style PPO: critic, GAE, KL in the reward").
    """
    if batch.values is None:
        raise ValueError(
            "RLHF-style PPO needs a critic: batch.values is None (train() fills it for "
            "critic methods)"
        )
    if beta > 0 and batch.ref_log_probs is None:
        raise ValueError("a KL penalty in the reward needs batch.ref_log_probs")
    m = batch.loss_mask
    ref = batch.old_log_probs if batch.ref_log_probs is None else batch.ref_log_probs
    outcome = batch.sequence_rewards
    rewards = kl_shaped_rewards(
        outcome, batch.old_log_probs, ref, m, beta=beta, kind=kl_kind
    )
    return gae(rewards, batch.values * m, m, gamma=gamma, lam=lam)


def rlhf_advantages(
    batch: RolloutBatch, *, whiten_advantages: bool = True, **gae_options
) -> torch.Tensor:
    """The policy's advantages: `rlhf_gae`, whitened over the batch's trained tokens.

    With `policygrad.reward_side.whiten`, unless `whiten_advantages=False`. `(B, T)`.
    """
    adv = rlhf_gae(batch, **gae_options)
    return whiten(adv, batch.loss_mask) if whiten_advantages else adv


def rlhf_value_targets(batch: RolloutBatch, **gae_options) -> torch.Tensor:
    """The critic's regression targets: the GAE(λ) returns Â_t + V_old(s_t). `(B, T)`.

    Unwhitened.
    """
    return (rlhf_gae(batch, **gae_options) + batch.values) * batch.loss_mask


def _rlhf_value_loss(
    values: torch.Tensor,
    batch: RolloutBatch,
    targets: torch.Tensor,
    *,
    clip: float | None,
) -> torch.Tensor:
    return clipped_value_loss(values, batch.values, targets, batch.loss_mask, clip=clip)


def rlhf_ppo(
    name: str = "ppo_rlhf",
    *,
    beta: float = 0.05,
    kl_kind: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten_advantages: bool = True,
    eps: float = 0.2,
    value_clip: float | None = 0.2,
    inner_epochs: int = 4,
    minibatches: int = 4,
) -> Method:
    """Build an RLHF-style PPO `Method`.

    Not registered; `register` it to train by name. Reward side: `rlhf_advantages` (the
    critic, GAE(γ, λ), the reference KL `beta`·`kl_kind` in the reward, whitening);
    trajectory side: the PPO clip with `eps`, token-mean; the critic regresses on
    `rlhf_value_targets` with PPO's clipped value loss (`value_clip`). Defaults follow
    Ziegler et al. (2019) and Ouyang et al. (2022) as far as they apply to a 0/1 outcome
    reward.
    """
    gae_options = {"beta": beta, "kl_kind": kl_kind, "gamma": gamma, "lam": lam}
    if whiten_advantages and value_clip is not None:
        actor, critic = "actor_rollout_ref.actor.", "critic."
        verl = Recipe(
            "verl",
            "python -m verl.trainer.main_ppo",
            {
                "algorithm.adv_estimator": "gae",
                "algorithm.gamma": float(gamma),
                "algorithm.lam": float(lam),
                "algorithm.use_kl_in_reward": beta > 0,
                "algorithm.kl_penalty": VERL_KL_NAMES[kl_kind],
                "algorithm.kl_ctrl.type": "fixed",
                "algorithm.kl_ctrl.kl_coef": float(beta),
                "actor_rollout_ref.rollout.n": 1,
                actor + "policy_loss.loss_mode": "vanilla",
                actor + "loss_agg_mode": "token-mean",
                actor + "clip_ratio_low": float(eps),
                actor + "clip_ratio_high": float(eps),
                actor + "use_kl_loss": False,
                actor + "ppo_epochs": inner_epochs,
                critic + "cliprange_value": float(value_clip),
            },
            (
                "verl's dual-clip is always on (clip_ratio_c=3.0): a token with A<0 "
                "and ratio>3 has its loss capped; the package's PPO clip has no dual "
                "clip",
                "verl's whitening multiplies by (var + 1e-8)^-1/2, the package divides "
                "by the std (a relative 1e-8/(2 var))",
            ),
            (
                "algorithm.lam defaults to 1.0 and critic.cliprange_value to 0.5 in "
                "verl",
                "the KL in the reward uses the trainer's recomputed log-probs of the "
                "sampling policy (old_log_probs, not the rollout engine's), as the "
                "package does",
                f"ppo_mini_batch_size = data.train_batch_size / {minibatches} for "
                f"{minibatches} minibatch(es)",
            ),
            (
                "tests/parity/test_verl_recipes.py::"
                "test_to_verl_settings_reproduce_the_method_in_verl",
                "tests/parity/test_verl_recipes.py::"
                "test_to_verl_critic_settings_reproduce_the_value_loss",
            ),
        )
    else:
        verl = Unsupported(
            "verl",
            "verl's GAE always whitens the advantages and its critic loss is always "
            "clipped",
            "algorithm.adv_estimator=gae",
        )
    trl = Unsupported(
        "trl",
        "TRL 1.16 has no PPO trainer with a critic (its trainers are critic-free: "
        "GRPO, RLOO, ...)",
        None,
    )
    return Method(
        name=name,
        title="PPO with a critic, GAE and the reference KL in the reward (RLHF-style, "
        f"beta = {beta:g})",
        advantages=functools.partial(
            rlhf_advantages, whiten_advantages=whiten_advantages, **gae_options
        ),
        loss=functools.partial(ppo_loss, eps=eps),
        value_targets=functools.partial(rlhf_value_targets, **gae_options),
        value_loss=functools.partial(_rlhf_value_loss, clip=value_clip),
        inner_epochs=inner_epochs,
        minibatches=minibatches,
        needs_reference=beta > 0,
        changes=("reward", "trajectory"),
        paper="ouyang2022",
        why="a learned critic gives every token its own baseline V(s_t), GAE trades "
        "its bias against variance, and the KL in the reward keeps the policy near the "
        "reference; the clip lets each batch be reused",
        unsolved="a second network as large as the policy to train and store; the "
        "critic is wrong early in training, which biases the advantages; with one "
        "reward at the end, the critic has little to learn from",
        trl=trl,
        verl=verl,
        section="sec-rlhf-ppo",
        extra=dict(
            gae_options,
            whiten_advantages=whiten_advantages,
            eps=eps,
            value_clip=value_clip,
        ),
    )


register(rlhf_ppo())
