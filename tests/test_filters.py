"""Tests of policygrad.trajectory_side.filters against exact quantities: hand values,
brute-force enumeration, closed forms and their series, Monte Carlo with CLT
tolerances, and autograd."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from policygrad.trajectory_side import (
    aggregate,
    aggregation_weights,
    ppo_clip_loss,
    token_entropy,
)
from policygrad.trajectory_side import filters as F

DT = torch.float64


def batch(seed=0, B=6, T=9, scale=0.4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, 1), generator=g)
    mask = (torch.arange(T) < lengths).to(DT)
    old = -2 + torch.randn(B, T, generator=g, dtype=DT)
    logp = old + scale * torch.randn(B, T, generator=g, dtype=DT)
    adv = 2 * torch.randn(B, T, generator=g, dtype=DT)
    pad = mask == 0
    # garbage on padding: NaN and inf must change nothing
    logp = torch.where(pad, torch.tensor(float("nan"), dtype=DT), logp)
    old = torch.where(pad, torch.tensor(float("inf"), dtype=DT), old)
    adv = torch.where(pad, torch.tensor(float("-inf"), dtype=DT), adv)
    return logp, old, adv, mask


# ---------------------------------------------------------------- informative groups


def test_informative_groups_hand_values():
    r = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 1, 0, 2, 2, 2], dtype=DT)
    assert F.informative_groups(r, 3).tolist() == [False, False, True, False]
    assert F.informative_groups(r, 4).tolist() == [True, True, True]


def test_informative_groups_round_off_is_equal():
    r = torch.tensor([0.3, 0.1 + 0.2, 0.3, 0.3, 0.3, 0.3 + 1e-9], dtype=DT)
    assert (0.1 + 0.2) != 0.3
    assert F.informative_groups(r, 3).tolist() == [False, True]


@pytest.mark.parametrize(
    "rewards, G, msg",
    [
        (torch.ones(4, dtype=DT), 1, "group_size must be >= 2"),
        (torch.ones(5, dtype=DT), 2, "does not divide"),
        (torch.ones(0, dtype=DT), 2, "does not divide"),
        (torch.tensor([1.0, float("nan")], dtype=DT), 2, "NaN"),
        (torch.ones(4, dtype=torch.int64), 2, "floating-point"),
        (torch.ones(2, 2, dtype=DT), 2, "dimension"),
    ],
)
def test_informative_groups_bad_input(rewards, G, msg):
    with pytest.raises(ValueError, match=msg):
        F.informative_groups(rewards, G)


# ---------------------------------------------------------------- expected draws


def test_expected_draws_hand_values():
    e = F.expected_draws_per_informative_group(torch.tensor([0.5, 0.5, 0.25]), 2)
    # q = 1/2, and G = 2, p = 1/4: q = 1 - 1/16 - 9/16 = 6/16
    assert e.dtype == DT
    torch.testing.assert_close(e, torch.tensor([2.0, 2.0, 16 / 6], dtype=DT), rtol=1e-15, atol=0)
    e4 = F.expected_draws_per_informative_group(0.5, 4)
    torch.testing.assert_close(e4, torch.tensor(8 / 7, dtype=DT), rtol=1e-15, atol=0)


def test_expected_draws_endpoints_are_inf_and_symmetric():
    p = torch.tensor([0.0, 1.0, 0.1, 0.9], dtype=DT)
    e = F.expected_draws_per_informative_group(p, 8)
    assert math.isinf(e[0]) and math.isinf(e[1]) and e[0] > 0
    torch.testing.assert_close(e[2], e[3], rtol=1e-14, atol=0)
    assert not bool(torch.isnan(e).any())


@pytest.mark.parametrize("p", [1e-12, 1e-6, 0.01, 0.3, 1 - 1e-9])
@pytest.mark.parametrize("G", [2, 5, 16])
def test_expected_draws_exact_rational(p, G):
    """Relative accuracy against exact rational arithmetic, also where 1 − p^G −
    (1 − p)^G cancels catastrophically."""
    pf = Fraction(p)
    q = 1 - pf**G - (1 - pf) ** G
    exact = float(1 / q)
    got = float(F.expected_draws_per_informative_group(p, G))
    assert got == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("p, G", [(0.3, 4), (0.05, 8), (0.5, 2)])
def test_expected_draws_is_the_geometric_series(p, G):
    """Σ_{k≥1} k q (1 − q)^{k−1} truncated at K, with the tail bounded exactly."""
    q = 1 - p**G - (1 - p) ** G
    K = 2000
    k = torch.arange(1, K + 1, dtype=DT)
    series = float((k * q * (1 - q) ** (k - 1)).sum())
    # tail Σ_{k>K} k q (1-q)^{k-1} = (1-q)^K (K + 1/q)
    tail = (1 - q) ** K * (K + 1 / q)
    got = float(F.expected_draws_per_informative_group(p, G))
    assert got == pytest.approx(series + tail, rel=1e-12)
    assert abs(got - series) <= tail + 1e-12


@pytest.mark.parametrize("p, G", [(0.1, 4), (0.5, 2), (0.02, 16)])
def test_expected_draws_monte_carlo(p, G):
    """Draw groups of G Bernoulli(p) rewards until one is informative; the mean count
    over n replications is within 4 standard errors (Var = (1 − q)/q²)."""
    g = torch.Generator().manual_seed(17)
    n, q = 20000, 1 - p**G - (1 - p) ** G
    counts = torch.zeros(n, dtype=DT)
    todo = torch.ones(n, dtype=torch.bool)
    while bool(todo.any()):
        r = (torch.rand(int(todo.sum()), G, generator=g) < p).to(DT)
        info = F.informative_groups(r.reshape(-1), G)
        counts[todo] += 1
        idx = torch.nonzero(todo).squeeze(1)
        todo[idx[info]] = False
    se = math.sqrt((1 - q) / q**2 / n)
    exact = float(F.expected_draws_per_informative_group(p, G))
    assert abs(float(counts.mean()) - exact) < 4 * se


@pytest.mark.parametrize("p, G, msg", [(0.5, 1, ">= 2"), (1.5, 4, r"\[0, 1\]"), (float("nan"), 4, "p must")])
def test_expected_draws_bad_input(p, G, msg):
    with pytest.raises(ValueError, match=msg):
        F.expected_draws_per_informative_group(p, G)


# ---------------------------------------------------------------- fill_informative


def _r(*groups):
    return torch.tensor([x for grp in groups for x in grp], dtype=DT)


def test_fill_informative_hand_example():
    b1 = _r([1, 1], [0, 1], [0, 0])  # one informative
    b2 = _r([1, 0], [1, 1], [0, 1])  # two
    b3 = _r([0, 1], [0, 1], [0, 1])  # never drawn
    drawn = []

    def gen():
        for b in (b1, b2, b3):
            drawn.append(b)
            yield b

    out = F.fill_informative(gen(), 2, 2)
    assert len(drawn) == 2  # lazy: b3 never generated
    assert [k.tolist() for k in out.keep] == [[False, True, False], [True, False, False]]
    assert (out.n_batches, out.groups_drawn, out.n_informative, out.n_kept) == (2, 6, 3, 2)
    rows = torch.cat([k.repeat_interleave(2) for k in out.keep])
    assert rows.sum() == 4


def test_fill_informative_budget_and_exhaustion():
    dead = _r([1, 1], [0, 0])
    with pytest.raises(ValueError, match="max_batches=3"):
        F.fill_informative(iter([dead] * 10), 1, 2, max_batches=3)
    out = F.fill_informative(iter([dead] * 10), 1, 2, max_batches=3, allow_short=True)
    assert (out.n_batches, out.groups_drawn, out.n_kept) == (3, 6, 0)
    assert all(not bool(k.any()) for k in out.keep)
    with pytest.raises(ValueError, match="ran out"):
        F.fill_informative([dead, _r([0, 1], [1, 1])], 2, 2)
    out = F.fill_informative([dead, _r([0, 1], [1, 1])], 2, 2, allow_short=True)
    assert (out.n_batches, out.n_informative, out.n_kept) == (2, 1, 1)
    # max_batches <= 0: no limit (verl's max_num_gen_batches = 0)
    out = F.fill_informative([dead] * 50 + [_r([0, 1], [0, 1])], 2, 2, max_batches=0)
    assert out.n_batches == 51 and out.groups_drawn == 102


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"batches": torch.ones(4, dtype=DT)}, "iterable"),
        ({"target_groups": 0}, "target_groups"),
        ({"group_size": 1}, ">= 2"),
        ({"max_batches": 1.5}, "max_batches"),
        ({"allow_short": 1}, "allow_short"),
    ],
)
def test_fill_informative_bad_input(kw, msg):
    args = {"batches": [_r([0, 1])], "target_groups": 1, "group_size": 2, **kw}
    with pytest.raises(ValueError, match=msg):
        F.fill_informative(args.pop("batches"), args.pop("target_groups"), args.pop("group_size"), **args)


def test_fill_informative_cost_matches_expected_draws():
    """Groups drawn per kept group, Monte Carlo over sampled batches, against 1/q.

    The cost of one fill is a sum of `target` geometric draws minus the unused tail of
    the last batch; with batches of one group it is exactly the sum of geometrics."""
    p, G, target, n = 0.15, 4, 8, 800
    g = torch.Generator().manual_seed(3)

    def batches():
        while True:
            yield (torch.rand(G, generator=g) < p).to(DT)

    costs = [F.fill_informative(batches(), target, G).groups_drawn for _ in range(n)]
    q = 1 - p**G - (1 - p) ** G
    mean = sum(costs) / n / target
    se = math.sqrt((1 - q) / q**2 / (n * target))
    assert abs(mean - float(F.expected_draws_per_informative_group(p, G))) < 4 * se


# ---------------------------------------------------------------- truncation mask


def test_truncation_loss_mask_hand():
    m = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=DT)
    t = torch.tensor([False, True, False])
    out = F.truncation_loss_mask(m, t)
    assert out.dtype == DT
    assert out.tolist() == [[1, 1, 0], [0, 0, 0], [1, 0, 0]]
    outb = F.truncation_loss_mask(m.bool(), t)
    assert outb.dtype == torch.bool and outb.tolist() == out.bool().tolist()
    # token-mean over the remaining tokens; a seq-mean keeps B = 3
    x = torch.tensor([[1.0, 2, 9], [5, 5, 5], [4, 9, 9]], dtype=DT)
    assert float(aggregate(x, out, "token-mean")) == pytest.approx(7 / 3)
    assert float(aggregate(x, out, "seq-mean-token-mean")) == pytest.approx((1.5 + 0 + 4) / 3)
    all_cut = F.truncation_loss_mask(m, torch.ones(3, dtype=torch.bool))
    assert float(aggregate(x, all_cut, "token-mean")) == 0.0


@pytest.mark.parametrize(
    "m, t, msg",
    [
        (torch.ones(2, 3), torch.tensor([1, 0]), "bool tensor"),
        (torch.ones(2, 3), torch.tensor([True]), "bool tensor"),
        (torch.full((2, 3), 0.5), torch.tensor([True, False]), "0 and 1"),
        (torch.ones(3), torch.tensor([True]), "dimension"),
    ],
)
def test_truncation_loss_mask_bad_input(m, t, msg):
    with pytest.raises(ValueError, match=msg):
        F.truncation_loss_mask(m, t)


# ---------------------------------------------------------------- 80/20 mask


def test_high_entropy_mask_hand_distinct():
    # 10 trained tokens with entropies 0..9 (two rows), garbage on padding
    H = torch.tensor([[0.0, 5, 2, 7, 4, float("nan")], [9.0, 1, 3, 6, 8, 1e9]])
    m = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])
    out = F.high_entropy_token_mask(H, m, 0.2)
    # n − ⌈(n − 1)(1 − ρ)⌉ = 10 − ⌈7.2⌉ = 2: entropies 8 and 9
    assert out.tolist() == [[False] * 6, [True, False, False, False, True, False]]
    assert int(F.high_entropy_token_mask(H, m, 0.5).sum()) == 10 - math.ceil(4.5)
    assert int(F.high_entropy_token_mask(H, m, 1 / 3).sum()) == 4  # h = 6 exactly: 10 − 6
    assert F.high_entropy_token_mask(H, m, 1.0).tolist() == m.bool().tolist()
    assert F.high_entropy_token_mask(H, m, 0.0).tolist() == (H == 9).tolist()


def test_high_entropy_mask_ties_all_kept():
    H = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    m = torch.ones(1, 5)
    # threshold quantile(0.8) = 2 (indices 3.2 of sorted [0.5, 1, 2, 2, 2])
    assert F.high_entropy_token_mask(H, m, 0.2).tolist() == [[False, True, True, True, False]]
    assert F.high_entropy_token_mask(H, m, 0.0).sum() == 3  # every maximum


def test_high_entropy_mask_empty_and_threshold_over_real_tokens():
    H = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert not bool(F.high_entropy_token_mask(H, torch.zeros(2, 2), 0.2).any())
    # the padded entropies (huge) do not move the threshold
    m = torch.tensor([[1, 1], [0, 0]])
    H2 = torch.tensor([[1.0, 2.0], [1e6, 1e6]])
    assert F.high_entropy_token_mask(H2, m, 0.5).tolist() == [[False, True], [False, False]]


@pytest.mark.parametrize("seed", range(6))
def test_quantile_is_torch_quantile(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 400, (1,), generator=g))
    for dt in (torch.float32, DT):
        x = torch.rand(n, generator=g).to(dt)
        for q in (0.0, 0.2, 0.5, 0.8, 0.93, 1.0):
            assert torch.equal(F._quantile(x, q), torch.quantile(x, q))


@pytest.mark.parametrize("rho", [-0.1, 1.1, float("nan"), True])
def test_high_entropy_mask_bad_fraction(rho):
    with pytest.raises(ValueError, match="top_fraction"):
        F.high_entropy_token_mask(torch.ones(1, 2), torch.ones(1, 2), rho)


def test_high_entropy_mask_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        F.high_entropy_token_mask(torch.tensor([[float("nan")]]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="shape"):
        F.high_entropy_token_mask(torch.ones(1, 2), torch.ones(1, 3))


# ---------------------------------------------------------------- Clip-Cov


def _brute_candidates(logp, old, adv, mask, lo, hi, lb, ub):
    """Clip-Cov's candidate set by explicit loops over tokens."""
    B, T = mask.shape
    toks = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]
    n = len(toks)
    mA = sum(float(adv[i, t]) for i, t in toks) / n
    mL = sum(float(logp[i, t]) for i, t in toks) / n
    out = []
    for i, t in toks:
        a, r = float(adv[i, t]), math.exp(float(logp[i, t] - old[i, t]))
        clipped = -a * min(max(r, 1 - lo), 1 + hi) > -a * r
        c = (a - mA) * (float(logp[i, t]) - mL)
        if not clipped and lb < c < ub:
            out.append((i, t))
    return out, n


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_selection_is_a_random_subset_of_the_band(seed):
    logp, old, adv, mask = batch(seed, B=8, T=12, scale=0.5)
    kw = {"eps_low": 0.2, "eps_high": 0.28, "clip_cov_ratio": 0.05, "clip_cov_lb": 0.3, "clip_cov_ub": 4.0}
    cand, n = _brute_candidates(logp, old, adv, mask, 0.2, 0.28, 0.3, 4.0)
    assert len(cand) >= 3
    sel = F.clip_cov_selection(logp, old, adv, mask, generator=torch.Generator().manual_seed(1), **kw)
    picked = [tuple(x) for x in torch.nonzero(sel).tolist()]
    assert set(picked) <= set(cand)
    assert len(picked) == min(max(int(0.05 * n), 1), len(cand))
    again = F.clip_cov_selection(logp, old, adv, mask, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(sel, again)


def test_clip_cov_selection_is_uniform_over_candidates():
    """Each of the K candidates is picked with probability k/K: frequencies over
    n seeds within 4.5 binomial standard errors."""
    logp, old, adv, mask = batch(2, B=8, T=12, scale=0.5)
    kw = {"clip_cov_ratio": 0.03, "clip_cov_lb": 0.3, "clip_cov_ub": 4.0}
    cand, ntok = _brute_candidates(logp, old, adv, mask, 0.2, 0.2, 0.3, 4.0)
    K, k, n = len(cand), max(int(0.03 * ntok), 1), 3000
    assert k < K
    g = torch.Generator().manual_seed(0)
    freq = torch.zeros(mask.shape, dtype=DT)
    for _ in range(n):
        freq += F.clip_cov_selection(logp, old, adv, mask, generator=g, **kw).to(DT)
    p = k / K
    se = math.sqrt(p * (1 - p) / n)
    for i, t in cand:
        assert abs(float(freq[i, t]) / n - p) < 4.5 * se
    assert float(freq.sum()) == n * k


def test_clip_cov_selection_edge_cases():
    logp, old, adv, mask = batch(0)
    empty = torch.zeros_like(mask)
    assert not bool(F.clip_cov_selection(logp, old, adv, empty).any())
    # a band no token reaches
    sel = F.clip_cov_selection(logp, old, adv, mask, clip_cov_lb=1e6, clip_cov_ub=1e7)
    assert not bool(sel.any())
    for kw, msg in [
        ({"clip_cov_ratio": 0.0}, "clip_cov_ratio"),
        ({"clip_cov_ratio": 1.5}, "clip_cov_ratio"),
        ({"clip_cov_lb": 2.0, "clip_cov_ub": 1.0}, "clip_cov_lb must be <"),
        ({"generator": 3}, "generator"),
        ({"eps_low": 1.0}, "eps_low"),
    ]:
        with pytest.raises(ValueError, match=msg):
            F.clip_cov_selection(logp, old, adv, mask, **kw)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "token-sum"])
