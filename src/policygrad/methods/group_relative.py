"""GRPO (DeepSeekMath) as a registered method (chapter 07).

Group-relative advantages, PPO clip on token ratios, 1/|o_i| aggregation, k3 KL loss.
"""

from __future__ import annotations

import functools
import re

import torch

from .._checks import check_positive_int
from ..reward_side.normalise import group_advantages, group_step_advantages
from ..reward_side.returns import broadcast_to_tokens
from ..rollout import RolloutBatch
from ..trajectory_side.aggregation import AGGREGATIONS
from ..trajectory_side.kl import KL_ESTIMATORS, kl_loss
from ..trajectory_side.ppo import ppo_clip_loss
from .base import Method, register
from .recipes import VERL_KL_NAMES, Recipe, Unsupported

__all__ = ["grpo_advantages", "grpo_loss", "grpo", "grpo_trl", "grpo_verl"]

#: The package's aggregation -> TRL 1.16's `loss_type` with the same normaliser (one
#: optimiser step per generated batch, no gradient accumulation). `"token-sum"` has no
#: TRL equivalent.
TRL_LOSS_TYPES = {
    "seq-mean-token-mean": "grpo",
    "token-mean": "dapo",
    "seq-mean-token-sum-norm": "dr_grpo",
    "seq-mean-token-sum": "luspo",
}

_P = "tests/parity/"


