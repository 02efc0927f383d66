"""Tests for policygrad.reward_side.variants (the reward-side variants after GRPO) and their methods.

Every advantage is checked against hand values and against a plain Python loop over the groups (no
tensor ops), plus its edge cases: all-equal groups give exactly 0, a group of one is a ValueError, bad
input is a ValueError naming it. pass@k is checked against brute-force enumeration of k Bernoulli
samples and its weight against autograd. On an enumerable TinyGPT, RLOO and ReMax are exactly unbiased
and Dr.GRPO's group mean shrinks the expected gradient by exactly (G-1)/G.
"""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
import torch
from test_methods import _all_items, _enumerable

import policygrad as pg
from policygrad import reward_side as rs
from policygrad.exact import flat_grad, flat_params
from policygrad.methods import METHODS, Recipe, Unsupported, get_method, reinforce_loss
from policygrad.rollout import RolloutBatch

F64 = torch.float64
G = 4
R = torch.tensor(
    [1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 0.0, 0.0], dtype=F64
)
LENGTHS = torch.tensor([3, 1, 2, 4, 2, 2, 1, 3, 4, 2, 1, 3])
MASK = (torch.arange(4) < LENGTHS[:, None]).to(F64)


def _groups(x):
    return [x[i : i + G].tolist() for i in range(0, len(x), G)]


def _flat(groups):
    return torch.tensor([v for g in groups for v in g], dtype=F64)


# -- hand values -------------------------------------------------------------------------------------------


def test_hand_values():
    r = torch.tensor(
        [1.0, 0.0, 0.0, 1.0], dtype=F64
    )  # one group, mean 0.5, Bessel std 1/sqrt(3)
    torch.testing.assert_close(
        rs.rloo_advantages(r, 4), torch.tensor([2, -2, -2, 2.0], dtype=F64) / 3
    )
    torch.testing.assert_close(
        rs.dr_grpo_advantages(r, 4), torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=F64)
    )
    # two groups [1, 0] and [3, 3]: batch std of [1, 0, 3, 3] (Bessel) = sqrt(2.25) = 1.5
    r2 = torch.tensor([1.0, 0.0, 3.0, 3.0], dtype=F64)
    torch.testing.assert_close(
        rs.batch_std_advantages(r2, 2, eps=0.0),
        torch.tensor([1 / 3, -1 / 3, 0, 0], dtype=F64),
    )
    # OPO: lengths 1 and 3, rewards 1 and 0: b = 1/4, A = (3/4, -1/4)
    torch.testing.assert_close(
        rs.opo_advantages(torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([1, 3]), 2),
        torch.tensor([0.75, -0.25], dtype=F64),
    )
    # GPG: 2 of 4 rewards nonzero, alpha = 2
    torch.testing.assert_close(
        rs.gpg_advantages(r, 4), torch.tensor([1, -1, -1, 1.0], dtype=F64)
    )
    # pass@k: [0, 1, 0, 0]: best gets (1 - 0) / (std + eps), std = 0.5 (Bessel)
    one = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(
        rs.passk_advantages(one, 4, eps=0.0), torch.tensor([0, 2, 0, 0.0], dtype=F64)
    )
    torch.testing.assert_close(
        rs.passk_advantages(r, 4), torch.zeros(4, dtype=F64)
    )  # a tie at the top
    torch.testing.assert_close(
        rs.remax_advantages(r, torch.full((4,), 1.0, dtype=F64)),
        torch.tensor([0, -1, -1, 0.0], dtype=F64),
    )
    # overlong: L_max 10, L_cache 4: 6 -> 0, 8 -> -0.5, 10 -> -1, 11 -> -1
    torch.testing.assert_close(
        rs.overlong_penalty(torch.tensor([0, 6, 7, 8, 10, 11], dtype=F64), 10, 4),
        torch.tensor([0, 0, -0.25, -0.5, -1, -1], dtype=F64),
    )
    torch.testing.assert_close(
        rs.pass_at_k(torch.tensor([0.5], dtype=F64), 3),
        torch.tensor([0.875], dtype=F64),
    )
    torch.testing.assert_close(
        rs.pass_at_k_weight(torch.tensor([0.5], dtype=F64), 3),
        torch.tensor([0.75], dtype=F64),
    )


