"""Parity of the reward-side variants with TRL 1.16 (written against 1.16.0): TRL's own code as the oracle.

The advantages come from a real ``GRPOTrainer._generate_and_score_completions`` on the tiny
float64 GPT-2 of ``test_trl.py`` (its fixtures and ``Recorder`` reward are reused: 4 prompts x
G = 4 sampled completions, one all-equal group, one low-spread group with std ~1e-3):

* ``scale_rewards="batch"`` (``trl/trainer/grpo_trainer.py:2774-2787``: group mean, the
  Bessel-corrected std of the whole batch's raw rewards, ``+ 1e-4``) = ``batch_std_advantages``
  (eps 1e-4), with the trainer built from ``to_trl("grpo_batch_std")``;
* ``multi_objective_aggregation="normalize_then_sum"`` (``grpo_trainer.py:2790-2799``: per reward
  function, group mean and ``nanstd + 1e-4``; weighted sum; then batch mean and ``nanstd + 1e-4``)
  = ``gdpo_advantages(eps=1e-4, batch_eps=1e-4)`` without a mask, with the one reward function
  of the shared trainer (K = 1; two components are compared with verl's GDPO in
  ``test_reward_variants_parity.py``);
* ``GRPOConfig(**to_trl("gdpo"))`` with two reward functions = the registered ``gdpo``'s
  advantages on the two components;
* ``RLOOConfig(**to_trl("rloo"))`` and ``GRPOConfig(**to_trl("dr_grpo"))`` build trainers whose advantages
  are ``rloo_advantages`` and ``dr_grpo_advantages``;
* ``trl.rewards.get_soft_overlong_punishment`` (``trl/rewards/other_rewards.py:83-138``) =
  ``overlong_penalty`` on every length from 0 to L_max + 3.

Tolerance ``atol = 1e-5`` for the advantages: TRL computes them in float32 (round-off ~1e-7 of
values of order 1); the overlong penalty is the same float64 arithmetic (``1e-12``).
"""

# ruff: noqa: F811  (the fixtures imported from test_trl are redefined as test arguments)

from __future__ import annotations

import torch
from _frameworks import require

trl = require("trl")

from test_trl import (  # noqa: E402  (the shared tiny model, tokenizer and reward)
    F64,
    PROMPTS,
    G,
    _generate,
    _trainer,
    adv_trainer,  # noqa: F401  (fixture)
    model_dir,  # noqa: F401  (fixture)
    recorder,  # noqa: F401  (fixture)
    tok,  # noqa: F401  (fixture)
)
from trl.rewards import get_soft_overlong_punishment  # noqa: E402

import policygrad as pg  # noqa: E402

ADV = {"rtol": 0.0, "atol": 1e-5}


def test_batch_std_matches_trl(model_dir, tok, tmp_path_factory, recorder):
    """A GRPOTrainer built from ``to_trl("grpo_batch_std")`` (with this test's G) computes
    ``batch_std_advantages``; it differs from GRPO's group std on the low-spread group."""
    settings = {**pg.methods.to_trl("grpo_batch_std"), "num_generations": G}
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        reward=recorder,
        per_device_train_batch_size=len(PROMPTS) * G,
        max_completion_length=6,
        **settings,
    )
    assert trainer.scale_rewards == "batch" and trainer.loss_type == "luspo"
    out, r = _generate(trainer, recorder)
    ours = pg.reward_side.batch_std_advantages(r, G)
    torch.testing.assert_close(out["advantages"].to(F64), ours, **ADV)
    assert bool((ours[G : 2 * G] == 0).all())
    group_std = pg.reward_side.group_advantages(r, G, eps=1e-4)
    assert float((group_std - ours).abs().max()) > 0.1


def test_gdpo_normalize_then_sum_matches_trl(adv_trainer, recorder, monkeypatch):
    """``normalize_then_sum`` with one reward function = ``gdpo_advantages`` on one component:
    group-normalised, then batch-normalised (sequence level, eps 1e-4 both times)."""
    monkeypatch.setattr(
        adv_trainer, "multi_objective_aggregation", "normalize_then_sum"
    )
    out, r = _generate(adv_trainer, recorder)
    ours = pg.reward_side.gdpo_advantages(r[:, None], G, eps=1e-4, batch_eps=1e-4)
    torch.testing.assert_close(out["advantages"].to(F64), ours, **ADV)
    # the batch normalisation changes GRPO's numbers
    grpo = pg.reward_side.group_advantages(r, G, eps=1e-4)
    assert float((grpo - ours).abs().max()) > 1e-2


