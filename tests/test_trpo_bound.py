"""Tests for the bound behind the trust region and the exact TRPO loop of chapter 5
("The bound behind the trust region", "Trust regions and the natural gradient").

`trpo_bound` is checked against brute force: the surrogate in its return form
(E_old[Σ_t m_t (r_t − 1) R], a different identity from the advantage form the function
uses), advantages as Q − V summed over every completion, and total variations and KLs
over every row of a tabular policy. `trust_region_ascent` is checked against one
hand-made iteration of `kl_constrained_step` and `trpo_line_search`.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import policygrad as pg
from policygrad.exact import ExactProblem
from policygrad.exact.trust_region import (
    apply_flat_step,
    get_flat_params,
    kl_constrained_step,
    natural_gradient,
    trpo_bound,
    trpo_line_search,
    trust_region_ascent,
)

F64 = torch.float64


def _tab(N, V, L, seed, scale=1.0, eos=None):
    gen = torch.Generator().manual_seed(seed)
    return pg.TabularPolicy(N, V, L, eos=eos, init_scale=scale, generator=gen).double()


def _problem(V, L, rho, seed, eos=None):
    comp, mask = pg.enumerate_completions(V, L, eos=eos)
    g = torch.Generator().manual_seed(seed)
    R = torch.rand(len(rho), comp.shape[0], generator=g, dtype=F64)
    return ExactProblem(
        torch.arange(len(rho)),
        torch.tensor(rho, dtype=F64),
        comp,
        mask.to(F64),
        R,
    )


def _moved(policy, seed, size):
    new = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(get_flat_params(policy).numel(), generator=g, dtype=F64)
    apply_flat_step(new, size * d / d.norm())
    return new


def _brute_force(problem, old, new):
    """The surrogate's gain in its return form and ε = max |Q − V|, by loops."""
    with torch.no_grad():
        p_old = problem.probs(old)
        lp_old = problem.token_log_probs(old)
        lp_new = problem.token_log_probs(new)
    R = problem.returns()
    comp, mask = problem.completions.tolist(), problem.mask.tolist()
    K, L = problem.completions.shape
    gain, eps = 0.0, 0.0
    for x in range(problem.num_prompts):
        rho = float(problem.prompt_probs[x])
        for k in range(K):
            for t in range(L):
                if not mask[k][t]:
                    continue
                r = math.exp(float(lp_new[x, k, t] - lp_old[x, k, t]))
                gain += rho * float(p_old[x, k]) * (r - 1.0) * float(R[x, k])

                # Q(s_t, y_t) - V(s_t): the mean return over completions that share
                # the prefix y_<=t, minus over those that share y_<t
                means = []
                for n in (t + 1, t):
                    ks = [j for j in range(K) if comp[j][:n] == comp[k][:n]]
                    w = sum(float(p_old[x, j]) for j in ks)
                    means.append(sum(float(p_old[x, j] * R[x, j]) for j in ks) / w)
                eps = max(eps, abs(means[0] - means[1]))
    return gain, eps


@pytest.mark.parametrize("eos", [None, 0])
def test_trpo_bound_against_brute_force(eos):
    prob = _problem(3, 3, [0.3, 0.7], seed=1, eos=eos)
    old = _tab(2, 3, 3, seed=2, eos=eos)
    new = _moved(old, seed=3, size=1.5)
    b = trpo_bound(prob, old, new)
    gain, eps = _brute_force(prob, old, new)
    with torch.no_grad():
        J_old, J_new = float(prob.objective(old)), float(prob.objective(new))
    assert b["J_old"] == pytest.approx(J_old, abs=1e-14)
    assert b["J_new"] == pytest.approx(J_new, abs=1e-14)
    assert b["surrogate"] == pytest.approx(J_old + gain, abs=1e-12)
    assert b["gap"] == pytest.approx(J_new - J_old - gain, abs=1e-12)
    assert b["eps"] == pytest.approx(eps, abs=1e-12)
    assert b["horizon"] == 3 and b["C"] == pytest.approx(12 * eps, rel=1e-12)
    # the surrogate is not J: a step of 1.5 leaves a visible second-order gap
    assert abs(b["gap"]) > 1e-4


def test_trpo_bound_tv_and_kl_are_the_maxima_over_every_state():
    prob = _problem(3, 2, [0.5, 0.5], seed=4)
    old = _tab(2, 3, 2, seed=5)
    new = _moved(old, seed=6, size=3.0)
    b = trpo_bound(prob, old, new)
    # every row of the table is a reachable state (all completions have 2 tokens)
    lp = torch.log_softmax(old.logits_table.detach(), -1)
    lq = torch.log_softmax(new.logits_table.detach(), -1)
    tv = 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    assert b["max_tv"] == pytest.approx(float(tv.max()), abs=1e-14)
    assert b["max_kl"] == pytest.approx(float(kl.max()), abs=1e-14)
    # the reverse KL is a different number (the direction is KL(old || new))
    rev = (lq.exp() * (lq - lp)).sum(-1)
    assert abs(float(rev.max()) - b["max_kl"]) > 1e-3


