"""Parity of the reward-side variants with verl 0.9 (written against 0.9.1): verl's own estimators as the oracle.

Each test feeds the same rewards, loss mask and group ids to a ``core_algos`` advantage estimator
(``verl/trainer/ppo/core_algos.py``) and to ``policygrad.reward_side.variants``, and compares the
``(B, T)`` advantages. The batch: 4 groups of G = 4 completions of unequal lengths (1 to 7 tokens,
right padding), the outcome reward on each completion's last token (as verl's reward manager puts
it), rewards in float64 with one all-equal group, one group with a single success (the pass@k
case) and one with a zero reward (GPG's count). Tolerances, with verl's epsilons:

* RLOO, OPO, pass@k, ReMax: the same arithmetic in float64, ``rtol = atol = 1e-12``; GPG too once
  verl's float32 alpha (``bsz / count_nonzero``, :811) is accounted for (else ``rtol = 1e-7``); pass@k
  divides by ``std + 1e-6`` in both (``core_algos.py:472`` default ``epsilon``).
* REINFORCE++ and REINFORCE++-baseline: verl's ``masked_whiten`` multiplies by
  ``rsqrt(var + 1e-8)`` (``utils/torch_functional.py:343``), the package divides by the std: a
  relative ``1e-8 / var`` difference, ``rtol = 1e-6``.
* Optimal token baseline: the same float64 arithmetic, ``1e-12``.
* DAPO's overlong penalty: ``DAPORewardManager`` itself (float32 reward tensor), ``atol = 1e-6``.
* GDPO: verl turns each component into float32 (``core_algos.py:430``) and whitens in float32:
  ``rtol = atol = 1e-5``; its per-component GRPO divides by ``std + 1e-6``.

Deliberate differences pinned here: a group of one keeps its raw reward in verl's ``rloo``,
``opo``, ``reinforce_plus_plus_baseline`` and ``gpg`` (mean 0); the package refuses it
(ValueError). verl's ``gpg`` counts the samples with a nonzero *reward*
(``core_algos.py:811``), which is not the number of informative samples
(``count="informative"``): ``test_gpg`` shows the two differ on this batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _frameworks import require

verl = require("verl")

from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402

from policygrad import reward_side as rs  # noqa: E402

F64 = torch.float64
G = 4
LENGTHS = torch.tensor([7, 3, 5, 1, 6, 7, 2, 4, 7, 5, 3, 6, 1, 4, 7, 2])
B, T = len(LENGTHS), int(LENGTHS.max())
EXACT = {"rtol": 1e-12, "atol": 1e-12}
WHITEN = {"rtol": 1e-6, "atol": 1e-9}
F32 = {"rtol": 1e-5, "atol": 1e-5}


def _inputs():
    mask = (torch.arange(T) < LENGTHS[:, None]).to(F64)
    rewards = torch.tensor(
        [1.0, 0.25, 0.75, 0.5]  # an ordinary spread, one zero-free group
        + [0.5, 0.5, 0.5, 0.5]  # all equal
        + [0.0, 1.0, 0.0, 0.0]  # one success (pass@k)
        + [1.3, -0.4, 0.0, 0.0],  # zero rewards and a negative one
        dtype=F64,
    )
    tokens = torch.zeros(B, T, dtype=F64)
    tokens[torch.arange(B), LENGTHS - 1] = rewards
    uid = np.array([f"p{i // G}" for i in range(B)], dtype=object)
    return rewards, mask, tokens, uid


def _tok(x, mask):
    return rs.broadcast_to_tokens(x, mask)


def test_rloo():
    """``compute_rloo_outcome_advantage`` (core_algos.py:588) and the vectorised one (:834)."""
    r, mask, tokens, uid = _inputs()
    ours = _tok(rs.rloo_advantages(r, G), mask)
    for fn in (
        core_algos.compute_rloo_outcome_advantage,
        core_algos.compute_rloo_vectorized_outcome_advantage,
    ):
        adv, _ = fn(
            token_level_rewards=tokens.clone(),
            response_mask=mask,
            index=uid,
            config=AlgoConfig(),
        )
        torch.testing.assert_close(ours, adv, **EXACT)
    assert bool((ours[G : 2 * G] == 0).all())


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_plus_plus(gamma):
    """``compute_reinforce_plus_plus_outcome_advantage`` (core_algos.py:694): discounted returns
    whitened over every trained token; the returns themselves are equal to round-off."""
    r, mask, tokens, _ = _inputs()
    adv, ret = core_algos.compute_reinforce_plus_plus_outcome_advantage(
        token_level_rewards=tokens.clone(),
        response_mask=mask,
        config=AlgoConfig(gamma=gamma),
    )
    ours = rs.reinforce_pp_advantages(r, mask, gamma=gamma)
    torch.testing.assert_close(ours, adv, **WHITEN)
    torch.testing.assert_close(
        rs.variants._discounted_returns(r, mask, gamma), ret, **EXACT
    )


def test_reinforce_plus_plus_baseline():
    """``compute_reinforce_plus_plus_baseline_outcome_advantage`` (core_algos.py:536)."""
    r, mask, tokens, uid = _inputs()
    adv, _ = core_algos.compute_reinforce_plus_plus_baseline_outcome_advantage(
        token_level_rewards=tokens.clone(),
        response_mask=mask,
        index=uid,
        config=AlgoConfig(),
    )
    torch.testing.assert_close(
        rs.reinforce_pp_baseline_advantages(r, G, mask), adv, **WHITEN
    )


def test_opo():
    """``compute_opo_outcome_advantage`` (core_algos.py:640): lengths = response_mask.sum(-1)."""
    r, mask, tokens, uid = _inputs()
    adv, _ = core_algos.compute_opo_outcome_advantage(
        token_level_rewards=tokens.clone(),
        response_mask=mask,
        index=uid,
        config=AlgoConfig(),
    )
    ours = _tok(rs.opo_advantages(r, mask.sum(-1), G), mask)
    torch.testing.assert_close(ours, adv, **EXACT)
    # not Dr.GRPO: the lengths differ, so the baseline does
    assert float((ours - _tok(rs.dr_grpo_advantages(r, G), mask)).abs().max()) > 0.05


def test_gpg():
    """``compute_gpg_outcome_advantage`` (core_algos.py:771): alpha = B / #nonzero rewards,
    f_norm 1. verl's count is not the paper's informative-sample count: pinned."""
    r, mask, tokens, uid = _inputs()
    adv, _ = core_algos.compute_gpg_outcome_advantage(
        token_level_rewards=tokens.clone(),
        response_mask=mask,
        index=uid,
        config=AlgoConfig(),
    )
    ours = _tok(rs.gpg_advantages(r, G), mask)
    # verl's alpha = bsz / count_nonzero(...) is a float32 tensor (int / int64 tensor gives the
    # default dtype): 16/11 rounded to float32, a relative 3e-8
    torch.testing.assert_close(ours, adv, rtol=1e-7, atol=1e-12)
    alpha32 = torch.tensor(B, dtype=torch.float32) / 11
    torch.testing.assert_close(ours * float(alpha32) / (B / 11), adv, **EXACT)
    nonzero = int(
        (r != 0).sum()
    )  # 16 - 5 = 11 (three zeros in group 3, two in group 4)
    assert nonzero == 11
    informative = rs.gpg_advantages(r, G, count="informative")  # 3 groups of 4 vary
    torch.testing.assert_close(
        _tok(informative, mask), ours * nonzero / (3 * G), **EXACT
    )
    assert nonzero != 3 * G


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_passk(norm):
    """``compute_grpo_passk_outcome_advantage`` (core_algos.py:472): only the best of each group,
    (r_max - r_2nd) / (std + 1e-6) with norm_adv_by_std_in_grpo (the default), else unscaled."""
    r, mask, tokens, uid = _inputs()
    adv, _ = core_algos.compute_grpo_passk_outcome_advantage(
        token_level_rewards=tokens.clone(),
        response_mask=mask,
        index=uid,
        config=AlgoConfig(norm_adv_by_std_in_grpo=norm),
    )
    ours = _tok(rs.passk_advantages(r, G, scale="std" if norm else None), mask)
    torch.testing.assert_close(ours, adv, **EXACT)
    assert int((ours.abs().sum(-1) > 0).sum()) == 3  # one row per non-constant group


def test_remax():
    """``compute_remax_outcome_advantage`` (core_algos.py:735) with the greedy rewards as
    ``reward_baselines``."""
    r, mask, tokens, _ = _inputs()
    greedy = torch.tensor([0.5, 0.5, 1.0, 0.0], dtype=F64).repeat_interleave(G)
    adv, _ = core_algos.compute_remax_outcome_advantage(
        token_level_rewards=tokens.clone(),
        reward_baselines=greedy,
        response_mask=mask,
        config=AlgoConfig(),
    )
    torch.testing.assert_close(_tok(rs.remax_advantages(r, greedy), mask), adv, **EXACT)


def test_gdpo():
    """``compute_gdpo_outcome_advantage`` (core_algos.py:362) with two reward components read from
    ``non_tensor_batch`` (``gdpo_reward_keys``) and weights: per component GRPO (eps 1e-6), weighted
    sum, ``masked_whiten`` over the tokens = ``gdpo_advantages(mask=...)``. float32 inside verl."""
    r, mask, tokens, uid = _inputs()
    fmt = torch.tensor([1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0], dtype=F64)
    comps = torch.stack([fmt, r], 1)
    weights = [0.5, 1.0]
    P = 3
    attention = torch.cat([torch.ones(B, P), mask.float()], 1).long()
    cfg = AlgoConfig(
        gdpo_reward_keys=["format", "correct"], gdpo_reward_weights=weights
    )
    adv, _ = core_algos.compute_gdpo_outcome_advantage(
        token_level_rewards=tokens.float(),
        response_mask=mask.float(),
        index=uid,
        config=cfg,
        non_tensor_batch={"format": fmt.numpy(), "correct": r.numpy()},
        batch={
            "prompts": torch.zeros(B, P, dtype=torch.long),
            "attention_mask": attention,
        },
    )
    ours = rs.gdpo_advantages(
        comps, G, weights=torch.tensor(weights, dtype=F64), mask=mask
    )
    torch.testing.assert_close(ours, adv.to(F64), **F32)
    # GRPO on the weighted sum is a different estimator
    summed = _tok(
        rs.group_advantages(comps @ torch.tensor(weights, dtype=F64), G), mask
    )
    assert float((rs.whiten(summed, mask) - ours).abs().max()) > 0.05


def _otb_inputs(seed: int = 0):
    """The batch above plus the optimal token baseline's inputs: old log-probs in (-2, 0) and
    sum pi^2 in [pi^2, 1] (what a softmax can give), 0 on padding."""
    r, mask, tokens, uid = _inputs()
    g = torch.Generator().manual_seed(seed)
    old = -2 * torch.rand(B, T, generator=g, dtype=F64) * mask
    pi2 = old.exp() ** 2
    spsq = (pi2 + (1 - pi2) * torch.rand(B, T, generator=g, dtype=F64)) * mask
    return r, mask, tokens, uid, old, spsq


@pytest.mark.parametrize("zero_tail", [True, False])
def test_optimal_token_baseline(zero_tail):
    """``compute_optimal_token_baseline_advantage`` (core_algos.py:872): w = 1 - 2 pi + sum pi^2,
    W = cumsum, per-step baseline sum R W / (sum W + 1e-8) within each group, the zero-tail rule.
    Outcome rewards, and per-step rewards (verl's token-level rewards are per step anyway). Every
    group of this batch has one longest row (7 tokens; the next are 5, 6, 6, 4), so the tail rule
    acts in each."""
    r, mask, tokens, uid, old, spsq = _otb_inputs()
    adv, ret = core_algos.compute_optimal_token_baseline_advantage(
        token_level_rewards=tokens.clone(),
        response_mask=mask,
        index=uid,
        old_log_probs=old,
        sum_pi_squared=spsq,
        handle_zero_tail=zero_tail,
    )
    ours = rs.optimal_token_baseline_advantages(
        r, mask, old, spsq, G, handle_zero_tail=zero_tail
    )
    torch.testing.assert_close(ours, adv, **EXACT)
    # per-step rewards: a reward on every token
    g = torch.Generator().manual_seed(3)
    step = torch.randn(B, T, generator=g, dtype=F64) * mask
    adv2, _ = core_algos.compute_optimal_token_baseline_advantage(
        token_level_rewards=step.clone(),
        response_mask=mask,
        index=uid,
        old_log_probs=old,
        sum_pi_squared=spsq,
        handle_zero_tail=zero_tail,
    )
    ours2 = rs.optimal_token_baseline_advantages(
        step, mask, old, spsq, G, handle_zero_tail=zero_tail
    )
    torch.testing.assert_close(ours2, adv2, **EXACT)
    # the zero tail changes something on this batch
    other = rs.optimal_token_baseline_advantages(
        r, mask, old, spsq, G, handle_zero_tail=not zero_tail
    )
    assert float((other - ours).abs().max()) > 1e-3


def test_optimal_token_baseline_is_not_the_group_mean():
    """With w = 1 everywhere (sum pi^2 = 2 pi) and equal lengths the baseline is the group mean
    at every step (verl agrees); with the real weights it is not."""
    r, mask, tokens, uid, old, spsq = _otb_inputs()
    full = torch.ones(B, T, dtype=F64)
    flat = 2 * old.exp()
    ours = rs.optimal_token_baseline_advantages(r, full, old, flat, G)
    tok_full = r.unsqueeze(1).expand(B, T).clone() * 0
    tok_full[:, -1] = r
    adv, _ = core_algos.compute_optimal_token_baseline_advantage(
        token_level_rewards=tok_full,
        response_mask=full,
        index=uid,
        old_log_probs=old,
        sum_pi_squared=flat,
    )
    torch.testing.assert_close(ours, adv, **EXACT)
    centred = (r - r.view(-1, G).mean(1).repeat_interleave(G)).unsqueeze(1).expand(B, T)
    torch.testing.assert_close(
        ours, centred, rtol=1e-7, atol=1e-7
    )  # eps 1e-8 in the denominator
    real = rs.optimal_token_baseline_advantages(r, full, old, spsq, G)
    assert float((real - centred).abs().max()) > 1e-2


class _NoText:
    """The tokenizer the DAPO reward manager decodes with (the score ignores the text)."""

    eos_token = "<eos>"

    def decode(self, ids, skip_special_tokens=True):
        return ""


@pytest.mark.parametrize("cache, factor", [(1, 1.0), (4, 1.0), (4, 0.5), (12, 1.0)])
def test_overlong_penalty_matches_verls_dapo_reward_manager(cache, factor):
    """``DAPORewardManager.__call__`` (verl/workers/reward_manager/dapo.py:121-129: exceed =
    length - (L_max - L_cache); reward += min(-exceed / L_cache * factor, 0)) run for real on a
    DataProto with a score of 0, every response length 1 .. L_max (verl's lengths never exceed
    L_max; it requires L_cache > 0). Its reward sits on the last response token, float32."""
    from types import SimpleNamespace

    from verl import DataProto
    from verl.workers.reward_manager.dapo import DAPORewardManager

    L, P = 12, 2
    lengths = torch.arange(1, L + 1)
    n = len(lengths)
    cfg = SimpleNamespace(enable=True, len=cache, penalty_factor=factor, log=False)
    manager = DAPORewardManager(
        tokenizer=_NoText(),
        num_examine=0,
        compute_score=lambda **kw: 0.0,
        max_resp_len=L,
        overlong_buffer_cfg=cfg,
    )
    response_mask = (torch.arange(L) < lengths[:, None]).long()
    data = DataProto.from_dict(
        tensors={
            "prompts": torch.ones(n, P, dtype=torch.long),
            "responses": torch.ones(n, L, dtype=torch.long),
            "attention_mask": torch.cat(
                [torch.ones(n, P, dtype=torch.long), response_mask], 1
            ),
        },
        non_tensors={
            "reward_model": np.array([{"ground_truth": ""}] * n, dtype=object),
            "data_source": np.array(["toy"] * n, dtype=object),
        },
    )
    reward = manager(data)
    assert bool(
        (reward[torch.arange(n), lengths - 1] == reward.sum(-1)).all()
    )  # on the last token
    ours = rs.overlong_penalty(lengths.to(F64), L, cache, factor=factor)
    torch.testing.assert_close(reward.sum(-1).to(F64), ours, rtol=0, atol=1e-6)
    assert (
        float(ours.min()) == -factor
        and float(ours[lengths <= L - cache].abs().sum()) == 0.0
    )
