"""Tests for chapter 3's critic helpers: policygrad.exact.critics and
policygrad.reward_side.critic_error, each against an exact quantity (a closed form, an
independent implementation in ExactProblem, or a hand value)."""

from __future__ import annotations

import itertools

import pytest
import torch

import policygrad as pg
from policygrad.exact import critics
from policygrad.reward_side import gae, gae_error_weights, n_step_error_weights


def _toy(reward="per_step", length=3, vocab=2, steps=0):
    problem, _ = pg.toy.target_sequence_task(
        num_prompts=2, vocab_size=vocab, length=length, reward=reward, seed=0
    )
    policy = pg.TabularPolicy(
        2, vocab, length, init_scale=1.0, generator=pg.make_generator(0)
    )
    if steps:
        pg.exact.ascend(policy, problem.objective, steps, lr=0.5)
    return problem, policy


@pytest.fixture(scope="module")
def toy():
    return _toy()


# -- how a critic's errors enter (closed forms) -----------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_gae_error_weights_match_the_closed_form(lam, gamma):
    T = 5
    C = gae_error_weights(T, lam, gamma)
    want = torch.zeros(T, T, dtype=torch.float64)
    for t in range(T):
        want[t, t] = -1.0
        for k in range(1, T - t):
            want[t, t + k] = gamma**k * lam ** (k - 1) * (1 - lam)
    torch.testing.assert_close(C, want, rtol=0, atol=1e-12)


def test_gae_error_weights_describe_gae_with_a_wrong_critic():
    """Â_t(V + e) − Â_t(V) = Σ_j C[t, j] e_j for random rewards, values and errors."""
    g = torch.Generator().manual_seed(1)
    B, T, lam, gamma = 4, 6, 0.7, 0.9
    r, v, e = (torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(3))
    m = torch.ones(B, T)
    diff = gae(r, v + e, m, gamma, lam) - gae(r, v, m, gamma, lam)
    torch.testing.assert_close(diff, e @ gae_error_weights(T, lam, gamma).T)


def test_gae_error_weight_k_steps_ahead_peaks_at_k_minus_1_over_k():
    """At γ = 1 the weight of e(s_{t+k}) is largest at λ = 0 only for k = 1."""
    T, grid = 6, [i / 200 for i in range(201)]
    table = torch.stack([gae_error_weights(T, lam)[0] for lam in grid])  # (λ, T)
    for k in range(1, T):
        best = grid[int(table[:, k].argmax())]
        assert best == pytest.approx((k - 1) / k, abs=0.005)
        assert float(table[:, k].max()) == pytest.approx(
            ((k - 1) / k) ** (k - 1) / k, abs=1e-4
        )


@pytest.mark.parametrize("n", [1, 2, 4, 7])
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_n_step_error_weights_match_the_closed_form(n, gamma):
    T = 5
    want = -torch.eye(T, dtype=torch.float64)
    for t in range(T - n):
        want[t, t + n] = gamma**n
    torch.testing.assert_close(n_step_error_weights(T, n, gamma), want)


def test_error_weights_refuse_bad_arguments():
    with pytest.raises(ValueError, match="T"):
        gae_error_weights(0, 0.5)
    with pytest.raises(ValueError, match="lam"):
        gae_error_weights(3, 1.5)
    with pytest.raises(ValueError, match="n"):
        n_step_error_weights(3, 0)


# -- states, conditional expectations, critics -------------------------------------


def test_enumeration_states_are_the_policys_state_ids(toy):
    problem, policy = toy
    states, S = critics.enumeration_states(problem, policy)
    M, K, T = problem.num_prompts, problem.num_completions, 3
    assert states.shape == (M, K, T) and S == M * policy.num_prefixes
    for x, k, t in itertools.product(range(M), range(K), range(T)):
        prefix = tuple(problem.completions[k, :t].tolist())
        # prefixes of length t of a binary vocabulary: offset 2^t - 1, then the code
        code = sum(a * 2 ** (t - 1 - i) for i, a in enumerate(prefix))
        assert states[x, k, t] == x * policy.num_prefixes + (2**t - 1) + code
    with pytest.raises(ValueError, match="state_index"):
        critics.enumeration_states(problem, torch.nn.Linear(2, 2))


