"""Parity of ``policygrad.trajectory_side.filters`` with verl 0.9 and TRL 1.16 (their functions as oracles).

verl (``core_algos`` is ``verl/trainer/ppo/core_algos.py``):

* Clip-Cov: ``compute_policy_loss_clip_cov`` (``core_algos.py:1744``) vs ``clip_cov_loss``: value,
  gradient w.r.t. the log-probs, and ``actor/pg_clipfrac`` vs ``cov_clip_frac``. verl picks its tokens with
  ``torch.randperm(len(top_k_idx))`` on torch's *global* RNG (``core_algos.py:1823``); the package takes a
  ``torch.Generator``. Both are CPU Mersenne twisters, so ``torch.manual_seed(s)`` before verl's call and
  ``generator=torch.Generator().manual_seed(s)`` draw the same permutation, over the same candidates in the
  same (row-major ``nonzero``) order: the selected tokens are identical, which the gradients show token by
  token (0 exactly on the selected ones).
* KL-Cov: ``compute_policy_loss_kl_cov`` (``core_algos.py:1849``) vs ``kl_cov_loss``: value, gradient, and
  ``actor/ppo_kl`` vs ``abs_kl``.
* The entropy bonus of the actor loss, ``policy_loss -= entropy_coeff * agg_loss(entropy, ...)``
  (``verl/workers/utils/losses.py:124-128``) vs ``entropy_bonus_loss``, for every aggregation.
* Defaults: ``PolicyLossConfig`` (``verl/workers/config/actor.py:95-99``) and ``FilterGroupsConfig``
  (``max_num_gen_batches = 0``: no limit, ``verl/trainer/config/algorithm.py:59``).

TRL (``trl/trainer/grpo_trainer.py``):

* ``GRPOTrainer.get_high_entropy_mask`` (line 1380), called unbound with a one-process accelerator, vs
  ``high_entropy_token_mask(..., top_fraction=ρ)`` with TRL's ``threshold = 1 - top_entropy_quantile``
  (line 3050): identical masks on float32 entropies, ties included.
* The adaptive entropy control's defaults (``grpo_config.py:876-907``) vs ``AdaptiveEntropyController``;
  ``mask_truncated_completions`` defaults to False (``grpo_config.py:836-837``).

Deliberate differences (see the docstrings): verl's Clip-Cov centres with ``masked_mean`` (denominator
n + 1e-8, ``verl/utils/torch_functional.py:308``), the package with n; verl's seq-mean aggregations called
without ``global_batch_size`` divide by the non-empty rows and ``seq-mean-token-mean`` adds 1e-8 per row
(``core_algos.py:1183-1201``), so the batch here has no empty row, and ``seq-mean-token-mean`` compares to
rtol 1e-7 (every other mode to 1e-12). TRL's
quantile is taken in float32 whatever the input dtype. Not comparable as functions: TRL's
``mask_truncated_completions`` (inline in ``_generate_and_score_completions``, ``grpo_trainer.py:2488-2492``),
its adaptive entropy update (inline in ``_compute_loss``, 3216-3239) and verl's dynamic sampling (the DAPO
recipe's trainer loop; the V1 ``ReplayBuffer`` needs a TransferQueue) are tested against hand values in
``tests/test_filters.py``.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from _frameworks import require

verl = require("verl")
trl = require("trl")

from verl.trainer.config.algorithm import FilterGroupsConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.config.actor import PolicyLossConfig  # noqa: E402

from policygrad.trajectory_side import filters as F  # noqa: E402

DT = torch.float64
B, T = 16, 40
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum")


def inputs(seed, scale=0.4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T) < lengths).to(DT)  # no empty row
    old = -2.5 + torch.randn(B, T, generator=g, dtype=DT)
    logp = old + scale * torch.randn(B, T, generator=g, dtype=DT)
    adv = 1.5 * torch.randn(B, T, generator=g, dtype=DT)
    # finite garbage on padding (verl multiplies by the mask)
    junk = 50 * torch.randn(B, T, generator=g, dtype=DT)
    real = mask.bool()
    return (
        torch.where(real, logp, -abs(junk)),
        torch.where(real, old, -abs(junk)),
        torch.where(real, adv, junk),
        mask,
    )


def actor_config(**policy_loss) -> ActorConfig:
    return ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=B,
        clip_ratio=0.2,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        policy_loss=PolicyLossConfig(**policy_loss),
    )


def tol(mode):
    # verl divides each row of seq-mean-token-mean by n_i + 1e-8: a relative 1e-8 on one-token rows
    return {"rtol": 1e-7, "atol": 1e-9} if mode == "seq-mean-token-mean" else {"rtol": 1e-12, "atol": 1e-12}


# ------------------------------------------------------------------------------------- Clip-Cov


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", MODES)
def test_clip_cov_matches_verl(seed, mode):
    logp, old, adv, mask = inputs(seed)
    opts = {"clip_cov_ratio": 0.02, "clip_cov_lb": 0.5, "clip_cov_ub": 4.0}
    x = logp.clone().requires_grad_()
    torch.manual_seed(100 + seed)
    v_loss, v_stats = core_algos.compute_policy_loss_clip_cov(old, x, adv, mask, mode, actor_config(**opts))
    (v_grad,) = torch.autograd.grad(v_loss, x)
    y = logp.clone().requires_grad_()
    loss, stats = F.clip_cov_loss(
        y, old, adv, mask, eps_low=0.2, eps_high=0.28, generator=torch.Generator().manual_seed(100 + seed),
        aggregation=mode, **opts,
    )
    (grad,) = torch.autograd.grad(loss, y)
    torch.testing.assert_close(loss, v_loss, **tol(mode))
    torch.testing.assert_close(grad, v_grad, **tol(mode))
    assert stats["cov_clip_frac"] == pytest.approx(v_stats["actor/pg_clipfrac"], rel=1e-6)
    sel = F.clip_cov_selection(
        logp, old, adv, mask, eps_low=0.2, eps_high=0.28, generator=torch.Generator().manual_seed(100 + seed), **opts
    )
    assert stats["n_cov_selected"] == int(sel.sum()) >= 1
    # the selected tokens are exactly those where verl's gradient vanishes, apart from PPO's clipped ones
    real = mask.bool()
    r = (logp - old).exp()
    clipped = (-adv * r.clamp(0.8, 1.28) > -adv * r) & real
    assert torch.equal((v_grad == 0) & real & ~clipped, sel)


def test_clip_cov_other_seeds_pick_other_tokens():
    """The match above is the shared RNG, not a coincidence: another seed changes verl's choice."""
    logp, old, adv, mask = inputs(0)
    opts = {"clip_cov_ratio": 0.02, "clip_cov_lb": 0.5, "clip_cov_ub": 4.0}
    x = logp.clone().requires_grad_()
    torch.manual_seed(7)
    v_loss, _ = core_algos.compute_policy_loss_clip_cov(old, x, adv, mask, "token-mean", actor_config(**opts))
    (v_grad,) = torch.autograd.grad(v_loss, x)
    sel = F.clip_cov_selection(logp, old, adv, mask, eps_high=0.28, generator=torch.Generator().manual_seed(8), **opts)
    r = (logp - old).exp()
    clipped = (-adv * r.clamp(0.8, 1.28) > -adv * r) & mask.bool()
    assert bool(sel.any()) and not torch.equal((v_grad == 0) & mask.bool() & ~clipped, sel)


