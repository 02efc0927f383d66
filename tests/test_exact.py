"""Tests for policygrad.exact: enumeration and every exact quantity, each against an independent computation.

Brute-force references below loop over (prompt, completion) pairs in plain Python; they share nothing with
the vectorised code under test except the policy's forward (and for :class:`BagPolicy` not even that:
its logits are recomputed by hand).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import policygrad as pg
from policygrad.exact import (
    MAX_ENUMERATION,
    ExactProblem,
    enumerate_completions,
    flat_grad,
    flat_params,
)

# -- helpers ---------------------------------------------------------------------------------------------


class BagPolicy(nn.Module):
    """A causal, non-tabular policy: logits_t = a[x] + pos[t] + sum_{s<t} u[y_s] (shows the protocol suffices)."""

    def __init__(self, num_prompts, vocab_size, max_len, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.V = vocab_size
        self.a = nn.Parameter(torch.randn(num_prompts, vocab_size, generator=g))
        self.pos = nn.Parameter(torch.randn(max_len, vocab_size, generator=g))
        self.u = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))

    def forward(self, prompts, completions):
        onehot = torch.nn.functional.one_hot(completions.long(), self.V).to(self.u.dtype)  # (B, T, V)
        before = torch.cumsum(onehot, 1) - onehot  # counts of each token strictly before t
        return self.a[prompts.long()].unsqueeze(1) + self.pos[: completions.shape[1]] + before @ self.u

    def hand_logits(self, x, prefix):
        z = self.a[x].tolist()
        for i in range(self.V):
            z[i] += self.pos[len(prefix), i].item() + sum(self.u[y, i].item() for y in prefix)
        return z


def to64(prob: ExactProblem) -> ExactProblem:
    return ExactProblem(
        prompts=prob.prompts,
        prompt_probs=prob.prompt_probs.double(),
        completions=prob.completions,
        mask=prob.mask.double(),
        rewards=prob.rewards.double(),
        gamma=prob.gamma,
    )


def tab(N, V, L, seed=0, scale=1.0, eos=None, double=False):
    pol = pg.TabularPolicy(N, V, L, eos=eos, init_scale=scale, generator=torch.Generator().manual_seed(seed))
    return pol.double() if double else pol


def random_problem(N, V, L, *, eos=None, per_step=False, gamma=1.0, seed=0, probs=None):
    g = torch.Generator().manual_seed(seed)
    comp, mask = enumerate_completions(V, L, eos=eos)
    K = comp.shape[0]
    if per_step:
        # r_t may depend only on (x, y_{<=t}): a causal reward, as in any MDP
        table = {}
        rewards = torch.zeros(N, K, L)
        for x in range(N):
            for k in range(K):
                for t in range(L):
                    key = (x, tuple(comp[k, : t + 1].tolist()))
                    if key not in table:
                        table[key] = torch.randn(1, generator=g).item()
                    rewards[x, k, t] = table[key]
    else:
        rewards = torch.randn(N, K, generator=g)
    rho = torch.full((N,), 1.0 / N) if probs is None else probs
    return ExactProblem(torch.arange(N), rho, comp, mask, rewards, gamma=gamma)


def softmax_list(z):
    mx = max(z)
    e = [math.exp(v - mx) for v in z]
    s = sum(e)
    return [v / s for v in e]


def brute_probs(prob, policy):
    """p(y | x) for every pair as nested Python lists, via one forward per (prompt, completion)."""
    out = []
    for x in range(prob.num_prompts):
        row = []
        for k in range(prob.num_completions):
            y = prob.completions[k : k + 1]
            with torch.no_grad():
                logits = policy(torch.tensor([x]), y)[0]
            p = 1.0
            for t in range(y.shape[1]):
                if prob.mask[k, t] == 0:
                    break
                p *= softmax_list(logits[t].tolist())[int(y[0, t])]
            row.append(p)
        out.append(row)
    return out


def brute_returns(prob):
    """R(x, y) by hand: the terminal reward, or sum_t gamma^t r_t over real tokens."""
    N, K = prob.num_prompts, prob.num_completions
    if not prob.per_step:
        return prob.rewards.tolist()
    R = []
    for x in range(N):
        R.append(
            [
                sum(prob.gamma**t * prob.rewards[x, k, t].item() for t in range(prob.mask.shape[1]) if prob.mask[k, t])
                for k in range(K)
            ]
        )
    return R


def brute_step_rewards_and_G(prob):
    """Per-step rewards r_t (terminal reward on the last real token) and reward-to-go G_t, by hand."""
    N, K, L = prob.num_prompts, prob.num_completions, prob.mask.shape[1]
    r = [[[0.0] * L for _ in range(K)] for _ in range(N)]
    G = [[[0.0] * L for _ in range(K)] for _ in range(N)]
    for x in range(N):
        for k in range(K):
            n = int(prob.mask[k].sum())
            for t in range(n):
                if prob.per_step:
                    r[x][k][t] = prob.rewards[x, k, t].item()
                elif t == n - 1:
                    r[x][k][t] = prob.rewards[x, k].item()
            for t in range(n):
                G[x][k][t] = sum(prob.gamma ** (s - t) * r[x][k][s] for s in range(t, n))
    return r, G


# -- enumerate_completions ------------------------------------------------------------------------------


@pytest.mark.parametrize("V, L", [(2, 1), (2, 3), (3, 2), (4, 3)])
def test_enumeration_without_eos(V, L):
    comp, mask = enumerate_completions(V, L)
    assert comp.shape == (V**L, L) and comp.dtype == torch.long
    assert torch.equal(mask, torch.ones(V**L, L))
    assert {tuple(r) for r in comp.tolist()} == set(itertools.product(range(V), repeat=L))


def _canonical(seq, eos):
    if eos in seq:
        j = seq.index(eos)
        return tuple(seq[: j + 1]) + (eos,) * (len(seq) - j - 1)
    return tuple(seq)


@pytest.mark.parametrize("V, L, eos", [(2, 3, 0), (3, 2, 2), (3, 3, 0), (4, 3, 1), (3, 1, 1)])
def test_enumeration_with_eos(V, L, eos):
    comp, mask = enumerate_completions(V, L, eos=eos)
    count = sum((V - 1) ** t for t in range(L)) + (V - 1) ** L
    assert comp.shape == (count, L)
    rows = [tuple(r) for r in comp.tolist()]
    assert len(set(rows)) == count  # unique
    assert set(rows) == {_canonical(list(s), eos) for s in itertools.product(range(V), repeat=L)}
    for row, m in zip(rows, mask.tolist(), strict=True):
        n = row.index(eos) + 1 if eos in row else L
        assert m == [1.0] * n + [0.0] * (L - n)


def test_enumeration_limit():
    with pytest.raises(ValueError, match="exceeds the limit"):
        enumerate_completions(10, 6)  # 10^6 > MAX_ENUMERATION
    assert 10**6 > MAX_ENUMERATION
    comp, _ = enumerate_completions(2, 4, limit=16)  # exactly at the limit is allowed
    assert comp.shape[0] == 16
    with pytest.raises(ValueError, match="exceeds the limit"):
        enumerate_completions(2, 4, limit=15)
    with pytest.raises(ValueError, match="exceeds the limit"):
        enumerate_completions(3, 3, eos=0, limit=14)  # 15 completions with eos


@pytest.mark.parametrize(
    "args, kwargs", [((1, 3), {}), ((0, 3), {}), ((3, 0), {}), ((3, 2), {"eos": 3}), ((3, 2), {"eos": -1})]
)
def test_enumeration_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        enumerate_completions(*args, **kwargs)


# -- ExactProblem validation -------------------------------------------------------------------------------


def _parts():
    comp, mask = enumerate_completions(3, 2)
    return dict(
        prompts=torch.arange(2),
        prompt_probs=torch.tensor([0.25, 0.75]),
        completions=comp,
        mask=mask,
        rewards=torch.zeros(2, 9),
    )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"prompt_probs": torch.tensor([0.5, 0.25])}, "sum to 1"),
        ({"prompt_probs": torch.tensor([1.5, -0.5])}, "non-negative"),
        ({"prompt_probs": torch.tensor([1.0])}, "prompt_probs must have shape"),
        ({"prompt_probs": torch.tensor([float("nan"), 1.0])}, "NaN"),
        ({"prompts": torch.zeros(2, 2, 2)}, "prompts"),
        ({"completions": torch.zeros(9, dtype=torch.long)}, "completions"),
        ({"mask": torch.ones(9, 3)}, "mask must have shape"),
        ({"mask": torch.cat([torch.zeros(1, 2), torch.ones(8, 2)])}, "at least one token"),
        ({"rewards": torch.zeros(2, 8)}, "rewards must have shape"),
        ({"rewards": torch.zeros(2, 9, 3)}, "rewards must have shape"),
        ({"rewards": torch.zeros(3, 9)}, "rewards must have shape"),
        ({"rewards": torch.zeros(18)}, "dimension"),
        ({"rewards": torch.tensor([[float("nan")] + [0.0] * 8, [0.0] * 9])}, "NaN"),
        ({"rewards": torch.tensor([[float("inf")] + [0.0] * 8, [0.0] * 9])}, "NaN or infinite"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
    ],
)
def test_exact_problem_validation(change, match):
    parts = _parts()
    parts.update(change)
    with pytest.raises(ValueError, match=match):
        ExactProblem(**parts)


def test_exact_problem_pair_limit():
    comp, mask = enumerate_completions(2, 10)  # 1024 completions
    N = MAX_ENUMERATION // 1024 + 1
    with pytest.raises(ValueError, match="exceeds the limit"):
        ExactProblem(torch.arange(N), torch.full((N,), 1.0 / N, dtype=torch.float64), comp, mask, torch.zeros(N, 1024))


def test_exact_problem_accepts_valid_and_reports_shapes():
    prob = ExactProblem(**_parts())
    assert prob.num_prompts == 2 and prob.num_completions == 9 and not prob.per_step
    ps = prob.with_rewards(torch.ones(2, 9, 2), gamma=0.5)
    assert ps.per_step and ps.gamma == 0.5 and prob.gamma == 1.0


# -- returns --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "eos, per_step, gamma", [(None, False, 1.0), (0, False, 1.0), (0, True, 0.7), (None, True, 0.5)]
)
def test_step_rewards_returns_to_go_and_returns(eos, per_step, gamma):
    prob = random_problem(2, 3, 3, eos=eos, per_step=per_step, gamma=gamma, seed=4)
    r, G = brute_step_rewards_and_G(prob)
    assert torch.allclose(prob.step_rewards(), torch.tensor(r), atol=1e-6)
    assert torch.allclose(prob.returns_to_go(), torch.tensor(G), atol=1e-5)
    assert torch.allclose(prob.returns(), torch.tensor(brute_returns(prob)), atol=1e-5)


# -- objective, gradient ------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy_kind", ["tabular", "bag"])
@pytest.mark.parametrize(
    "eos, per_step, gamma", [(None, False, 1.0), (1, False, 1.0), (None, True, 0.8), (0, True, 0.6)]
)
def test_objective_equals_brute_force_sum(policy_kind, eos, per_step, gamma):
    rho = torch.tensor([0.2, 0.5, 0.3])
    prob = random_problem(3, 3, 3, eos=eos, per_step=per_step, gamma=gamma, seed=1, probs=rho)
    pol = tab(3, 3, 3, seed=2, scale=1.5, eos=eos) if policy_kind == "tabular" else BagPolicy(3, 3, 3, seed=2)
    p = brute_probs(prob, pol)
    if policy_kind == "bag":  # the logits themselves by hand
        for x in range(3):
            k = 7
            y = prob.completions[k].tolist()
            want = 1.0
            for t in range(3):
                if prob.mask[k, t] == 0:
                    break
                want *= softmax_list(pol.hand_logits(x, y[:t]))[y[t]]
            assert p[x][k] == pytest.approx(want, rel=1e-5)
    R = brute_returns(prob)
    J = sum(rho[x].item() * p[x][k] * R[x][k] for x in range(3) for k in range(prob.num_completions))
    got = prob.objective(pol)
    assert got.dim() == 0 and got.requires_grad
    assert got.item() == pytest.approx(J, abs=1e-5)
    assert torch.allclose(prob.probs(pol).detach(), torch.tensor(p), atol=1e-6)
    assert torch.allclose(prob.probs(pol).sum(-1), torch.ones(3), atol=1e-5)


def _finite_difference_gradient(prob, policy, eps=1e-6):
    grads = []
    with torch.no_grad():
        for p in flat_params(policy):
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = prob.objective(policy).item()
                flat[i] = old - eps
                down = prob.objective(policy).item()
                flat[i] = old
                grads.append((up - down) / (2 * eps))
    return torch.tensor(grads, dtype=torch.float64)


@pytest.mark.parametrize("policy_kind", ["tabular", "bag"])
@pytest.mark.parametrize("eos, per_step, gamma", [(None, False, 1.0), (0, True, 0.7)])
def test_gradient_equals_central_finite_differences(policy_kind, eos, per_step, gamma):
    prob = to64(random_problem(2, 3, 2, eos=eos, per_step=per_step, gamma=gamma, seed=3))
    pol = (
        tab(2, 3, 2, seed=1, scale=1.0, eos=eos, double=True)
        if policy_kind == "tabular"
        else BagPolicy(2, 3, 2, 1).double()
    )
    g = prob.gradient(pol)
    assert g.dtype == torch.float64 and not g.requires_grad
    assert g.shape == (sum(p.numel() for p in pol.parameters()),)
    fd = _finite_difference_gradient(prob, pol)
    assert torch.allclose(g, fd, atol=1e-8, rtol=0), (g - fd).abs().max()
    assert g.norm() > 0.05  # not a trivially zero comparison


def test_gradient_under_float64_default_dtype():
    """Everything built while float64 is the default dtype (restored afterwards) matches finite differences."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        prob, _ = pg.toy.target_sequence_task(2, 3, 2, reward="per_step", gamma=0.9, seed=1)
        assert prob.rewards.dtype == torch.float64 and prob.mask.dtype == torch.float64
        pol = tab(2, 3, 2, seed=5, scale=1.0)
        assert pol.logits_table.dtype == torch.float64
        fd = _finite_difference_gradient(prob, pol)
        assert torch.allclose(prob.gradient(pol), fd, atol=1e-8, rtol=0)
        assert prob.values(pol).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


