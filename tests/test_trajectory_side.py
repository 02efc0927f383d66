"""Tests for policygrad.trajectory_side: the REINFORCE surrogate and the score-function gradient estimate.

The unbiasedness test draws ``M`` estimates, each from a batch of ``n`` trajectories, and compares their
mean :math:`\\bar g` with the exact gradient. For an unbiased estimator
:math:`\\mathbb E\\lVert\\bar g-\\nabla J\\rVert^2=\\mathrm{tr\\,Cov}[g]/(nM)` where :math:`\\mathrm{tr\\,Cov}[g]`
is the exact one-sample total variance from :meth:`ExactProblem.estimator_moments`. We require
:math:`\\lVert\\bar g-\\nabla J\\rVert<3\\sqrt{\\mathrm{tr\\,Cov}/(nM)}`: by Markov's inequality on the squared
norm an unbiased estimator violates it with probability at most 1/9, and by the CLT
(:math:`nM\\lVert\\bar g-\\nabla J\\rVert^2` is a weighted sum of :math:`\\chi^2_1` variables with weights summing
to tr Cov) at most :math:`P(\\chi^2_1>9)\\approx0.27\\%`. Seeds are fixed, so the outcome is deterministic.
The negative controls show that the same test rejects biased estimators.
"""

import pytest
import torch

import policygrad as pg
from policygrad.reward_side import reinforce_weights, returns_to_go
from policygrad.trajectory_side import pg_surrogate, score_function_gradient

N_BATCH, M_TRIALS = 200, 30


# -- pg_surrogate ------------------------------------------------------------------------------------------