def test_trpo_bound_is_exact_for_a_bandit():
    """T = 1: the state distribution cannot move, so J(θ') = L_θ(θ') and C = 0."""
    prob = _problem(4, 1, [0.2, 0.8], seed=7)
    old = _tab(2, 4, 1, seed=8)
    new = _moved(old, seed=9, size=3.0)
    b = trpo_bound(prob, old, new)
    assert b["C"] == 0.0 and abs(b["gap"]) < 1e-14
    assert b["J_new"] - b["J_old"] > 1e-2 or b["J_new"] - b["J_old"] < -1e-2


def test_trpo_bound_holds_and_the_penalty_is_needed():
    rows = []
    for eos in (None, 0):
        prob = _problem(3, 3, [0.4, 0.6], seed=10, eos=eos)
        for seed in range(4):
            old = _tab(2, 3, 3, seed=11 + seed, scale=2.0, eos=eos)
            for size in (0.05, 0.3, 1.0, 3.0):
                b = trpo_bound(prob, old, _moved(old, 20 + seed, size))
                rows.append(b)
                assert abs(b["gap"]) <= b["C"] * b["max_tv"] ** 2 + 1e-12
                # Pinsker: TV^2 <= KL / 2, so the KL form is weaker still
                assert b["J_new"] >= b["lower_bound_tv"] - 1e-12
                assert b["lower_bound_tv"] >= b["lower_bound"] - 1e-12
    # negative control: the surrogate alone over-estimates J on some steps
    assert min(b["gap"] for b in rows) < -1e-4


def test_trpo_bound_gap_is_second_order_in_the_step():
    prob = _problem(3, 3, [0.4, 0.6], seed=12)
    old = _tab(2, 3, 3, seed=13)
    gaps = [trpo_bound(prob, old, _moved(old, 14, s))["gap"] for s in (0.02, 0.01)]
    assert 3.8 < gaps[0] / gaps[1] < 4.2


def test_trpo_bound_rejects_bad_input():
    prob = _problem(3, 2, [0.5, 0.5], seed=15)
    pol = _tab(2, 3, 2, seed=16)
    discounted = ExactProblem(
        prob.prompts,
        prob.prompt_probs,
        prob.completions,
        prob.mask,
        prob.rewards.unsqueeze(-1).expand(-1, -1, 2).contiguous(),
        gamma=0.9,
    )
    with pytest.raises(ValueError, match="gamma = 1"):
        trpo_bound(discounted, pol, pol)
    with pytest.raises(ValueError, match="problem must be an ExactProblem"):
        trpo_bound("problem", pol, pol)
    with pytest.raises(ValueError, match="policy must be a torch.nn.Module"):
        trpo_bound(prob, pol, "new")


# -- the exact TRPO loop ---------------------------------------------------------------
def _chapter_setup():
    problem, _ = pg.toy.target_sequence_task(
        num_prompts=2, vocab_size=3, length=3, reward="fraction", seed=0
    )
    return problem, _tab(2, 3, 3, seed=1, scale=3.0)


def test_trust_region_ascent_one_iteration_by_hand():
    prob, pol = _chapter_setup()
    start = get_flat_params(pol)
    final, rows = trust_region_ascent(prob, pol, 1, 0.02)
    assert torch.equal(get_flat_params(pol), start)  # the input is not moved
    by_hand = copy.deepcopy(pol)
    step, info = kl_constrained_step(
        prob.fisher(pol), prob.gradient(pol), 0.02, damping=1e-6
    )
    f = trpo_line_search(prob, by_hand, step, 0.02)
    assert torch.equal(get_flat_params(final), get_flat_params(by_hand))
    r0, r1 = rows
    assert r0["iteration"] == 0 and math.isnan(r0["exact_kl"])
    with torch.no_grad():
        J0 = float(prob.objective(pol))
    assert r0["J"] == pytest.approx(J0, abs=1e-15)
    assert r1["fraction"] == f == 1.0
    assert r1["model_kl"] == pytest.approx(info["predicted_kl"], rel=1e-10)
    assert r1["predicted_kl"] == pytest.approx(0.02, rel=1e-10)
    with torch.no_grad():
        kl = float(prob.expected_kl(pol, final))
        J = float(prob.objective(final))
    assert r1["exact_kl"] == pytest.approx(kl, abs=1e-15) and kl <= 0.02
    assert r1["full_step_kl"] == pytest.approx(kl, abs=1e-15)  # nothing shrunk
    assert r1["J"] == pytest.approx(J, abs=1e-15)
    assert r1["grad_norm"] == pytest.approx(float(prob.gradient(final).norm()))
    b = trpo_bound(prob, pol, final)
    assert r1["surrogate"] == b["surrogate"] and r1["lower_bound"] == b["lower_bound"]


