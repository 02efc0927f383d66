"""GSPO-token and GMPO (``policygrad.trajectory_side.sequence_ratios``) against verl 0.9.1 and TRL 1.16.

* ``gspo_token_loss`` vs ``compute_policy_loss_gspo`` (``verl/trainer/ppo/core_algos.py:1545-1619``): value and
  gradient over all five aggregations and two clip ranges (verl clamps log s at 10, the package at 20: the
  inputs keep |log s| < 2).
* ``gmpo_loss`` vs ``compute_policy_loss_geo_mean`` (``core_algos.py:1928-2011``), whose ``clip_ratio_low`` /
  ``clip_ratio_high`` are the log-space bounds; verl divides by |o_i| + 1e-8 (a relative 1e-8 here).
* GSPO at TRL's ``importance_sampling_level="sequence"`` (``grpo_trainer.py:3084-3095``, loss_type "grpo"):
  with one advantage per row it is ``gspo_token_loss`` with seq-mean-token-mean, in value and gradient.
Inputs: garbage on padding, ratios e^±1.6 per token, advantages of both signs (per token for verl, per row
for TRL), float64; the clips bind (asserted).
"""

from __future__ import annotations

import pytest
import torch
from _frameworks import require
from test_clips_parity import (
    MODES,
    B,
    T,
    actor_config,
    close,
    make_inputs,
    ours,
    trl_self,
    value_and_grad,
)

require("verl")
trl = require("trl")

from verl.trainer.ppo import core_algos  # noqa: E402

from policygrad.trajectory_side.sequence_ratios import gmpo_loss, gspo_token_loss  # noqa: E402


@pytest.fixture(scope="module")
def inp():
    return make_inputs(seed=11)


def verl_loss(fn, inp, mode, **cfg):
    def loss(logp):
        out, _ = fn(old_log_prob=inp.old, log_prob=logp, advantages=inp.adv, response_mask=inp.mask.bool(),
                    loss_agg_mode=mode, config=actor_config(loss_agg_mode=mode, **cfg))  # fmt: skip
        return out

    return value_and_grad(loss, inp.logp)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.05, 0.08)])
def test_gspo_token_matches_verl(inp, mode, eps):
    v_val, v_grad = verl_loss(core_algos.compute_policy_loss_gspo, inp, mode, clip_ratio_low=eps[0],
                              clip_ratio_high=eps[1])  # fmt: skip
    o_val, o_grad, stats = ours(gspo_token_loss, inp, eps_low=eps[0], eps_high=eps[1], aggregation=mode)
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert 0 < stats["clip_frac"] < 1  # the clip binds on some rows, not all


@pytest.mark.parametrize("bounds", [(0.4, 0.4), (0.2, 0.1)])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum"])  # verl ignores loss_agg_mode
def test_gmpo_matches_verls_geo_mean(inp, bounds, mode):
    v_val, v_grad = verl_loss(core_algos.compute_policy_loss_geo_mean, inp, mode, clip_ratio_low=bounds[0],
                              clip_ratio_high=bounds[1])  # fmt: skip
    o_val, o_grad, stats = ours(gmpo_loss, inp, clip_low=bounds[0], clip_high=bounds[1])
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert 0 < stats["clip_frac"] < 1


@pytest.mark.parametrize("eps_high", [0.2, 0.28])
def test_gspo_token_is_trls_sequence_level_gspo_for_row_advantages(eps_high):

    base = make_inputs(seed=5)
    real = base.mask.bool()
    zero = torch.zeros((), dtype=base.logp.dtype)
    # small log-ratios so that the sequence ratio s lies on both sides of the clip range
    old = torch.where(real, base.old, zero)
    logp = torch.where(real, old + 0.3 * (base.logp - base.old).clamp(-1, 1), zero)
    seq_adv = torch.randn(B, generator=torch.Generator().manual_seed(3), dtype=logp.dtype)

    def trl_side(x):
        me = trl_self("grpo", x, eps_low=0.2, eps_high=eps_high)
        me.importance_sampling_level = "sequence"  # GRPOTrainer.__init__ copies args.importance_sampling_level
        inputs = {
            "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": base.mask.long(),
            "advantages": seq_adv, "old_per_token_logps": old, "num_items_in_batch": base.mask.sum(),
        }  # fmt: skip
        return trl.GRPOTrainer._compute_loss(me, None, inputs)

    t_val, t_grad = value_and_grad(trl_side, logp)
    o_val, o_grad = value_and_grad(
        lambda x: gspo_token_loss(x, old, seq_adv, base.mask, eps_low=0.2, eps_high=eps_high)[0], logp
    )
    close(o_val, t_val)
    close(o_grad, t_grad)
    s = ((logp - old) * base.mask).sum(-1) / base.mask.sum(-1)
    outside = (s.exp() > 1 + eps_high) | (s.exp() < 0.8)  # the clip range of the sequence ratio
    assert bool(outside.any()) and bool((~outside).any())