def test_clip_cov_defaults_are_verls():
    cfg = PolicyLossConfig()
    assert (cfg.clip_cov_ratio, cfg.clip_cov_lb, cfg.clip_cov_ub, cfg.kl_cov_ratio, cfg.ppo_kl_coef) == (
        0.0002, 1.0, 5.0, 0.0002, 0.1,
    )
    import inspect

    d = {k: v.default for k, v in inspect.signature(F.clip_cov_loss).parameters.items()}
    assert (d["clip_cov_ratio"], d["clip_cov_lb"], d["clip_cov_ub"]) == (0.0002, 1.0, 5.0)
    d = {k: v.default for k, v in inspect.signature(F.kl_cov_loss).parameters.items()}
    assert (d["kl_cov_ratio"], d["kl_coef"]) == (0.0002, 0.1)


# ------------------------------------------------------------------------------------- KL-Cov


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio, coef", [(0.0002, 0.1), (0.05, 1.0)])
def test_kl_cov_matches_verl(seed, mode, ratio, coef):
    logp, old, adv, mask = inputs(seed)
    x = logp.clone().requires_grad_()
    cfg = actor_config(kl_cov_ratio=ratio, ppo_kl_coef=coef)
    v_loss, v_stats = core_algos.compute_policy_loss_kl_cov(old, x, adv, mask, mode, cfg)
    (v_grad,) = torch.autograd.grad(v_loss, x)
    y = logp.clone().requires_grad_()
    loss, stats = F.kl_cov_loss(y, old, adv, mask, kl_cov_ratio=ratio, kl_coef=coef, aggregation=mode)
    (grad,) = torch.autograd.grad(loss, y)
    torch.testing.assert_close(loss, v_loss, **tol(mode))
    torch.testing.assert_close(grad, v_grad, **tol(mode))
    assert stats["abs_kl"] == pytest.approx(v_stats["actor/ppo_kl"], rel=1e-6)
    assert stats["n_kl_selected"] == max(1, int(int(mask.sum()) * ratio))


