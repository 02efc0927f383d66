"""The registered trajectory-side methods of chapter 9 (``policygrad.methods.trajectory_variants``).

Each is checked against the parts it is built from, computed by hand or by the part's own function: DAPO's
advantages are GRPO's of the reward plus the overlong punishment; CISPO's loss is the detached weight min(r, 5)
times the REINFORCE loss; the 80/20 loss is GRPO's with the advantages of the low-entropy tokens set to 0
(normaliser unchanged); the entropy bonus of ``policy_loss`` is -c times the token mean of H. Bad settings are
ValueErrors. The framework parity of the same methods is in tests/parity/test_trajectory_methods_trl.py and
test_verl_recipes.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import policygrad as pg
from policygrad.methods import get_method, policy_loss
from policygrad.methods import trajectory_variants as tv
from policygrad.rollout import RolloutBatch

F64 = torch.float64
CH09 = ["dapo", "cispo", "sapo", "clip_cov", "kl_cov", "grpo_high_entropy", "grpo_entropy_bonus",
        "grpo_adaptive_entropy"]  # fmt: skip


def _batch(G=4, groups=2, T=5, seed=0, entropies=True):
    g = torch.Generator().manual_seed(seed)
    B = G * groups
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    old = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.05
    logp = old + 0.3 * (2 * torch.rand(B, T, generator=g, dtype=F64) - 1)
    rewards = torch.randint(0, 2, (B,), generator=g).to(F64)
    rewards[:G] = torch.tensor([1.0, 0.0] * (G // 2), dtype=F64)
    batch = RolloutBatch(
        prompts=torch.zeros(B, 2, dtype=torch.long), completions=torch.ones(B, T, dtype=torch.long),
        mask=mask, loss_mask=mask, old_log_probs=old, ref_log_probs=None, rewards=rewards,
        group_ids=torch.arange(B) // G, truncated=torch.zeros(B, dtype=torch.bool),
        entropies=2 * torch.rand(B, T, generator=g, dtype=F64) * mask if entropies else None,
    )  # fmt: skip
    return batch, logp


def test_the_chapter_9_methods_are_registered_with_their_sections_and_no_kl():
    for name in CH09:
        m = get_method(name)
        assert m.section.startswith("sec-trajvar") and not m.needs_reference and m.extra["beta"] == 0.0
        assert "trajectory" in m.changes and m.group_size == 8


def test_dapo_advantages_are_grpos_of_the_reward_plus_the_overlong_punishment():
    batch, _ = _batch(T=10)
    A = tv.dapo_advantages(batch, overlong_fraction=0.2)
    lengths = batch.mask.sum(-1)
    # L_max = 10, L_cache = 2: 0 up to 8 tokens, -0.5 at 9, -1 at 10 (by hand)
    by_hand = torch.where(lengths <= 8, 0.0, (8 - lengths) / 2)
    shaped = dataclasses.replace(batch, rewards=batch.rewards + by_hand)
    torch.testing.assert_close(A, pg.methods.grpo_advantages(shaped), rtol=0, atol=0)
    assert bool((by_hand != 0).any())
    # fraction 0: no punishment at all
    torch.testing.assert_close(tv.dapo_advantages(batch, overlong_fraction=0.0), pg.methods.grpo_advantages(batch))
    m = get_method("dapo")
    assert (m.extra["eps"], m.extra["eps_high"], m.extra["aggregation"]) == (0.2, 0.28, "token-mean")
    assert m.dynamic_sampling and m.mask_truncated


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.2"])
def test_dapo_refuses_a_bad_overlong_fraction(bad):
    batch, _ = _batch()
    with pytest.raises(ValueError, match="overlong_fraction"):
        tv.dapo_advantages(batch, overlong_fraction=bad)


def test_dapo_refuses_per_step_rewards():
    batch, _ = _batch()
    step = dataclasses.replace(batch, rewards=batch.mask * 0.1)
    with pytest.raises(ValueError, match="outcome reward"):
        tv.dapo_advantages(step)


def test_cispo_loss_is_the_detached_weight_min_r_5_times_reinforce_token_mean():
    batch, logp = _batch()
    logp = logp.clone()
    logp[1, 0] = batch.old_log_probs[1, 0] + 2.0  # ratio e^2 > 5: capped
    logp.requires_grad_(True)
    m = get_method("cispo")
    A = m.advantages(batch)
    loss, _ = m.loss(logp, batch, A)
    (g,) = torch.autograd.grad(loss, logp)
    w = torch.clamp((logp.detach() - batch.old_log_probs).exp(), max=5.0) * batch.mask
    n = batch.mask.sum()
    torch.testing.assert_close(g, -(w * A) / n)
    assert float(w[1, 0]) == 5.0


def test_the_80_20_loss_is_grpos_with_low_entropy_advantages_zeroed_and_the_full_normaliser():
    batch, logp = _batch(groups=3)
    logp.requires_grad_(True)
    m = get_method("grpo_high_entropy")
    A = m.advantages(batch)
    loss, stats = m.loss(logp, batch, A)
    keep = pg.trajectory_side.high_entropy_token_mask(batch.entropies, batch.loss_mask, 0.2)
    ref, _ = pg.methods.grpo_loss(logp, batch, A * keep, beta=0.0, aggregation="token-mean")
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    assert stats["kept_frac"] == pytest.approx(float(keep.sum() / batch.mask.sum()))
    assert 0 < stats["kept_frac"] < 0.5
    (g,) = torch.autograd.grad(loss, logp)
    assert bool((g[batch.mask.bool() & ~keep] == 0).all()) and bool((g[keep] != 0).any())


def test_the_80_20_loss_needs_the_batchs_entropies():
    batch, logp = _batch(entropies=False)
    m = get_method("grpo_high_entropy")
    with pytest.raises(ValueError, match="entropies"):
        m.loss(logp, batch, m.advantages(batch))


def test_policy_loss_adds_minus_c_times_the_token_mean_entropy():
    batch, logp = _batch()
    H = (1.5 * batch.mask + 9e9 * (1 - batch.mask)).requires_grad_(True)  # garbage on padding
    m = get_method("grpo_entropy_bonus")
    A = m.advantages(batch)
    base, _ = m.loss(logp, batch, A)
    total, stats = policy_loss(m, logp, batch, A, entropy=H)
    n = float(batch.mask.sum())
    assert float((total - base).detach()) == pytest.approx(-0.01 * 1.5, rel=1e-12)
    assert stats["entropy_coef"] == 0.01 and stats["entropy_bonus"] == pytest.approx(-0.015, rel=1e-12)
    (gH,) = torch.autograd.grad(total, H)
    torch.testing.assert_close(gH, -0.01 / n * batch.mask)
    # an override (the adaptive controller's coefficient), and no entropy: a ValueError that says so
    total2, _ = policy_loss(m, logp, batch, A, entropy=H, entropy_coef=0.5)
    assert float((total2 - base).detach()) == pytest.approx(-0.75, rel=1e-12)
    with pytest.raises(ValueError, match="entropy bonus"):
        policy_loss(m, logp, batch, A)
    # a method without a bonus ignores it
    plain = get_method("cispo")
    assert torch.equal(policy_loss(plain, logp, batch, A)[0], plain.loss(logp, batch, A)[0])


@pytest.mark.parametrize("kw, match", [
    ({"entropy_coef": -0.1}, "entropy_coef"), ({"entropy_coef": float("inf")}, "entropy_coef"),
    ({"entropy_coef": True}, "entropy_coef"), ({"adaptive_entropy": {"target": -1.0}}, "target"),
    ({"adaptive_entropy": {"no_such": 1}}, "adaptive_entropy"), ({"adaptive_entropy": [0.2]}, "adaptive_entropy"),
    ({"needs_entropy": 1}, "needs_entropy"),
])  # fmt: skip
def test_bad_entropy_settings_of_a_method_are_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(get_method("grpo"), **kw)


@pytest.mark.parametrize("bad", [1.0, 0.5, True])
def test_cispo_refuses_a_cap_of_at_most_1(bad):
    with pytest.raises(ValueError, match="eps_max"):
        tv.cispo(eps_max=bad)


def test_train_gives_an_80_20_method_the_sampling_policys_entropies():
    """train fills batch.entropies with token_entropy of the forward that gives old_log_probs."""
    task = pg.lm.tasks.make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    seen = []
    m = get_method("grpo_high_entropy")

    def spy(logp, batch, adv):
        seen.append(batch)
        return m.loss(logp, batch, adv)

    spied = dataclasses.replace(m, loss=spy)
    pg.train.train(policy, task, spied, steps=1, prompts_per_step=2, eval_every=None, seed=0, lr=1e-9)
    (batch,) = seen  # one batch, one optimiser step of lr 1e-9: the policy is the sampler to ~1e-9
    with torch.no_grad():
        logits = policy(batch.prompts, batch.completions, group_size=8)
    ent = pg.trajectory_side.token_entropy(logits)
    on = batch.mask.bool()
    torch.testing.assert_close(batch.entropies[on], ent[on].to(batch.entropies.dtype), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("builder, kw, match", [
    (tv.dapo, {"overlong_fraction": 2.0}, "overlong_fraction"), (tv.dapo, {"overlong_factor": -1.0}, "overlong_factor"),
    (tv.dapo, {"eps_high": 1.0}, "eps_high"), (tv.dapo, {"group_size": 1}, "group_size"),
    (tv.sapo, {"tau_pos": 0.0}, "tau_pos"), (tv.sapo, {"tau_neg": float("nan")}, "tau_neg"),
    (tv.clip_cov, {"ratio": 0.0}, "ratio"), (tv.clip_cov, {"lb": 5.0, "ub": 1.0}, "lb must be < ub"),
    (tv.kl_cov, {"coef": -1.0}, "coef"), (tv.kl_cov, {"ratio": 2.0}, "ratio"),
    (tv.high_entropy, {"top_fraction": 1.5}, "top_fraction"),
    (tv.entropy_bonus, {"coef": -1.0}, "entropy_coef"), (tv.entropy_bonus, {"adaptive": {"target": "x"}}, "target"),
])  # fmt: skip
def test_the_builders_refuse_bad_settings_when_the_method_is_built(builder, kw, match):
    """At construction, not at the first training step."""
    with pytest.raises(ValueError, match=match):
        builder(**kw)