# -- against a python loop ---------------------------------------------------------------------------------


def test_group_advantages_match_a_python_loop():
    gs = _groups(R)
    rloo = [[r - (sum(g) - r) / (G - 1) for r in g] for g in gs]
    dr = [[r - sum(g) / G for r in g] for g in gs]
    sd = statistics.stdev(R.tolist())
    batch = [[(r - sum(g) / G) / (sd + 1e-4) for r in g] for g in gs]
    lens = _groups(LENGTHS.to(F64))
    opo = [
        [r - sum(w * x for w, x in zip(ls, g, strict=True)) / sum(ls) for r in g]
        for g, ls in zip(gs, lens, strict=True)
    ]
    alpha = len(R) / sum(1 for r in R.tolist() if r != 0)
    gpg = [[alpha * (r - sum(g) / G) for r in g] for g in gs]
    passk = []
    for g in gs:
        top = sorted(g, reverse=True)
        std = statistics.stdev(g)
        best = g.index(top[0])
        passk.append(
            [(top[0] - top[1]) / (std + 1e-6) if i == best else 0.0 for i in range(G)]
        )
    exact = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(rs.rloo_advantages(R, G), _flat(rloo), **exact)
    torch.testing.assert_close(rs.dr_grpo_advantages(R, G), _flat(dr), **exact)
    torch.testing.assert_close(rs.batch_std_advantages(R, G), _flat(batch), **exact)
    torch.testing.assert_close(rs.opo_advantages(R, LENGTHS, G), _flat(opo), **exact)
    torch.testing.assert_close(rs.gpg_advantages(R, G), _flat(gpg), **exact)
    torch.testing.assert_close(rs.passk_advantages(R, G), _flat(passk), **exact)
    informative = sum(G for g in gs if max(g) > min(g))
    torch.testing.assert_close(
        rs.gpg_advantages(R, G, count="informative"),
        _flat(dr) * len(R) / informative,
        **exact,
    )


def _whiten_loop(rows):
    """rows: list of per-token value lists (trained tokens only) -> whitened, Bessel std."""
    flat = [v for row in rows for v in row]
    mu, sd = statistics.mean(flat), statistics.stdev(flat)
    return [[(v - mu) / sd for v in row] for row in rows]


def _pad(rows):
    out = torch.zeros(len(rows), MASK.shape[1], dtype=F64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=F64)
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_reinforce_pp_matches_a_python_loop(gamma):
    n = LENGTHS.tolist()
    returns = [
        [R[i].item() * gamma ** (n[i] - 1 - t) for t in range(n[i])]
        for i in range(len(n))
    ]
    want = _pad(_whiten_loop(returns))
    torch.testing.assert_close(
        rs.reinforce_pp_advantages(R, MASK, gamma=gamma), want, rtol=1e-12, atol=1e-12
    )


def test_reinforce_pp_baseline_matches_a_python_loop():
    gs = _groups(R)
    centred = [r - sum(g) / G for g in gs for r in g]
    rows = [[centred[i]] * int(LENGTHS[i]) for i in range(len(centred))]
    want = _pad(_whiten_loop(rows))
    got = rs.reinforce_pp_baseline_advantages(R, G, MASK)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the token-weighted whitening re-centres: the constant group no longer gets 0
    assert float(got[G : 2 * G][MASK[G : 2 * G] > 0].abs().min()) > 0.01