def test_state_expectations_of_the_reward_to_go_are_the_exact_values(toy):
    problem, policy = toy
    states, S = critics.enumeration_states(problem, policy)
    R_t = problem.returns_to_go()
    w, V_table = critics.state_expectations(problem, policy, R_t, states, S)
    torch.testing.assert_close(w, torch.ones(S, dtype=torch.float64))
    V = problem.values(policy).double()
    torch.testing.assert_close(V_table[states], V, atol=1e-6, rtol=0)
    _, mean_A = critics.state_expectations(
        problem, policy, problem.advantages(policy), states, S
    )
    assert float(mean_A.abs().max()) < 1e-6


def test_state_expectations_on_a_bandit_by_hand():
    problem = pg.toy.contextual_bandit(2, 3, seed=0)
    policy = pg.TabularPolicy(2, 3, 1, init_scale=1.0, generator=pg.make_generator(0))
    states, S = critics.enumeration_states(problem, policy)
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3, 1)
    w, mean = critics.state_expectations(problem, policy, x, states, S)
    with torch.no_grad():
        pi = problem.probs(policy).double()  # (2, 3): π(a | x)
    torch.testing.assert_close(mean, (pi * x[..., 0].double()).sum(-1))
    torch.testing.assert_close(w, torch.ones(2, dtype=torch.float64))


def test_state_expectations_skip_padding():
    problem, _ = pg.toy.variable_length_task(2, 3, 3, seed=0)
    policy = pg.TabularPolicy(2, 3, 3, eos=0, init_scale=1.0)
    states, S = critics.enumeration_states(problem, policy)
    w, V_table = critics.state_expectations(
        problem, policy, problem.returns_to_go(), states, S
    )
    sel = problem.mask.expand_as(states) != 0
    torch.testing.assert_close(
        w[states[sel]], torch.ones(int(sel.sum()), dtype=w.dtype)
    )
    V = problem.values(policy).double()
    torch.testing.assert_close(V_table[states][sel], V[sel], atol=1e-6, rtol=0)


def test_state_expectations_refuse_bad_inputs(toy):
    problem, policy = toy
    states, S = critics.enumeration_states(problem, policy)
    R_t = problem.returns_to_go()
    with pytest.raises(ValueError, match="x must have shape"):
        critics.state_expectations(problem, policy, R_t[..., :2], states, S)
    with pytest.raises(ValueError, match="states must lie"):
        critics.state_expectations(problem, policy, R_t, states, 3)
    with pytest.raises(ValueError, match="ExactProblem"):
        critics.state_expectations(None, policy, R_t, states, S)


def test_prompt_blind_table_by_hand():
    table = torch.tensor([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])  # 2 prompts x 3 prefixes
    rho = torch.tensor([0.25, 0.75])
    blind = critics.prompt_blind_table(table, rho)
    want = torch.tensor([4.0, 5.0, 6.0, 4.0, 5.0, 6.0])
    torch.testing.assert_close(blind, want)
    with pytest.raises(ValueError, match="multiple"):
        critics.prompt_blind_table(table[:5], rho)


def test_tabular_critic_and_its_rms_error(toy):
    problem, policy = toy
    states, S = critics.enumeration_states(problem, policy)
    V = problem.values(policy)
    critic = critics.tabular_critic(torch.arange(S, dtype=torch.float32))
    torch.testing.assert_close(critic(states), states.float())
    # a critic off by 0.3 everywhere has RMS error 0.3
    assert critics.critic_rms_error(problem, policy, V + 0.3, V) == pytest.approx(0.3)
    # off by 0.3 on the last position only: RMS sqrt(0.09 / T)
    off = V.clone()
    off[..., -1] += 0.3
    rms = critics.critic_rms_error(problem, policy, off, V)
    assert rms == pytest.approx((0.09 / 3) ** 0.5)
    with pytest.raises(ValueError, match="finite"):
        critics.tabular_critic(torch.tensor([float("nan")]))