def test_bandit_gradient_is_pi_times_advantage():
    R = torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.3, 0.3, -1.0, 4.0]], dtype=torch.float64)
    rho = torch.tensor([0.4, 0.6], dtype=torch.float64)
    comp, mask = enumerate_completions(4, 1)
    prob = ExactProblem(torch.arange(2), rho, comp, mask.double(), R)
    pol = tab(2, 4, 1, seed=7, scale=1.0, double=True)
    pi = torch.softmax(pol.logits_table.detach()[:, 0], -1)  # (N, V)
    Jx = (pi * R).sum(-1, keepdim=True)
    want = rho.unsqueeze(1) * pi * (R - Jx)
    assert torch.allclose(prob.gradient(pol), want.reshape(-1), atol=1e-12)
    assert prob.objective(pol).item() == pytest.approx((rho * Jx.squeeze(1)).sum().item(), abs=1e-12)


# -- KL and success probability -------------------------------------------------------------------------------


@pytest.mark.parametrize("eos", [None, 0])
def test_kl_equals_brute_force(eos):
    prob = random_problem(2, 3, 3, eos=eos, seed=0, probs=torch.tensor([0.3, 0.7]))
    p_pol, q_pol = tab(2, 3, 3, seed=1, eos=eos), tab(2, 3, 3, seed=2, eos=eos)
    p, q = brute_probs(prob, p_pol), brute_probs(prob, q_pol)
    want = [sum(pk * math.log(pk / qk) for pk, qk in zip(p[x], q[x], strict=True)) for x in range(2)]
    kl = prob.kl(p_pol, q_pol)
    assert kl.shape == (2,)
    assert torch.allclose(kl.detach(), torch.tensor(want), atol=1e-5)
    assert bool((kl > 1e-3).all())
    ekl = prob.expected_kl(p_pol, q_pol)
    assert ekl.item() == pytest.approx(0.3 * want[0] + 0.7 * want[1], abs=1e-5)
    ekl.backward()  # differentiable in the policy only
    assert p_pol.logits_table.grad is not None and p_pol.logits_table.grad.abs().sum() > 0
    assert q_pol.logits_table.grad is None


