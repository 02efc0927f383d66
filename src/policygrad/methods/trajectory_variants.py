"""The trajectory-side variants after GRPO as registered methods.

Derived in chapter 9 ("After GRPO: the trajectory-side variants").

Each keeps GRPO's reward side (group mean and standard deviation, Bessel-corrected,
ε = 1e-6) and changes how the sampled tokens' scores are weighted, clipped, filtered
or regularised: DAPO (clip-higher, token-mean, dynamic sampling, overlong filtering
and shaping), CISPO (a clipped, detached importance weight), SAPO (a soft sigmoid
gate), Clip-Cov and KL-Cov (the tokens of highest covariance of log-probability and
advantage are removed or KL-penalised), the 80/20 filter (only the top 20 % of tokens
by entropy) and the entropy bonus, fixed and adaptive. None has a KL to the reference
(β = 0). Every builder (`dapo`, `cispo`, `sapo`, `clip_cov`, `kl_cov`,
`high_entropy`, `entropy_bonus`) returns an unregistered `Method` with those options;
importing the module registers each with its paper's or framework's defaults.

The parts live in `policygrad.trajectory_side` (`clips`, `filters`) and
`policygrad.reward_side.overlong_penalty`; the frameworks' names are read off TRL
1.16 (`trl/trainer/grpo_config.py`) and verl 0.9.1 (`verl/workers/config/actor.py`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from ..reward_side.variants import overlong_penalty
from ..rollout import RolloutBatch
from ..trajectory_side.clips import cispo_loss, sapo_loss
from ..trajectory_side.filters import (
    _number,
    clip_cov_loss,
    high_entropy_token_mask,
    kl_cov_loss,
)
from .base import Method, register
from .group_relative import grpo, grpo_advantages, grpo_loss
from .recipes import Recipe, Unsupported

__all__ = [
    "TRAJECTORY_VARIANT_GROUP_SIZE",
    "dapo_advantages",
    "cispo_method_loss",
    "sapo_method_loss",
    "clip_cov_method_loss",
    "kl_cov_method_loss",
    "high_entropy_method_loss",
    "dapo",
    "cispo",
    "sapo",
    "clip_cov",
    "kl_cov",
    "high_entropy",
    "entropy_bonus",
]

#: The group size of the registered trajectory-side variants (GRPO's).
TRAJECTORY_VARIANT_GROUP_SIZE = 8

_P = "tests/parity/"
_ACTOR = "actor_rollout_ref.actor."
_CLIPS = _P + "test_clips_parity.py::"
_FILTERS = _P + "test_filters_parity.py::"
_VERL_RECIPES = (
    _P + "test_verl_recipes.py::test_to_verl_settings_reproduce_the_method_in_verl"
)


# --------------------------------------------------------------- the method parts


def dapo_advantages(
    batch: RolloutBatch,
    *,
    overlong_fraction: float = 0.2,
    overlong_factor: float = 1.0,
) -> torch.Tensor:
    """DAPO's advantages, `(B, T)`: GRPO's group-normalised advantage of the reward
    plus the soft overlong punishment.

    With L_max the batch's completion width T (`train` samples `max_new_tokens`
    positions) and L_cache = ⌊`overlong_fraction` · L_max⌋ (DAPO: 4096 of 20480,
    0.2), each completion's reward gets `policygrad.reward_side.overlong_penalty`
    (|o_i|, L_max, L_cache, factor) added before the group statistics: 0 up to
    L_max − L_cache tokens, then a ramp down to −factor at L_max. `overlong_fraction
    = 0` turns it off (with L_cache = 0 the penalty only acts beyond L_max, where no
    completion is). Outcome rewards `(B,)` only (ValueError otherwise). In verl the
    punishment is the DAPO reward manager's `overlong_buffer`
    (`verl/workers/reward_manager/dapo.py:121-127`), in TRL the reward function
    `trl.rewards.get_soft_overlong_punishment`; in both it is part of the reward,
    as here.
    """
    if batch.rewards.dim() != 1:
        raise ValueError(
            "DAPO's overlong punishment needs one outcome reward per completion (B,)"
        )
    if (
        isinstance(overlong_fraction, bool)
        or not isinstance(overlong_fraction, (int, float))
        or not 0 <= overlong_fraction <= 1
    ):
        raise ValueError(
            f"overlong_fraction must be a number in [0, 1], got {overlong_fraction!r}"
        )
    T = batch.mask.shape[1]
    cache = int(overlong_fraction * T)
    lengths = batch.mask.sum(-1)
    penalty = overlong_penalty(lengths, T, cache, factor=overlong_factor)
    shaped = dataclasses.replace(
        batch, rewards=batch.rewards + penalty.to(batch.rewards.dtype)
    )
    return grpo_advantages(shaped)


def cispo_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    eps_max: float = 5.0,
    aggregation: str = "token-mean",
) -> tuple[torch.Tensor, dict]:
    """CISPO's loss on a batch: `policygrad.trajectory_side.cispo_loss` with the weight
    min(r, ε_max), detached (TRL's form; verl's with ε_low = 1,
    ε_high = ε_max − 1)."""
    return cispo_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        variant="trl",
        eps_max=eps_max,
        aggregation=aggregation,
    )


def sapo_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[torch.Tensor, dict]:
    """SAPO's loss on a batch: `policygrad.trajectory_side.sapo_loss` (τ₊, τ₋),
    seq-mean-token-mean (the one aggregation both frameworks use for it)."""
    return sapo_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        tau_pos=tau_pos,
        tau_neg=tau_neg,
    )


def clip_cov_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    eps: float = 0.2,
    eps_high: float = 0.2,
    ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    aggregation: str = "token-mean",
) -> tuple[torch.Tensor, dict]:
    """Clip-Cov on a batch: `policygrad.trajectory_side.clip_cov_loss`.

    The random choice among the candidate tokens uses torch's global generator, as
    verl's `torch.randperm` does: seed it (`policygrad.seed_everything`) for a
    repeatable run. max(⌊ratio · n⌋, 1) tokens of the n trained ones are removed
    (when that many are candidates): at least one, however small the ratio."""
    return clip_cov_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        eps_low=eps,
        eps_high=eps_high,
        clip_cov_ratio=ratio,
        clip_cov_lb=lb,
        clip_cov_ub=ub,
        aggregation=aggregation,
    )


def kl_cov_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    ratio: float = 2e-4,
    coef: float = 0.1,
    aggregation: str = "token-mean",
) -> tuple[torch.Tensor, dict]:
    """KL-Cov on a batch: `policygrad.trajectory_side.kl_cov_loss` (the unclipped
    ratio loss, β |log r| on the max(⌊ratio · n⌋, 1) tokens of highest covariance)."""
    return kl_cov_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        kl_cov_ratio=ratio,
        kl_coef=coef,
        aggregation=aggregation,
    )


def high_entropy_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    top_fraction: float = 0.2,
    eps: float = 0.2,
    eps_high: float = 0.2,
    aggregation: str = "token-mean",
) -> tuple[torch.Tensor, dict]:
    """The 80/20 filter on GRPO's loss (no KL): the policy term of every token outside
    the batch's top `top_fraction` by entropy is multiplied by 0, and the aggregation
    still divides by all trained tokens, as TRL does (`grpo_trainer.py:3143-3144`).

    Reads `batch.entropies` (π_old's entropies; ValueError if absent: the method's
    `needs_entropy` flag asks `policygrad.train.train` for them) and selects with
    `policygrad.trajectory_side.high_entropy_token_mask`. Stats gain `kept_frac`."""
    if batch.entropies is None:
        raise ValueError(
            "the 80/20 filter needs batch.entropies (the sampling policy's entropy "
            "at every position); train() fills it for a method with needs_entropy"
        )
    keep = high_entropy_token_mask(batch.entropies, batch.loss_mask, top_fraction)
    loss, stats = grpo_loss(
        logp,
        batch,
        advantages * keep.to(advantages.dtype),
        eps=eps,
        eps_high=eps_high,
        beta=0.0,
        aggregation=aggregation,
    )
    n = float(batch.loss_mask.sum().clamp_min(1))
    stats["kept_frac"] = float(keep.sum()) / n
    return loss, stats


# ------------------------------------------------------------------- the recipes


def _amend(
    entry: Recipe | Unsupported,
    settings: dict | None = None,
    *,
    drop: tuple[str, ...] = (),
    differences: tuple[str, ...] = (),
    pitfalls: tuple[str, ...] = (),
    parity: tuple[str, ...] = (),
    other_loss: bool = False,
) -> Recipe | Unsupported:
    """A base GRPO recipe with settings changed or dropped and texts added.

    `other_loss`: the method replaces verl's `vanilla` loss, so the base recipe's note
    on its always-on dual clip does not apply and is dropped."""
    if isinstance(entry, Unsupported):
        return entry
    new = {k: v for k, v in entry.settings.items() if k not in drop}
    new.update(settings or {})
    kept = tuple(d for d in entry.differences if not (other_loss and "dual-clip" in d))
    return dataclasses.replace(
        entry,
        settings=new,
        differences=(*kept, *differences),
        pitfalls=(*entry.pitfalls, *pitfalls),
        parity=(*entry.parity, *parity),
    )


def _base(name, group_size, eps, eps_high, aggregation, inner_epochs, minibatches):
    """GRPO without KL: the reward side all these methods keep."""
    return grpo(
        name,
        group_size=group_size,
        beta=0.0,
        eps=eps,
        eps_high=eps_high,
        aggregation=aggregation,
        inner_epochs=inner_epochs,
        minibatches=minibatches,
    )


_NO_KL = "no KL to the reference (beta = 0)"


# ------------------------------------------------------------------- the builders


def dapo(
    name: str = "dapo",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    eps: float = 0.2,
    eps_high: float = 0.28,
    dynamic_sampling: bool = True,
    max_gen_batches: int = 8,
    mask_truncated: bool = True,
    overlong_fraction: float = 0.2,
    overlong_factor: float = 1.0,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """DAPO (Yu et al., 2025) as one method built from its parts.

    Reward side: `dapo_advantages` (GRPO's group-normalised advantage of the reward
    plus the soft overlong punishment). Trajectory side: PPO's clip with
    ε_low = `eps`, ε_high = `eps_high` (clip-higher), token-mean aggregation, no KL;
    `dynamic_sampling` keeps only groups whose rewards differ (at most
    `max_gen_batches` generation batches per step), `mask_truncated` gives the
    completions that hit the length limit loss mask 0 (overlong filtering).
    """
    _number(overlong_fraction, "overlong_fraction", 0.0, 1.0)
    _number(overlong_factor, "overlong_factor", 0.0)
    base = _base(
        name, group_size, eps, eps_high, "token-mean", inner_epochs, minibatches
    )
    shaping = f"overlong_fraction={overlong_fraction:g}"
    diff_ds = (
        "dynamic sampling is not a GRPOTrainer option in TRL 1.16: every generated "
        "group is trained on"
        if dynamic_sampling
        else None
    )
    trl = _amend(
        base.trl,
        {"mask_truncated_completions": bool(mask_truncated)},
        differences=tuple(
            d
            for d in (
                diff_ds,
                "the soft overlong punishment is a reward function in TRL "
                "(trl.rewards.get_soft_overlong_punishment(max_completion_len, "
                "soft_punish_cache)); add it to reward_funcs with L_max = "
                f"max_completion_length and the cache of {shaping}",
            )
            if d
        ),
        pitfalls=(
            "epsilon_high must be set: left unset it falls back to epsilon "
            "(a symmetric clip)",
        ),
    )
    verl = _amend(
        base.verl,
        {
            "algorithm.filter_groups.enable": True,
            "algorithm.filter_groups.metric": "reward",
        }
        if dynamic_sampling
        else {},
        differences=tuple(
            d
            for d in (
                "verl 0.9.1's V1 replay buffer drops a group whose metric has a "
                "standard deviation of exactly 0 and keeps generating until the batch "
                "is full, without a bound (max_num_gen_batches is ignored with a "
                "warning, trainer_base.py:205-211); the package stops after "
                "max_gen_batches and fills the batch with the earliest other groups, "
                "and treats equal rewards up to round-off as equal"
                if dynamic_sampling
                else None,
                "the soft overlong punishment is verl's DAPO reward manager "
                "(reward_model.reward_manager=dapo with an overlong_buffer of "
                f"len = {shaping} of max_response_length, penalty_factor "
                f"{overlong_factor:g}), set with the run's response length",
                "verl 0.9.1 cannot mask truncated completions out of the loss"
                if mask_truncated
                else None,
            )
            if d
        ),
        pitfalls=(
            "algorithm.filter_groups needs the reward at sampling time (a rule-based "
            "reward, or reward.reward_model.enable_resource_pool=True)",
        )
        if dynamic_sampling
        else (),
        parity=(
            _P + "test_reward_variants_parity.py::"
            "test_overlong_penalty_matches_verls_dapo_reward_manager",
            _FILTERS + "test_verl_filter_groups_defaults",
        ),
    )
    return dataclasses.replace(
        base,
        title=(
            f"DAPO (clip-higher, token-mean, dynamic sampling, group size {group_size})"
        ),
        advantages=functools.partial(
            dapo_advantages,
            overlong_fraction=overlong_fraction,
            overlong_factor=overlong_factor,
        ),
        changes=("reward", "trajectory"),
        paper="yu2025dapo",
        why="four trajectory-side fixes of GRPO at once, plus one on the reward: a "
        "higher upper clip so that rare tokens may rise (against entropy collapse), "
        "every token weighted the same (token-mean, against GRPO's length bias), "
        "groups whose rewards are all equal replaced by informative ones (dynamic "
        "sampling), truncated completions kept out of the loss and long ones "
        f"penalised by a ramp; {_NO_KL}",
        unsolved="dynamic sampling costs 1/(1 - p^G - (1-p)^G) groups per useful one "
        "and biases the batch towards prompts of middle difficulty; the group std "
        "still reweights prompts by difficulty; the asymmetric clip is a "
        "hyperparameter, not a mechanism: a rare token with negative advantage still "
        "loses its mass",
        trl=trl,
        verl=verl,
        section="sec-trajvar-dapo",
        dynamic_sampling=dynamic_sampling,
        max_gen_batches=max_gen_batches,
        mask_truncated=mask_truncated,
        extra={
            **base.extra,
            "overlong_fraction": overlong_fraction,
            "overlong_factor": overlong_factor,
        },
    )


def cispo(
    name: str = "cispo",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    eps_max: float = 5.0,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """CISPO (MiniMax-M1): GRPO's advantages, the REINFORCE loss weighted by the
    detached importance weight min(r, ε_max), token-mean, no KL.

    ε_max = 5 is TRL's recommended cap (`grpo_config.py:184-188`); MiniMax-M1 sets no
    lower bound. In verl the same weight is `clip_ratio_low = 1`,
    `clip_ratio_high = ε_max − 1` (clip(r, 0, ε_max) = min(r, ε_max) for r > 0).
    """
    if (
        isinstance(eps_max, bool)
        or not isinstance(eps_max, (int, float))
        or eps_max <= 1
    ):
        raise ValueError(f"eps_max must be a number > 1, got {eps_max!r}")
    base = _base(name, group_size, 0.2, 0.2, "token-mean", inner_epochs, minibatches)
    trl = _amend(
        base.trl,
        {"loss_type": "cispo", "epsilon_high": float(eps_max)},
        pitfalls=(
            "for loss_type='cispo' epsilon_high is the absolute cap eps_max on the "
            "raw ratio, not 1 + epsilon_high; left unset it falls back to epsilon "
            "= 0.2, which caps every weight at 0.2",
        ),
        parity=(_CLIPS + "test_cispo_matches_trl",),
    )
    verl = _amend(
        base.verl,
        {
            _ACTOR + "policy_loss.loss_mode": "cispo",
            _ACTOR + "clip_ratio_low": 1.0,
            _ACTOR + "clip_ratio_high": float(eps_max) - 1.0,
        },
        pitfalls=(
            "verl's cispo clips relative to 1: clip(r, 1 - clip_ratio_low, 1 + "
            "clip_ratio_high); clip_ratio_low = 1 removes the lower bound",
        ),
        parity=(_CLIPS + "test_cispo_matches_verl",),
        other_loss=True,
    )
    return dataclasses.replace(
        base,
        title=(
            f"CISPO (clipped IS weight, eps_max = {eps_max:g}, group size {group_size})"
        ),
        loss=functools.partial(cispo_method_loss, eps_max=eps_max),
        paper="minimax2025m1",
        why="PPO's clip removes the whole gradient of a token whose ratio left the "
        "trust region, typically a rare token the update made more likely; CISPO "
        "clips only its importance weight, so every token keeps a gradient, and "
        f"aggregates by token-mean; {_NO_KL}",
        unsolved="no trust region: nothing stops a token's ratio from growing over "
        "many epochs except the cap on its weight; the value of the loss is not a "
        "surrogate objective (only its gradient means something); the reward side "
        "is GRPO's, with its difficulty weighting",
        trl=trl,
        verl=verl,
        section="sec-trajvar-clips",
        extra={**base.extra, "eps_max": eps_max},
    )


def sapo(
    name: str = "sapo",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """SAPO: GRPO's advantages, the soft gate (4/τ) σ(τ (r − 1)) A in place of the
    clip (τ₊ for A > 0, τ₋ for A ≤ 0), seq-mean-token-mean, no KL. Defaults:
    both
    frameworks' (τ₊ = 1, τ₋ = 1.05)."""
    for tau, what in ((tau_pos, "tau_pos"), (tau_neg, "tau_neg")):
        _number(tau, what, 0.0, lo_open=True)
    base = _base(
        name, group_size, 0.2, 0.2, "seq-mean-token-mean", inner_epochs, minibatches
    )
    trl = _amend(
        base.trl,
        {
            "loss_type": "sapo",
            "sapo_temperature_pos": float(tau_pos),
            "sapo_temperature_neg": float(tau_neg),
        },
        parity=(_CLIPS + "test_sapo_matches_trl",),
    )
    verl = _amend(
        base.verl,
        {
            _ACTOR + "policy_loss.loss_mode": "sapo",
            _ACTOR + "tau_pos": float(tau_pos),
            _ACTOR + "tau_neg": float(tau_neg),
        },
        pitfalls=(
            "verl's sapo ignores loss_agg_mode: it always aggregates by "
            "seq-mean-token-mean",
        ),
        parity=(_CLIPS + "test_sapo_matches_verl",),
        other_loss=True,
    )
    return dataclasses.replace(
        base,
        title=(
            f"SAPO (soft gate, tau = {tau_pos:g}/{tau_neg:g}, group size {group_size})"
        ),
        loss=functools.partial(sapo_method_loss, tau_pos=tau_pos, tau_neg=tau_neg),
        paper="gao2025sapo",
        why="a hard clip switches a token's gradient off at a threshold; SAPO's "
        "sigmoid gate lowers it smoothly as the ratio leaves 1, a little faster for "
        f"negative advantages (tau_neg > tau_pos); {_NO_KL}",
        unsolved="the gate's temperatures replace epsilon as the hyperparameter; the "
        "weight of a far-off-policy token decays but never vanishes; GRPO's length "
        "and difficulty weighting are kept",
        trl=trl,
        verl=verl,
        section="sec-trajvar-clips",
        extra={**base.extra, "tau_pos": tau_pos, "tau_neg": tau_neg},
    )


