"""GRPO (DeepSeekMath): group-relative advantages, PPO clip on token ratios, 1/|o_i| aggregation, k3 KL loss (chapter 07).
"""

from __future__ import annotations

import functools

import torch

from .._checks import check_positive_int
from ..reward_side.normalise import group_advantages, group_step_advantages
from ..reward_side.returns import broadcast_to_tokens
from ..rollout import RolloutBatch
from ..trajectory_side.aggregation import AGGREGATIONS
from ..trajectory_side.kl import KL_ESTIMATORS, kl_loss
from ..trajectory_side.ppo import ppo_clip_loss
from .base import Method, register

__all__ = ["grpo_advantages", "grpo_loss", "grpo"]


def grpo_advantages(
    batch: RolloutBatch, *, scale: str | None = "std", unbiased: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's advantages, ``(B, T)``, 0 off the loss mask.

    Outcome rewards ``(B,)``: every trained token of completion :math:`i` gets
    :math:`(R_i - \\bar R_g)/(\\sigma_g + \\varepsilon)` (:func:`policygrad.reward_side.group_advantages`).
    Per-step rewards ``(B, T)``: process supervision, each token gets the sum of the group-normalised step
    rewards from it on (:func:`policygrad.reward_side.group_step_advantages`, every trained token a step; a
    nonzero reward on a token outside the loss mask is a ValueError, not silently dropped).
    ``scale=None`` drops the division (Dr.GRPO); ``unbiased`` picks the :math:`1/(G-1)` standard deviation
    (``torch.std``, as TRL and verl). Needs ``G >= 2``. Derived in {ref}`sec-grpo-objective`.
    """
    G = batch.group_size
    opts = {"scale": scale, "unbiased": unbiased, "eps": eps}
    if batch.rewards.dim() == 1:
        return broadcast_to_tokens(group_advantages(batch.rewards, G, **opts), batch.loss_mask)
    if bool((batch.rewards * (batch.loss_mask == 0) != 0).any()):
        raise ValueError(
            "a per-step reward sits on a token outside the loss mask; put each step's reward on a trained token"
        )
    return group_step_advantages(batch.rewards, batch.loss_mask, G, **opts)


def grpo_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    eps: float = 0.2,
    beta: float = 0.04,
    kl_kind: str = "k3",
    aggregation: str = "seq-mean-token-mean",
) -> tuple[torch.Tensor, dict]:
    """GRPO's loss (= −surrogate) as in DeepSeekMath, per token then aggregated:

    .. math:: L = \\frac1B\\sum_i \\frac{1}{|o_i|}\\sum_t m_{i,t}\\Big[-\\min\\big(r_{i,t}A_{i,t},\\ \\mathrm{clip}(r_{i,t}, 1-\\varepsilon, 1+\\varepsilon)A_{i,t}\\big) + \\beta\\,k_3(\\pi_\\theta, \\pi_\\text{ref})_{i,t}\\Big]

    with token ratios :math:`r = \\pi_\\theta/\\pi_\\text{old}` (``batch.old_log_probs``), the k3 estimate of
    :math:`\\mathrm{KL}(\\pi_\\theta\\|\\pi_\\text{ref})` against ``batch.ref_log_probs`` (needed when ``beta > 0``), and
    ``aggregation`` ``"seq-mean-token-mean"`` (the :math:`1/|o_i|` of the paper). Stats: those of
    :func:`policygrad.trajectory_side.ppo_clip_loss` plus ``kl_loss`` (the KL term's value, before
    :math:`\\beta`). Derived in {ref}`sec-grpo-objective`.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    loss, stats = ppo_clip_loss(
        logp, batch.old_log_probs, advantages, batch.loss_mask, eps_low=eps, aggregation=aggregation
    )
    if beta > 0:
        if batch.ref_log_probs is None:
            raise ValueError("GRPO's KL term (beta > 0) needs batch.ref_log_probs")
        kl = kl_loss(logp, batch.ref_log_probs, batch.loss_mask, kind=kl_kind, aggregation=aggregation)
        loss = loss + beta * kl
        stats["kl_loss"] = float(kl.detach())
    return loss, stats


def grpo(
    name: str = "grpo",
    *,
    group_size: int = 8,
    beta: float = 0.04,
    eps: float = 0.2,
    scale: str | None = "std",
    unbiased: bool = True,
    adv_eps: float = 1e-6,
    kl_kind: str = "k3",
    aggregation: str = "seq-mean-token-mean",
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """Build a GRPO :class:`Method` (not registered; :func:`register` it to train by name).

    Reward side: :func:`grpo_advantages` (group mean baseline, ``scale``/``unbiased``/``adv_eps`` std
    normalisation; outcome or per-step rewards); trajectory side: :func:`grpo_loss` (PPO clip ``eps`` on token
    ratios, ``aggregation``, :math:`\\beta` = ``beta`` times the ``kl_kind`` KL loss against the reference).
    The defaults are DeepSeekMath's (Shao et al., 2024): :math:`\\beta = 0.04`, :math:`\\varepsilon = 0.2`, one
    policy update per batch; ``group_size`` is 8 here (64 in the paper).
    """
    check_positive_int(group_size, "group_size")
    if group_size < 2:
        raise ValueError(f"GRPO needs group_size >= 2 (a group of one has no one to compare with), got {group_size}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    if scale not in ("std", None):
        raise ValueError(f"scale must be 'std' or None, got {scale!r}")
    if kl_kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_kind!r}; choose one of {KL_ESTIMATORS}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
    adv_opts = {"scale": scale, "unbiased": unbiased, "eps": adv_eps}
    loss_opts = {"eps": eps, "beta": beta, "kl_kind": kl_kind, "aggregation": aggregation}
    return Method(
        name=name,
        title=f"GRPO (group size {group_size}, beta = {beta:g})",
        advantages=functools.partial(grpo_advantages, **adv_opts),
        loss=functools.partial(grpo_loss, **loss_opts),
        group_size=group_size,
        inner_epochs=inner_epochs,
        minibatches=minibatches,
        needs_reference=beta > 0,
        changes=("reward", "trajectory"),
        paper="shao2024deepseekmath",
        why="no critic: the other completions of the same prompt give the baseline (the group mean), divided by "
        "their spread; PPO's clip and a KL loss to the reference are kept, each sequence weighs the same",
        unsolved="a group whose rewards are all equal gives no gradient; the std divides prompts by their "
        "difficulty and 1/|o_i| weighs tokens by their sequence's length, so the expected update is not the "
        "gradient of J (difficulty and length bias); the mean includes the sample itself",
        trl="GRPOTrainer (loss_type='grpo', scale_rewards='group', beta)",
        verl="adv_estimator=grpo, loss_agg_mode=seq-mean-token-mean, use_kl_loss=True (low_var_kl)",
        section="sec-grpo-objective",
        extra={"scale": scale, "unbiased": unbiased, "adv_eps": adv_eps, **loss_opts},
    )


register(grpo())