def test_kl_is_zero_for_identical_policies():
    prob = random_problem(2, 3, 3, seed=0)
    a, b = tab(2, 3, 3, seed=4), tab(2, 3, 3, seed=4)
    assert torch.allclose(prob.kl(a, b).detach(), torch.zeros(2), atol=1e-6)
    assert torch.allclose(prob.kl(a, a).detach(), torch.zeros(2), atol=1e-6)


def test_success_probability():
    prob = random_problem(2, 3, 2, seed=6)
    pol = tab(2, 3, 2, seed=3)
    p = brute_probs(prob, pol)
    R = prob.rewards.tolist()
    for thr in (0.5, 0.0, -1.0):
        want = [sum(pk for pk, r in zip(p[x], R[x], strict=True) if r > thr) for x in range(2)]
        got = prob.success_probability(pol, threshold=thr)
        assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    task, _ = pg.toy.target_sequence_task(2, 3, 2, reward="exact_match", seed=0)
    # exact match: success probability is the probability of the single target completion
    got = task.success_probability(pol)
    want = (task.probs(pol) * task.rewards).sum(-1)
    assert torch.allclose(got, want.detach(), atol=1e-7)


# -- values and advantages ------------------------------------------------------------------------------------


def brute_values(prob, policy):
    """V(s_t) and Q(s_t, a_t) by conditional expectation over all completions sharing the prefix."""
    p = brute_probs(prob, policy)
    _, G = brute_step_rewards_and_G(prob)
    N, K, L = prob.num_prompts, prob.num_completions, prob.mask.shape[1]
    comp = [tuple(r) for r in prob.completions.tolist()]
    V = torch.zeros(N, K, L, dtype=torch.float64)
    Q = torch.zeros(N, K, L, dtype=torch.float64)
    for x in range(N):
        for k in range(K):
            for t in range(L):
                if prob.mask[k, t] == 0:
                    continue
                for store, n in ((V, t), (Q, t + 1)):
                    same = [j for j in range(K) if comp[j][:n] == comp[k][:n]]
                    Z = sum(p[x][j] for j in same)
                    store[x, k, t] = sum(p[x][j] * G[x][j][t] for j in same) / Z
    return V, Q