def test_overlong_penalty_matches_trl():
    """Every length 0 .. L_max + 3, three caches (0: only the cut; L_max: a ramp from 0)."""
    L = 12
    for cache in (0, 4, L):
        trl_fn = get_soft_overlong_punishment(
            max_completion_len=L, soft_punish_cache=cache
        )
        lengths = list(range(L + 4))
        want = torch.tensor(trl_fn([[1] * n for n in lengths]), dtype=F64)
        got = pg.reward_side.overlong_penalty(
            torch.tensor(lengths, dtype=F64), L, cache
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_to_trl_rloo_builds_an_rloo_trainer(model_dir, tok, tmp_path_factory, recorder):
    """``RLOOConfig(**to_trl("rloo"))`` (with this test's G) builds, holds beta 0 and no
    normalisation, and its reward -> advantage code (rloo_trainer.py:1682-1699) = rloo_advantages."""
    settings = {**pg.methods.to_trl("rloo"), "num_generations": G}
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        rloo=True,
        reward=recorder,
        per_device_train_batch_size=len(PROMPTS) * G,
        max_completion_length=6,
        **settings,
    )
    assert trainer.beta == 0.0 and trainer.normalize_advantages is False
    out, r = _generate(trainer, recorder)
    ours = pg.reward_side.rloo_advantages(r, G)
    torch.testing.assert_close(out["advantages"].to(F64), ours, **ADV)


def test_to_trl_dr_grpo_builds_a_grpo_trainer(
    model_dir, tok, tmp_path_factory, recorder
):
    """``GRPOConfig(**to_trl("dr_grpo"))`` holds scale_rewards "none" and loss_type "dr_grpo"; its
    advantages (grpo_trainer.py:2786, no division) = dr_grpo_advantages."""
    settings = {**pg.methods.to_trl("dr_grpo"), "num_generations": G}
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        reward=recorder,
        per_device_train_batch_size=len(PROMPTS) * G,
        max_completion_length=6,
        **settings,
    )
    assert (
        trainer.scale_rewards == "none"
        and trainer.loss_type == "dr_grpo"
        and trainer.beta == 0.0
    )
    out, r = _generate(trainer, recorder)
    torch.testing.assert_close(
        out["advantages"].to(F64), pg.reward_side.dr_grpo_advantages(r, G), **ADV
    )


class _Parity:
    """A second reward function of the completion ids (0/1: odd length), recording what it gave."""

    __name__ = "parity_reward"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        out = [float(len(ids) % 2) for ids in completion_ids]
        self.calls.append(out)
        return out


def test_to_trl_gdpo_builds_a_normalize_then_sum_trainer(
    model_dir, tok, tmp_path_factory, recorder
):
    """``GRPOConfig(**to_trl("gdpo"))`` (with this test's G) and two reward functions: TRL's
    ``normalize_then_sum`` (grpo_trainer.py:2790-2799) = the registered method's advantages on
    a batch whose ``reward_components`` are the two functions' rewards (eps 1e-4 twice)."""
    settings = {**pg.methods.to_trl("gdpo"), "num_generations": G}
    second = _Parity()
    trainer = _trainer(
        model_dir,
        tok,
        tmp_path_factory,
        reward=[recorder, second],
        per_device_train_batch_size=len(PROMPTS) * G,
        max_completion_length=6,
        **settings,
    )
    assert trainer.multi_objective_aggregation == "normalize_then_sum"
    assert trainer.loss_type == "luspo" and trainer.beta == 0.0
    out, r = _generate(trainer, recorder)
    comps = torch.stack([r, torch.tensor(second.calls[-1], dtype=F64)], 1)
    assert float(comps[:, 1].std()) > 0.1  # the second component varies
    B = comps.shape[0]
    mask = torch.ones(B, 3, dtype=F64)
    batch = pg.RolloutBatch(
        prompts=torch.zeros(B, 1, dtype=torch.long),
        completions=torch.ones(B, 3, dtype=torch.long),
        mask=mask,
        loss_mask=mask,
        old_log_probs=torch.zeros(B, 3, dtype=F64),
        ref_log_probs=None,
        rewards=comps.sum(1),
        group_ids=torch.arange(B) // G,
        truncated=torch.zeros(B, dtype=torch.bool),
        reward_components=comps,
    )
    ours = pg.get_method("gdpo").advantages(batch)[:, 0]
    torch.testing.assert_close(out["advantages"].to(F64), ours, **ADV)
    # GRPO on the summed reward is a different estimator
    grpo = pg.reward_side.group_advantages(comps.sum(1), G, eps=1e-4)
    assert float((grpo - ours).abs().max()) > 1e-2