def test_clip_cov_loss_is_ppo_without_the_selected_tokens(aggregation):
    logp, old, adv, mask = batch(1, B=8, T=12, scale=0.5)
    kw = {"clip_cov_ratio": 0.05, "clip_cov_lb": 0.3, "clip_cov_ub": 4.0}
    sel = F.clip_cov_selection(logp, old, adv, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert bool(sel.any())
    x = torch.where(mask.bool(), logp, torch.zeros_like(logp)).requires_grad_()
    x_nan = torch.where(mask.bool(), x, torch.tensor(float("nan"), dtype=DT))
    loss, stats, tl = F.clip_cov_loss(
        x_nan, old, adv, mask, generator=torch.Generator().manual_seed(4), aggregation=aggregation, per_token=True, **kw
    )
    (g,) = torch.autograd.grad(loss, x)
    # the reference: PPO's per-token loss, the selected tokens' mask kept but loss 0
    y = x.detach().clone().requires_grad_()
    _, _, ref = ppo_clip_loss(y, old, adv, mask, aggregation=aggregation, per_token=True)
    ref_loss = (torch.where(sel, 0.0, ref.values) * ref.weights).sum()
    (gr,) = torch.autograd.grad(ref_loss, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, gr, rtol=1e-12, atol=1e-12)
    assert bool((g[sel] == 0).all()) and bool(torch.isfinite(g).all())
    assert stats["n_cov_selected"] == int(sel.sum())
    assert stats["cov_clip_frac"] == int(sel.sum()) / int(mask.sum())
    assert bool((tl.values[sel] == 0).all())


# ---------------------------------------------------------------- KL-Cov


@pytest.mark.parametrize("seed", range(3))
def test_kl_cov_selection_is_the_top_k(seed):
    logp, old, adv, mask = batch(seed, B=8, T=12)
    toks = [(i, t) for i in range(8) for t in range(12) if mask[i, t]]
    n = len(toks)
    mA = sum(float(adv[i, t]) for i, t in toks) / n
    mL = sum(float(logp[i, t]) for i, t in toks) / n
    cov = {(i, t): (float(adv[i, t]) - mA) * (float(logp[i, t]) - mL) for i, t in toks}
    k = max(1, int(n * 0.1))
    top = sorted(toks, key=lambda it: -cov[it])[:k]
    sel = F.kl_cov_selection(logp, adv, mask, kl_cov_ratio=0.1)
    assert {tuple(x) for x in torch.nonzero(sel).tolist()} == set(top)


def test_kl_cov_selection_ties_and_edges():
    logp = torch.tensor([[-1.0, -1.0, -1.0, -3.0]], dtype=DT)
    adv = torch.tensor([[1.0, 1.0, 1.0, -3.0]], dtype=DT)
    m = torch.ones(1, 4)
    # scores (A − 0)(log π + 1.5): 0.5, 0.5, 0.5, 4.5; k = max(1, int(4 * 0.5)) = 2:
    # the 4.5, then the first of the three tied 0.5 in row order
    assert F.kl_cov_selection(logp, adv, m, kl_cov_ratio=0.5).tolist() == [[True, False, False, True]]
    assert F.kl_cov_selection(logp, adv, m, kl_cov_ratio=0.75).tolist() == [[True, True, False, True]]
    # k = 1 at the smallest ratio
    assert int(F.kl_cov_selection(logp, adv, m, kl_cov_ratio=1e-9).sum()) == 1
    assert not bool(F.kl_cov_selection(logp, adv, torch.zeros(1, 4)).any())
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        F.kl_cov_selection(logp, adv, m, kl_cov_ratio=0.0)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-sum"])
def test_kl_cov_loss_hand_formula_and_gradient(aggregation):
    logp, old, adv, mask = batch(3, B=8, T=12)
    x = torch.where(mask.bool(), logp, torch.zeros_like(logp)).requires_grad_()
    x_in = torch.where(mask.bool(), x, torch.tensor(float("nan"), dtype=DT))
    sel = F.kl_cov_selection(x_in.detach(), adv, mask, kl_cov_ratio=0.1)
    loss, stats = F.kl_cov_loss(x_in, old, adv, mask, kl_cov_ratio=0.1, kl_coef=0.7, aggregation=aggregation)
    (g,) = torch.autograd.grad(loss, x)
    # hand: L = −rA + β|log r| on S; dL/dlogp = −rA + β sign(log r) on S; times the weights
    mb = mask.bool()
    lr = torch.where(mb, x.detach() - old, torch.zeros_like(x))
    A = torch.where(mb, adv, torch.zeros_like(adv))
    per = -lr.exp() * A + 0.7 * lr.abs() * sel
    w = aggregation_weights(mask, aggregation, dtype=DT)
    torch.testing.assert_close(loss, (torch.where(mb, per, 0.0) * w).sum(), rtol=1e-12, atol=1e-12)
    dper = -lr.exp() * A + 0.7 * lr.sign() * sel
    torch.testing.assert_close(g, torch.where(mb, dper, 0.0) * w, rtol=1e-12, atol=1e-12)
    n = int(mask.sum())
    assert stats["n_kl_selected"] == int(sel.sum()) == max(1, int(n * 0.1))
    assert stats["abs_kl"] == pytest.approx(float(lr.abs().sum()) / n)
    with pytest.raises(ValueError, match="kl_coef"):
        F.kl_cov_loss(x_in, old, adv, mask, kl_coef=-1.0)


def test_kl_cov_loss_empty_mask_is_zero():
    logp, old, adv, mask = batch(0)
    x = logp.nan_to_num().requires_grad_()
    loss, stats = F.kl_cov_loss(x, old, adv, torch.zeros_like(mask))
    (g,) = torch.autograd.grad(loss, x)
    assert float(loss.detach()) == 0.0 and not bool(g.any()) and stats["n_kl_selected"] == 0


# ---------------------------------------------------------------- entropy bonus


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "token-sum"])
def test_entropy_bonus_loss(aggregation):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=g, dtype=DT, requires_grad=True)
    Ht = token_entropy(logits)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=DT)
    Hn = torch.where(mask.bool(), Ht, torch.tensor(float("nan"), dtype=DT))
    loss = F.entropy_bonus_loss(Hn, mask, 0.03, aggregation)
    w = aggregation_weights(mask, aggregation, dtype=DT)
    expect = -0.03 * (torch.where(mask.bool(), Ht, 0.0) * w).sum()
    torch.testing.assert_close(loss, expect, rtol=1e-12, atol=1e-14)
    (gl,) = torch.autograd.grad(loss, logits)
    assert bool(torch.isfinite(gl).all()) and bool((gl[0, 2:] == 0).all())
    assert float(F.entropy_bonus_loss(Hn, torch.zeros_like(mask), 0.03).detach()) == 0.0
    for coef in (-0.1, float("inf"), None):
        with pytest.raises(ValueError, match="coef"):
            F.entropy_bonus_loss(Hn, mask, coef)