def test_pg_surrogate_value_and_gradient_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -4.0]], requires_grad=True)
    w = torch.tensor([[2.0, 1.0, -1.0], [0.5, 3.0, 7.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    s = pg_surrogate(logp, w, m)
    want = ((2 * -1.0 + 1 * -2.0 + -1 * -0.5) + (0.5 * -0.1 + 3 * -3.0)) / 2
    assert s.item() == pytest.approx(want)
    s.backward()
    assert torch.allclose(logp.grad, m * w / 2)
    assert torch.equal(pg_surrogate(logp, w, m.bool()), s.detach())


def test_pg_surrogate_detaches_weights():
    logp = torch.randn(3, 2, requires_grad=True)
    w = torch.randn(3, 2, requires_grad=True)
    s = pg_surrogate(logp, w * 2, torch.ones(3, 2))
    s.backward()
    assert w.grad is None  # no gradient flows into the weights
    assert torch.allclose(logp.grad, (w * 2).detach() / 3)


def test_pg_surrogate_validation():
    logp = torch.zeros(2, 3, requires_grad=True)
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="weights must have the shape"):
        pg_surrogate(logp, torch.zeros(2, 2), m)
    with pytest.raises(ValueError, match="mask must have the shape"):
        pg_surrogate(logp, torch.zeros(2, 3), torch.ones(3, 2))
    empty = pg_surrogate(logp, torch.ones(2, 3), torch.zeros(2, 3))  # defined: 0 with a zero gradient
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        pg_surrogate(logp, torch.tensor([[0.0, float("nan"), 0.0]] * 2), m)
    with pytest.raises(ValueError, match="dimension"):
        pg_surrogate(torch.zeros(6), torch.zeros(6), torch.ones(6))


# -- score_function_gradient ---------------------------------------------------------------------------------


def _sequence_setup(reward="per_step"):
    prob, _ = pg.toy.target_sequence_task(2, 3, 2, reward=reward, seed=3)
    pol = pg.TabularPolicy(2, 3, 2, init_scale=1.0, generator=torch.Generator().manual_seed(1))
    return prob, pol


def _eos_setup():
    comp, mask = pg.enumerate_completions(3, 3, eos=0)
    R = torch.randn(2, comp.shape[0], generator=torch.Generator().manual_seed(4))
    prob = pg.ExactProblem(torch.arange(2), torch.tensor([0.4, 0.6]), comp, mask, R)
    pol = pg.TabularPolicy(2, 3, 3, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(2))
    return prob, pol


def _enumerated_weights(prob, weight_fn):
    """Apply ``weight_fn(prompts, completions, mask, rewards)`` to every (prompt, completion) pair: (N, K, L)."""
    N, K = prob.num_prompts, prob.num_completions
    prompts = torch.arange(N).repeat_interleave(K)
    comps = prob.completions.repeat(N, 1)
    mask = prob.mask.repeat(N, 1)
    rewards = prob.rewards_for(prompts, comps)
    return weight_fn(prompts, comps, mask, rewards).reshape(N, K, -1)


def _mc_mean(prob, pol, weight_fn, n=N_BATCH, trials=M_TRIALS, seed=0):
    def estimate(n, g):
        prompts = prob.sample_prompts(n, g)
        s = pol.sample(prompts, generator=g)
        w = weight_fn(s.prompts, s.completions, s.mask, prob.rewards_for(s.prompts, s.completions))
        return score_function_gradient(pol, s, w)

    return pg.diagnostics.collect_estimates(estimate, n, trials, seed).double().mean(0)


def _passes_unbiasedness_test(prob, pol, weight_fn):
    """The statistical test: ||mean of M estimates - grad J|| < 3 sqrt(trCov / (n M)), trCov exact."""
    _, tr_cov = prob.estimator_moments(pol, _enumerated_weights(prob, weight_fn))
    err = (_mc_mean(prob, pol, weight_fn) - prob.gradient(pol).double()).norm().item()
    bound = 3 * (tr_cov / (N_BATCH * M_TRIALS)) ** 0.5
    return err < bound, err, bound


def w_plain(prompts, comps, mask, rewards):
    return reinforce_weights(rewards, mask)


def w_const_baseline(prompts, comps, mask, rewards):
    return reinforce_weights(rewards, mask, baseline=0.5)


def w_reward_to_go(prompts, comps, mask, rewards):
    return reinforce_weights(rewards, mask, reward_to_go=True)


def w_prompt_baseline(prompts, comps, mask, rewards):
    return reinforce_weights(rewards, mask, baseline=torch.tensor([0.3, -0.2])[prompts])


def w_doubled(prompts, comps, mask, rewards):  # WRONG: twice the reward
    return reinforce_weights(2 * rewards, mask)


def w_action_baseline(prompts, comps, mask, rewards):  # WRONG: the baseline depends on the action y_t
    return reinforce_weights(rewards, mask, baseline=0.6 * (comps == 1).float())


def w_past_rewards(prompts, comps, mask, rewards):  # WRONG: rewards *before* t instead of reward-to-go
    total = reinforce_weights(rewards, mask)
    return (total - returns_to_go(rewards, mask) + rewards * mask) * mask


@pytest.mark.parametrize(
    "setup, weight_fn",
    [
        (_sequence_setup, w_plain),
        (_sequence_setup, w_const_baseline),
        (_sequence_setup, w_reward_to_go),
        (_sequence_setup, w_prompt_baseline),
        (_eos_setup, w_plain),
        (_eos_setup, w_prompt_baseline),
    ],
)
def test_score_function_gradient_is_unbiased(setup, weight_fn):
    prob, pol = setup()
    ok, err, bound = _passes_unbiasedness_test(prob, pol, weight_fn)
    assert ok, f"||mean - grad J|| = {err:.4g} >= {bound:.4g}"


@pytest.mark.parametrize(
    "setup, weight_fn",
    [
        (_sequence_setup, w_doubled),
        (_sequence_setup, w_action_baseline),
        (_sequence_setup, w_past_rewards),
        (_eos_setup, w_action_baseline),
    ],
)
def test_unbiasedness_test_rejects_biased_estimators(setup, weight_fn):
    """Negative control: the same test must fail for estimators whose exact mean is not grad J."""
    prob, pol = setup()
    mean, _ = prob.estimator_moments(pol, _enumerated_weights(prob, weight_fn))
    grad = prob.gradient(pol)
    assert (mean - grad).norm() > 0.3 * grad.norm()  # exactly biased ...
    ok, err, bound = _passes_unbiasedness_test(prob, pol, weight_fn)
    assert not ok, f"a biased estimator passed: {err:.4g} < {bound:.4g}"  # ... and the test sees it


@pytest.mark.parametrize("setup, weight_fn", [(_sequence_setup, w_reward_to_go), (_eos_setup, w_action_baseline)])
def test_score_function_gradient_is_the_mean_of_per_sample_gradients(setup, weight_fn):
    """Exact identity on one batch: the estimate is the average of the enumerated per-sample gradients."""
    prob, pol = setup()
    g = prob.per_sample_gradients(pol, _enumerated_weights(prob, weight_fn))  # (N, K, P)
    gen = torch.Generator().manual_seed(5)
    prompts = prob.sample_prompts(64, gen)
    s = pol.sample(prompts, generator=gen)
    w = weight_fn(s.prompts, s.completions, s.mask, prob.rewards_for(s.prompts, s.completions))
    est = score_function_gradient(pol, s, w)
    k = prob.completion_index(s.completions)
    assert est.shape == (sum(p.numel() for p in pol.parameters()),)
    assert torch.allclose(est, g[s.prompts, k].mean(0), atol=1e-6)
    assert est.norm() > 0.01
    assert pol.logits_table.grad is None  # the estimate does not touch .grad


def test_score_function_gradient_rejects_bad_weights():
    prob, pol = _sequence_setup()
    s = pol.sample(torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="weights"):
        score_function_gradient(pol, s, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        score_function_gradient(pol, s, torch.full((3, 2), float("nan")))
