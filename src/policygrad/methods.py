"""Methods = one reward-side recipe + one trajectory-side recipe + sampling options, in one registry.

Every policy-gradient method for language models estimates the gradient of the same objective,
:math:`J(\\theta)=\\mathbb E_{\\tau\\sim p_\\theta}[R(\\tau)]`. What distinguishes methods is which factor
they change: the **reward side** (the per-token weight that multiplies the score — returns,
baselines, normalisers) or the **trajectory side** (how the score is formed and aggregated — ratios,
clipping, masks, aggregation). A :class:`Method` names one choice of each, plus how to sample (group
size, inner epochs), and carries its metadata: the paper, which side(s) it changes relative to plain
REINFORCE and why, what it leaves unsolved, and the names TRL and verl use for it.

The registry (:data:`METHODS`, :func:`get_method`) is the single source for the training loop, the
comparison tables and the map of methods; later chapters register more entries. Introduced in
{ref}`sec-tinylm-methods`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import check_positive_int
from .reward_side import (
    broadcast_to_tokens,
    clipped_value_loss,
    gae,
    group_advantages,
    group_step_advantages,
    kl_shaped_rewards,
    leave_one_out_baseline,
    whiten,
)
from .rollout import RolloutBatch
from .trajectory_side import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    kl_loss,
    pg_surrogate,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
)

__all__ = [
    "SIDES",
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

#: The two factors a method can change.
SIDES = ("reward", "trajectory")

#: A reward-side recipe: the batch -> per-token weights ``(B, T)`` (0 where the loss mask is 0).
AdvantageFn = Callable[[RolloutBatch], torch.Tensor]
#: A trajectory-side recipe: ``(log_probs (B, T) with gradient, batch, advantages (B, T))`` ->
#: ``(loss, stats)``; loss = −surrogate, stats a dict of floats (e.g. ``clip_frac``).
LossFn = Callable[[torch.Tensor, RolloutBatch, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Method:
    """A named policy-gradient method.

    name: registry key; title: how the book names it; advantages: the reward-side recipe; loss: the
    trajectory-side recipe; group_size: completions sampled per prompt (``G``); inner_epochs and
    minibatches: passes over each batch and optimiser steps per pass (1 and 1 = on-policy);
    needs_reference: whether the loss reads ``batch.ref_log_probs``; changes: the side(s) it changes
    relative to plain REINFORCE (a subset of :data:`SIDES`; empty for REINFORCE itself); paper: a
    ``references.bib`` key; why: the problem the change addresses; unsolved: what it leaves open;
    trl, verl: the closest names in those frameworks (None where there is none); section: the label of
    the book section that derives it.

    Methods with a critic (a learned value model) also give value_targets (the batch -> the critic's
    regression targets ``(B, T)``) and value_loss (``(values (B, T) with gradient, batch, targets)`` -> the
    critic's loss); :func:`policygrad.train.train` then keeps a critic, puts its values of the sampled states in
    ``batch.values`` before the advantages are computed, and trains it alongside the policy.
    """

    name: str
    title: str
    advantages: AdvantageFn
    loss: LossFn
    group_size: int = 1
    inner_epochs: int = 1
    minibatches: int = 1
    needs_reference: bool = False
    changes: tuple[str, ...] = ()
    paper: str = ""
    why: str = ""
    unsolved: str = ""
    trl: str | None = None
    verl: str | None = None
    section: str = ""
    value_targets: AdvantageFn | None = None
    value_loss: Callable[[torch.Tensor, RolloutBatch, torch.Tensor], torch.Tensor] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def needs_critic(self) -> bool:
        """Whether the method trains a value model (it defines value_targets and value_loss)."""
        return self.value_loss is not None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"method name must be an identifier-like string, got {self.name!r}")
        if not callable(self.advantages) or not callable(self.loss):
            raise ValueError("advantages and loss must be callables")
        for attr in ("group_size", "inner_epochs", "minibatches"):
            check_positive_int(getattr(self, attr), attr)
        bad = [s for s in self.changes if s not in SIDES]
        if bad or len(set(self.changes)) != len(self.changes):
            raise ValueError(f"changes must be distinct entries of {SIDES}, got {self.changes!r}")
        if (self.value_targets is None) != (self.value_loss is None):
            raise ValueError("a method with a critic needs both value_targets and value_loss (or neither)")
        for attr in ("value_targets", "value_loss"):
            if getattr(self, attr) is not None and not callable(getattr(self, attr)):
                raise ValueError(f"{attr} must be a callable or None")


#: The registry: name -> :class:`Method`.
METHODS: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS` (ValueError if the name is taken, unless ``replace``)."""
    if not isinstance(method, Method):
        raise ValueError(f"expected a Method, got {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(method: str | Method) -> Method:
    """The registered method of that name (a :class:`Method` is returned as is)."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {method_names()}")
    return METHODS[method]


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def methods_table() -> list[dict]:
    """One row per registered method (name, title, sides changed, paper, TRL and verl names), for tables."""
    return [
        {
            "method": m.name,
            "title": m.title,
            "changes": ", ".join(m.changes) or "—",
            "paper": m.paper,
            "trl": m.trl or "—",
            "verl": m.verl or "—",
        }
        for m in METHODS.values()
    ]


# ------------------------------------------------------------------------------------------------------
# reward-side recipes
# ------------------------------------------------------------------------------------------------------
def reinforce_advantages(batch: RolloutBatch) -> torch.Tensor:
    """Every trained token of a completion gets its return: :math:`A_{i,t} = R(\\tau_i)`. ``(B, T)``.

    Eq. {eq}`eq-reinforce`; per-step rewards are summed into the return (no reward-to-go).
    """
    return broadcast_to_tokens(batch.sequence_rewards, batch.loss_mask)


def batch_loo_advantages(batch: RolloutBatch) -> torch.Tensor:
    """The return minus the mean return of the *other* rows of the batch: :math:`R_i - \\frac{1}{B-1}\\sum_{j\\ne i}R_j`.

    The baseline ignores which prompt a row belongs to, so it is the Part I leave-one-out baseline
    (eq. {eq}`eq-loo-baseline`) applied to the whole batch: unbiased, but it cannot tell an easy prompt
    from a hard one. Needs ``B >= 2``. ``(B, T)``.
    """
    R = batch.sequence_rewards
    return broadcast_to_tokens(R - leave_one_out_baseline(R), batch.loss_mask)


# ------------------------------------------------------------------------------------------------------
# trajectory-side recipes
# ------------------------------------------------------------------------------------------------------
def reinforce_loss(logp: torch.Tensor, batch: RolloutBatch, advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Loss = −:func:`policygrad.trajectory_side.pg_surrogate`: :math:`-\\frac1B\\sum_{i,t} m_{i,t} A_{i,t}\\log\\pi_\\theta(y_{i,t}\\mid s_{i,t})`.

    The sum over a sequence's tokens is the sequence's log-probability, so the gradient is the
    REINFORCE estimate of :math:`\\nabla J` itself (no per-token averaging, no ratio). A batch whose loss
    mask is empty gives loss 0 with a zero gradient.
    """
    if not bool((batch.loss_mask != 0).any()):
        return (logp * 0.0).sum(), {}
    return -pg_surrogate(logp, advantages, batch.loss_mask), {}


register(
    Method(
        name="reinforce",
        title="REINFORCE",
        advantages=reinforce_advantages,
        loss=reinforce_loss,
        paper="williams1992",
        why="the plain score-function estimator of the gradient of J: unbiased, nothing changed",
        unsolved="high variance: every sample is pushed up in proportion to its raw reward",
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
        why="subtracting a baseline that does not depend on the sample keeps the estimate unbiased and cuts its variance",
        unsolved="one baseline for all prompts: an easy prompt's successes and a hard prompt's failures are compared "
        "with the same number",
        section="sec-reinforce-baselines",
    )
)


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


# ------------------------------------------------------------------------------------------------------
# RLHF-style PPO: a critic, token-level GAE, the reference KL in the reward, whitened advantages
# ------------------------------------------------------------------------------------------------------
def rlhf_gae(
    batch: RolloutBatch, *, beta: float = 0.05, kl_kind: str = "k1", gamma: float = 1.0, lam: float = 0.95
) -> torch.Tensor:
    """Token-level GAE on the KL-shaped rewards of the language-model MDP, before any whitening. ``(B, T)``.

    Per-token rewards: the outcome reward on the last trained token, minus :math:`\\beta\\,k_t` on every trained
    token (:func:`policygrad.reward_side.kl_shaped_rewards`, k1 by default, from ``batch.old_log_probs`` and
    ``batch.ref_log_probs``); then :func:`policygrad.reward_side.gae` with the critic's ``batch.values``. The
    state after the last token is terminal (value 0), truncated completions included: their outcome reward is
    final. Derived in {ref}`sec-rlhf-ppo`.
    """
    if batch.values is None:
        raise ValueError("RLHF-style PPO needs a critic: batch.values is None (train() fills it for critic methods)")
    if beta > 0 and batch.ref_log_probs is None:
        raise ValueError("a KL penalty in the reward needs batch.ref_log_probs")
    m = batch.loss_mask
    ref = batch.old_log_probs if batch.ref_log_probs is None else batch.ref_log_probs
    outcome = batch.sequence_rewards
    rewards = kl_shaped_rewards(outcome, batch.old_log_probs, ref, m, beta=beta, kind=kl_kind)
    return gae(rewards, batch.values * m, m, gamma=gamma, lam=lam)


def rlhf_advantages(batch: RolloutBatch, *, whiten_advantages: bool = True, **gae_options) -> torch.Tensor:
    """The policy's advantages: :func:`rlhf_gae`, whitened over the batch's trained tokens
    (:func:`policygrad.reward_side.whiten`) unless ``whiten_advantages=False``. ``(B, T)``."""
    adv = rlhf_gae(batch, **gae_options)
    return whiten(adv, batch.loss_mask) if whiten_advantages else adv


def rlhf_value_targets(batch: RolloutBatch, **gae_options) -> torch.Tensor:
    """The critic's regression targets: the GAE(λ) returns :math:`\\hat A_t + V_\\text{old}(s_t)` (unwhitened). ``(B, T)``."""
    return (rlhf_gae(batch, **gae_options) + batch.values) * batch.loss_mask


def _rlhf_value_loss(values: torch.Tensor, batch: RolloutBatch, targets: torch.Tensor, *, clip: float | None) -> torch.Tensor:
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
    """Build an RLHF-style PPO :class:`Method` (not registered; :func:`register` it to train by name).

    Reward side: :func:`rlhf_advantages` (the critic, GAE(γ, λ), the reference KL ``beta``·``kl_kind`` in the
    reward, whitening); trajectory side: the PPO clip with ``eps``, token-mean; the critic regresses on
    :func:`rlhf_value_targets` with PPO's clipped value loss (``value_clip``). Defaults follow Ziegler et al.
    (2019) and Ouyang et al. (2022) as far as they apply to a 0/1 outcome reward.
    """
    gae_options = {"beta": beta, "kl_kind": kl_kind, "gamma": gamma, "lam": lam}
    return Method(
        name=name,
        title=f"PPO with a critic, GAE and the reference KL in the reward (RLHF-style, beta = {beta:g})",
        advantages=functools.partial(rlhf_advantages, whiten_advantages=whiten_advantages, **gae_options),
        loss=functools.partial(ppo_loss, eps=eps),
        value_targets=functools.partial(rlhf_value_targets, **gae_options),
        value_loss=functools.partial(_rlhf_value_loss, clip=value_clip),
        inner_epochs=inner_epochs,
        minibatches=minibatches,
        needs_reference=beta > 0,
        changes=("reward", "trajectory"),
        paper="ouyang2022",
        why="a learned critic gives every token its own baseline V(s_t), GAE trades its bias against variance, "
        "and the KL in the reward keeps the policy near the reference; the clip lets each batch be reused",
        unsolved="a second network as large as the policy to train and store; the critic is wrong early in "
        "training, which biases the advantages; with one reward at the end, the critic has little to learn from",
        trl="experimental PPOTrainer (kl_coef, vf_coef, cliprange_value, gamma, lam, whiten_rewards)",
        verl="adv_estimator=gae, use_kl_in_reward=True (kl_ctrl.kl_coef), critic",
        section="sec-rlhf-ppo",
        extra=dict(gae_options, whiten_advantages=whiten_advantages, eps=eps, value_clip=value_clip),
    )


register(rlhf_ppo())


# ------------------------------------------------------------------------------------------------------
# GRPO (DeepSeekMath): group-relative advantages, PPO clip on token ratios, 1/|o_i| aggregation, k3 KL loss
# ------------------------------------------------------------------------------------------------------
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
