"""Tests for RLHF-style PPO: the critic method's reward side (GAE on KL-shaped rewards, value targets,
whitening), explained variance, the Method's critic fields, and train() with a critic.

Exact identities are checked by enumerating every (prompt, completion) pair of a small tabular problem in
float64 and weighting each row by its probability, so an expectation of the sampled estimator is a finite
sum. Each identity has a negative control that the same check rejects.
"""

from __future__ import annotations

import math

import pytest
import torch

import policygrad as pg
from policygrad.exact import ExactProblem
from policygrad.lm.tasks import make_task
from policygrad.lm.tinygpt import TinyGPTCritic
from policygrad.methods import (
    METHODS,
    Method,
    reinforce_advantages,
    reinforce_loss,
    rlhf_advantages,
    rlhf_gae,
    rlhf_ppo,
    rlhf_value_targets,
)
from policygrad.reward_side import explained_variance, gae, whiten
from policygrad.rollout import RolloutBatch
from policygrad.train import train

F64 = torch.float64


def _batch(old_logp, ref_logp, rewards, mask, values):
    B, T = old_logp.shape
    return RolloutBatch(
        prompts=torch.zeros(B, 1, dtype=torch.long),
        completions=torch.zeros(B, T, dtype=torch.long),
        mask=mask,
        loss_mask=mask,
        old_log_probs=old_logp * mask,
        ref_log_probs=None if ref_logp is None else ref_logp * mask,
        rewards=rewards,
        group_ids=torch.arange(B),
        truncated=torch.zeros(B, dtype=torch.bool),
        values=None if values is None else values * mask,
    )


# ---- hand-computed GAE on KL-shaped rewards --------------------------------------------------------------------

OLD = torch.tensor([[-0.5, -1.0, -0.2], [-0.3, -2.0, -9.0]], dtype=F64)
REF = torch.tensor([[-0.7, -0.4, -0.2], [-0.3, -1.0, -9.0]], dtype=F64)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
R = torch.tensor([1.0, 0.0], dtype=F64)
V = torch.tensor([[0.5, 0.6, 0.9], [0.2, 0.1, 7.0]], dtype=F64)  # 7.0 sits on padding and must not leak


def _by_hand(beta, gamma, lam):
    """Row by row, the textbook loops: r_t = R*[t last] - beta*(old - ref), delta_t, backward GAE."""
    out = torch.zeros(2, 3, dtype=F64)
    for i in range(2):
        n = int(MASK[i].sum())
        r = [-beta * float(OLD[i, t] - REF[i, t]) + (float(R[i]) if t == n - 1 else 0.0) for t in range(n)]
        v = [float(V[i, t]) for t in range(n)] + [0.0]  # terminal value 0
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        acc = 0.0
        for t in reversed(range(n)):
            acc = delta[t] + gamma * lam * acc
            out[i, t] = acc
    return out


@pytest.mark.parametrize("beta, gamma, lam", [(0.0, 1.0, 1.0), (0.1, 1.0, 0.95), (0.3, 0.9, 0.0), (0.05, 1.0, 0.5)])
def test_rlhf_gae_equals_the_textbook_loops(beta, gamma, lam):
    batch = _batch(OLD, REF, R, MASK, V)
    got = rlhf_gae(batch, beta=beta, gamma=gamma, lam=lam)
    torch.testing.assert_close(got, _by_hand(beta, gamma, lam), atol=1e-12, rtol=0)
    targets = rlhf_value_targets(batch, beta=beta, gamma=gamma, lam=lam)
    torch.testing.assert_close(targets, (_by_hand(beta, gamma, lam) + V) * MASK, atol=1e-12, rtol=0)


def test_rlhf_gae_with_lambda_one_and_no_kl_is_the_return_minus_the_value():
    got = rlhf_gae(_batch(OLD, REF, R, MASK, V), beta=0.0, lam=1.0)
    torch.testing.assert_close(got, (R.unsqueeze(1) - V) * MASK, atol=1e-12, rtol=0)
    # the KL does change it (negative control)
    assert (rlhf_gae(_batch(OLD, REF, R, MASK, V), beta=0.5, lam=1.0) - got).abs().max() > 0.1


def test_rlhf_advantages_are_whitened_over_trained_tokens_and_targets_are_not():
    batch = _batch(OLD, REF, R, MASK, V)
    adv = rlhf_advantages(batch)
    sel = MASK.bool()
    assert abs(float(adv[sel].mean())) < 1e-12 and float(adv[sel].std(unbiased=True)) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(adv, whiten(rlhf_gae(batch), MASK), atol=1e-12, rtol=0)
    raw = rlhf_advantages(batch, whiten_advantages=False)
    torch.testing.assert_close(raw, rlhf_gae(batch), atol=0, rtol=0)
    assert (adv[~sel] == 0).all()