def test_adaptive_entropy_controller_hand_sequence():
    c = F.AdaptiveEntropyController(init_coef=0.0, target=1.0, delta=0.25, coef_min=0.0, coef_max=0.6)
    assert c.applied == 0.0  # no measurement yet
    out = [c.update(h) for h in (2.0, 0.5, 0.9, 1.0, 0.1, 3.0, 3.0, 3.0)]
    coefs = [0.0, 0.25, 0.5, 0.6, 0.6, 0.35, 0.1, 0.0]
    assert out == pytest.approx([0.0, 0.25, 0.5, 0.6, 0.6, 0.0, 0.0, 0.0])
    assert c.coef == pytest.approx(coefs[-1])
    assert c.last_entropy == 3.0


def test_adaptive_entropy_controller_defaults_and_bad_input():
    c = F.AdaptiveEntropyController()
    assert (c.coef, c.target, c.delta, c.coef_min, c.coef_max) == (0.0, 0.2, 0.005, 0.0, 1.0)
    assert c.update(0.1) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="coef_min must be <="):
        F.AdaptiveEntropyController(coef_min=0.5, coef_max=0.1)
    with pytest.raises(ValueError, match="delta"):
        F.AdaptiveEntropyController(delta=-1.0)
    with pytest.raises(ValueError, match="entropy"):
        c.update(float("nan"))