def clip_cov(
    name: str = "clip_cov",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    ratio: float = 2e-4,
    lb: float = 1.0,
    ub: float = 5.0,
    eps: float = 0.2,
    eps_high: float = 0.2,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """Clip-Cov (Cui et al., 2025): PPO's clipped loss, token-mean, no KL, with the
    gradient of max(⌊ratio · n⌋, 1) random tokens among those whose covariance score
    lies in (`lb`, `ub`) removed. Defaults: verl's (2e-4, 1, 5)."""
    _number(ratio, "ratio", 0.0, 1.0, lo_open=True)
    if not _number(lb, "lb") < _number(ub, "ub"):
        raise ValueError(f"lb must be < ub, got {lb} and {ub}")
    base = _base(
        name, group_size, eps, eps_high, "token-mean", inner_epochs, minibatches
    )
    verl = _amend(
        base.verl,
        {
            _ACTOR + "policy_loss.loss_mode": "clip_cov",
            _ACTOR + "policy_loss.clip_cov_ratio": float(ratio),
            _ACTOR + "policy_loss.clip_cov_lb": float(lb),
            _ACTOR + "policy_loss.clip_cov_ub": float(ub),
        },
        differences=(
            "the random choice among the candidates uses each side's own random "
            "stream (verl: torch.randperm on the device's global generator); with "
            "the same seed the package draws the same tokens",
        ),
        pitfalls=(
            "clip_cov_ratio counts tokens of the micro-batch: max(int(ratio * n), "
            "1) tokens are removed, so below n = 1/ratio (5000 tokens at the "
            "default 2e-4) it is always one token, whatever the ratio",
        ),
        parity=(_FILTERS + "test_clip_cov_matches_verl",),
        other_loss=True,
    )
    return dataclasses.replace(
        base,
        title=(
            f"Clip-Cov (ratio {ratio:g}, bounds {lb:g}-{ub:g}, group size {group_size})"
        ),
        loss=functools.partial(
            clip_cov_method_loss, eps=eps, eps_high=eps_high, ratio=ratio, lb=lb, ub=ub
        ),
        paper="cui2025entropy",
        why="the entropy of a softmax policy falls, to first order, by the "
        "covariance of log-probability and advantage over its tokens; removing the "
        "gradient of a few tokens of high covariance stops the fall where it starts; "
        f"{_NO_KL}",
        unsolved="the selection is random and batch-size dependent "
        "(max(int(ratio n), 1) tokens); the covariance is a first-order, "
        "per-batch estimate; no effect on the reward side's biases",
        trl=Unsupported(
            "trl",
            "TRL 1.16 has no covariance-based token selection",
            "top_entropy_quantile (selects tokens by entropy)",
        ),
        verl=verl,
        section="sec-trajvar-entropy",
        extra={**base.extra, "ratio": ratio, "lb": lb, "ub": ub},
    )


def kl_cov(
    name: str = "kl_cov",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    ratio: float = 2e-4,
    coef: float = 0.1,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """KL-Cov (Cui et al., 2025): the unclipped ratio loss, token-mean, no KL to the
    reference, with β |log r| on the max(⌊ratio · n⌋, 1) tokens of highest covariance.
    Defaults: verl's (`kl_cov_ratio` 2e-4, `ppo_kl_coef` 0.1)."""
    _number(ratio, "ratio", 0.0, 1.0, lo_open=True)
    _number(coef, "coef", 0.0)
    base = _base(name, group_size, 0.2, 0.2, "token-mean", inner_epochs, minibatches)
    verl = _amend(
        base.verl,
        {
            _ACTOR + "policy_loss.loss_mode": "kl_cov",
            _ACTOR + "policy_loss.kl_cov_ratio": float(ratio),
            _ACTOR + "policy_loss.ppo_kl_coef": float(coef),
        },
        pitfalls=(
            "kl_cov_ratio counts tokens of the micro-batch: max(int(ratio * n), 1) "
            "tokens are penalised, so below n = 1/ratio it is always one token",
            "at ratio 1 (the first update on a batch) the |log r| penalty has zero "
            "gradient: KL-Cov acts only from the second minibatch or epoch on",
        ),
        parity=(_FILTERS + "test_kl_cov_matches_verl",),
        other_loss=True,
    )
    return dataclasses.replace(
        base,
        title=(
            f"KL-Cov (ratio {ratio:g}, coefficient {coef:g}, group size {group_size})"
        ),
        loss=functools.partial(kl_cov_method_loss, ratio=ratio, coef=coef),
        paper="cui2025entropy",
        why="as Clip-Cov, against the covariance that lowers the entropy, but softly: "
        "the tokens of highest covariance keep their gradient and get a penalty on "
        f"how far their ratio moved; no clip elsewhere; {_NO_KL}",
        unsolved="the penalty acts only once a token's ratio differs from 1 (later "
        "minibatches and epochs); batch-size dependent selection; the unclipped "
        "ratio elsewhere has no trust region",
        trl=Unsupported(
            "trl",
            "TRL 1.16 has no covariance-based KL penalty",
            "top_entropy_quantile (selects tokens by entropy)",
        ),
        verl=verl,
        section="sec-trajvar-entropy",
        extra={**base.extra, "ratio": ratio, "coef": coef},
    )


def high_entropy(
    name: str = "grpo_high_entropy",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    top_fraction: float = 0.2,
    eps: float = 0.2,
    eps_high: float = 0.2,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """The 80/20 filter (Wang et al., 2025) on GRPO without KL, token-mean: only the
    `top_fraction` of the batch's tokens with the highest entropy under π_old keep
    their policy gradient (`high_entropy_method_loss`)."""
    _number(top_fraction, "top_fraction", 0.0, 1.0)
    base = _base(
        name, group_size, eps, eps_high, "token-mean", inner_epochs, minibatches
    )
    trl = _amend(
        base.trl,
        {"top_entropy_quantile": float(top_fraction)},
        differences=(
            "TRL computes the entropies in the training forward, with the current "
            "policy; the package uses the sampling policy's (the same on the first "
            "update of a batch, different on later minibatches and epochs)",
        ),
        pitfalls=(
            "top_entropy_quantile is the fraction kept (0.2 keeps the top 20 %), "
            "default 1.0 (no filter)",
        ),
        parity=(_FILTERS + "test_high_entropy_mask_matches_trl",),
    )
    return dataclasses.replace(
        base,
        title=(
            f"80/20 filter (top {top_fraction:.0%} entropy tokens"
            f", group size {group_size})"
        ),
        loss=functools.partial(
            high_entropy_method_loss,
            top_fraction=top_fraction,
            eps=eps,
            eps_high=eps_high,
        ),
        paper="wang2025beyond",
        why="most tokens of a completion are nearly determined; the gradient that "
        "changes what the policy does sits on the few uncertain 'forking' tokens, so "
        "training only on the top 20 % by entropy keeps the signal and spares the "
        f"confident tokens' probabilities; {_NO_KL}",
        unsolved="the kept fraction is a hyperparameter; the entropy threshold is a "
        "batch statistic (a quantile), so the filter couples the completions of a "
        "batch; the expected update is no longer a multiple of the gradient of J",
        trl=trl,
        verl=Unsupported("verl", "verl 0.9.1 has no entropy-based token filter"),
        section="sec-trajvar-entropy",
        needs_entropy=True,
        extra={**base.extra, "top_fraction": top_fraction},
    )


def entropy_bonus(
    name: str = "grpo_entropy_bonus",
    *,
    group_size: int = TRAJECTORY_VARIANT_GROUP_SIZE,
    coef: float = 0.01,
    adaptive: dict | None = None,
    eps: float = 0.2,
    eps_high: float = 0.2,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """GRPO without KL, token-mean, plus the entropy bonus −c · token-mean(H).

    `coef` c fixed, or `adaptive`: the keyword arguments of
    `policygrad.trajectory_side.AdaptiveEntropyController` (TRL's
    `use_adaptive_entropy`, Skywork-OR1), whose coefficient replaces c (its
    `init_coef` is the start). verl has only the fixed coefficient."""
    base = _base(
        name, group_size, eps, eps_high, "token-mean", inner_epochs, minibatches
    )
    if adaptive is None:
        trl_settings = {"entropy_coef": float(coef)}
        verl = _amend(
            base.verl,
            {_ACTOR + "entropy_coeff": float(coef)},
            parity=(_VERL_RECIPES,),
        )
        title = f"GRPO + entropy bonus (c = {coef:g}, group size {group_size})"
    else:
        from ..trajectory_side.filters import AdaptiveEntropyController

        ctl = AdaptiveEntropyController(**adaptive)
        trl_settings = {
            "use_adaptive_entropy": True,
            "entropy_coef": ctl.coef,
            "entropy_target": ctl.target,
            "entropy_coef_delta": ctl.delta,
            "entropy_coef_min": ctl.coef_min,
            "entropy_coef_max": ctl.coef_max,
        }
        verl = Unsupported(
            "verl",
            "verl 0.9.1's entropy_coeff is fixed; it has no adaptive controller",
            f"{_ACTOR}entropy_coeff (a fixed coefficient)",
        )
        title = (
            f"GRPO + adaptive entropy bonus (target {ctl.target:g}, group size "
            f"{group_size})"
        )
    trl = _amend(
        base.trl,
        trl_settings,
        differences=(
            "TRL's bonus is always the token mean over the trained tokens, whatever "
            "loss_type; the package aggregates it as the policy loss (here "
            "token-mean, the same)",
        ),
        parity=(_FILTERS + "test_trl_entropy_and_truncation_defaults",)
        if adaptive is not None
        else (),
    )
    return dataclasses.replace(
        base,
        title=title,
        paper="he2025skywork" if adaptive is not None else "williams1991function",
        why="the oldest remedy for entropy collapse: reward the policy for its "
        "entropy at the states it visits, a term against the covariance that "
        "lowers it"
        + ("; the coefficient adapts towards a target entropy" if adaptive else "")
        + f"; {_NO_KL}",
        unsolved=(
            "the target entropy replaces the coefficient as the hyperparameter, and "
            "the controller reacts a step late (bang-bang steps of delta around the "
            "target); the bonus raises the entropy of every token alike, the "
            "confident ones included; it changes the objective (J + c H) whenever "
            "it is on"
            if adaptive is not None
            else "a fixed coefficient that holds the entropy early lets it grow "
            "late (it does not depend on the state); the bonus raises the entropy of "
            "every token alike, the confident ones included; it changes the "
            "objective (J + c H)"
        ),
        trl=trl,
        verl=verl,
        section="sec-trajvar-entropy",
        entropy_coef=0.0 if adaptive is not None else float(coef),
        adaptive_entropy=None if adaptive is None else dict(adaptive),
        extra={**base.extra, "entropy_coef": coef, "adaptive": adaptive},
    )


register(dapo())
register(cispo())
register(sapo())
register(clip_cov())
register(kl_cov())
register(high_entropy())
register(entropy_bonus())
register(
    entropy_bonus(
        "grpo_adaptive_entropy",
        adaptive={"init_coef": 0.0, "target": 0.2, "delta": 0.005},
    )
)