def test_rlhf_reward_side_rejects_a_batch_without_values_or_reference():
    with pytest.raises(ValueError, match="needs a critic"):
        rlhf_gae(_batch(OLD, REF, R, MASK, None))
    with pytest.raises(ValueError, match="ref_log_probs"):
        rlhf_gae(_batch(OLD, None, R, MASK, V), beta=0.1)
    rlhf_gae(_batch(OLD, None, R, MASK, V), beta=0.0)  # no KL: no reference needed


# ---- exact identities on an enumerable problem ------------------------------------------------------------------


def _problem():
    comp, mask = pg.enumerate_completions(3, 3, eos=0)  # 15 completions of lengths 1..3
    R = torch.rand(2, comp.shape[0], generator=torch.Generator().manual_seed(7), dtype=F64)
    return ExactProblem(torch.arange(2), torch.tensor([0.3, 0.7], dtype=F64), comp, mask.to(F64), R)


def _tab(seed):
    return pg.TabularPolicy(2, 3, 3, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(seed)).double()


def _all_pairs_batch(prob, policy, reference, values):
    """Every (prompt, completion) pair as one batch row (row = prompt * K + completion)."""
    N, K, L = prob.num_prompts, prob.num_completions, prob.completions.shape[1]
    with torch.no_grad():
        old = prob.token_log_probs(policy).reshape(N * K, L)
        ref = prob.token_log_probs(reference).reshape(N * K, L)
    mask = prob.mask.repeat(N, 1)
    return _batch(old, ref, prob.returns().reshape(N * K), mask, values.reshape(N * K, L))


def _expected_gradient(prob, policy, weights):
    """E_{x~rho, y~p}[sum_t w_t grad log pi_t]: the expected gradient of the sampled surrogate."""
    N, K, L = prob.num_prompts, prob.num_completions, prob.completions.shape[1]
    mean, _ = prob.estimator_moments(policy, weights.reshape(N, K, L))
    return mean


def test_gae_with_the_exact_critic_is_unbiased_for_any_lambda_and_a_wrong_critic_is_not():
    prob, pol = _problem(), _tab(1)
    exact = prob.gradient(pol)
    V_exact = prob.values(pol)
    for lam in (0.0, 0.5, 1.0):
        batch = _all_pairs_batch(prob, pol, pol, V_exact)
        g = _expected_gradient(prob, pol, rlhf_gae(batch, beta=0.0, lam=lam))
        torch.testing.assert_close(g, exact, atol=1e-10, rtol=0)
    wrong = V_exact + 0.3 * prob.mask * torch.arange(3, dtype=F64)  # a critic off by a position-dependent amount
    batch = _all_pairs_batch(prob, pol, pol, wrong)
    g_biased = _expected_gradient(prob, pol, rlhf_gae(batch, beta=0.0, lam=0.5))
    assert (g_biased - exact).norm() > 1e-2 * exact.norm()  # bootstrapping from a wrong critic biases
    g_mc = _expected_gradient(prob, pol, rlhf_gae(batch, beta=0.0, lam=1.0))  # lambda = 1: the critic is a baseline
    torch.testing.assert_close(g_mc, exact, atol=1e-10, rtol=0)


def test_kl_in_the_reward_gives_the_gradient_of_J_minus_beta_kl():
    """E[grad log p(y) * (R - beta * sum_t k1_t)] = grad (J - beta KL(p || ref)), because E[grad log p] = 0."""
    prob, pol, ref = _problem(), _tab(1), _tab(2)
    beta = 0.4
    batch = _all_pairs_batch(prob, pol, ref, torch.zeros_like(prob.values(pol)))
    g = _expected_gradient(prob, pol, rlhf_gae(batch, beta=beta, lam=1.0))
    want = pg.exact.flat_grad(prob.objective(pol) - beta * prob.expected_kl(pol, ref), pg.exact.flat_params(pol))
    torch.testing.assert_close(g, want, atol=1e-10, rtol=0)
    # negative control: the k3 estimate in the reward is not the score of the KL
    g3 = _expected_gradient(prob, pol, rlhf_gae(batch, beta=beta, kl_kind="k3", lam=1.0))
    assert (g3 - want).norm() > 1e-3 * want.norm()


# ---- explained variance -------------------------------------------------------------------------------------------