@pytest.mark.parametrize(
    "eos, per_step, gamma", [(None, False, 1.0), (None, True, 0.8), (0, False, 1.0), (2, True, 0.5)]
)
def test_values_and_advantages_equal_brute_force(eos, per_step, gamma):
    prob = random_problem(2, 3, 3, eos=eos, per_step=per_step, gamma=gamma, seed=2)
    pol = tab(2, 3, 3, seed=3, scale=1.0, eos=eos)
    V = prob.values(pol)
    A = prob.advantages(pol)
    Vb, Qb = brute_values(prob, pol)
    assert torch.allclose(V.double(), Vb, atol=1e-5)
    assert torch.allclose(A.double(), (Qb - Vb), atol=1e-5)
    # masked positions are exactly 0
    off = (prob.mask == 0).expand_as(V)
    assert bool((V[off] == 0).all()) and bool((A[off] == 0).all())
    if eos is not None:
        assert bool(off.any())
    # Bellman: Q(s_t, a_t) = r_t + gamma V(s_{t+1}) (V = 0 after the end)
    r = prob.step_rewards().double()
    V_next = torch.cat([Vb[..., 1:], torch.zeros_like(Vb[..., :1])], -1)
    on = (prob.mask > 0).expand_as(V)
    assert torch.allclose((r + gamma * V_next)[on], Qb[on], atol=1e-5)
    # V at the first position is the per-prompt expected return
    Jx = (prob.probs(pol) * prob.returns()).sum(-1).detach()
    assert torch.allclose(V[:, :, 0], Jx.unsqueeze(1).expand(2, prob.num_completions), atol=1e-5)