def test_trust_region_ascent_path_keeps_the_constraint_and_the_bound():
    prob, pol = _chapter_setup()
    _, rows = trust_region_ascent(prob, pol, 14, 0.02)
    steps = rows[1:]
    J = [r["J"] for r in rows]
    assert all(
        b > a for a, b in zip(J[:-1], J[1:], strict=True)
    )  # every accepted step improves J
    assert all(r["exact_kl"] <= 0.02 for r in steps)
    assert all(r["J"] >= r["lower_bound"] for r in steps)
    for r in steps:
        assert r["predicted_kl"] == pytest.approx(r["fraction"] ** 2 * 0.02)
    # on this path the quadratic model under-predicts the KL of some full steps, and
    # there the line search shrinks them (iterations 10 to 14)
    short = [r for r in steps if r["fraction"] < 1]
    assert short and all(r["full_step_kl"] > 0.02 for r in short)
    assert all(r["full_step_kl"] <= 0.02 for r in steps if r["fraction"] == 1)


def _same(rows_a, rows_b):
    """Equal records (NaN equal to NaN)."""

    def eq(a, b):
        return a == b or (math.isnan(a) and math.isnan(b))

    return len(rows_a) == len(rows_b) and all(
        a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)
        for a, b in zip(rows_a, rows_b, strict=True)
    )


def test_trust_region_ascent_directions():
    prob, pol = _chapter_setup()
    _, steepest = trust_region_ascent(prob, pol, 3, 0.01, direction="steepest")
    _, same = trust_region_ascent(prob, pol, 3, 0.01, direction=lambda F, g: g)
    _, natural = trust_region_ascent(prob, pol, 3, 0.01)
    _, nat_fn = trust_region_ascent(
        prob,
        pol,
        3,
        0.01,
        direction=lambda F, g: natural_gradient(F, g, damping=1e-6),
    )
    assert _same(steepest, same) and _same(natural, nat_fn)
    assert not _same(steepest, natural)
    assert natural[-1]["J"] > steepest[-1]["J"] + 1e-3


def test_trust_region_ascent_rejects_bad_input():
    prob, pol = _chapter_setup()
    cases = [
        (dict(iters=0), "iters"),
        (dict(max_kl=0.0), "max_kl must be > 0"),
        (dict(direction="newton"), "direction must be one of"),
        (dict(direction=3), "direction must be"),
        (dict(direction=lambda F, g: g[:-1]), r"direction\(F, g\) must have shape"),
        (dict(damping=-1.0), "damping must be >= 0"),
    ]
    for kw, match in cases:
        args = {"iters": 2, "max_kl": 0.01, **kw}
        with pytest.raises(ValueError, match=match):
            trust_region_ascent(prob, pol, **args)


def test_trust_region_ascent_record_and_moved():
    prob, pol = _chapter_setup()
    target = prob.completion_index(
        pg.toy.target_sequence_task(
            num_prompts=2, vocab_size=3, length=3, reward="fraction", seed=0
        )[1]
    )
    final, rows = trust_region_ascent(
        prob,
        pol,
        2,
        0.02,
        record=lambda p: {"p_target": float(prob.probs(p)[1, target[1]])},
    )
    with torch.no_grad():
        assert rows[0]["p_target"] == float(prob.probs(pol)[1, target[1]])
        assert rows[-1]["p_target"] == float(prob.probs(final)[1, target[1]])
    with pytest.raises(ValueError, match="record must be callable"):
        trust_region_ascent(prob, pol, 1, 0.02, record=3)
    with pytest.raises(ValueError, match="must return a dict"):
        trust_region_ascent(prob, pol, 1, 0.02, record=lambda p: 1.0)
    # moved: a copy, the original untouched
    start = get_flat_params(pol)
    step = torch.arange(start.numel(), dtype=F64) / 100
    new = pg.exact.trust_region.moved(pol, step)
    assert torch.equal(get_flat_params(pol), start)
    assert torch.equal(get_flat_params(new), start + step)
    with pytest.raises(ValueError, match="step must have shape"):
        pg.exact.trust_region.moved(pol, step[:-1])
