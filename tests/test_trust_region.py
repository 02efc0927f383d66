"""Tests for the trust-region part of chapter 5: the Fisher metric, the natural gradient, TRPO's pieces and
the exact statistics of the sequence importance weight.

Every check is exact, in float64, on small problems whose completions are enumerated: the Fisher is compared
with the Hessian of the expected KL computed by autograd on a flat parameter vector, and with its closed form
for a tabular softmax; the natural gradient of a softmax bandit with Kakade's advantage identity. Each identity
comes with a negative control: a plausible wrong variant that the same check rejects.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import policygrad as pg
from policygrad.exact import MAX_FISHER_PARAMS, ExactProblem, flat_params
from policygrad.exact.trust_region import (
    apply_flat_step,
    conjugate_gradient,
    fisher_vector_product,
    get_flat_params,
    kl_constrained_step,
    natural_gradient,
    set_flat_params,
    trpo_line_search,
)
from policygrad.trajectory_side import token_log_probs

F64 = torch.float64
EXACT = {"atol": 1e-10, "rtol": 0.0}


def t64(x):
    return torch.tensor(x, dtype=F64)


def _tab(N, V, L, seed, eos=None, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return pg.TabularPolicy(N, V, L, eos=eos, init_scale=scale, generator=gen).double()


def _problem(V, L, rho, eos=None, seed=0):
    comp, mask = pg.enumerate_completions(V, L, eos=eos)
    R = torch.randn(len(rho), comp.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    return ExactProblem(torch.arange(len(rho)), t64(rho), comp, mask.to(F64), R)


def _eos_setup():
    """2 prompts, V = 3, up to 3 tokens ending at eos = 0: 15 completions, ragged; P = 2 * 13 * 3 = 78."""
    return _problem(3, 3, [0.4, 0.6], eos=0, seed=4), _tab(2, 3, 3, seed=5, eos=0)


def _fixed_setup():
    """3 prompts with unequal weights, V = 3, exactly 2 tokens: 9 completions; P = 3 * 4 * 3 = 36."""
    return _problem(3, 2, [0.5, 0.3, 0.2], seed=6), _tab(3, 3, 2, seed=7)


class _BagPolicy(nn.Module):
    """A non-tabular causal policy with three parameter tensors (checks the flat parameter order)."""

    def __init__(self, num_prompts, vocab_size, max_len, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.V = vocab_size
        self.a = nn.Parameter(torch.randn(num_prompts, vocab_size, generator=g, dtype=F64))
        self.pos = nn.Parameter(torch.randn(max_len, vocab_size, generator=g, dtype=F64))
        self.u = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g, dtype=F64))

    def forward(self, prompts, completions):
        onehot = torch.nn.functional.one_hot(completions.long(), self.V).to(self.u.dtype)
        before = torch.cumsum(onehot, 1) - onehot
        return self.a[prompts.long()].unsqueeze(1) + self.pos[: completions.shape[1]] + before @ self.u


def _bag_setup():
    return _problem(3, 3, [0.4, 0.6], eos=0, seed=8), _BagPolicy(2, 3, 3, seed=9)


SETUPS = {"eos": _eos_setup, "fixed": _fixed_setup, "bag": _bag_setup}


def _kl_from_old_as_function_of_flat_theta(prob, pol):
    """theta -> E_x KL(p_old || p_theta) written out with functional_call; p_old = the policy as it is now."""
    N, K, L = prob.num_prompts, prob.num_completions, prob.completions.shape[1]
    prompts, completions = prob.prompts.repeat_interleave(K), prob.completions.repeat(N, 1)
    named = [(n, p) for n, p in pol.named_parameters() if p.requires_grad]
    with torch.no_grad():
        logp_old = prob.log_probs(pol)

    def f(theta):
        params, i = {}, 0
        for n, p in named:
            params[n] = theta[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        logits = torch.func.functional_call(pol, params, (prompts, completions))
        logp = (token_log_probs(logits, completions).reshape(N, K, L) * prob.mask).sum(-1)
        return (prob.prompt_probs * (logp_old.exp() * (logp_old - logp)).sum(-1)).sum()

    return f


def _state_visits(prob, pol):
    """d(x, s) = rho(x) P(reach prefix s | x) for a tabular policy: ``(N, num_prefixes)``.

    Each completion passes each prefix at most once, so P(prefix) is the total probability of the
    completions that continue past it.
    """
    prefix = pol.prefix_index(prob.completions)  # (K, L)
    p = prob.probs(pol).detach()
    d = torch.zeros(prob.num_prompts, pol.num_prefixes, dtype=F64)
    for x in range(prob.num_prompts):
        for k in range(prob.num_completions):
            for t in range(prob.completions.shape[1]):
                if prob.mask[k, t]:
                    d[x, prefix[k, t]] += prob.prompt_probs[x] * p[x, k]
    return d


def _block_fisher(pol, weights):
    """Block-diagonal sum_s weights[s] (diag(pi_s) - pi_s pi_s^T) over the rows of the logits table."""
    pi = torch.softmax(pol.logits_table.detach(), -1)  # (N, S, V)
    blocks = weights.unsqueeze(-1).unsqueeze(-1) * (torch.diag_embed(pi) - pi.unsqueeze(-1) * pi.unsqueeze(-2))
    return torch.block_diag(*blocks.reshape(-1, pol.vocab_size, pol.vocab_size))


# ==========================================================================================================
# 1. the exact Fisher
# ==========================================================================================================


@pytest.mark.parametrize("setup", list(SETUPS))
def test_fisher_is_the_hessian_of_the_expected_kl_at_old_params(setup):
    prob, pol = SETUPS[setup]()
    F = prob.fisher(pol)
    P = sum(p.numel() for p in flat_params(pol))
    assert F.shape == (P, P) and F.dtype == F64
    f = _kl_from_old_as_function_of_flat_theta(prob, pol)
    theta = get_flat_params(pol)
    assert abs(float(f(theta))) < 1e-15  # KL(p_old || p_old) = 0
    H = torch.autograd.functional.hessian(f, theta)
    torch.testing.assert_close(F, H, **EXACT)
    assert H.abs().max() > 0.05  # not trivially zero
    assert torch.equal(F, F.T)
    assert torch.linalg.eigvalsh(F).min() > -1e-14  # positive semi-definite
    # the Hessian away from theta_old is not the Fisher at theta_old (the identity needs p_theta = p_old)
    moved = theta + 0.5 * torch.randn(P, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert (torch.autograd.functional.hessian(f, moved) - F).abs().max() > 1e-2


@pytest.mark.parametrize("setup", ["eos", "fixed"])
def test_tabular_fisher_is_block_diagonal_with_state_visitation_weights(setup):
    prob, pol = SETUPS[setup]()
    F = prob.fisher(pol)
    d = _state_visits(prob, pol)
    torch.testing.assert_close(F, _block_fisher(pol, d), **EXACT)
    # rank: each reached state contributes V - 1 directions (the constant shift of its row is free)
    reached = int((d > 0).sum())
    assert reached < d.numel() or setup == "fixed"  # with eos, prefixes containing eos are never reached
    assert int(torch.linalg.matrix_rank(F, rtol=1e-10)) == reached * (pol.vocab_size - 1)
    # negative control: the token Fishers summed without the prefix probabilities (weight rho(x) per state)
    unweighted = prob.prompt_probs.unsqueeze(1) * (d > 0).to(F64)
    assert (_block_fisher(pol, unweighted) - F).abs().max() > 1e-2


@pytest.mark.parametrize("setup", list(SETUPS))
def test_fisher_is_not_the_reward_weighted_empirical_fisher(setup):
    """Negative control: E[g g^T] for the per-sample policy gradient g = R s is not F."""
    prob, pol = SETUPS[setup]()
    F = prob.fisher(pol)
    g = prob.per_sample_gradients(pol, prob.returns()).reshape(-1, F.shape[0])
    w = (prob.prompt_probs.unsqueeze(1) * prob.probs(pol).detach()).reshape(-1, 1)
    empirical = g.T @ (w * g)
    assert (empirical - F).abs().max() > 0.1 * F.abs().max()
    # ... while with R = 1 the same construction is F (the check above is the only difference)
    s = prob.per_sample_gradients(pol, torch.ones_like(prob.returns())).reshape(-1, F.shape[0])
    torch.testing.assert_close(s.T @ (w * s), F, **EXACT)


def test_fisher_annihilates_a_constant_shift_of_one_softmax_row():
    prob, pol = _eos_setup()
    F = prob.fisher(pol)
    shape = pol.logits_table.shape
    d = _state_visits(prob, pol)
    # prefixes are numbered by length (V = 3): 0 = (), 1..3 = (y0), 4..12 = (y0, y1); eos = 0
    assert d[1, 1] == 0 and d[0, 7] == 0  # (0,) and (1, 0) already ended: never reached
    for x, s in [(0, 0), (1, 2), (0, 9)]:  # the root, the prefix (1,) and the prefix (1, 2): all reached
        assert d[x, s] > 0.01
        v = torch.zeros(shape, dtype=F64)
        v[x, s, :] = 1.0
        assert (F @ v.reshape(-1)).abs().max() < 1e-14
        assert fisher_vector_product(prob, pol, v.reshape(-1)).abs().max() < 1e-14
        # negative control: a non-constant change of the same row does change the distribution
        v[x, s, 0] = 0.0
        assert (F @ v.reshape(-1)).abs().max() > 1e-2 * d[x, s]
    # an unreached row does not change the completion distribution at all: any change of it is null
    v = torch.zeros(shape, dtype=F64)
    v[0, 7] = t64([1.0, -2.0, 0.5])
    assert (F @ v.reshape(-1)).abs().max() == 0


@pytest.mark.parametrize("setup", list(SETUPS))
def test_fisher_vector_product_equals_the_matrix_product(setup):
    prob, pol = SETUPS[setup]()
    F = prob.fisher(pol)
    before = get_flat_params(pol)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(F.shape[0], generator=gen, dtype=F64)
        torch.testing.assert_close(fisher_vector_product(prob, pol, v), F @ v, **EXACT)
        torch.testing.assert_close(fisher_vector_product(prob, pol, v, damping=0.3), F @ v + 0.3 * v, **EXACT)
    assert torch.equal(get_flat_params(pol), before)  # the policy is not changed


def test_fisher_refuses_too_many_parameters():
    prob = _problem(3, 1, [0.5, 0.5])
    big = pg.TabularPolicy(2, MAX_FISHER_PARAMS // 2 + 1, 1)  # P = MAX_FISHER_PARAMS + 2
    with pytest.raises(ValueError, match="memory"):
        prob.fisher(big)


# ==========================================================================================================
# 2. solving with F: natural gradient and conjugate gradient
# ==========================================================================================================


def _random_spd(P, seed):
    M = torch.randn(P, P, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return M @ M.T + 0.1 * torch.eye(P, dtype=F64)


def test_conjugate_gradient_solves_a_random_spd_system_in_at_most_p_iterations():
    P = 12
    A = _random_spd(P, 0)
    b = torch.randn(P, generator=torch.Generator().manual_seed(1), dtype=F64)
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    x = conjugate_gradient(matvec, b, iters=P, tol=1e-14)
    assert len(calls) <= P
    torch.testing.assert_close(x, torch.linalg.solve(A, b), atol=1e-8, rtol=0.0)
    assert (A @ x - b).norm() < 1e-8 * b.norm()
    # negative control: three iterations are not enough for 12 spread-out eigenvalues
    assert (A @ conjugate_gradient(matvec, b, iters=3) - b).norm() > 1e-2 * b.norm()


def test_conjugate_gradient_needs_one_iteration_per_distinct_eigenvalue():
    A = torch.diag(t64([1.0, 2.0, 5.0, 1.0, 2.0, 5.0, 5.0, 1.0]))
    b = torch.randn(8, generator=torch.Generator().manual_seed(3), dtype=F64)
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    x = conjugate_gradient(matvec, b, iters=8, tol=1e-12)
    assert len(calls) == 3  # converged after 3 steps, then stopped on the residual test
    torch.testing.assert_close(x, b / A.diagonal(), atol=1e-12, rtol=0.0)


def test_conjugate_gradient_rejects_an_indefinite_matrix():
    with pytest.raises(ValueError, match="positive definite"):
        conjugate_gradient(lambda v: -v, torch.ones(3, dtype=F64))


@pytest.mark.parametrize("setup", ["eos", "bag"])
def test_natural_gradient_with_damping_solves_the_damped_system(setup):
    prob, pol = SETUPS[setup]()
    F, g = prob.fisher(pol), prob.gradient(pol)
    P, lam = F.shape[0], 1e-2
    d = natural_gradient(F, g, damping=lam)
    torch.testing.assert_close(d, torch.linalg.solve(F + lam * torch.eye(P, dtype=F64), g), **EXACT)
    torch.testing.assert_close(F @ d + lam * d, g, **EXACT)
    # the same direction from Fisher-vector products and CG alone (TRPO's route)
    d_cg = conjugate_gradient(lambda v: fisher_vector_product(prob, pol, v, damping=lam), g, iters=P, tol=1e-14)
    torch.testing.assert_close(d_cg, d, atol=1e-8, rtol=0.0)
    # negative control: it is not the plain gradient direction
    assert float(d @ g) / float(d.norm() * g.norm()) < 0.99


def test_pseudo_inverse_natural_gradient_is_the_minimum_norm_solution():
    prob, pol = _eos_setup()
    F, g = prob.fisher(pol), prob.gradient(pol)
    d = natural_gradient(F, g, damping=0)
    torch.testing.assert_close(F @ d, g, **EXACT)  # g lies in the range of F, so F d = g is solvable
    # no component along the null directions: every row of d (one softmax) sums to 0, unreached rows are 0
    rows = d.reshape(pol.logits_table.shape)
    assert rows.sum(-1).abs().max() < 1e-10
    assert rows[_state_visits(prob, pol) == 0].abs().max() < 1e-12
    # small damping approaches it
    torch.testing.assert_close(natural_gradient(F, g, damping=1e-9), d, atol=1e-5, rtol=0.0)


def test_kakade_natural_gradient_of_a_softmax_bandit_is_the_advantage():
    """For a tabular softmax contextual bandit F^+ grad J = A(x, .) up to one constant per row.

    The plain gradient is rho(x) pi(a|x) A(x, a): it shrinks for rare prompts and rare actions. The natural
    gradient undoes exactly that scaling, so it changes pi as adding the advantage itself to the logits would.
    """
    N, V = 3, 4
    prob = _problem(V, 1, [0.6, 0.3, 0.1], seed=10)
    pol = _tab(N, V, 1, seed=11, scale=1.5)
    z = pol.logits_table.detach()[:, 0]  # (N, V)
    pi = torch.softmax(z, -1)
    R = prob.rewards
    A = R - (pi * R).sum(-1, keepdim=True)
    d = natural_gradient(prob.fisher(pol), prob.gradient(pol), damping=0).reshape(N, V)
    centred = A - A.mean(-1, keepdim=True)
    torch.testing.assert_close(d - d.mean(-1, keepdim=True), centred, **EXACT)
    for eta in (0.3, 2.0):
        torch.testing.assert_close(torch.softmax(z + eta * d, -1), torch.softmax(z + eta * A, -1), **EXACT)
    # the plain gradient is rho(x) pi(a|x) A(x, a) ...
    g = prob.gradient(pol).reshape(N, V)
    torch.testing.assert_close(g, prob.prompt_probs.unsqueeze(1) * pi * A, **EXACT)
    # ... so it is not the advantage, not even after centring and the best rescaling (negative control)
    gc = g - g.mean(-1, keepdim=True)
    best = float((gc * centred).sum() / (gc * gc).sum())
    assert (best * gc - centred).abs().max() > 0.1 * centred.abs().max()
    # the natural gradient does not depend on rho; the plain gradient does
    other = ExactProblem(prob.prompts, t64([0.1, 0.2, 0.7]), prob.completions, prob.mask, R)
    torch.testing.assert_close(natural_gradient(other.fisher(pol), other.gradient(pol), damping=0).reshape(N, V), d)
    assert (other.gradient(pol).reshape(N, V) - g).abs().max() > 1e-2


# ==========================================================================================================
# 3. the KL-constrained step
# ==========================================================================================================


@pytest.mark.parametrize("damping", [1e-3, 0.0])
@pytest.mark.parametrize("setup", ["eos", "bag"])
def test_kl_constrained_step_meets_the_quadratic_model_and_the_true_kl_to_higher_order(setup, damping):
    prob, pol = SETUPS[setup]()
    F, g = prob.fisher(pol), prob.gradient(pol)
    rel_err = []
    for max_kl in (1e-4, 1e-5):
        step, info = kl_constrained_step(F, g, max_kl, damping=damping)
        d = natural_gradient(F, g, damping=damping)
        assert 0.5 * float(step @ F @ step) == pytest.approx(max_kl, rel=1e-10)
        assert info["predicted_kl"] == pytest.approx(max_kl, rel=1e-10)
        assert info["step_size"] == pytest.approx(math.sqrt(2 * max_kl / float(d @ F @ d)), rel=1e-12)
        assert info["direction_norm"] == pytest.approx(float(d.norm()), rel=1e-12)
        assert info["predicted_improvement"] == pytest.approx(float(g @ step), rel=1e-12) and float(g @ step) > 0
        torch.testing.assert_close(step, info["step_size"] * d, **EXACT)
        new = copy.deepcopy(pol)
        apply_flat_step(new, step)
        with torch.no_grad():
            kl = float(prob.expected_kl(pol, new))  # KL(p_old || p_new)
        rel_err.append(abs(kl - max_kl) / max_kl)
    # KL = (1/2) D^T F D + O(|D|^3) and |D| ~ sqrt(delta): the relative error is O(sqrt(delta)),
    # so 10x smaller delta gives about sqrt(10) = 3.16x smaller error (not 10x: the cubic term is really there)
    assert 0 < rel_err[1] < rel_err[0] < 1e-2
    assert 2.9 < rel_err[0] / rel_err[1] < 3.5


def test_kl_constrained_step_matvec_path_equals_matrix_path():
    prob, pol = _eos_setup()
    F, g = prob.fisher(pol), prob.gradient(pol)
    P = F.shape[0]
    step, info = kl_constrained_step(F, g, 1e-3, damping=1e-3)
    fvp_step, fvp_info = kl_constrained_step(
        lambda v: fisher_vector_product(prob, pol, v), g, 1e-3, damping=1e-3, cg_iters=P
    )
    torch.testing.assert_close(fvp_step, step, atol=1e-10, rtol=0.0)
    assert fvp_info["predicted_kl"] == pytest.approx(1e-3, rel=1e-10)
    assert fvp_info["step_size"] == pytest.approx(info["step_size"], rel=1e-8)
    # TRPO's 10 CG iterations: close to the exact direction but not equal (negative control for cg_iters)
    short, _ = kl_constrained_step(lambda v: F @ v, g, 1e-3, damping=1e-3, cg_iters=3)
    assert (short - step).norm() > 1e-3 * step.norm()


def test_kl_constrained_step_with_zero_gradient_is_zero():
    prob, pol = _eos_setup()
    F = prob.fisher(pol)
    step, info = kl_constrained_step(F, torch.zeros(F.shape[0], dtype=F64), 0.01)
    assert torch.equal(step, torch.zeros_like(step)) and info["predicted_kl"] == 0.0 and info["step_size"] == 0.0


def test_flat_parameter_helpers_round_trip():
    _, pol = _bag_setup()
    theta = get_flat_params(pol)
    assert theta.shape == (sum(p.numel() for p in pol.parameters()),)
    torch.testing.assert_close(theta, torch.cat([pol.a.reshape(-1), pol.pos.reshape(-1), pol.u.reshape(-1)]))
    step = torch.arange(theta.numel(), dtype=F64)
    apply_flat_step(pol, step)
    assert torch.equal(get_flat_params(pol), theta + step)
    assert pol.pos.reshape(-1)[0] == theta[pol.a.numel()] + pol.a.numel()  # order: a, pos, u
    set_flat_params(pol, theta)
    assert torch.equal(get_flat_params(pol), theta)
    theta[0] = 123.0  # get_flat_params returns a copy
    assert pol.a[0, 0] != 123.0


# ==========================================================================================================
# 4. TRPO's line search
# ==========================================================================================================


def test_trpo_line_search_accepts_a_small_full_step():
    prob, pol = _eos_setup()
    old, start = copy.deepcopy(pol), get_flat_params(pol)
    step, _ = kl_constrained_step(prob.fisher(pol), prob.gradient(pol), 1e-4)
    fraction = trpo_line_search(prob, pol, step, 2e-4)
    assert fraction == 1.0
    torch.testing.assert_close(get_flat_params(pol), start + step, atol=1e-15, rtol=0.0)
    with torch.no_grad():
        assert float(prob.expected_kl(old, pol)) <= 2e-4
        assert float(prob.objective(pol)) > float(prob.objective(old))


def test_trpo_line_search_backtracks_when_the_step_is_too_long():
    prob, pol = _eos_setup()
    old, start = copy.deepcopy(pol), get_flat_params(pol)
    step, _ = kl_constrained_step(prob.fisher(pol), prob.gradient(pol), 0.05)
    max_kl = 1e-3
    fraction = trpo_line_search(prob, pol, step, max_kl)
    assert fraction in [0.5**j for j in range(1, 10)]
    torch.testing.assert_close(get_flat_params(pol), start + fraction * step, atol=1e-15, rtol=0.0)
    with torch.no_grad():
        assert float(prob.expected_kl(old, pol)) <= max_kl
        assert float(prob.objective(pol)) > float(prob.objective(old))
        # the previous, twice as long try broke the constraint
        longer = copy.deepcopy(old)
        set_flat_params(longer, start + 2 * fraction * step)
        assert float(prob.expected_kl(old, longer)) > max_kl
    # and the quadratic model predicts the accepted fraction: KL ~ fraction^2 * 0.05 <= 1e-3
    assert fraction == 0.125  # 0.125^2 * 0.05 = 7.8e-4 <= 1e-3 < 0.25^2 * 0.05 = 3.1e-3


def test_trpo_line_search_restores_the_parameters_when_nothing_is_accepted():
    prob, pol = _eos_setup()
    start = get_flat_params(pol)
    step, _ = kl_constrained_step(prob.fisher(pol), prob.gradient(pol), 1e-3)
    # a descent direction: every fraction lowers J
    assert trpo_line_search(prob, pol, -step, 1.0) == 0.0
    assert torch.equal(get_flat_params(pol), start)
    # an ascent direction with one try that breaks the KL constraint
    assert trpo_line_search(prob, pol, step, 1e-6, max_backtracks=1) == 0.0
    assert torch.equal(get_flat_params(pol), start)


# ==========================================================================================================
# 5. the exact statistics of the sequence importance weight
# ==========================================================================================================


def test_importance_weight_stats_against_brute_force():
    prob, pol = _eos_setup()
    sampler = _tab(2, 3, 3, seed=12, eos=0)
    stats = prob.importance_weight_stats(pol, sampler)
    p, q = prob.probs(pol).detach(), prob.probs(sampler).detach()
    rho = prob.prompt_probs.tolist()
    mean, second, kl_pq, kl_qp = [], [], [], []
    for x in range(prob.num_prompts):
        ws = [(p[x, k] / q[x, k]).item() for k in range(prob.num_completions)]
        qs = q[x].tolist()
        mean.append(sum(qk * w for qk, w in zip(qs, ws, strict=True)))
        second.append(sum(qk * w * w for qk, w in zip(qs, ws, strict=True)))
        kl_pq.append(sum(p[x, k].item() * math.log(w) for k, w in enumerate(ws)))
        kl_qp.append(-sum(qk * math.log(w) for qk, w in zip(qs, ws, strict=True)))
    torch.testing.assert_close(stats["mean_per_prompt"], torch.ones(2, dtype=F64), atol=1e-14, rtol=0.0)
    torch.testing.assert_close(stats["mean_per_prompt"], t64(mean), **EXACT)
    torch.testing.assert_close(stats["second_moment_per_prompt"], t64(second), **EXACT)
    chi2 = t64([s - 1 for s in second])  # sum_y p^2 / q - 1
    torch.testing.assert_close(stats["variance_per_prompt"], chi2, **EXACT)
    torch.testing.assert_close(stats["ess_fraction_per_prompt"], 1 / (1 + chi2), **EXACT)
    torch.testing.assert_close(stats["kl_policy_sampler_per_prompt"], t64(kl_pq), **EXACT)
    torch.testing.assert_close(stats["kl_sampler_policy_per_prompt"], t64(kl_qp), **EXACT)
    torch.testing.assert_close(stats["kl_policy_sampler_per_prompt"], prob.kl(pol, sampler).detach(), **EXACT)
    assert chi2.min() > 0.05 and (t64(kl_pq) - t64(kl_qp)).abs().max() > 1e-3  # the two KLs differ
    # the joint weight of (x, y), x ~ rho: averages over prompts
    m2 = sum(r * s for r, s in zip(rho, second, strict=True))
    assert stats["mean"] == pytest.approx(1.0, abs=1e-14)
    assert stats["second_moment"] == pytest.approx(m2, rel=1e-12)
    assert stats["variance"] == pytest.approx(m2 - 1, rel=1e-12)
    assert stats["ess_fraction"] == pytest.approx(1 / m2, rel=1e-12)
    assert stats["kl_policy_sampler"] == pytest.approx(sum(r * k for r, k in zip(rho, kl_pq, strict=True)), rel=1e-12)
    assert stats["kl_sampler_policy"] == pytest.approx(sum(r * k for r, k in zip(rho, kl_qp, strict=True)), rel=1e-12)
    assert all(isinstance(stats[k], float) for k in ("mean", "variance", "ess_fraction", "kl_policy_sampler"))


def test_importance_weight_stats_of_the_sampler_itself():
    prob, pol = _eos_setup()
    for sampler in (pol, copy.deepcopy(pol)):
        stats = prob.importance_weight_stats(pol, sampler)
        assert stats["variance_per_prompt"].abs().max() < 1e-14
        assert (stats["ess_fraction_per_prompt"] - 1).abs().max() < 1e-14
        assert stats["kl_policy_sampler_per_prompt"].abs().max() < 1e-15
        assert stats["kl_sampler_policy_per_prompt"].abs().max() < 1e-15
        assert stats["ess_fraction"] == pytest.approx(1.0, abs=1e-14)


def test_importance_weight_variance_grows_as_the_policy_moves_away():
    """On a softmax bandit, p_s ∝ q exp(s h) is an exponential family along theta_old + s g, so
    log E_q[w^2] = psi(2s) - 2 psi(s) with psi convex: chi^2 grows with s (and so do both KLs)."""
    prob = _problem(4, 1, [0.5, 0.3, 0.2], seed=13)
    old = _tab(3, 4, 1, seed=14)
    g = prob.gradient(old)
    g = g / g.norm()
    rows = []
    for s in (0.0, 0.5, 1.0, 2.0, 4.0):
        pol = copy.deepcopy(old)
        apply_flat_step(pol, s * g)
        rows.append(prob.importance_weight_stats(pol, old))
    var = torch.stack([r["variance_per_prompt"] for r in rows])  # (5, N)
    ess = torch.stack([r["ess_fraction_per_prompt"] for r in rows])
    assert var[0].abs().max() < 1e-14 and (ess[0] - 1).abs().max() < 1e-14
    assert bool((var[1:] > var[:-1]).all()) and bool((ess[1:] < ess[:-1]).all())
    for key in ("kl_policy_sampler_per_prompt", "kl_sampler_policy_per_prompt"):
        kl = torch.stack([r[key] for r in rows])
        assert bool((kl[1:] > kl[:-1]).all())
    assert rows[-1]["ess_fraction"] < 0.9 * rows[1]["ess_fraction"]
    # the mean stays 1 all along the path
    assert max(abs(r["mean"] - 1) for r in rows) < 1e-14


def test_importance_weight_stats_when_the_sampler_misses_part_of_the_support():
    prob = _problem(3, 1, [0.5, 0.5], seed=15)
    pol, sampler = _tab(2, 3, 1, seed=16), _tab(2, 3, 1, seed=17)
    with torch.no_grad():
        sampler.logits_table[0, 0, 0] = -math.inf  # the sampler never draws action 0 for prompt 0
    stats = prob.importance_weight_stats(pol, sampler)
    p = prob.probs(pol).detach()
    assert stats["mean_per_prompt"][0].item() == pytest.approx(1 - p[0, 0].item(), rel=1e-12)  # biased: < 1
    assert stats["mean_per_prompt"][1].item() == pytest.approx(1.0, abs=1e-14)
    assert math.isinf(stats["kl_policy_sampler_per_prompt"][0].item())
    assert math.isfinite(stats["kl_sampler_policy_per_prompt"][0].item())
    assert math.isfinite(stats["variance"]) and 0 < stats["ess_fraction"] < 1


# ==========================================================================================================
# 6. bad inputs
# ==========================================================================================================

_F = torch.eye(3, dtype=F64)
_G = torch.ones(3, dtype=F64)
_NAN = t64([1.0, float("nan"), 0.0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: natural_gradient(torch.ones(3, dtype=F64), _G), "fisher must have 2"),
        (lambda: natural_gradient(torch.ones(3, 4, dtype=F64), _G), "fisher must be square"),
        (lambda: natural_gradient(t64([[1.0, 2.0], [0.0, 1.0]]), _G[:2]), "fisher must be symmetric"),
        (lambda: natural_gradient(_F * float("nan"), _G), "fisher contains"),
        (lambda: natural_gradient(_F, torch.ones(4, dtype=F64)), r"grad must have shape \(3,\)"),
        (lambda: natural_gradient(_F, _NAN), "grad contains"),
        (lambda: natural_gradient(_F, _G, damping=-1e-3), "damping must be >= 0"),
        (lambda: natural_gradient(_F, _G, damping=float("nan")), "damping must be a finite"),
        (lambda: natural_gradient(_F, _G, damping=True), "damping must be a finite"),
        (lambda: natural_gradient([[1.0]], _G), "fisher must be a torch.Tensor"),
        (lambda: conjugate_gradient(_F, _G), "matvec must be callable"),
        (lambda: conjugate_gradient(lambda v: v, _F), "b must have 1"),
        (lambda: conjugate_gradient(lambda v: v, _NAN), "b contains"),
        (lambda: conjugate_gradient(lambda v: v, _G, iters=0), "iters"),
        (lambda: conjugate_gradient(lambda v: v, _G, tol=-1.0), "tol must be >= 0"),
        (lambda: conjugate_gradient(lambda v: v[:2], _G), "matvec must return"),
        (lambda: kl_constrained_step(_F, _G, 0.0), "max_kl must be > 0"),
        (lambda: kl_constrained_step(_F, _G, -0.01), "max_kl must be > 0"),
        (lambda: kl_constrained_step(_F, _G, float("nan")), "max_kl must be a finite"),
        (lambda: kl_constrained_step(_F, _G, float("inf")), "max_kl must be a finite"),
        (lambda: kl_constrained_step(torch.ones(3, 4, dtype=F64), _G, 0.01), "fisher_or_matvec must be square"),
        (lambda: kl_constrained_step(torch.eye(4, dtype=F64), _G, 0.01), "fisher_or_matvec must have shape"),
        (lambda: kl_constrained_step(_F, _NAN, 0.01), "grad contains"),
        (lambda: kl_constrained_step(_F, _F, 0.01), "grad must have 1"),
        (lambda: kl_constrained_step(_F, _G, 0.01, damping=-1.0), "damping"),
        (lambda: kl_constrained_step(lambda v: v, _G, 0.01, cg_iters=0), "cg_iters"),
        (lambda: kl_constrained_step("F", _G, 0.01), "fisher_or_matvec must be a"),
    ],
)
def test_solvers_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_policy_functions_reject_bad_input():
    prob, pol = _eos_setup()
    P = get_flat_params(pol).numel()
    v = torch.ones(P, dtype=F64)
    start = get_flat_params(pol)
    cases = [
        (lambda: fisher_vector_product(prob, pol, torch.ones(P + 1, dtype=F64)), r"v must have shape"),
        (lambda: fisher_vector_product(prob, pol, v * float("nan")), "v contains"),
        (lambda: fisher_vector_product(prob, pol, v, damping=-0.1), "damping must be >= 0"),
        (lambda: fisher_vector_product("problem", pol, v), "problem must be an ExactProblem"),
        (lambda: fisher_vector_product(prob, "policy", v), "policy must be a torch.nn.Module"),
        (lambda: apply_flat_step(pol, torch.ones(P - 1, dtype=F64)), "step must have shape"),
        (lambda: apply_flat_step(pol, v * float("nan")), "step contains"),
        (lambda: set_flat_params(pol, torch.ones(2, P, dtype=F64)), "flat must have 1"),
        (lambda: trpo_line_search(prob, pol, v, 0.0), "max_kl must be > 0"),
        (lambda: trpo_line_search(prob, pol, v, 0.01, backtrack=0.0), "backtrack"),
        (lambda: trpo_line_search(prob, pol, v, 0.01, backtrack=1.0), "backtrack"),
        (lambda: trpo_line_search(prob, pol, v, 0.01, backtrack=1.5), "backtrack"),
        (lambda: trpo_line_search(prob, pol, v, 0.01, max_backtracks=0), "max_backtracks"),
        (lambda: trpo_line_search(prob, pol, torch.ones(3, dtype=F64), 0.01), "step must have shape"),
        (lambda: prob.importance_weight_stats(pol, "sampler"), "sampler must be a torch.nn.Module"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert torch.equal(get_flat_params(pol), start)  # a rejected call changes nothing