# -- estimators over the enumeration and their exact moments -----------------------


def test_enumeration_estimators_with_the_exact_value(toy):
    problem, policy = toy
    V, A = problem.values(policy), problem.advantages(policy)
    R_t = problem.returns_to_go()
    # λ = 0 with the exact value is the exact advantage; λ = 1 is R_t - V(s_t)
    lam0 = critics.gae_on_enumeration(problem, V, lam=0.0)
    torch.testing.assert_close(lam0, A, atol=1e-6, rtol=0)
    lam1 = critics.gae_on_enumeration(problem, V, lam=1.0)
    torch.testing.assert_close(lam1, R_t - V, atol=1e-6, rtol=0)
    torch.testing.assert_close(critics.n_step_on_enumeration(problem, V, n=1), A)
    torch.testing.assert_close(critics.n_step_on_enumeration(problem, V, n=3), R_t - V)
    with pytest.raises(ValueError, match="values must have shape"):
        critics.gae_on_enumeration(problem, V[..., :2], lam=0.5)


def test_estimator_moments_equal_exact_problems_moments():
    problem, policy = _toy(steps=3)
    moments = pg.exact.EstimatorMoments(problem, policy)
    g = torch.Generator().manual_seed(0)
    weights = [
        problem.returns(),
        problem.returns_to_go(),
        torch.randn(problem.returns_to_go().shape, generator=g),
    ]
    for w in weights:
        mean, var = problem.estimator_moments(policy, w)
        bias = float((mean - problem.gradient(policy)).norm())
        got_bias, got_var = moments(w)
        assert got_var == pytest.approx(var, rel=1e-5)
        assert got_bias == pytest.approx(bias, abs=1e-6)
        torch.testing.assert_close(moments.mean(w), mean.double(), atol=1e-6, rtol=0)
    # the mean of the reward-to-go estimator is the gradient itself
    assert moments(weights[1])[0] < 1e-6
    with pytest.raises(ValueError, match="weights must have shape"):
        moments(torch.zeros(2, 2))


def test_credit_weightings_are_unbiased_and_named(toy):
    problem, policy = toy
    em, _ = pg.toy.target_sequence_task(
        num_prompts=2, vocab_size=2, length=3, reward="exact_match", seed=0
    )
    for prob in (problem, em):
        res = critics.credit_weighting_moments(prob, policy)
        assert list(res) == ["R", "R-V(s_0)", "R_t-V(s_t)", "exact A"]
        assert max(b for b, _ in res.values()) < 1e-6
        # conditioning: the exact advantage has less variance than R_t - V(s_t) here
        assert res["exact A"][1] < res["R_t-V(s_t)"][1]
    # callable from ascend's record (under no_grad)
    with torch.no_grad():
        assert critics.credit_weighting_moments(problem, policy).keys() == res.keys()


def test_sampled_gae_weights_look_up_the_critic_at_the_sampled_states(toy):
    problem, policy = toy
    states, S = critics.enumeration_states(problem, policy)
    table = torch.randn(S, generator=torch.Generator().manual_seed(2))
    critic = critics.tabular_critic(table)
    fn = critics.sampled_gae_weights(critic, policy, lam=0.6)
    gen = pg.make_generator(3)
    x = problem.sample_prompts(16, gen)
    batch = policy.sample(x, generator=gen)
    w = fn(batch, problem.rewards_for(x, batch.completions))
    full = critics.gae_on_enumeration(
        problem, critic(states).detach() * problem.mask, lam=0.6
    )
    torch.testing.assert_close(w, full[x, problem.completion_index(batch.completions)])
    with pytest.raises(ValueError, match="state_index"):
        critics.sampled_gae_weights(critic, object(), lam=0.5)