@pytest.mark.parametrize("eos, per_step, gamma", [(None, True, 0.9), (0, False, 1.0)])
def test_advantage_has_zero_mean_at_every_state(eos, per_step, gamma):
    prob = random_problem(2, 3, 3, eos=eos, per_step=per_step, gamma=gamma, seed=8)
    pol = tab(2, 3, 3, seed=9, scale=1.5, eos=eos)
    A = prob.advantages(pol).double()
    p = prob.probs(pol).detach().double()
    comp = [tuple(r) for r in prob.completions.tolist()]
    checked = 0
    for x in range(2):
        for t in range(3):
            groups = {}
            for k in range(prob.num_completions):
                if prob.mask[k, t] > 0:
                    groups.setdefault(comp[k][:t], []).append(k)
            for ks in groups.values():
                mean = sum(p[x, k] * A[x, k, t] for k in ks) / sum(p[x, k] for k in ks)
                assert abs(mean.item()) < 1e-5
                checked += 1
    assert checked == 2 * pol.num_prefixes if eos is None else checked > 0
    assert A.abs().max() > 0.1  # the zero mean is not that of an all-zero tensor


def test_values_float64_policy_on_float32_problem():
    prob = random_problem(2, 3, 2, per_step=True, gamma=0.9, seed=0)
    pol32 = tab(2, 3, 2, seed=1)
    pol64 = tab(2, 3, 2, seed=1, double=True)
    v32, v64 = prob.values(pol32), prob.values(pol64)
    assert v64.dtype == torch.float64
    assert torch.allclose(v32.double(), v64, atol=1e-5)
    assert torch.allclose(prob.advantages(pol32).double(), prob.advantages(pol64), atol=1e-5)


