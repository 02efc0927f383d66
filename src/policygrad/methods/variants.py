"""The reward-side variants after GRPO as registered methods.

Derived in chapter 8 ("After GRPO: the reward-side variants").

Each pairs one advantage of `policygrad.reward_side.variants` with the plain REINFORCE
loss `reinforce_loss` (−(1/B) Σ_{i,t} m A log π, one update per batch), so it changes
only the reward side, what multiplies the score. Dr.GRPO is the exception: its
constant normaliser is an aggregation choice, so it is GRPO's loss (PPO clip, no KL)
with `seq-mean-token-sum-norm`. Three read more than the rewards, and ask
`policygrad.train.train` for it through their `Method` flags: ReMax
(`greedy_baseline`: the reward of one greedy completion per prompt, in
`batch.greedy_rewards`), GDPO (several reward components per completion, in
`batch.reward_components`, filled for a task with several `reward_names` such as
`policygrad.lm.FormatAdditionTask`) and the optimal token baseline
(`needs_sum_pi_squared`: Σπ² of every position, in `batch.sum_pi_squared`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..reward_side.returns import broadcast_to_tokens
from ..reward_side.variants import (
    batch_std_advantages,
    gdpo_advantages,
    gpg_advantages,
    opo_advantages,
    optimal_token_baseline_advantages,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    rloo_advantages,
)
from ..rollout import RolloutBatch
from .base import Method, register
from .group_relative import grpo
from .recipes import Recipe, Unsupported
from .reinforce import reinforce_loss

__all__ = [
    "rloo_method_advantages",
    "batch_std_method_advantages",
    "reinforce_pp_method_advantages",
    "reinforce_pp_baseline_method_advantages",
    "opo_method_advantages",
    "gpg_method_advantages",
    "passk_method_advantages",
    "remax_method_advantages",
    "gdpo_method_advantages",
    "optimal_token_baseline_method_advantages",
    "GDPO_EPS",
    "VARIANT_GROUP_SIZE",
]

#: The group size of the registered group-relative variants (GRPO's).
VARIANT_GROUP_SIZE = 8

_P = "tests/parity/"
_VERL_RECIPES = (
    _P + "test_verl_recipes.py::test_to_verl_settings_reproduce_the_method_in_verl"
)
_ACTOR = "actor_rollout_ref.actor."
_TRL_VARIANTS = _P + "test_reward_variants_trl.py::"


def rloo_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """RLOO's advantage (`rloo_advantages`) on every trained token. `(B, T)`."""
    A = rloo_advantages(batch.sequence_rewards, batch.group_size)
    return broadcast_to_tokens(A, batch.loss_mask)


def batch_std_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`batch_std_advantages` (group mean, batch std, ε = 1e-4) on trained tokens."""
    A = batch_std_advantages(batch.sequence_rewards, batch.group_size)
    return broadcast_to_tokens(A, batch.loss_mask)


def reinforce_pp_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`reinforce_pp_advantages` (γ = 1) on the loss mask. `(B, T)`."""
    return reinforce_pp_advantages(batch.sequence_rewards, batch.loss_mask)


def reinforce_pp_baseline_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`reinforce_pp_baseline_advantages` on the loss mask. `(B, T)`."""
    return reinforce_pp_baseline_advantages(
        batch.sequence_rewards, batch.group_size, batch.loss_mask
    )


def opo_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`opo_advantages` with |o_i| = the trained tokens of row i. `(B, T)`."""
    lengths = batch.loss_mask.sum(-1)
    A = opo_advantages(batch.sequence_rewards, lengths, batch.group_size)
    return broadcast_to_tokens(A, batch.loss_mask)


def gpg_method_advantages(batch: RolloutBatch, *, count: str = "nonzero_reward"):
    """`gpg_advantages` (verl's α = B / #nonzero rewards) on every trained token."""
    A = gpg_advantages(batch.sequence_rewards, batch.group_size, count=count)
    return broadcast_to_tokens(A, batch.loss_mask)