def test_gdpo_matches_a_python_loop():
    c2 = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1], dtype=F64)
    comps = torch.stack([R, c2], 1)
    w = [0.5, 2.0]
    summed = [0.0] * len(R)
    for k in range(2):
        for gi, g in enumerate(_groups(comps[:, k])):
            mu, sd = statistics.mean(g), statistics.stdev(g)
            for j, v in enumerate(g):
                summed[gi * G + j] += w[k] * (
                    0.0 if max(g) == min(g) else (v - mu) / (sd + 1e-6)
                )
    mu, sd = statistics.mean(summed), statistics.stdev(summed)
    want = torch.tensor([(s - mu) / (sd + 1e-4) for s in summed], dtype=F64)
    wt = torch.tensor(w, dtype=F64)
    torch.testing.assert_close(
        rs.gdpo_advantages(comps, G, weights=wt), want, rtol=1e-12, atol=1e-12
    )
    tokens = _pad(
        _whiten_loop([[summed[i]] * int(LENGTHS[i]) for i in range(len(summed))])
    )
    torch.testing.assert_close(
        rs.gdpo_advantages(comps, G, weights=wt, mask=MASK),
        tokens,
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("cache", [0, 3, 10])
def test_overlong_penalty_matches_a_python_loop(cache):
    L = 10
    lengths = list(range(L + 3))

    def loop(n):
        if n <= L - cache:
            return 0.0
        return (L - cache - n) / cache if n <= L else -1.0

    got = rs.overlong_penalty(torch.tensor(lengths, dtype=F64), L, cache, factor=0.5)
    torch.testing.assert_close(
        got, 0.5 * torch.tensor([loop(n) for n in lengths], dtype=F64)
    )


# -- pass@k ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4])
def test_pass_at_k_by_enumeration_and_its_weight_by_autograd(k):
    p = torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0], dtype=F64)
    brute = []
    for q in p.tolist():  # P(at least one success) over all 2^k outcomes
        total = 0.0
        for outcome in itertools.product([0, 1], repeat=k):
            prob = math.prod(q if o else 1 - q for o in outcome)
            total += prob * (1.0 if any(outcome) else 0.0)
        brute.append(total)
    torch.testing.assert_close(
        rs.pass_at_k(p, k), torch.tensor(brute, dtype=F64), rtol=1e-12, atol=1e-12
    )
    x = p.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rs.pass_at_k(x, k).sum(), x)
    torch.testing.assert_close(rs.pass_at_k_weight(p, k), g, rtol=1e-12, atol=1e-12)


# -- edge cases -----------------------------------------------------------------------------------------------


GROUPED = {
    "rloo": lambda r, g: rs.rloo_advantages(r, g),
    "dr_grpo": lambda r, g: rs.dr_grpo_advantages(r, g),
    "batch_std": lambda r, g: rs.batch_std_advantages(r, g),
    "opo": lambda r, g: rs.opo_advantages(r, torch.arange(1, len(r) + 1), g),
    "gpg": lambda r, g: rs.gpg_advantages(r, g),
    "gpg_informative": lambda r, g: rs.gpg_advantages(r, g, count="informative"),
    "passk": lambda r, g: rs.passk_advantages(r, g),
    "rf++_baseline": lambda r, g: rs.reinforce_pp_baseline_advantages(
        r, g, torch.ones(len(r), 3)
    ),
    "gdpo": lambda r, g: rs.gdpo_advantages(r[:, None], g),
}


@pytest.mark.parametrize("name", list(GROUPED))
def test_all_equal_groups_give_exact_zeros_and_groups_of_one_are_refused(name):
    fn = GROUPED[name]
    # equal up to round-off: 0.1 + 0.2 != 0.3 in the last bit
    r = torch.tensor([0.1 + 0.2, 0.3, 0.3, 0.1 + 0.2, 5.0, 5.0, 5.0, 5.0], dtype=F64)
    out = fn(r, 4)
    assert torch.equal(out, torch.zeros_like(out)), name
    assert not bool(torch.isnan(out).any())
    with pytest.raises(ValueError, match="group_size >= 2"):
        fn(torch.tensor([1.0, 0.0], dtype=F64), 1)
    with pytest.raises(ValueError, match="does not divide"):
        fn(torch.tensor([1.0, 0.0, 1.0], dtype=F64), 2)
    with pytest.raises(ValueError, match="rewards|components"):
        fn(torch.tensor([float("nan"), 0.0], dtype=F64), 2)


