"""The `Method` type and the registry.

A `Method` names one reward-side recipe and one trajectory-side recipe, how to sample
(group size, inner epochs) and its metadata: the paper, which side(s) it changes
relative to plain REINFORCE and why, what it leaves unsolved, and the names TRL and verl
use for it. The registry (`METHODS`, `get_method`) is the single source for the
training loop, the comparison tables and the map of methods. Introduced in chapter 4
("Methods: one recipe per side").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._checks import check_positive_int
from ..rollout import RolloutBatch
from .recipes import Recipe, Unsupported

__all__ = [
    "SIDES",
    "AdvantageFn",
    "LossFn",
    "Method",
    "METHODS",
    "register",
    "get_method",
    "method_names",
    "methods_table",
    "framework_name",
    "policy_loss",
]


#: The two factors a method can change.
SIDES = ("reward", "trajectory")


#: A reward-side recipe: the batch -> per-token weights `(B, T)` (0 where the loss mask
#: is 0).
AdvantageFn = Callable[[RolloutBatch], torch.Tensor]


#: A trajectory-side recipe:
#: `(log_probs (B, T) with gradient, batch, advantages (B, T))` -> `(loss, stats)`;
#: loss = −surrogate, stats a dict of floats (e.g. `clip_frac`).
LossFn = Callable[[torch.Tensor, RolloutBatch, torch.Tensor], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class Method:
    """A named policy-gradient method.

    name: registry key; title: how the book names it; advantages: the reward-side
    recipe; loss: the trajectory-side recipe; group_size: completions sampled per prompt
    (`G`); inner_epochs and minibatches: passes over each batch and optimiser steps per
    pass (1 and 1 = on-policy); needs_reference: whether the loss reads
    `batch.ref_log_probs`; changes: the side(s) it changes relative to plain REINFORCE
    (a subset of `SIDES`; empty for REINFORCE itself); paper: a `references.bib` key;
    why: the problem the change addresses; unsolved: what it leaves open; trl, verl: how
    the method runs in that framework — a `Recipe` (trainer and settings) or an
    `Unsupported` (why it cannot), both from `policygrad.methods.recipes`; None only for
    ad-hoc methods (every registered one has both; see `policygrad.methods.to_trl`);
    section: the label of the book section that derives it.

    Flags that ask the training loop for more than one plain sampled batch (all off
    by default; `policygrad.train.train` reads them):

    * `greedy_baseline`: besides the sampled completions, generate one greedy (argmax)
      completion per prompt, score it with the task's reward and put that reward,
      repeated over the prompt's G rows, in `batch.greedy_rewards` (ReMax's baseline;
      the extra generations are counted in the `greedy_samples` metric);
    * `needs_sum_pi_squared`: put Σ_v π_θ_old(v | s_t)² of every position, from the
      training forward's logits (detached), in `batch.sum_pi_squared` (verl's optimal
      token baseline reads it);
    * `dynamic_sampling` (DAPO): keep only the groups whose rewards differ and draw
      further batches of the same number of prompts until the step has that many such
      groups, at most `max_gen_batches` batches per step (then the earliest other
      groups fill the batch; `policygrad.trajectory_side.fill_informative`); every
      sampled completion is counted in `samples`, the batches in `gen_batches`;
    * `mask_truncated` (DAPO's overlong filtering, TRL's `mask_truncated_completions`):
      completions that hit the length limit stay in their group's statistics but get
      loss mask 0 (`policygrad.trajectory_side.truncation_loss_mask`);
    * `needs_entropy`: put the entropy of π_θ_old's next-token distribution at every
      position, from the training forward's logits (detached), in `batch.entropies`
      (the 80/20 filter reads it).

    The entropy bonus is the one term of a loss that is not a function of the
    log-probabilities of the sampled tokens (it needs the whole next-token
    distribution), so it is not part of `loss`: `entropy_coef` c ≥ 0 adds
    −c · aggregate(H) to it (`policy_loss`, which `train` calls), aggregated as the
    method's `extra["aggregation"]` (token-mean when it has none: verl's
    `loss_agg_mode` rule); `adaptive_entropy` (a dict of keyword arguments of
    `policygrad.trajectory_side.AdaptiveEntropyController`, or None) replaces the
    fixed c by that controller's coefficient, updated after every optimiser step with
    the step's mean token entropy (TRL's `use_adaptive_entropy`). Chapter 9 ("Entropy
    collapse").

    Methods with a critic (a learned value model) also give value_targets (the batch ->
    the critic's regression targets `(B, T)`) and value_loss
    (`(values (B, T) with gradient, batch, targets)` -> the critic's loss);
    `policygrad.train.train` then keeps a critic, puts its values of the sampled states
    in `batch.values` before the advantages are computed, and trains it alongside the
    policy.
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
    trl: Recipe | Unsupported | None = None
    verl: Recipe | Unsupported | None = None
    section: str = ""
    value_targets: AdvantageFn | None = None
    value_loss: (
        Callable[[torch.Tensor, RolloutBatch, torch.Tensor], torch.Tensor] | None
    ) = None
    extra: dict = field(default_factory=dict)
    greedy_baseline: bool = False
    needs_sum_pi_squared: bool = False
    dynamic_sampling: bool = False
    max_gen_batches: int = 8
    mask_truncated: bool = False
    needs_entropy: bool = False
    entropy_coef: float = 0.0
    adaptive_entropy: dict | None = None

    @property
    def has_entropy_bonus(self) -> bool:
        """Whether its loss has an entropy bonus (a fixed or an adaptive one)."""
        return self.entropy_coef > 0 or self.adaptive_entropy is not None

    @property
    def needs_critic(self) -> bool:
        """Whether it trains a value model (it defines value_targets and value_loss)."""
        return self.value_loss is not None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(
                f"method name must be an identifier-like string, got {self.name!r}"
            )
        if not callable(self.advantages) or not callable(self.loss):
            raise ValueError("advantages and loss must be callables")
        for attr in ("group_size", "inner_epochs", "minibatches", "max_gen_batches"):
            check_positive_int(getattr(self, attr), attr)
        for attr in (
            "greedy_baseline",
            "needs_sum_pi_squared",
            "dynamic_sampling",
            "mask_truncated",
            "needs_entropy",
        ):
            if not isinstance(getattr(self, attr), bool):
                raise ValueError(
                    f"{attr} must be True or False, got {getattr(self, attr)!r}"
                )
        c = self.entropy_coef
        if (
            isinstance(c, bool)
            or not isinstance(c, (int, float))
            or not 0 <= c < float("inf")
        ):
            raise ValueError(
                f"entropy_coef must be a finite number >= 0, got {self.entropy_coef!r}"
            )
        if self.adaptive_entropy is not None:
            from ..trajectory_side.filters import AdaptiveEntropyController

            if not isinstance(self.adaptive_entropy, dict):
                raise ValueError(
                    "adaptive_entropy must be a dict of AdaptiveEntropyController "
                    f"arguments or None, got {self.adaptive_entropy!r}"
                )
            try:
                AdaptiveEntropyController(**self.adaptive_entropy)
            except TypeError as err:
                raise ValueError(f"adaptive_entropy: {err}") from None
        bad = [s for s in self.changes if s not in SIDES]
        if bad or len(set(self.changes)) != len(self.changes):
            raise ValueError(
                f"changes must be distinct entries of {SIDES}, got {self.changes!r}"
            )
        if (self.value_targets is None) != (self.value_loss is None):
            raise ValueError(
                "a method with a critic needs both value_targets and value_loss "
                "(or neither)"
            )
        for attr in ("value_targets", "value_loss"):
            if getattr(self, attr) is not None and not callable(getattr(self, attr)):
                raise ValueError(f"{attr} must be a callable or None")
        for attr in ("trl", "verl"):
            entry = getattr(self, attr)
            if entry is not None and (
                not isinstance(entry, (Recipe, Unsupported)) or entry.framework != attr
            ):
                raise ValueError(
                    f"{attr} must be a Recipe or Unsupported for framework {attr!r} "
                    f"(or None), got {entry!r}"
                )


def policy_loss(
    method: Method,
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    entropy_coef: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """The method's whole policy loss: `method.loss`, plus its entropy bonus.

    `entropy (B, T)`: the token entropies of π_θ with gradient (`token_entropy` of the
    training forward's logits); needed when the method has an entropy bonus, ignored
    otherwise. `entropy_coef` overrides `method.entropy_coef` (the adaptive
    controller's current coefficient). The bonus is
    `policygrad.trajectory_side.entropy_bonus_loss(entropy, batch.loss_mask, c,
    aggregation)` with the method's aggregation; stats gain `entropy_coef` and
    `entropy_bonus` (the bonus term's value) when it has one.
    """
    loss, stats = method.loss(logp, batch, advantages)
    if not method.has_entropy_bonus:
        return loss, stats
    from ..trajectory_side.filters import entropy_bonus_loss

    if entropy is None:
        raise ValueError(
            f"method {method.name!r} has an entropy bonus: pass entropy= (the token "
            "entropies of the policy, with gradient)"
        )
    c = method.entropy_coef if entropy_coef is None else entropy_coef
    aggregation = method.extra.get("aggregation", "token-mean")
    bonus = entropy_bonus_loss(entropy, batch.loss_mask, c, aggregation)
    stats = dict(stats, entropy_coef=float(c), entropy_bonus=float(bonus.detach()))
    return loss + bonus.to(loss.dtype), stats


#: The registry: name -> `Method`.
METHODS: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add `method` to `METHODS` (ValueError if the name is taken, unless `replace`)."""
    if not isinstance(method, Method):
        raise ValueError(f"expected a Method, got {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(method: str | Method) -> Method:
    """The registered method of that name (a `Method` is returned as is)."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; registered: {method_names()}")
    return METHODS[method]


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(METHODS)


def framework_name(entry: Recipe | Unsupported | None) -> str:
    """A short name for a method's entry in one framework.

    The trainer and its key setting (for verl also a `policy_loss.loss_mode` other than
    the PPO clip `vanilla` and the plain `gpg`), or "—".
    """
    if not isinstance(entry, Recipe):
        return "—"
    key = {"trl": "loss_type", "verl": "algorithm.adv_estimator"}[entry.framework]
    name = entry.trainer.rsplit(".", 1)[-1] if entry.framework == "trl" else ""
    value = entry.settings.get(key)
    setting = f"{key.rsplit('.', 1)[-1]}={value}" if value is not None else ""
    mode = entry.settings.get("actor_rollout_ref.actor.policy_loss.loss_mode")
    if entry.framework == "verl" and mode not in (None, "vanilla", "gpg"):
        setting = f"{setting}, loss_mode={mode}" if setting else f"loss_mode={mode}"
    return (
        f"{name} ({setting})"
        if name and setting
        else (name or setting or entry.trainer)
    )


def methods_table() -> list[dict]:
    """One row per registered method, for tables.

    Each row: name, title, sides changed, paper, TRL and verl names.
    """
    return [
        {
            "method": m.name,
            "title": m.title,
            "changes": ", ".join(m.changes) or "—",
            "paper": m.paper,
            "trl": framework_name(m.trl),
            "verl": framework_name(m.verl),
        }
        for m in METHODS.values()
    ]