# -- per-sample gradients and estimator moments ---------------------------------------------------------------


def brute_per_sample(prob, policy, weights):
    params = flat_params(policy)
    N, K, L = prob.num_prompts, prob.num_completions, prob.mask.shape[1]
    w = weights.unsqueeze(-1).expand(N, K, L) if weights.dim() == 2 else weights
    rows = torch.zeros(N, K, sum(p.numel() for p in params), dtype=torch.float64)
    for x in range(N):
        for k in range(K):
            y = prob.completions[k : k + 1]
            logp = pg.trajectory_side.token_log_probs(policy(torch.tensor([x]), y), y)[0]
            s = sum(w[x, k, t] * logp[t] for t in range(L) if prob.mask[k, t] > 0)
            rows[x, k] = flat_grad(s, params).double()
    return rows


@pytest.mark.parametrize("policy_kind", ["tabular", "bag"])
@pytest.mark.parametrize("eos, per_token", [(None, False), (0, True)])
def test_per_sample_gradients_equal_autograd_loop(policy_kind, eos, per_token):
    prob = random_problem(2, 3, 2, eos=eos, per_step=per_token, seed=5)
    pol = tab(2, 3, 2, seed=5, eos=eos) if policy_kind == "tabular" else BagPolicy(2, 3, 2, seed=5)
    g = torch.Generator().manual_seed(0)
    shape = (2, prob.num_completions, 2) if per_token else (2, prob.num_completions)
    w = torch.randn(*shape, generator=g)
    got = prob.per_sample_gradients(pol, w)
    want = brute_per_sample(prob, pol, w)
    assert got.shape == want.shape
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert want.abs().max() > 0.1


