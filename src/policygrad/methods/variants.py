"""The reward-side variants after GRPO as registered methods (chapter 8, planned).

Each pairs one advantage of `policygrad.reward_side.variants` with the plain REINFORCE
loss `reinforce_loss` (−(1/B) Σ_{i,t} m A log π, one update per batch), so it changes
only the reward side, what multiplies the score. Dr.GRPO is the exception: its
constant normaliser is an aggregation choice, so it is GRPO's loss (PPO clip, no KL)
with `seq-mean-token-sum-norm`. Not registered: ReMax (it needs a greedy completion per
prompt, which `policygrad.train.train` does not generate) and GDPO (it needs several
reward components per completion, which `RolloutBatch` does not carry); their
advantages are `remax_advantages` and `gdpo_advantages`.
"""

from __future__ import annotations

import dataclasses

import torch

from ..reward_side.returns import broadcast_to_tokens
from ..reward_side.variants import (
    batch_std_advantages,
    gpg_advantages,
    opo_advantages,
    passk_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
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
        section="",
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
        section="",
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
            {
                "num_generations": G,
                "loss_type": "luspo",
                "scale_rewards": "batch",
                "beta": 0.0,
                "num_iterations": 1,
                "steps_per_generation": 1,
                "gradient_accumulation_steps": 1,
                "importance_sampling_level": "token",
                "temperature": 1.0,
                "mask_truncated_completions": False,
            },
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
        section="",
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
        section="",
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
        section="",
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
        section="",
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
        section="",
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
        section="",
    )
)