def passk_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`passk_advantages` (best of the group, divided by σ_g + 1e-6) on its tokens."""
    A = passk_advantages(batch.sequence_rewards, batch.group_size)
    return broadcast_to_tokens(A, batch.loss_mask)


def remax_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`remax_advantages`: R_i − R(greedy completion of x_i), on every trained token.

    Reads `batch.greedy_rewards` (ValueError if absent: the method's
    `greedy_baseline` flag asks `policygrad.train.train` to fill it). `(B, T)`.
    """
    if batch.greedy_rewards is None:
        raise ValueError(
            "remax needs batch.greedy_rewards (the reward of each prompt's greedy "
            "completion); train() fills it for a method with greedy_baseline=True"
        )
    R = batch.sequence_rewards
    A = remax_advantages(R, batch.greedy_rewards.to(R.dtype))
    return broadcast_to_tokens(A, batch.loss_mask)


#: The epsilons of the registered `gdpo` (TRL's `normalize_then_sum`, both 1e-4).
GDPO_EPS = 1e-4


def gdpo_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`gdpo_advantages` over `batch.reward_components` (weights 1, ε = ε_batch =
    1e-4, sequence level, TRL's `normalize_then_sum`) on every trained token.

    Without components (a single-reward task) the one column is the return:
    group-normalised, then normalised over the batch. `(B, T)`.
    """
    comps = batch.reward_components
    if comps is None:
        comps = batch.sequence_rewards.unsqueeze(1)
    A = gdpo_advantages(comps, batch.group_size, eps=GDPO_EPS, batch_eps=GDPO_EPS)
    return broadcast_to_tokens(A, batch.loss_mask)


def optimal_token_baseline_method_advantages(batch: RolloutBatch) -> torch.Tensor:
    """`optimal_token_baseline_advantages` on the loss mask (zero tail on, ε = 1e-8).

    Reads `batch.old_log_probs` and `batch.sum_pi_squared` (ValueError if absent: the
    method's `needs_sum_pi_squared` flag asks `policygrad.train.train` to fill it).
    `(B, T)`.
    """
    if batch.sum_pi_squared is None:
        raise ValueError(
            "optimal_token_baseline needs batch.sum_pi_squared (Σ_v π_old(v | s_t)² "
            "per position); train() fills it for a method with "
            "needs_sum_pi_squared=True"
        )
    return optimal_token_baseline_advantages(
        batch.rewards,
        batch.loss_mask,
        batch.old_log_probs,
        batch.sum_pi_squared,
        batch.group_size,
    )


def _verl(estimator: str, group_size: int, pitfalls=(), **algo) -> Recipe:
    """The verl recipe of a reward-side variant: its estimator, the plain −A log π loss
    (`loss_mode=gpg`) summed over each sequence, no KL, one epoch."""
    settings = {
        "algorithm.adv_estimator": estimator,
        **{f"algorithm.{k}": v for k, v in algo.items()},
        "algorithm.use_kl_in_reward": False,
        "actor_rollout_ref.rollout.n": group_size,
        _ACTOR + "policy_loss.loss_mode": "gpg",
        _ACTOR + "loss_agg_mode": "seq-mean-token-sum",
        _ACTOR + "use_kl_loss": False,
        _ACTOR + "ppo_epochs": 1,
    }
    pitfalls = (
        *pitfalls,
        "policy_loss.loss_mode=gpg is the plain -log(pi)*A loss; the default vanilla "
        "(PPO clip) gives the same gradient only at ratio 1",
        "verl's default loss_agg_mode is token-mean, not seq-mean-token-sum",
    )
    return Recipe(
        "verl",
        "python -m verl.trainer.main_ppo",
        settings,
        (),
        pitfalls,
        (_VERL_RECIPES, _P + "test_reward_variants_parity.py::test_" + estimator),
    )


def _trl_luspo(**reward_side) -> dict:
    """GRPOTrainer settings of a reward-side variant: its reward-side settings, then
    `loss_type="luspo"` (each sequence's token sum, averaged over sequences: the
    package's `reinforce_loss`), no KL and one optimiser step per generation."""
    return {
        "num_generations": G,
        "loss_type": "luspo",
        **reward_side,
        "beta": 0.0,
        "num_iterations": 1,
        "steps_per_generation": 1,
        "gradient_accumulation_steps": 1,
        "importance_sampling_level": "token",
        "temperature": 1.0,
        "mask_truncated_completions": False,
    }


_WHITEN_DIFF = (
    "verl's masked_whiten multiplies by (var + 1e-8)^-1/2; the package divides by the "
    "standard deviation (a relative 1e-8/var)"
)
_TRL_RATIO_ONE = (
    "TRL's loss is the PPO-clip surrogate: with one update per batch (ratio 1) its "
    "gradient is the method's, its value is -mean(A), not -mean(A log pi)"
)
_NO_TRL = "no TRL trainer computes this advantage (GRPOTrainer: group mean and std; "
_NO_TRL_END = "RLOOTrainer: leave-one-out)"

G = VARIANT_GROUP_SIZE

register(
    Method(
        name="rloo",
        title=f"RLOO (leave-one-out baseline, group size {G})",
        advantages=rloo_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="ahmadian2024",
        why="the baseline of each completion is the mean reward of the other G-1 "
        "completions of its prompt: it does not depend on the sample, so the estimate "
        "stays unbiased, and it is per prompt, unlike the batch leave-one-out",
        unsolved="a group whose rewards are all equal gives no gradient (G samples "
        "spent on nothing); the variance still grows with the reward's scale (no "
        "normalisation)",
        trl=Recipe(
            "trl",
            "trl.RLOOTrainer",
            {
                "num_generations": G,
                "beta": 0.0,
                "normalize_advantages": False,
                "num_iterations": 1,
                "steps_per_generation": 1,
                "gradient_accumulation_steps": 1,
                "temperature": 1.0,
            },
            (
                "RLOOTrainer's loss is the sequence-level PPO-clip surrogate "
                "-min(r A, clip(r) A) with r the sequence ratio: at ratio 1 (one "
                "update per batch) its gradient is the method's, its value is "
                "-mean(A)",
            ),
            (
                "RLOOConfig's beta defaults to 0.05: it subtracts beta times the "
                "sequence's summed k1 KL from the reward before the leave-one-out",
                "normalize_advantages=True would whiten the advantages over the batch "
                "(over sequences, eps 1e-4)",
            ),
            (
                _P + "test_trl.py::test_rloo_advantages_match_trl",
                _P + "test_trl.py::test_rloo_loss_matches_trl_sequence_ratio",
                _TRL_VARIANTS + "test_to_trl_rloo_builds_an_rloo_trainer",
            ),
        ),
        verl=_verl(
            "rloo",
            G,
            ("rloo keeps the raw reward of a group of one; rloo_vectorized gives 0",),
        ),
        section="sec-variants-rloo",
    )
)

register(
    dataclasses.replace(
        grpo(
            "dr_grpo",
            group_size=G,
            beta=0.0,
            scale=None,
            aggregation="seq-mean-token-sum-norm",
        ),
        title=f"Dr.GRPO (group mean, constant normaliser, group size {G})",
        changes=("reward", "trajectory"),
        paper="liu2025drgrpo",
        why="GRPO's two biases removed: no division by the group's std (no "
        "reweighting of prompts by difficulty; the reward side), and every sequence's "
        "token sum divided by one constant instead of by its own length |o_i| (no "
        "length bias; an aggregation choice, so the trajectory side changes too); PPO "
        "clip kept, no KL",
        unsolved="a group whose rewards are all equal still gives no gradient; the "
        "group mean includes the sample itself, so the update is (G-1)/G times "
        "RLOO's; the constant (here the padded width) sets the step size",
        section="sec-variants-std",
    )
)

register(
    Method(
        name="grpo_batch_std",
        title=f"Group mean, batch std (Lite PPO's normalisation, group size {G})",
        advantages=batch_std_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="liu2025litePPO",
        why="the group mean removes each prompt's difficulty from the reward; one "
        "standard deviation for the whole batch keeps the scale of the advantages "
        "bounded without reweighting prompts by their own spread as GRPO's group std "
        "does",
        unsolved="a group whose rewards are all equal gives no gradient; the batch "
        "std changes from batch to batch, so the step size does",
        trl=Recipe(
            "trl",
            "trl.GRPOTrainer",
            _trl_luspo(scale_rewards="batch"),
            (_TRL_RATIO_ONE,),
            (
                "loss_type='luspo' sums each sequence's tokens and averages over "
                "sequences (the method's seq-mean-token-sum); TRL logs a warning "
                "unless importance_sampling_level='sequence' (luspo's paper); the "
                "recipe keeps 'token'",
                "scale_rewards='batch' divides by the std of the raw rewards of the "
                "whole generation batch (all processes), plus 1e-4",
            ),
            (
                _TRL_VARIANTS + "test_batch_std_matches_trl",
                _P + "test_trl.py::test_grpo_loss_matches_trl",
            ),
        ),
        verl=Unsupported(
            "verl",
            "no adv_estimator divides the group-centred reward by the batch's reward "
            "std",
            "algorithm.adv_estimator=reinforce_plus_plus_baseline (group mean, then "
            "whitened over the batch's tokens, which also re-centres)",
        ),
        section="sec-variants-std",
    )
)

register(
    Method(
        name="reinforce_pp",
        title="REINFORCE++ (returns whitened over the batch)",
        advantages=reinforce_pp_method_advantages,
        loss=reinforce_loss,
        changes=("reward",),
        paper="hu2025reinforcepp",
        why="no critic and no group: whitening the returns over every token of the "
        "batch gives a baseline (the batch mean) and a bounded scale, with one sample "
        "per prompt",
        unsolved="one baseline for all prompts (an easy prompt's success and a hard "
        "prompt's failure are compared with the same mean); the mean is over tokens, "
        "so long completions weigh more; the mean includes the sample itself",
        trl=Unsupported(
            "trl",
            _NO_TRL + _NO_TRL_END,
            "trl.RLOOTrainer with normalize_advantages=True (leave-one-out, then "
            "whitened over sequences)",
        ),
        verl=dataclasses.replace(
            _verl("reinforce_plus_plus", 1, gamma=1.0),
            differences=(_WHITEN_DIFF,),
        ),
        section="sec-variants-whitening",
    )
)

register(
    Method(
        name="reinforce_pp_baseline",
        title=f"REINFORCE++-baseline (group mean, then batch whitening, G = {G})",
        advantages=reinforce_pp_baseline_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="hu2025reinforcepp",
        why="the group mean removes each prompt's difficulty; whitening over the "
        "batch's tokens then gives one scale for all prompts instead of GRPO's "
        "per-group std",
        unsolved="a group whose rewards are all equal gives no gradient; the "
        "whitening re-centres by a token-weighted mean, which shifts every advantage "
        "when lengths differ",
        trl=Unsupported(
            "trl",
            _NO_TRL + _NO_TRL_END,
            "trl.GRPOTrainer with scale_rewards='batch' (group mean, batch std of the "
            "raw rewards, no re-centring)",
        ),
        verl=dataclasses.replace(
            _verl("reinforce_plus_plus_baseline", G), differences=(_WHITEN_DIFF,)
        ),
        section="sec-variants-whitening",
    )
)

register(
    Method(
        name="opo",
        title=f"OPO (length-weighted group baseline, group size {G})",
        advantages=opo_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="hao2025opo",
        why="the variance-minimising constant baseline E[|grad log pi|^2 R] / "
        "E[|grad log pi|^2], with the squared score norm taken proportional to the "
        "completion's length: longer completions weigh more in the baseline",
        unsolved="the proportionality of score norm and length is an assumption; the "
        "baseline includes the sample itself; an all-equal group gives no gradient",
        trl=Unsupported("trl", _NO_TRL + _NO_TRL_END),
        verl=_verl("opo", G),
        section="sec-variants-baselines",
    )
)

register(
    Method(
        name="gpg",
        title=f"GPG (group mean, rescaled by alpha, group size {G})",
        advantages=gpg_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="chu2025gpg",
        why="the plain policy gradient with the group mean as baseline; alpha = B / "
        "(number of samples with a nonzero reward, verl's count) scales the batch mean "
        "back up when many samples carry no signal",
        unsolved="verl's count is of nonzero rewards, not of informative samples, so "
        "alpha depends on how the reward is shifted; an all-equal group gives no "
        "gradient",
        trl=Unsupported("trl", _NO_TRL + _NO_TRL_END),
        verl=_verl("gpg", G),
        section="sec-variants-gpg",
    )
)

register(
    Method(
        name="grpo_passk",
        title=f"Pass@k advantage (best of the group only, group size {G})",
        advantages=passk_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="tang2025passk",
        why="pass@G rewards a group by its best completion: the marginal value of "
        "each sample to the max is r_max - r_2nd for the best one and 0 for the "
        "others, so only the best is pushed up (divided by the group std, as verl)",
        unsolved="with binary rewards only a group with exactly one success gives a "
        "gradient; nothing pushes failures down",
        trl=Unsupported("trl", _NO_TRL + _NO_TRL_END),
        verl=_verl("grpo_passk", G, norm_adv_by_std_in_grpo=True),
        section="sec-variants-passk",
    )
)

register(
    Method(
        name="remax",
        title="ReMax (the greedy completion's reward as baseline)",
        advantages=remax_method_advantages,
        loss=reinforce_loss,
        group_size=1,
        greedy_baseline=True,
        changes=("reward",),
        paper="li2024remax",
        why="one sampled completion per prompt and the reward of the prompt's greedy "
        "completion as its baseline: a per-prompt baseline that does not depend on "
        "the sample, so the estimate stays unbiased, with no critic and no group",
        unsolved="each prompt costs a second (greedy) generation that is never trained "
        "on; the baseline is one completion's reward, so it is noisy, and it is a poor "
        "one where the greedy completion is atypical of the samples; when the sample "
        "equals the greedy completion (a sharp policy) the advantage is 0",
        trl=Unsupported(
            "trl",
            "no TRL trainer decodes a greedy completion per prompt for a baseline "
            "(GRPOTrainer: group mean and std; RLOOTrainer: leave-one-out)",
            "trl.RLOOTrainer (the leave-one-out mean of G samples as the baseline)",
        ),
        verl=dataclasses.replace(
            _verl(
                "remax",
                1,
                (
                    "with adv_estimator=remax verl's trainer decodes the greedy "
                    "baseline itself, one per prompt, and puts its summed reward in "
                    "batch['reward_baselines'] (verl/trainer/ppo/ray_trainer.py:"
                    "1493-1535); rollout.n > 1 repeats it over the n samples",
                ),
            ),
            parity=(
                _VERL_RECIPES,
                _P + "test_reward_variants_parity.py::test_remax",
            ),
        ),
        section="sec-variants-baselines",
    )
)

register(
    Method(
        name="gdpo",
        title=f"GDPO (each reward component normalised in its group, G = {G})",
        advantages=gdpo_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        changes=("reward",),
        paper="liu2026gdpo",
        why="with several reward components (correctness, format), GRPO on their sum "
        "lets the component with the larger spread decide the advantage and maps "
        "different combinations to the same number; normalising each component "
        "within its group before the (weighted) sum gives each its own say, and a "
        "last normalisation over the batch keeps the scale bounded",
        unsolved="a group constant in every component gives no gradient; the batch "
        "normalisation re-centres and rescales every advantage by the batch's "
        "statistics (the mean includes the sample); the component weights replace "
        "the reward's own scales, so those scales no longer matter",
        trl=Recipe(
            "trl",
            "trl.GRPOTrainer",
            _trl_luspo(multi_objective_aggregation="normalize_then_sum"),
            (_TRL_RATIO_ONE,),
            (
                "pass one reward function per component, in the order of "
                "task.reward_names (reward_funcs=[correct, format]); reward_weights "
                "defaults to all 1, the method's weights",
                "normalize_then_sum divides by nanstd + 1e-4 per component within "
                "the group, then by the batch's nanstd + 1e-4 (grpo_trainer.py:"
                "2790-2799); scale_rewards is not read there",
                "the default multi_objective_aggregation='sum_then_normalize' is GRPO "
                "on the weighted sum, not GDPO",
                "loss_type='luspo' sums each sequence's tokens and averages over "
                "sequences (the method's seq-mean-token-sum); TRL logs a warning "
                "unless importance_sampling_level='sequence'",
            ),
            (
                _TRL_VARIANTS + "test_to_trl_gdpo_builds_a_normalize_then_sum_trainer",
                _TRL_VARIANTS + "test_gdpo_normalize_then_sum_matches_trl",
            ),
        ),
        verl=Unsupported(
            "verl",
            "verl's gdpo whitens the weighted sum over the batch's tokens (each "
            "completion weighted by its length, masked_whiten) after a per-component "
            "GRPO with eps 1e-6, in float32 (core_algos.py:362-468); the method "
            "normalises over sequences with eps 1e-4 (TRL's normalize_then_sum)",
            "algorithm.adv_estimator=gdpo with algorithm.gdpo_reward_keys naming the "
            "components (gdpo_advantages(..., mask=loss_mask), compared in "
            "tests/parity/test_reward_variants_parity.py::test_gdpo)",
        ),
        section="sec-variants-gdpo",
    )
)

_otb = _verl(
    "optimal_token_baseline",
    G,
    (
        "actor.calculate_sum_pi_squared defaults to false, and verl's trainer then "
        "stops with an assertion (verl/trainer/ppo/ray_trainer.py:264-275)",
    ),
)

register(
    Method(
        name="optimal_token_baseline",
        title=f"Optimal token baseline (a baseline per step, group size {G})",
        advantages=optimal_token_baseline_method_advantages,
        loss=reinforce_loss,
        group_size=G,
        needs_sum_pi_squared=True,
        changes=("reward",),
        paper="li2026otb",
        why="the variance-minimising baseline E[|grad log p|^2 R] / E[|grad log p|^2] "
        "applied at every step: each token's baseline is the group's returns weighted "
        "by the cumulative squared score norm of their prefix, approximated from the "
        "forward pass alone by the logit-gradient norm 1 - 2 pi + sum pi^2",
        unsolved="the proxy ignores every layer below the logits; the baseline "
        "includes the sample's own return (not exactly unbiased); an all-equal group "
        "gives no gradient; the zero-tail rule gives the longest completion's last "
        "tokens their raw return",
        trl=Unsupported(
            "trl",
            "no TRL trainer computes a per-token baseline (GRPOTrainer and "
            "RLOOTrainer give one advantage per sequence) or reads sum pi^2",
        ),
        verl=dataclasses.replace(
            _otb,
            settings={**_otb.settings, _ACTOR + "calculate_sum_pi_squared": True},
            differences=(
                "verl computes in the batch's dtype (float32 in training); the "
                "package in float64",
                "verl keeps a group of one's return (no baseline); the package "
                "refuses a group of one",
            ),
            parity=(
                _VERL_RECIPES,
                _P + "test_reward_variants_parity.py::test_optimal_token_baseline",
            ),
        ),
        section="sec-variants-baselines",
    )
)