def grpo_advantages(
    batch: RolloutBatch,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO's advantages, `(B, T)`, 0 off the loss mask.

    Outcome rewards `(B,)`: every trained token of completion i gets

        (R_i − R̄_g) / (σ_g + ε)

    (`policygrad.reward_side.group_advantages`), with R̄_g and σ_g the mean and
    standard deviation of the rewards of i's group. Per-step rewards `(B, T)`: process
    supervision, each token gets the sum of the group-normalised step rewards from it on
    (`policygrad.reward_side.group_step_advantages`, every trained token a step; a
    nonzero reward on a token outside the loss mask is a ValueError, not silently
    dropped). `scale=None` drops the division (Dr.GRPO); `unbiased` picks the 1/(G−1)
    standard deviation (Bessel-corrected, as TRL's `nanstd` and verl's `torch.std`).
    Needs `G >= 2`. Derived in chapter 7 ("The DeepSeekMath objective").
    """
    G = batch.group_size
    opts = {"scale": scale, "unbiased": unbiased, "eps": eps}
    if batch.rewards.dim() == 1:
        return broadcast_to_tokens(
            group_advantages(batch.rewards, G, **opts), batch.loss_mask
        )
    if bool((batch.rewards * (batch.loss_mask == 0) != 0).any()):
        raise ValueError(
            "a per-step reward sits on a token outside the loss mask; put each step's "
            "reward on a trained token"
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
    eps_high: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """GRPO's loss (= −surrogate) as in DeepSeekMath, per token then aggregated:

        L = (1/B) Σ_i (1/|o_i|) Σ_t m_{i,t} [ −min(r_{i,t} A_{i,t},
                clip(r_{i,t}, 1 − ε, 1 + ε) A_{i,t}) + β k3(π_θ, π_ref)_{i,t} ]

    with token ratios r = π_θ / π_old (`batch.old_log_probs`), the k3 estimate of
    KL(π_θ ‖ π_ref) against `batch.ref_log_probs` (needed when `beta > 0`), and
    `aggregation` `"seq-mean-token-mean"` (the 1/|o_i| of the paper). `eps_high`
    (default `eps`) sets the upper bound 1 + ε_high apart from the lower 1 − ε (DAPO's
    clip-higher, chapter 9 ("The clip zoo")). Stats: those of
    `policygrad.trajectory_side.ppo_clip_loss` plus `kl_loss` (the KL term's value,
    before β). Derived in chapter 7 ("The DeepSeekMath objective").
    """
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not 0 <= beta < float("inf")
    ):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    loss, stats = ppo_clip_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        eps_low=eps,
        eps_high=eps_high,
        aggregation=aggregation,
    )
    if beta > 0:
        if batch.ref_log_probs is None:
            raise ValueError("GRPO's KL term (beta > 0) needs batch.ref_log_probs")
        kl = kl_loss(
            logp,
            batch.ref_log_probs,
            batch.loss_mask,
            kind=kl_kind,
            aggregation=aggregation,
        )
        loss = loss + beta * kl
        stats["kl_loss"] = float(kl.detach())
    return loss, stats


def _num(x: float) -> str:
    """`1e-06` -> `1e-6`: a number as the recipes' texts write it."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:g}")


def grpo_trl(
    *,
    group_size: int,
    beta: float,
    eps: float,
    eps_high: float,
    scale: str | None,
    unbiased: bool,
    adv_eps: float,
    kl_kind: str,
    aggregation: str,
    inner_epochs: int,
    minibatches: int,
) -> Recipe | Unsupported:
    """The `GRPOConfig` settings (TRL 1.16) that run `grpo` with these options.

    Or, as an `Unsupported`, why none do.
    """
    if aggregation not in TRL_LOSS_TYPES:
        return Unsupported(
            "trl", f"no loss_type of GRPOTrainer aggregates by {aggregation!r}"
        )
    if beta > 0 and kl_kind != "k3":
        return Unsupported(
            "trl",
            "GRPOTrainer's KL term is the k3 estimator only (this method uses "
            f"{kl_kind})",
        )
    settings = {
        "num_generations": group_size,
        "loss_type": TRL_LOSS_TYPES[aggregation],
        "scale_rewards": "group" if scale == "std" else "none",
        "beta": float(beta),
        "epsilon": float(eps),
        "epsilon_high": float(eps_high),
        "num_iterations": inner_epochs,
        "steps_per_generation": minibatches,
        "gradient_accumulation_steps": 1,
        "importance_sampling_level": "token",
        "use_bias_correction_kl": False,
        "temperature": 1.0,
        "mask_truncated_completions": False,
    }
    differences = []
    if scale == "std" and adv_eps != 1e-4:
        differences.append(
            f"TRL adds 1e-4 to the group std (fixed); this method adds {_num(adv_eps)}"
        )
    if scale == "std" and not unbiased:
        differences.append(
            "TRL's group std is Bessel-corrected (1/(G-1)); this method uses 1/G"
        )
    if aggregation == "token-mean" and minibatches > 1:
        differences.append(
            "with steps_per_generation > 1, dapo divides each step by the generated "
            "batch's token count over steps_per_generation; the package by the "
            "minibatch's own token count"
        )
    if aggregation == "seq-mean-token-sum-norm":
        differences.append(
            "dr_grpo divides by max_completion_length; the package by max_len "
            "(default: the padded width)"
        )
    differences.append(
        "the package clamps log-ratios (and k3's argument) to +/-20 before exp; TRL "
        "does not"
    )
    pitfalls = (
        "GRPOConfig's defaults are not DeepSeekMath's GRPO: beta=0.0 and "
        "loss_type='dapo'",
        "use_bias_correction_kl defaults to True: TRL then multiplies the k3 term by "
        "the token ratio, which leaves the loss's value at ratio 1 but changes the KL "
        "gradient whenever beta > 0",
        "per_device_train_batch_size counts completions, not prompts (prompts = it / "
        "num_generations)",
        "steps_per_generation > 1 splits one generated batch over several optimiser "
        "steps (minibatches)",
    )
    parity = (
        _P + "test_trl.py::test_grpo_loss_matches_trl",
        _P + "test_trl.py::test_group_advantages_match_trl",
        _P + "test_trl.py::test_to_trl_builds_a_grpo_config",
    )
    return Recipe(
        "trl", "trl.GRPOTrainer", settings, tuple(differences), pitfalls, parity
    )


def grpo_verl(
    *,
    group_size: int,
    beta: float,
    eps: float,
    eps_high: float,
    scale: str | None,
    unbiased: bool,
    adv_eps: float,
    kl_kind: str,
    aggregation: str,
    inner_epochs: int,
    minibatches: int,
) -> Recipe | Unsupported:
    """The verl 0.9 Hydra overrides that run `grpo` with these options.

    Or, as an `Unsupported`, why none do.
    """
    actor = "actor_rollout_ref.actor."
    settings = {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": scale == "std",
        "algorithm.use_kl_in_reward": False,
        "actor_rollout_ref.rollout.n": group_size,
        actor + "policy_loss.loss_mode": "vanilla",
        actor + "loss_agg_mode": aggregation,
        actor + "clip_ratio_low": float(eps),
        actor + "clip_ratio_high": float(eps_high),
        actor + "use_kl_loss": beta > 0,
        actor + "kl_loss_coef": float(beta),
        actor + "kl_loss_type": VERL_KL_NAMES[kl_kind],
        actor + "ppo_epochs": inner_epochs,
    }
    differences = []
    if scale == "std" and adv_eps != 1e-6:
        differences.append(
            f"verl adds 1e-6 to the group std; this method adds {_num(adv_eps)}"
        )
    if scale == "std" and not unbiased:
        differences.append(
            "verl's group std is Bessel-corrected (torch.std); this method uses 1/G"
        )
    differences.append(
        "verl's dual-clip is always on (clip_ratio_c=3.0): a token with A<0 and "
        "ratio>3 has its loss capped; it cannot bind in the first epoch (ratio 1)"
    )
    if aggregation == "seq-mean-token-mean":
        differences.append(
            "verl divides each row's sum by |o_i| + 1e-8 (a relative 1e-8)"
        )
    if beta > 0 and kl_kind in ("k3", "k3+"):
        differences.append(
            "verl clamps the k3 value to [-10, 10]; the package does not"
        )
    pitfalls = (
        "verl's default loss_agg_mode is token-mean, not GRPO's seq-mean-token-mean",
        "clip_ratio alone changes nothing: clip_ratio_low and clip_ratio_high default "
        "to 0.2, not null",
        "kl_loss_coef defaults to 0.001 and use_kl_loss to false; GRPO's KL lives in "
        "the actor loss, not in the reward (algorithm.use_kl_in_reward=False)",
        "ppo_mini_batch_size counts prompts (verl multiplies it by rollout.n); "
        f"{minibatches} minibatch(es) means ppo_mini_batch_size = "
        f"data.train_batch_size / {minibatches}",
    )
    parity = (
        _P + "test_verl_recipes.py::test_to_verl_settings_reproduce_the_method_in_verl",
    )
    return Recipe(
        "verl",
        "python -m verl.trainer.main_ppo",
        settings,
        tuple(differences),
        pitfalls,
        parity,
    )


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
    eps_high: float | None = None,
) -> Method:
    """Build a GRPO `Method` (not registered; `register` it to train by name).

    Reward side: `grpo_advantages` (group mean baseline, `scale`/`unbiased`/`adv_eps`
    std normalisation; outcome or per-step rewards); trajectory side: `grpo_loss` (PPO
    clip `eps` on token ratios, `aggregation`, β = `beta` times the `kl_kind` KL loss
    against the reference; `eps_high`, default `eps`, the upper clip bound 1 + ε_high:
    DAPO's clip-higher). The defaults are DeepSeekMath's (Shao et al., 2024):
    β = 0.04, ε = 0.2, one policy update per batch; `group_size` is 8 here (64 in the
    paper).
    """
    check_positive_int(group_size, "group_size")
    if group_size < 2:
        raise ValueError(
            "GRPO needs group_size >= 2 (a group of one has no one to compare with), "
            f"got {group_size}"
        )
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not 0 <= beta < float("inf")
    ):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    if eps_high is None:
        eps_high = eps
    if (
        isinstance(eps_high, bool)
        or not isinstance(eps_high, (int, float))
        or not 0 <= eps_high < 1
    ):
        raise ValueError(f"eps_high must be a number in [0, 1), got {eps_high!r}")
    if scale not in ("std", None):
        raise ValueError(f"scale must be 'std' or None, got {scale!r}")
    if kl_kind not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {kl_kind!r}; choose one of {KL_ESTIMATORS}"
        )
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}"
        )
    adv_opts = {"scale": scale, "unbiased": unbiased, "eps": adv_eps}
    loss_opts = {
        "eps": eps,
        "eps_high": eps_high,
        "beta": beta,
        "kl_kind": kl_kind,
        "aggregation": aggregation,
    }
    options = dict(
        group_size=group_size,
        scale=scale,
        unbiased=unbiased,
        adv_eps=adv_eps,
        inner_epochs=inner_epochs,
        minibatches=minibatches,
        **loss_opts,
    )
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
        why="no critic: the other completions of the same prompt give the baseline "
        "(the group mean), divided by their spread; PPO's clip and a KL loss to the "
        "reference are kept, each sequence weighs the same",
        unsolved="a group whose rewards are all equal gives no gradient; the std "
        "divides prompts by their difficulty and 1/|o_i| weighs tokens by their "
        "sequence's length, so the expected update is not the gradient of J "
        "(difficulty and length bias); the mean includes the sample itself",
        trl=grpo_trl(**options),
        verl=grpo_verl(**options),
        section="sec-grpo-objective",
        extra={"scale": scale, "unbiased": unbiased, "adv_eps": adv_eps, **loss_opts},
    )


register(grpo())
