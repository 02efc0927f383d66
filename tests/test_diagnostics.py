"""Tests for policygrad.diagnostics: error statistics of Monte Carlo gradient estimates."""

import math

import pytest
import torch

import policygrad as pg
from policygrad.diagnostics import collect_estimates, convergence, gradient_error_stats


def test_gradient_error_stats_on_constructed_estimates():
    exact = torch.tensor([3.0, 4.0])  # norm 5
    bias = torch.tensor([0.5, 0.0])
    noise = torch.tensor(
        [[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]
    )  # zero mean
    est = exact + bias + noise
    stats = gradient_error_stats(est, exact)
    assert set(stats) == {
        "bias_norm",
        "bias_se",
        "variance",
        "mse",
        "relative_error",
        "cosine",
    }
    assert stats["bias_norm"] == pytest.approx(0.5)
    variance = (1 + 1 + 4 + 4) / 3  # sum of squared deviations / (M - 1)
    assert stats["variance"] == pytest.approx(variance)
    assert stats["bias_se"] == pytest.approx(math.sqrt(variance / 4))
    mse = (
        0.25 + (1 + 1 + 4 + 4) / 4
    )  # ||bias||^2 + mean ||noise||^2 (cross terms cancel)
    assert stats["mse"] == pytest.approx(mse)
    assert stats["relative_error"] == pytest.approx(math.sqrt(mse) / 5)
    cos = [
        (3 * a + 4 * b) / (5 * math.hypot(a, b))
        for a, b in [(4.5, 4.0), (2.5, 4.0), (3.5, 6.0), (3.5, 2.0)]
    ]
    assert stats["cosine"] == pytest.approx(sum(cos) / 4)


def test_gradient_error_stats_exact_estimates_and_zero_gradient():
    exact = torch.tensor([1.0, -2.0, 2.0])
    stats = gradient_error_stats(exact.repeat(3, 1), exact)
    assert stats["bias_norm"] == 0 and stats["variance"] == 0 and stats["mse"] == 0
    assert stats["cosine"] == pytest.approx(1.0)
    assert stats["relative_error"] == 0
    flipped = gradient_error_stats(-exact.repeat(2, 1), exact)
    assert flipped["cosine"] == pytest.approx(-1.0) and flipped[
        "bias_norm"
    ] == pytest.approx(6.0)
    zero = gradient_error_stats(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
    assert math.isnan(zero["cosine"]) and zero["relative_error"] == float("inf")
    # an all-zero estimate counts as cosine 0
    mixed = gradient_error_stats(
        torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([1.0, 0.0])
    )
    assert mixed["cosine"] == pytest.approx(0.5)


def test_gradient_error_stats_validation():
    with pytest.raises(ValueError, match="disagree"):
        gradient_error_stats(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="at least 2"):
        gradient_error_stats(torch.zeros(1, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="dimension"):
        gradient_error_stats(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="dimension"):
        gradient_error_stats(torch.zeros(2, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="NaN"):
        gradient_error_stats(
            torch.tensor([[0.0, float("nan")], [0.0, 0.0]]), torch.zeros(2)
        )
    with pytest.raises(ValueError, match="NaN"):
        gradient_error_stats(torch.zeros(2, 2), torch.tensor([float("inf"), 0.0]))


def _noisy(exact):
    def fn(n, g):
        return exact + torch.randn(
            exact.shape, generator=g, dtype=torch.float64
        ) / math.sqrt(n)

    return fn


def test_collect_estimates_is_deterministic_and_independent_per_trial():
    exact = torch.zeros(4, dtype=torch.float64)
    a = collect_estimates(_noisy(exact), 5, 6, seed=1)
    b = collect_estimates(_noisy(exact), 5, 6, seed=1)
    c = collect_estimates(_noisy(exact), 5, 6, seed=2)
    assert a.shape == (6, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 6  # every trial has its own stream
    calls = []
    collect_estimates(
        lambda n, g: calls.append((n, type(g))) or torch.zeros(2, 2), 7, 3
    )
    assert calls == [(7, torch.Generator)] * 3
    with pytest.raises(ValueError, match="n must be"):
        collect_estimates(_noisy(exact), 0, 3)
    with pytest.raises(ValueError, match="trials"):
        collect_estimates(_noisy(exact), 2, 0)


def test_collect_estimates_flattens_and_detaches():
    w = torch.ones(2, 3, requires_grad=True)
    out = collect_estimates(lambda n, g: w * n, 2, 3)
    assert out.shape == (3, 6) and not out.requires_grad


def test_variance_statistic_matches_known_noise_level():
    """Gaussian noise of covariance I/n in P dims: E[variance] = P/n, Var = 2P/(n^2 (M-1)); CLT tolerance 4 sd."""
    P, M = 5, 400
    exact = torch.arange(P, dtype=torch.float64)
    for n in (1, 4, 16):
        stats = gradient_error_stats(
            collect_estimates(_noisy(exact), n, M, seed=3), exact
        )
        sd = math.sqrt(2 * P / (n**2 * (M - 1)))
        assert abs(stats["variance"] - P / n) < 4 * sd
        assert stats["bias_norm"] < 3 * math.sqrt(P / (n * M))


def test_convergence_rows():
    exact = torch.tensor([1.0, 2.0], dtype=torch.float64)
    rows = convergence(_noisy(exact), exact, ns=[1, 10, 100], trials=20, seed=4)
    assert [r["n"] for r in rows] == [1, 10, 100]
    for r, n in zip(rows, [1, 10, 100], strict=True):
        direct = gradient_error_stats(
            collect_estimates(_noisy(exact), n, 20, seed=4), exact
        )
        assert {k: v for k, v in r.items() if k != "n"} == direct
    assert rows[0]["mse"] > rows[1]["mse"] > rows[2]["mse"]
    with pytest.raises(ValueError, match="ns"):
        convergence(_noisy(exact), exact, ns=[])


def test_convergence_on_a_real_estimator():
    """REINFORCE on a bandit: the variance statistic matches trCov / n within 4 exact standard deviations.

    With X = g - E[g] for one sample (covariance C, m4 = E||X||^4) and Y the mean of n samples,
    E||Y||^4 = (m4 + (n-1)(tr(C)^2 + 2 tr(C^2))) / n^3 and, for the unbiased trace-of-sample-covariance S of
    M estimates, Var(S) = (E||Y||^4 - tr(C_Y)^2 - 2 tr(C_Y^2)) / M + 2 tr(C_Y^2) / (M - 1), C_Y = C / n.
    """
    prob = pg.toy.contextual_bandit(2, 3, seed=1)
    pol = pg.TabularPolicy(
        2, 3, 1, init_scale=1.0, generator=torch.Generator().manual_seed(0)
    )
    mean, tr_cov = prob.estimator_moments(pol, prob.returns())
    g = (
        prob.per_sample_gradients(pol, prob.returns())
        .double()
        .reshape(-1, mean.numel())
    )
    w = (prob.prompt_probs.unsqueeze(1) * prob.probs(pol)).detach().double().reshape(-1)
    X = g - mean.double()
    C = (w.unsqueeze(1) * X).T @ X
    assert torch.trace(C).item() == pytest.approx(tr_cov, rel=1e-5)
    m4 = (w * (X**2).sum(1) ** 2).sum().item()
    tr, tr2 = torch.trace(C).item(), torch.trace(C @ C).item()

    def estimate(n, g):
        prompts = prob.sample_prompts(n, g)
        s = pol.sample(prompts, generator=g)
        w = pg.reward_side.reinforce_weights(
            prob.rewards_for(prompts, s.completions), s.mask
        )
        return pg.trajectory_side.score_function_gradient(pol, s, w)

    M = 200
    rows = convergence(estimate, prob.gradient(pol), ns=[1, 4, 64], trials=M)
    for r in rows:
        n = r["n"]
        y4 = (m4 + (n - 1) * (tr**2 + 2 * tr2)) / n**3
        var_s = (y4 - (tr / n) ** 2 - 2 * tr2 / n**2) / M + 2 * tr2 / n**2 / (M - 1)
        assert abs(r["variance"] - tr / n) < 4 * math.sqrt(var_s)
        assert (
            4 * math.sqrt(var_s) < 0.5 * tr / n
        )  # the tolerance is tight enough to see a wrong 1/n scale
        assert r["bias_norm"] < 3 * math.sqrt(tr / (n * M))


def _binomial_pmf(n, p):
    from math import comb

    return [comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]


def test_prompt_value_share_is_unbiased_by_enumeration():
    """E[var_value] and E[var_reward] over every outcome equal the true values."""
    from itertools import product

    from policygrad.diagnostics import prompt_value_share

    probs, g = [0.2, 0.7, 0.9], 3
    pmfs = [_binomial_pmf(g, p) for p in probs]
    e_value = e_reward = 0.0
    for ks in product(range(g + 1), repeat=len(probs)):
        weight = 1.0
        for pmf, k in zip(pmfs, ks, strict=True):
            weight *= pmf[k]
        rewards = torch.tensor([[1.0] * k + [0.0] * (g - k) for k in ks])
        out = prompt_value_share(rewards)
        e_value += weight * out["var_value"]
        e_reward += weight * out["var_reward"]
    p = torch.tensor(probs, dtype=torch.float64)
    assert e_value == pytest.approx(float(p.var(unbiased=False)), abs=1e-12)
    p_bar = float(p.mean())
    assert e_reward == pytest.approx(p_bar * (1 - p_bar), abs=1e-12)


def test_prompt_value_share_edge_cases():
    from policygrad.diagnostics import prompt_value_share

    # prompts that are always right or always wrong: the prompt explains everything
    out = prompt_value_share(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert out["share"] == pytest.approx(1.0)
    assert math.isnan(prompt_value_share(torch.ones(3, 4))["share"])
    for bad in (torch.ones(1, 4), torch.ones(4, 1), torch.full((2, 2), 0.5)):
        with pytest.raises(ValueError):
            prompt_value_share(bad)


def test_exact_pass_at_k_matches_closed_form_and_sampling():
    """exact_pass_at_k is mean_x 1 - (1 - p_x)^k of the teacher-forced p_x, and agrees
    with sampled pass@k within 5 standard errors (a wrong k, e.g. pass@1 reported as
    pass@8, is off by > 20 of them on the warm start)."""
    task = pg.lm.tasks.make_task("addition")
    problems = task.eval_set(240)
    policy, _ = pg.load_warm_start("addition")
    q = pg.diagnostics.exact_pass_at_k(policy, task, problems, ks=(1, 8))
    p = pg.lm.tasks.success_probabilities(policy, task, problems).double()
    assert q[1] == pytest.approx(float(p.mean()), abs=1e-12)
    assert q[8] == pytest.approx(float((1 - (1 - p) ** 8).mean()), abs=1e-12)
    reps = 4  # 960 problem draws
    sampled = [
        pg.lm.tasks.evaluate(
            policy,
            task,
            problems,
            greedy=False,
            samples=8,
            generator=torch.Generator().manual_seed(r),
        )["pass_at_k"]
        for r in range(reps)
    ]
    per_problem = 1 - (1 - p) ** 8
    se = float((per_problem * (1 - per_problem)).sum().sqrt()) / (
        len(problems) * reps**0.5
    )
    assert abs(sum(sampled) / reps - q[8]) < 5 * se
    assert abs(q[1] - q[8]) > 20 * se


@pytest.mark.parametrize("ks", [(), (0,), "8", 3, (1.5,)])
def test_exact_pass_at_k_rejects_bad_ks(ks):
    task = pg.lm.tasks.make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    with pytest.raises(ValueError):
        pg.diagnostics.exact_pass_at_k(policy, task, task.eval_set(8), ks=ks)