# ------------------------------------------------------------------------------------- entropy bonus


@pytest.mark.parametrize("mode", MODES)
def test_entropy_bonus_matches_verl_actor_term(mode):
    g = torch.Generator().manual_seed(5)
    H = torch.rand(B, T, generator=g, dtype=DT) * 3
    _, _, _, mask = inputs(1)
    x = H.clone().requires_grad_()
    coef = 0.01
    verl_term = -coef * core_algos.agg_loss(loss_mat=x, loss_mask=mask, loss_agg_mode=mode)
    (vg,) = torch.autograd.grad(verl_term, x)
    y = H.clone().requires_grad_()
    ours = F.entropy_bonus_loss(y, mask, coef, mode)
    (og,) = torch.autograd.grad(ours, y)
    torch.testing.assert_close(ours, verl_term, **tol(mode))
    torch.testing.assert_close(og, vg, **tol(mode))


# ------------------------------------------------------------------------------------- TRL's 80/20 mask


def _trl_high_entropy_mask(entropies, mask, top_entropy_quantile):
    from trl.trainer.grpo_trainer import GRPOTrainer

    one_process = SimpleNamespace(
        accelerator=SimpleNamespace(pad_across_processes=lambda x, dim, pad_index: x, gather=lambda x: x)
    )
    return GRPOTrainer.get_high_entropy_mask(one_process, entropies, mask, 1 - top_entropy_quantile)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rho", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_high_entropy_mask_matches_trl(seed, rho):
    g = torch.Generator().manual_seed(seed)
    _, _, _, mask = inputs(seed)
    H = torch.rand(B, T, generator=g) * 4  # float32, as TRL's entropies
    if seed % 2:  # ties: entropies on a coarse grid
        H = (H * 2).round() / 2
    H = torch.where(mask.bool(), H, torch.full_like(H, 7.0))  # garbage above every real value
    trl_mask = _trl_high_entropy_mask(H, mask.long(), rho)
    ours = F.high_entropy_token_mask(H, mask, rho)
    assert torch.equal(ours, trl_mask)
    assert int(ours.sum()) >= 1


def test_high_entropy_mask_empty_matches_trl():
    H = torch.rand(3, 4)
    m = torch.zeros(3, 4, dtype=torch.long)
    assert torch.equal(F.high_entropy_token_mask(H, m, 0.2), _trl_high_entropy_mask(H, m, 0.2))


# ------------------------------------------------------------------------------------- defaults


def _defaults(cls):
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_trl_entropy_and_truncation_defaults():
    from trl import GRPOConfig

    d = _defaults(GRPOConfig)
    c = F.AdaptiveEntropyController()
    assert d["use_adaptive_entropy"] is False and d["mask_truncated_completions"] is False
    assert (d["entropy_coef"], d["entropy_target"], d["entropy_coef_delta"]) == (c.coef, c.target, c.delta)
    assert (d["entropy_coef_min"], d["entropy_coef_max"]) == (c.coef_min, c.coef_max)
    assert d["top_entropy_quantile"] == 1.0  # TRL's default: no filter (ours: the paper's 0.2)


def test_verl_filter_groups_defaults():
    d = _defaults(FilterGroupsConfig)
    assert d["enable"] is False and d["max_num_gen_batches"] == 0
    # max_batches=0 means no limit here too
    dead = torch.ones(4, dtype=DT)
    out = F.fill_informative([dead] * 30 + [torch.tensor([0.0, 1, 1, 1], dtype=DT)], 1, 2, max_batches=0)
    assert out.n_batches == 31
