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

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._checks import check_positive_int
from .reward_side import broadcast_to_tokens, leave_one_out_baseline
from .rollout import RolloutBatch
from .trajectory_side import pg_surrogate, ppo_clip_loss, ppo_kl_penalty_loss

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
    extra: dict = field(default_factory=dict)

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


def ppo_loss(logp: torch.Tensor, batch: RolloutBatch, advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """PPO's clipped loss (:func:`policygrad.trajectory_side.ppo_clip_loss`) with :math:`\\varepsilon = 0.2`,
    token ratios against ``batch.old_log_probs``, token-mean aggregation, on ``batch.loss_mask``."""
    return ppo_clip_loss(logp, batch.old_log_probs, advantages, batch.loss_mask, eps_low=0.2)


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
        section="",
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
        section="",
    )
)