def test_other_edge_cases():
    r = torch.tensor([1.0, 0.0, 2.0, 2.0], dtype=F64)
    # OPO: a group whose completions are all empty trains nothing and gets 0
    torch.testing.assert_close(
        rs.opo_advantages(r, torch.tensor([0, 0, 3, 1]), 2), torch.zeros(4, dtype=F64)
    )
    with pytest.raises(ValueError, match="non-negative"):
        rs.opo_advantages(r, torch.tensor([1, -1, 1, 1]), 2)
    with pytest.raises(ValueError, match="lengths must have the shape"):
        rs.opo_advantages(r, torch.tensor([1, 1]), 2)
    # REINFORCE++: empty mask, one token, constant returns -> zeros; bad gamma
    z = torch.zeros(4, 3)
    assert torch.equal(rs.reinforce_pp_advantages(r, z), torch.zeros(4, 3, dtype=F64))
    one = torch.zeros(4, 3)
    one[0, 0] = 1
    assert torch.equal(rs.reinforce_pp_advantages(r, one), torch.zeros(4, 3, dtype=F64))
    assert torch.equal(
        rs.reinforce_pp_advantages(torch.full((4,), 0.7), torch.ones(4, 3)),
        torch.zeros(4, 3),
    )
    with pytest.raises(ValueError, match="gamma"):
        rs.reinforce_pp_advantages(r, torch.ones(4, 3), gamma=1.5)
    with pytest.raises(ValueError, match="mask must have shape"):
        rs.reinforce_pp_advantages(r, torch.ones(3, 3))
    # batch std: a constant batch gives zeros
    assert torch.equal(rs.batch_std_advantages(torch.ones(4), 2), torch.zeros(4))
    # ReMax: shapes must match; an equal reward gives exactly 0
    with pytest.raises(ValueError, match="greedy_rewards must have the shape"):
        rs.remax_advantages(r, r[:2])
    assert torch.equal(rs.remax_advantages(r, r.clone()), torch.zeros(4, dtype=F64))
    # GPG: bad count, zero f_norm, an all-zero batch keeps alpha = N (and gives zeros)
    with pytest.raises(ValueError, match="count must be one of"):
        rs.gpg_advantages(r, 2, count="all")
    with pytest.raises(ValueError, match="f_norm"):
        rs.gpg_advantages(r, 2, f_norm=0.0)
    assert torch.equal(rs.gpg_advantages(torch.zeros(4), 2), torch.zeros(4))
    # GDPO: weights must match the components, at least one component
    with pytest.raises(ValueError, match="weights must have shape"):
        rs.gdpo_advantages(torch.zeros(4, 2), 2, weights=torch.ones(3))
    with pytest.raises(ValueError, match="no column"):
        rs.gdpo_advantages(torch.zeros(4, 0), 2)
    # pass@k: p outside [0, 1], k not a positive integer
    with pytest.raises(ValueError, match="p must lie"):
        rs.pass_at_k(torch.tensor([1.5]), 2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rs.pass_at_k_weight(torch.tensor([0.5]), 0)
    # overlong: the cache must fit in L_max, lengths non-negative
    with pytest.raises(ValueError, match="cache_len"):
        rs.overlong_penalty(torch.tensor([3]), 4, 5)
    with pytest.raises(ValueError, match="non-negative"):
        rs.overlong_penalty(torch.tensor([-1]), 4, 2)


# -- the registered methods -----------------------------------------------------------------------------------

NEW = (
    "rloo",
    "dr_grpo",
    "grpo_batch_std",
    "reinforce_pp",
    "reinforce_pp_baseline",
    "opo",
    "gpg",
    "grpo_passk",
)


def test_the_variants_are_registered_with_their_sides_and_recipes():
    for name in NEW:
        m = get_method(name)
        assert (
            m.section.startswith("sec-variants-") and m.paper and m.why and m.unsolved
        )
        assert isinstance(m.trl, (Recipe, Unsupported)) and isinstance(
            m.verl, (Recipe, Unsupported)
        )
        if name == "dr_grpo":
            assert m.changes == ("reward", "trajectory")
            assert (
                m.extra["aggregation"] == "seq-mean-token-sum-norm"
                and m.extra["scale"] is None
            )
            assert "aggregation" in m.why
        else:
            assert m.changes == ("reward",) and m.loss is reinforce_loss
    # the three that read more than the rewards (tests/test_remax_gdpo_otb.py)
    assert METHODS["remax"].greedy_baseline and METHODS["remax"].group_size == 1
    assert METHODS["optimal_token_baseline"].needs_sum_pi_squared
    assert not any(
        METHODS[n].greedy_baseline or METHODS[n].needs_sum_pi_squared for n in NEW
    )
    assert (
        isinstance(get_method("rloo").trl, Recipe)
        and get_method("rloo").trl.trainer == "trl.RLOOTrainer"
    )
    assert pg.methods.to_trl("grpo_batch_std")["scale_rewards"] == "batch"
    assert "algorithm.adv_estimator=grpo_passk" in pg.methods.to_verl("grpo_passk")


def test_method_advantages_on_a_batch():
    """Each wrapper gives its function's numbers on every trained token (loss mask, not mask)."""
    B = len(R)
    loss_mask = MASK.clone()
    loss_mask[0, 0] = 0
    batch = RolloutBatch(
        prompts=torch.zeros(B, 1, dtype=torch.long),
        completions=torch.zeros(B, 4, dtype=torch.long),
        mask=MASK,
        loss_mask=loss_mask,
        old_log_probs=torch.zeros(B, 4, dtype=F64),
        ref_log_probs=None,
        rewards=R,
        group_ids=torch.arange(B) // G,
        truncated=torch.zeros(B, dtype=torch.bool),
    )
    tok = rs.broadcast_to_tokens
    want = {
        "rloo": tok(rs.rloo_advantages(R, G), loss_mask),
        "grpo_batch_std": tok(rs.batch_std_advantages(R, G), loss_mask),
        "reinforce_pp": rs.reinforce_pp_advantages(R, loss_mask),
        "reinforce_pp_baseline": rs.reinforce_pp_baseline_advantages(R, G, loss_mask),
        "opo": tok(rs.opo_advantages(R, loss_mask.sum(-1), G), loss_mask),
        "gpg": tok(rs.gpg_advantages(R, G), loss_mask),
        "grpo_passk": tok(rs.passk_advantages(R, G), loss_mask),
        "dr_grpo": tok(rs.dr_grpo_advantages(R, G), loss_mask),
    }
    for name, w in want.items():
        torch.testing.assert_close(
            get_method(name).advantages(batch), w, rtol=1e-12, atol=1e-12
        )


# -- exact expectations on an enumerable TinyGPT ----------------------------------------------------------------


def _group_expectation(advantages, greedy=None):
    """Exact E over a prompt x ~ rho and two completions y_a, y_b ~ p(.|x) i.i.d. (a group of G = 2) of the
    gradient of reinforce_loss with ``advantages(rewards, batch)``."""
    model, problem = _enumerable()
    prompts, comp, mask, logp, q, Rall = _all_items(model, problem)
    K = problem.num_completions
    with torch.no_grad():
        p = problem.probs(model)
    total = 0.0
    for x in range(problem.num_prompts):
        for a, b in itertools.product(range(K), repeat=2):
            idx = torch.tensor([x * K + a, x * K + b])
            batch = RolloutBatch(
                prompts=prompts[idx],
                completions=comp[idx],
                mask=mask[idx],
                loss_mask=mask[idx],
                old_log_probs=logp[idx].detach(),
                ref_log_probs=None,
                rewards=Rall[idx],
                group_ids=torch.zeros(2, dtype=torch.long),
                truncated=torch.zeros(2, dtype=torch.bool),
            )
            A = rs.broadcast_to_tokens(advantages(Rall[idx], x), mask[idx])
            loss, _ = reinforce_loss(logp[idx], batch, A)
            total = total + problem.prompt_probs[x] * p[x, a] * p[x, b] * loss
    return flat_grad(total, flat_params(model)), -problem.gradient(model)


def test_rloo_and_remax_are_exactly_unbiased_and_dr_grpo_shrinks_by_g_minus_1_over_g():
    g, truth = _group_expectation(lambda r, x: rs.rloo_advantages(r, 2))
    torch.testing.assert_close(g, truth, atol=1e-12, rtol=1e-9)
    greedy = torch.tensor(
        [0.3, 0.9], dtype=F64
    )  # any reward that depends on the prompt only
    g, _ = _group_expectation(lambda r, x: rs.remax_advantages(r, greedy[x].expand(2)))
    torch.testing.assert_close(g, truth, atol=1e-12, rtol=1e-9)
    g, _ = _group_expectation(lambda r, x: rs.dr_grpo_advantages(r, 2))
    torch.testing.assert_close(g, truth / 2, atol=1e-12, rtol=1e-9)
    assert truth.norm() > 1e-2