def test_per_sample_gradients_validation():
    prob = random_problem(2, 3, 2, seed=0)
    pol = tab(2, 3, 2)
    with pytest.raises(ValueError, match="weights must have shape"):
        prob.per_sample_gradients(pol, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="weights must have shape"):
        prob.per_sample_gradients(pol, torch.zeros(2, 9, 3))
    with pytest.raises(ValueError, match="dimension"):
        prob.per_sample_gradients(pol, torch.zeros(18))
    w = torch.zeros(2, 9)
    w[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prob.per_sample_gradients(pol, w)


def test_estimator_moments_mean_identities_undiscounted():
    """E[g] = grad J for weights R, G_t and A_t (gamma = 1): three exact identities."""
    prob = to64(random_problem(2, 3, 3, per_step=True, gamma=1.0, seed=11))
    pol = tab(2, 3, 3, seed=12, scale=1.0, double=True)
    grad = prob.gradient(pol)
    for w in (prob.returns(), prob.returns_to_go(), prob.advantages(pol), prob.returns() - 0.7):
        mean, var = prob.estimator_moments(pol, w)
        assert torch.allclose(mean, grad, atol=1e-12), (mean - grad).abs().max()
        assert var > 0
    # a state-dependent V(s_t) baseline leaves the mean unchanged too; a weight that is not a return does not
    mean, _ = prob.estimator_moments(pol, prob.returns_to_go() - prob.values(pol))
    assert torch.allclose(mean, grad, atol=1e-12)
    wrong, _ = prob.estimator_moments(pol, prob.step_rewards())  # r_t alone ignores later rewards
    assert (wrong - grad).norm() > 0.1 * grad.norm()


def test_estimator_moments_mean_identities_discounted():
    """With gamma < 1, grad J = E[sum_t gamma^t G_t grad log pi_t] = E[sum_t gamma^t A_t grad log pi_t]."""
    gamma = 0.6
    prob = to64(random_problem(2, 3, 3, per_step=True, gamma=gamma, seed=13))
    pol = tab(2, 3, 3, seed=14, scale=1.0, double=True)
    grad = prob.gradient(pol)
    disc = gamma ** torch.arange(3, dtype=torch.float64)
    for w in (prob.returns(), disc * prob.returns_to_go(), disc * prob.advantages(pol)):
        mean, _ = prob.estimator_moments(pol, w)
        assert torch.allclose(mean, grad, atol=1e-12)
    undiscounted, _ = prob.estimator_moments(pol, prob.returns_to_go())
    assert (undiscounted - grad).norm() > 0.01


@pytest.mark.parametrize("per_token", [False, True])
def test_estimator_moments_variance_equals_brute_force(per_token):
    rho = torch.tensor([0.35, 0.65], dtype=torch.float64)
    prob = to64(random_problem(2, 3, 2, eos=0, per_step=per_token, seed=21, probs=rho.float()))
    prob = ExactProblem(prob.prompts, rho, prob.completions, prob.mask, prob.rewards, prob.gamma)
    pol = tab(2, 3, 2, seed=22, scale=1.0, eos=0, double=True)
    w = prob.returns_to_go() if per_token else prob.returns() - 0.2
    g = brute_per_sample(prob, pol, w)
    p = brute_probs(prob, pol)
    mean = sum(rho[x] * p[x][k] * g[x, k] for x in range(2) for k in range(prob.num_completions))
    second = sum(rho[x] * p[x][k] * (g[x, k] ** 2).sum() for x in range(2) for k in range(prob.num_completions))
    got_mean, got_var = prob.estimator_moments(pol, w)
    assert torch.allclose(got_mean, mean, atol=1e-12)
    assert got_var == pytest.approx((second - (mean**2).sum()).item(), rel=1e-10)


# -- lookups and sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("eos", [None, 1])
def test_completion_index_round_trip(eos):
    prob = random_problem(3, 3, 3, eos=eos, seed=0)
    K = prob.num_completions
    assert torch.equal(prob.completion_index(prob.completions), torch.arange(K))
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prob.completion_index(prob.completions[perm]), perm)
    ids = torch.tensor([0, 2, 1, 2])
    ks = torch.tensor([3, 0, K - 1, 5])
    assert torch.equal(prob.rewards_for(ids, prob.completions[ks]), prob.rewards[ids, ks])
    per = prob.with_rewards(torch.randn(3, K, 3))
    assert torch.equal(per.rewards_for(ids, prob.completions[ks]), per.rewards[ids, ks])


