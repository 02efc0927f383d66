"""Tests for policygrad.reward_side: returns, REINFORCE weights, TD, GAE, n-step returns, baselines, values."""

import pytest
import torch

import policygrad as pg
from policygrad.reward_side import (
    TabularValue,
    broadcast_to_tokens,
    gae,
    n_step_returns,
    optimal_constant_baseline,
    reinforce_weights,
    returns_to_go,
    td_residuals,
    total_return,
)


def ragged(B=6, T=5, seed=0, dtype=torch.float64):
    """Random rewards and values with a prefix mask of random lengths 1..T (at least one of each extreme)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, generator=g, dtype=dtype)
    v = torch.randn(B, T, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = T, 1
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(dtype)
    # garbage beyond the end must not leak in
    r = torch.where(mask > 0, r, torch.full_like(r, 1e3))
    v = torch.where(mask > 0, v, torch.full_like(v, -1e3))
    return r, v, mask, lengths.tolist()


def ref_returns_to_go(r, lengths, gamma):
    out = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            out[b, t] = sum(gamma ** (s - t) * r[b, s] for s in range(t, n))
    return out


def ref_td(r, v, lengths, gamma, last_value=None):
    out = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            nxt = v[b, t + 1] if t + 1 < n else (0.0 if last_value is None else last_value[b])
            out[b, t] = r[b, t] + gamma * nxt - v[b, t]
    return out


def ref_gae(r, v, lengths, gamma, lam, last_value=None):
    delta = ref_td(r, v, lengths, gamma, last_value)
    out = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            out[b, t] = sum((gamma * lam) ** k * delta[b, t + k] for k in range(n - t))
    return out


def ref_n_step(r, v, lengths, gamma, n_steps):
    out = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            acc = sum(gamma**k * r[b, t + k] for k in range(n_steps) if t + k < n)
            if t + n_steps < n:
                acc = acc + gamma**n_steps * v[b, t + n_steps]
            out[b, t] = acc
    return out


# -- returns ----------------------------------------------------------------------------------------------


def test_returns_to_go_hand_example():
    r = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    got = returns_to_go(r, m, gamma=0.5)
    # row 0: G2 = 3, G1 = 2 + 0.5*3 = 3.5, G0 = 1 + 0.5*3.5 = 2.75; row 1: r2 is padding
    assert torch.equal(got, torch.tensor([[2.75, 3.5, 3.0], [6.5, 5.0, 0.0]]))
    assert torch.equal(total_return(r, m, gamma=0.5), torch.tensor([2.75, 6.5]))
    assert torch.equal(returns_to_go(r, m), torch.tensor([[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]]))
    assert torch.equal(returns_to_go(r, m.bool()), returns_to_go(r, m))


@pytest.mark.parametrize("gamma", [0.0, 0.7, 1.0])
def test_returns_to_go_random_ragged(gamma):
    r, _, m, lengths = ragged(seed=1)
    assert torch.allclose(returns_to_go(r, m, gamma), ref_returns_to_go(r, lengths, gamma), atol=1e-12)
    assert torch.allclose(total_return(r, m, gamma), ref_returns_to_go(r, lengths, gamma)[:, 0], atol=1e-12)


def test_returns_to_go_validation():
    r = torch.zeros(2, 3)
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="gamma"):
        returns_to_go(r, m, gamma=1.01)
    with pytest.raises(ValueError, match="gamma"):
        returns_to_go(r, m, gamma=-0.01)
    with pytest.raises(ValueError, match="mask must have shape"):
        returns_to_go(r, torch.ones(2, 2))
    assert torch.equal(returns_to_go(r, torch.zeros(2, 3)), torch.zeros(2, 3))  # every token masked out: 0
    with pytest.raises(ValueError, match="0 and 1"):
        returns_to_go(r, torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        returns_to_go(torch.tensor([[0.0, float("nan"), 0.0]]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="dimension"):
        returns_to_go(torch.zeros(3), torch.ones(3))


def test_broadcast_to_tokens():
    got = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.equal(got, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="mask must have shape"):
        broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.ones(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        broadcast_to_tokens(torch.tensor([float("inf"), 1.0]), torch.ones(2, 2))


# -- REINFORCE weights ---------------------------------------------------------------------------------------


def test_reinforce_weights_terminal():
    R = torch.tensor([1.0, -2.0, 0.5])
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.float32)
    assert torch.equal(reinforce_weights(R, m), R.unsqueeze(1) * m)
    assert torch.equal(reinforce_weights(R, m, baseline=0.5), (R.unsqueeze(1) - 0.5) * m)
    assert torch.equal(reinforce_weights(R, m, baseline=torch.tensor(0.5)), (R.unsqueeze(1) - 0.5) * m)
    b = torch.tensor([0.0, 1.0, 2.0])
    assert torch.equal(reinforce_weights(R, m, baseline=b), (R - b).unsqueeze(1) * m)
    bt = torch.arange(9.0).reshape(3, 3)
    assert torch.equal(reinforce_weights(R, m, baseline=bt), (R.unsqueeze(1) - bt) * m)
    assert torch.equal(reinforce_weights(R, m.bool()), R.unsqueeze(1) * m)
    with pytest.raises(ValueError, match="floating-point"):  # integer rewards are refused, not promoted
        reinforce_weights(torch.tensor([1, 0, 1]), m)


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_reinforce_weights_per_step(gamma):
    r, v, m, lengths = ragged(seed=3)
    G = ref_returns_to_go(r, lengths, gamma)
    total = G[:, :1] * m
    assert torch.allclose(reinforce_weights(r, m, gamma=gamma), total, atol=1e-12)
    assert torch.allclose(reinforce_weights(r, m, reward_to_go=True, gamma=gamma), G, atol=1e-12)
    # a per-state baseline (B, T) and a per-trajectory baseline (B,)
    got = reinforce_weights(r, m, reward_to_go=True, baseline=v, gamma=gamma)
    assert torch.allclose(got, (G - v) * m, atol=1e-12)
    b = v[:, 0]
    got = reinforce_weights(r, m, reward_to_go=True, baseline=b, gamma=gamma)
    assert torch.allclose(got, (G - b.unsqueeze(1)) * m, atol=1e-12)
    got = reinforce_weights(r, m, baseline=-1.5, gamma=gamma)
    assert torch.allclose(got, (total + 1.5) * m, atol=1e-12)


def test_reinforce_weights_validation():
    m = torch.ones(3, 2)
    R = torch.zeros(3)
    with pytest.raises(ValueError, match="reward_to_go"):
        reinforce_weights(R, m, reward_to_go=True)
    with pytest.raises(ValueError, match="does not match"):
        reinforce_weights(torch.zeros(4), m)
    with pytest.raises(ValueError, match="does not match"):
        reinforce_weights(torch.zeros(3, 3), m)
    with pytest.raises(ValueError, match="does not match"):
        reinforce_weights(R, torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        reinforce_weights(torch.tensor([0.0, float("nan"), 1.0]), m)
    with pytest.raises(ValueError, match="NaN"):
        reinforce_weights(torch.tensor([[0.0, float("inf")]] * 3), m)
    assert torch.equal(reinforce_weights(R, torch.zeros(3, 2)), torch.zeros(3, 2))  # every token masked out: 0
    with pytest.raises(ValueError, match="0 and 1"):
        reinforce_weights(R, torch.full((3, 2), 2.0))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_weights(R, m, baseline=torch.zeros(4))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_weights(R, m, baseline=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_weights(R, m, baseline=torch.zeros(3, 2, 1))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_weights(R, m, baseline=torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="gamma"):
        reinforce_weights(torch.zeros(3, 2), m, gamma=2.0)
    with pytest.raises(ValueError, match="dimension"):
        reinforce_weights(torch.zeros(3, 2, 1), m)


# -- TD residuals, GAE, n-step returns --------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_td_residuals_against_loop(gamma):
    r, v, m, lengths = ragged(seed=4)
    assert torch.allclose(td_residuals(r, v, m, gamma), ref_td(r, v, lengths, gamma), atol=1e-12)
    lv = torch.randn(r.shape[0], dtype=r.dtype, generator=torch.Generator().manual_seed(9))
    got = td_residuals(r, v, m, gamma, last_value=lv)
    assert torch.allclose(got, ref_td(r, v, lengths, gamma, lv), atol=1e-12)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 0.0), (0.8, 1.0), (0.0, 0.7)])
def test_gae_against_loop(gamma, lam):
    r, v, m, lengths = ragged(seed=5)
    assert torch.allclose(gae(r, v, m, gamma, lam), ref_gae(r, v, lengths, gamma, lam), atol=1e-12)
    lv = torch.randn(r.shape[0], dtype=r.dtype, generator=torch.Generator().manual_seed(2))
    got = gae(r, v, m, gamma, lam, last_value=lv)
    assert torch.allclose(got, ref_gae(r, v, lengths, gamma, lam, lv), atol=1e-12)


@pytest.mark.parametrize("gamma", [1.0, 0.75])
def test_gae_limits(gamma):
    r, v, m, lengths = ragged(seed=6)
    assert torch.allclose(gae(r, v, m, gamma, lam=0.0), td_residuals(r, v, m, gamma), atol=1e-12)
    G = returns_to_go(r, m, gamma)
    assert torch.allclose(gae(r, v, m, gamma, lam=1.0), (G - v) * m, atol=1e-12)
    # lambda = 1 with bootstrapping: G_t + gamma^(n-t) V_last - V(s_t)
    lv = torch.randn(r.shape[0], dtype=r.dtype, generator=torch.Generator().manual_seed(3))
    want = torch.zeros_like(r)
    for b, n in enumerate(lengths):
        for t in range(n):
            want[b, t] = G[b, t] + gamma ** (n - t) * lv[b] - v[b, t]
    assert torch.allclose(gae(r, v, m, gamma, lam=1.0, last_value=lv), want, atol=1e-12)


def test_gae_on_exact_values_is_exact_advantage_at_lambda_zero():
    """With the exact V, GAE(0) = r + gamma V' - V is the exact advantage of ExactProblem."""
    prob, _ = pg.toy.target_sequence_task(2, 3, 3, reward="per_step", gamma=0.9, seed=1)
    pol = pg.TabularPolicy(2, 3, 3, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    V = prob.values(pol).reshape(-1, 3)
    r = prob.step_rewards().reshape(-1, 3)
    m = prob.mask.repeat(2, 1)
    A = prob.advantages(pol).reshape(-1, 3)
    assert torch.allclose(gae(r, V, m, 0.9, 0.0), A, atol=1e-6)


def test_n_step_returns_against_loop_and_limits():
    r, v, m, lengths = ragged(seed=7)
    for gamma in (1.0, 0.8):
        for n in (1, 2, 3):
            assert torch.allclose(n_step_returns(r, v, m, n, gamma), ref_n_step(r, v, lengths, gamma, n), atol=1e-12)
        # n = 1: r_t + gamma V(s_{t+1}) = delta_t + V(s_t)
        assert torch.allclose(n_step_returns(r, v, m, 1, gamma), (td_residuals(r, v, m, gamma) + v) * m, atol=1e-12)
        # n >= T: the Monte Carlo reward-to-go
        for n in (r.shape[1], r.shape[1] + 3):
            assert torch.allclose(n_step_returns(r, v, m, n, gamma), returns_to_go(r, m, gamma), atol=1e-12)


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan"), "0.5", None])
def test_gamma_and_lambda_outside_unit_interval_raise(bad):
    r, v, m, _ = ragged(seed=0)
    with pytest.raises(ValueError, match="gamma"):
        td_residuals(r, v, m, gamma=bad)
    with pytest.raises(ValueError, match="gamma"):
        gae(r, v, m, gamma=bad, lam=0.5)
    with pytest.raises(ValueError, match="lam"):
        gae(r, v, m, gamma=0.9, lam=bad)
    with pytest.raises(ValueError, match="gamma"):
        n_step_returns(r, v, m, 2, gamma=bad)
    with pytest.raises(ValueError, match="gamma"):
        returns_to_go(r, m, gamma=bad)


def test_td_gae_n_step_validation():
    r, v, m, _ = ragged(seed=0)
    for fn in (td_residuals, gae):
        with pytest.raises(ValueError, match="values"):
            fn(r, v[:, :-1], m)
        with pytest.raises(ValueError, match="NaN"):
            fn(r, v * float("nan"), m)
        with pytest.raises(ValueError, match="NaN"):
            fn(r * float("inf"), v, m)
        assert torch.equal(fn(r, v, torch.zeros_like(m)), torch.zeros_like(m))  # every token masked out: 0
        with pytest.raises(ValueError, match="mask"):
            fn(r, v, m[:-1])
        with pytest.raises(ValueError, match="last_value"):
            fn(r, v, m, last_value=torch.zeros(r.shape[0] + 1))
        with pytest.raises(ValueError, match="last_value"):
            fn(r, v, m, last_value=torch.tensor([float("nan")] * r.shape[0]))
    with pytest.raises(ValueError, match="n must be"):
        n_step_returns(r, v, m, 0)
    with pytest.raises(ValueError, match="values"):
        n_step_returns(r, v[:1], m, 2)


# -- optimal constant baseline ----------------------------------------------------------------------------------


def _bandit64():
    R = torch.tensor([[1.0, 3.0, -2.0, 0.5], [2.0, 2.5, 4.0, -1.0]], dtype=torch.float64)
    comp, mask = pg.enumerate_completions(4, 1)
    prob = pg.ExactProblem(torch.arange(2), torch.tensor([0.3, 0.7], dtype=torch.float64), comp, mask.double(), R)
    pol = pg.TabularPolicy(2, 4, 1, init_scale=1.0, generator=torch.Generator().manual_seed(1)).double()
    return prob, pol


def test_optimal_constant_baseline_minimises_exact_variance():
    prob, pol = _bandit64()
    scores = prob.per_sample_gradients(pol, torch.ones(2, 4, dtype=torch.float64))  # grad log p(tau), (N, K, P)
    sq = (scores**2).sum(-1)
    probs = prob.prompt_probs.unsqueeze(1) * prob.probs(pol).detach()
    R = prob.returns()
    b_star = optimal_constant_baseline(R.reshape(-1), sq.reshape(-1), probs.reshape(-1))
    assert b_star == pytest.approx(((probs * sq * R).sum() / (probs * sq).sum()).item(), rel=1e-12)

    def var(b):
        return prob.estimator_moments(pol, R - b)[1]

    v_star = var(b_star)
    E_sq = (probs * sq).sum().item()
    for delta in (1e-3, 0.1, 1.0):
        for b in (b_star - delta, b_star + delta):
            assert var(b) > v_star
            # the variance is a parabola in b with curvature E||grad log p||^2
            assert var(b) - v_star == pytest.approx(delta**2 * E_sq, rel=1e-6)
    # the optimal baseline is not the plain mean return (they differ on this problem)
    mean_R = (probs * R).sum().item()
    assert abs(mean_R - b_star) > 0.05 and var(mean_R) > v_star


def test_optimal_constant_baseline_sample_version():
    R = torch.tensor([1.0, 2.0, 4.0])
    s = torch.tensor([1.0, 0.0, 3.0])
    assert optimal_constant_baseline(R, s) == pytest.approx((1 * 1 + 0 * 2 + 3 * 4) / 4)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert optimal_constant_baseline(R, s, p) == pytest.approx((0.5 * 1 + 0.25 * 12) / (0.5 + 0.75))
    # equal score norms: b* is the (weighted) mean return
    assert optimal_constant_baseline(R, torch.ones(3), p) == pytest.approx(0.5 + 0.5 + 1.0)


def test_optimal_constant_baseline_validation():
    R = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="score norms are zero"):
        optimal_constant_baseline(R, torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        optimal_constant_baseline(R, torch.ones(3))
    with pytest.raises(ValueError, match="probs"):
        optimal_constant_baseline(R, torch.ones(2), torch.ones(3) / 3)
    with pytest.raises(ValueError, match="NaN"):
        optimal_constant_baseline(torch.tensor([float("nan"), 1.0]), torch.ones(2))
    with pytest.raises(ValueError, match="dimension"):
        optimal_constant_baseline(torch.ones(2, 1), torch.ones(2, 1))


# -- TabularValue ------------------------------------------------------------------------------------------------


def test_tabular_value_fit_converges_to_state_means():
    g = torch.Generator().manual_seed(0)
    states = torch.randint(0, 5, (40, 3), generator=g)
    targets = torch.randn(40, 3, generator=g)
    mask = (torch.rand(40, 3, generator=g) < 0.8).float()
    value = TabularValue(6, init=0.25)
    assert torch.equal(value(torch.tensor([0, 5])), torch.tensor([0.25, 0.25]))
    first = value.fit(states, targets, lr=0.5, mask=mask)
    assert first == pytest.approx((((targets - 0.25) * mask) ** 2).sum().item() / mask.sum().item(), rel=1e-6)
    for _ in range(60):
        value.fit(states, targets, lr=0.5, mask=mask)
    for s in range(5):
        sel = (states == s) & (mask > 0)
        assert value.table[s].item() == pytest.approx(targets[sel].mean().item(), abs=1e-5)
    assert value.table[5].item() == 0.25  # never visited: untouched
    # lr = 1 jumps to the per-state mean in one step
    v1 = TabularValue(6)
    v1.fit(states, targets, lr=1.0)
    for s in range(5):
        assert v1.table[s].item() == pytest.approx(targets[states == s].mean().item(), abs=1e-6)


def test_tabular_value_validation():
    value = TabularValue(4)
    with pytest.raises(ValueError, match="states"):
        value(torch.tensor([4]))
    with pytest.raises(ValueError, match="states"):
        value(torch.tensor([-1]))
    with pytest.raises(ValueError, match="same shape"):
        value.fit(torch.zeros(3, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        value.fit(torch.zeros(2, dtype=torch.long), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="states"):
        value.fit(torch.tensor([1, 7]), torch.zeros(2))
    with pytest.raises(ValueError, match="empty"):
        value.fit(torch.tensor([1, 2]), torch.zeros(2), mask=torch.zeros(2))
    with pytest.raises(ValueError, match="num_states"):
        TabularValue(0)


def test_masked_entries_are_zero_even_inside_a_sequence():
    """The module promise: entries where the mask is 0 are returned as 0 (also for a hole in the mask)."""
    g = torch.Generator().manual_seed(8)
    r, v = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    m = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.float32)
    outs = [
        returns_to_go(r, m, 0.9),
        reinforce_weights(r, m, reward_to_go=True, baseline=v),
        reinforce_weights(r[:, 0], m, baseline=1.0),
        td_residuals(r, v, m, 0.9, last_value=torch.ones(3)),
        gae(r, v, m, 0.9, 0.8),
        n_step_returns(r, v, m, 2, 0.9),
    ]
    for out in outs:
        assert bool((out[m == 0] == 0).all())
        assert bool((out[m == 1] != 0).all())