def test_explained_variance_hand_values_and_edge_cases():
    G = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # targets over the mask: 1, 0, 0, 1 (var 0.25)
    assert explained_variance(G, G, m) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(G, 0.3), G, m) == pytest.approx(0.0, abs=1e-12)
    v = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.0]])  # residuals 0.5, -0.5, 0, 0.5: mean 1/8,
    assert explained_variance(v, G, m) == pytest.approx(1 - (0.75 / 4 - 1 / 64) / 0.25)  # var = 3/16 - 1/64
    assert explained_variance(-G, G, m) < 0  # worse than a constant
    assert explained_variance(G, torch.ones_like(G), m) == 0.0  # targets without variance: 0, not NaN
    assert explained_variance(G, G, torch.zeros_like(m)) == 0.0  # empty mask
    with pytest.raises(ValueError, match="targets must have the shape"):
        explained_variance(G, G[:, :2], m)
    with pytest.raises(ValueError, match="values contains"):
        explained_variance(G * float("nan"), G, m)


# ---- the Method and train() with a critic ---------------------------------------------------------------------------


def test_registered_rlhf_method_and_the_critic_fields():
    m = METHODS["ppo_rlhf"]
    assert m.needs_critic and m.needs_reference and set(m.changes) == {"reward", "trajectory"}
    assert not METHODS["ppo_clip"].needs_critic
    assert m.extra["beta"] == 0.05 and m.extra["lam"] == 0.95 and m.extra["value_clip"] == 0.2
    assert rlhf_ppo("x", beta=0.0).needs_reference is False
    with pytest.raises(ValueError, match="both value_targets and value_loss"):
        Method(name="half", title="", advantages=reinforce_advantages, loss=reinforce_loss, value_loss=lambda *a: 0)


def test_train_with_a_critic_records_its_metrics_and_trains_both_networks():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    critic = TinyGPTCritic.from_policy(policy)
    p0 = [p.detach().clone() for p in policy.parameters()]
    c0 = [p.detach().clone() for p in critic.parameters()]
    kw = {"steps": 3, "prompts_per_step": 8, "group_size": 2, "eval_every": None, "seed": 0, "lr": 1e-4}
    h = train(policy, task, "ppo_rlhf", critic=critic, critic_lr=1e-3, **kw)
    for r in h.rows:
        assert {"value_loss", "explained_variance", "clip_frac", "approx_kl", "kl_ref"} <= set(r)
        assert all(math.isfinite(v) for v in r.values())
        assert r["value_loss"] >= 0 and r["explained_variance"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(p0, policy.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(c0, critic.parameters(), strict=True))
    # step 1: the critic starts with a zero head, so its values are 0 and the targets' variance is unexplained
    assert h.rows[0]["explained_variance"] == pytest.approx(0.0, abs=1e-12)
    # deterministic given the seed, including the default critic (a copy of the starting policy)
    a, _ = pg.load_warm_start("addition")
    b, _ = pg.load_warm_start("addition")
    ha = train(a, task, "ppo_rlhf", critic=TinyGPTCritic.from_policy(a), critic_lr=1e-3, **kw)
    hb = train(b, task, "ppo_rlhf", critic_lr=1e-3, **kw)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in ha.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in hb.rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in h.rows]


def test_train_rejects_critic_misuse(tiny_gpt):
    task = make_task("addition")
    kw = {"steps": 1, "prompts_per_step": 4, "eval_every": None}
    with pytest.raises(ValueError, match="has no critic"):
        train(tiny_gpt(task), task, "reinforce", critic=TinyGPTCritic(tiny_gpt(task).config), **kw)
    with pytest.raises(ValueError, match="critic_lr"):
        train(tiny_gpt(task), task, "ppo_rlhf", critic_lr=0.0, **kw)
    with pytest.raises(ValueError, match="critic must be"):
        train(tiny_gpt(task), task, "ppo_rlhf", critic="value model", **kw)


def test_a_run_without_reward_has_no_signal_and_never_nans(tiny_gpt):
    """A fresh TinyGPT never solves addition: the only rewards are the KL penalties, 0 up to the round-off
    between the cached sampler and the teacher-forced reference (~1e-7 per token), so the critic's targets
    and loss stay at that level and every metric is finite."""
    task = make_task("addition")
    policy = tiny_gpt(task)
    h = train(policy, task, "ppo_rlhf", steps=2, prompts_per_step=8, eval_every=None, seed=0)
    for r in h.rows:
        assert r["reward"] == 0.0 and r["value_loss"] < 1e-4 and abs(r["kl_ref"]) < 1e-6
        assert all(math.isfinite(v) for v in r.values())


def test_gae_reference_helper_agrees_with_reward_side_gae():
    """rlhf_gae is reward_side.gae on the shaped rewards (no second implementation of the recursion)."""
    batch = _batch(OLD, REF, R, MASK, V)
    shaped = torch.zeros(2, 3, dtype=F64)
    shaped[0, 2], shaped[1, 1] = 1.0, 0.0
    shaped = shaped - 0.05 * (OLD - REF) * MASK
    torch.testing.assert_close(rlhf_gae(batch), gae(shaped, V * MASK, MASK, gamma=1.0, lam=0.95), atol=1e-12, rtol=0)