def test_completion_index_rejects_unknown_completions():
    prob = random_problem(2, 3, 3, eos=0, seed=0)
    with pytest.raises(ValueError, match="not in the enumeration"):
        prob.completion_index(torch.tensor([[0, 1, 2]]))  # not padded with eos after the first eos
    with pytest.raises(ValueError, match="not in the enumeration"):
        prob.completion_index(torch.tensor([[1, 2, 5]]))  # token outside the vocabulary
    with pytest.raises(ValueError, match="length"):
        prob.completion_index(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="prompt_ids"):
        prob.rewards_for(torch.tensor([2]), torch.tensor([[1, 2, 0]]))
    with pytest.raises(ValueError, match="prompt_ids"):
        prob.rewards_for(torch.tensor([-1]), torch.tensor([[1, 2, 0]]))


def test_sample_prompts_distribution():
    rho = torch.tensor([0.1, 0.6, 0.3])
    prob = random_problem(3, 2, 1, seed=0, probs=rho)
    n = 30_000
    ids = prob.sample_prompts(n, torch.Generator().manual_seed(1))
    assert ids.shape == (n,) and ids.dtype == torch.long
    freq = torch.bincount(ids, minlength=3).double() / n
    r = rho.double()
    assert bool(((freq - r).abs() < 4 * torch.sqrt(r * (1 - r) / n)).all())
    assert torch.equal(ids, prob.sample_prompts(n, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="n must be"):
        prob.sample_prompts(0)


# -- flat_grad and objective_landscape -----------------------------------------------------------------------


def test_flat_grad():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    unused = torch.zeros(3, requires_grad=True)
    g = flat_grad((a**2).sum() + 5 * b.sum(), [a, b, unused])
    assert torch.equal(g, torch.tensor([2.0, 4.0, 5.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="scalar"):
        flat_grad(a * 2, [a])
    pol = BagPolicy(2, 3, 2)
    assert [p.shape for p in flat_params(pol)] == [(2, 3), (2, 3), (3, 3)]


def test_objective_landscape_matches_objective_and_restores_parameter():
    prob = random_problem(2, 3, 2, seed=3)
    pol = tab(2, 3, 2, seed=4)
    saved = pol.logits_table.detach().clone()
    ga, gb = [-1.0, 0.0, 2.0], [0.5, -0.5]
    land = pg.exact.objective_landscape(prob, pol, pol.logits_table, (0, 0, 1), (1, 2, 0), ga, gb)
    assert land.shape == (3, 2) and isinstance(land, np.ndarray)
    assert torch.equal(pol.logits_table.detach(), saved)
    for i, a in enumerate(ga):
        for j, b in enumerate(gb):
            other = tab(2, 3, 2, seed=4)
            with torch.no_grad():
                other.logits_table[0, 0, 1] = a
                other.logits_table[1, 2, 0] = b
            assert land[i, j] == pytest.approx(prob.objective(other).item(), abs=1e-6)
    assert np.ptp(land) > 1e-3
    with pytest.raises(ValueError, match="param"):
        pg.exact.objective_landscape(prob, pol, nn.Parameter(torch.zeros(3)), (0,), (1,), ga, gb)
