"""Tests for the Part II trajectory side: aggregation, importance ratios, the PPO clip, KL estimators, KL penalty.

Hand-computed values come from the formulas written out next to them (never from another mode of the
function under test). Exact identities are checked by enumerating every (prompt, completion) pair of a small
problem in float64: an expectation under a policy is a finite weighted sum, and its gradient (with the
sampling weights held fixed where a sampled loss would hold them fixed) is compared with autograd of the exact
quantity from :class:`policygrad.ExactProblem`. Each identity comes with a negative control: a plausible wrong
variant that the same check rejects.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import policygrad as pg
from policygrad.exact import ExactProblem, flat_grad, flat_params
from policygrad.methods import (
    batch_loo_advantages,
    get_method,
    ppo_kl_loss,
    ppo_loss,
    reinforce_loss,
)
from policygrad.rollout import RolloutBatch
from policygrad.trajectory_side import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    RATIO_LEVELS,
    AdaptiveKLController,
    aggregate,
    kl_estimate,
    kl_loss,
    log_ratios,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
    token_log_probs,
)

F64 = torch.float64
EXACT = {"atol": 1e-10, "rtol": 0.0}


def t64(x):
    return torch.tensor(x, dtype=F64)


# ==========================================================================================================
# 1. aggregate
# ==========================================================================================================

# B = 3, T = 4, ragged: lengths 3, 1, 4 (8 tokens). Masked-out entries hold large values that must not leak.
PER_TOKEN = [[1.0, 2.0, 3.0, 100.0], [4.0, 50.0, 60.0, 70.0], [-1.0, 0.5, 2.5, 6.0]]
MASK = [[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
# masked row sums: 6, 4, 8 (total 18)
BY_HAND = {
    "seq-mean-token-mean": (6 / 3 + 4 / 1 + 8 / 4) / 3,  # 8/3
    "token-mean": 18 / 8,
    "seq-mean-token-sum-norm": 18 / (3 * 4),  # L_max = T = 4
    "seq-mean-token-sum": 18 / 3,
    "token-sum": 18.0,
}
# d(aggregate)/d(L_{i,t}) = m_{i,t} * (per-row factor)
GRAD_FACTOR = {
    "seq-mean-token-mean": [1 / (3 * 3), 1 / (3 * 1), 1 / (3 * 4)],
    "token-mean": [1 / 8] * 3,
    "seq-mean-token-sum-norm": [1 / 12] * 3,
    "seq-mean-token-sum": [1 / 3] * 3,
    "token-sum": [1.0] * 3,
}


def test_aggregation_names():
    assert set(AGGREGATIONS) == set(BY_HAND)


@pytest.mark.parametrize("mode", list(BY_HAND))
def test_aggregate_by_hand_on_ragged_mask(mode):
    x = t64(PER_TOKEN).requires_grad_(True)
    m = t64(MASK)
    out = aggregate(x, m, mode)
    assert out.dtype == F64
    assert out.item() == pytest.approx(BY_HAND[mode], rel=1e-14)
    out.backward()
    torch.testing.assert_close(x.grad, m * t64(GRAD_FACTOR[mode]).unsqueeze(1), **EXACT)
    # a bool mask and a float32 mask mean the same
    assert aggregate(x.detach(), m.bool(), mode).item() == pytest.approx(BY_HAND[mode], rel=1e-14)
    assert aggregate(x.detach(), m.float(), mode).item() == pytest.approx(BY_HAND[mode], rel=1e-14)


def test_aggregate_modes_differ_on_ragged_masks():
    """Negative control: on a ragged mask the four normalisations are four different numbers."""
    x, m = t64(PER_TOKEN), t64(MASK)
    values = [aggregate(x, m, mode).item() for mode in AGGREGATIONS]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1 :]) > 0.1


def test_aggregate_norm_mode_uses_max_len():
    x, m = t64(PER_TOKEN), t64(MASK)
    assert aggregate(x, m, "seq-mean-token-sum-norm", max_len=6).item() == pytest.approx(18 / (3 * 6), rel=1e-14)
    assert aggregate(x, m, "seq-mean-token-sum-norm", max_len=4).item() == pytest.approx(18 / 12, rel=1e-14)
    with pytest.raises(ValueError, match="max_len"):
        aggregate(x, m, "seq-mean-token-sum-norm", max_len=0)
    with pytest.raises(ValueError, match="max_len"):
        aggregate(x, m, "seq-mean-token-sum-norm", max_len=2.5)


def test_aggregate_empty_row_contributes_zero_and_counts_in_B():
    x = t64(PER_TOKEN).requires_grad_(True)
    m = t64([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # row 1 empty; sums 6, 0, 8
    want = {
        "seq-mean-token-mean": (6 / 3 + 0 + 8 / 4) / 3,  # B = 3, not 2
        "token-mean": 14 / 7,
        "seq-mean-token-sum-norm": 14 / 12,
        "seq-mean-token-sum": 14 / 3,
    }
    for mode, value in want.items():
        out = aggregate(x, m, mode)
        assert out.item() == pytest.approx(value, rel=1e-14), mode
        (g,) = torch.autograd.grad(out, x)
        assert torch.equal(g[1], torch.zeros(4, dtype=F64)), mode
        assert bool(torch.isfinite(g).all())


@pytest.mark.parametrize("mode", list(BY_HAND))
def test_aggregate_all_empty_mask_is_zero_with_zero_gradient(mode):
    x = t64(PER_TOKEN).requires_grad_(True)
    out = aggregate(x, torch.zeros(3, 4), mode)
    assert out.item() == 0.0 and not torch.isnan(out)
    out.backward()
    assert torch.equal(x.grad, torch.zeros(3, 4, dtype=F64))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(3, 4), torch.ones(3, 4), "mean"), "unknown aggregation"),
        ((torch.zeros(3, 4), torch.ones(3, 4), "TOKEN-MEAN"), "unknown aggregation"),
        ((torch.zeros(3, 4), torch.ones(4, 3), "token-mean"), "mask must have the shape"),
        ((torch.zeros(3, 4), torch.ones(3, 5), "token-mean"), "mask must have the shape"),
        ((torch.zeros(3, 4), torch.full((3, 4), 2.0), "token-mean"), "only 0 and 1"),
        ((torch.zeros(3, 4), torch.full((3, 4), 0.5), "seq-mean-token-sum"), "only 0 and 1"),
        ((torch.zeros(3, 4), torch.full((3, 4), float("nan")), "token-mean"), "only 0 and 1"),
        ((torch.zeros(4), torch.ones(4), "token-mean"), "dimension"),
        ((torch.zeros(2, 3, 4), torch.ones(2, 3, 4), "token-mean"), "dimension"),
        ((torch.zeros(3, 4), torch.ones(12), "token-mean"), "dimension"),
        (([[0.0, 1.0]], torch.ones(1, 2), "token-mean"), "must be a torch.Tensor"),
        ((torch.zeros(1, 2), [[1.0, 1.0]], "token-mean"), "must be a torch.Tensor"),
        ((torch.zeros(0, 4), torch.zeros(0, 4), "token-mean"), "no rows"),
    ],
)
def test_aggregate_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        aggregate(*args)


# ==========================================================================================================
# 2. log_ratios
# ==========================================================================================================


def test_ratio_level_names():
    assert RATIO_LEVELS == ("token", "sequence", "geometric")


def test_log_ratios_by_hand_and_gradients():
    logp = t64([[-1.0, -2.0, -0.5, -3.0], [-0.2, -1.0, -9.0, -9.0], [-1.0, -1.0, -1.0, -1.0]]).requires_grad_(True)
    old = t64([[-1.5, -1.0, -0.5, -7.0], [-0.7, -2.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0]]).requires_grad_(True)
    m = t64([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # lengths 3, 2, 0
    tok = log_ratios(logp, old, m, "token")
    torch.testing.assert_close(tok, t64([[0.5, -1.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0.0] * 4]), **EXACT)
    seq = log_ratios(logp, old, m, "sequence")
    torch.testing.assert_close(seq, t64([0.5 - 1.0 + 0.0, 0.5 + 1.0, 0.0]), **EXACT)
    geo = log_ratios(logp, old, m, "geometric")
    torch.testing.assert_close(geo, t64([-0.5 / 3, 1.5 / 2, 0.0]), **EXACT)  # empty row: 0, not NaN
    assert log_ratios(logp, old, m).shape == (3, 4)  # default level is "token"
    # gradients: token -> m; sequence -> m; geometric -> m / |o_i|; old_logp is a constant
    w = t64([1.0, 2.0, 3.0])
    (g_seq,) = torch.autograd.grad((w * seq).sum(), logp)
    torch.testing.assert_close(g_seq, m * w.unsqueeze(1), **EXACT)
    (g_geo,) = torch.autograd.grad((w * geo).sum(), logp)
    torch.testing.assert_close(g_geo, m * t64([1 / 3, 2 / 2, 0.0]).unsqueeze(1), **EXACT)
    levels = [log_ratios(logp, old, m, level) for level in RATIO_LEVELS]
    sum(x.sum() for x in levels).backward()
    assert old.grad is None  # no gradient flows into old_logp
    assert logp.grad is not None


def _eos_problem(seed=4):
    comp, mask = pg.enumerate_completions(3, 3, eos=0)  # K = 1 + 2 + 4 + 8 = 15, lengths 1..3
    R = torch.randn(2, comp.shape[0], generator=torch.Generator().manual_seed(seed), dtype=F64)
    return ExactProblem(torch.arange(2), t64([0.4, 0.6]), comp, mask.to(F64), R)


def _fixed_problem():
    prob, _ = pg.toy.target_sequence_task(2, 3, 3, reward="fraction", seed=3)
    return ExactProblem(
        prob.prompts, prob.prompt_probs.to(F64), prob.completions, prob.mask.to(F64), prob.rewards.to(F64)
    )


def _tab(N, V, L, seed, eos=None, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return pg.TabularPolicy(N, V, L, eos=eos, init_scale=scale, generator=gen).double()


def _flat(prob, pol):
    """Per-token log-probs of every pair as rows ``(N*K, L)`` (row i = prompt i // K, completion i % K) and the mask."""
    N, K, L = prob.num_prompts, prob.num_completions, prob.completions.shape[1]
    return prob.token_log_probs(pol).reshape(N * K, L), prob.mask.repeat(N, 1)


def test_sequence_log_ratio_is_the_exact_sequence_log_ratio():
    prob = _eos_problem()
    pol, old = _tab(2, 3, 3, seed=1, eos=0), _tab(2, 3, 3, seed=2, eos=0)
    logp, mask = _flat(prob, pol)
    old_logp, _ = _flat(prob, old)
    seq = log_ratios(logp, old_logp.detach(), mask, "sequence").reshape(2, -1)
    exact = prob.log_probs(pol) - prob.log_probs(old)
    torch.testing.assert_close(seq, exact.detach(), **EXACT)
    assert exact.abs().max() > 0.5  # the two policies really differ
    # = the log of the *product* of the token ratios (padding contributes a factor exp(0) = 1)
    prod = log_ratios(logp, old_logp, mask, "token").exp().prod(-1).reshape(2, -1)
    torch.testing.assert_close(prod, (prob.probs(pol) / prob.probs(old)).detach(), atol=1e-12, rtol=1e-12)
    # geometric = sequence / number of real tokens
    geo = log_ratios(logp, old_logp, mask, "geometric").reshape(2, -1)
    torch.testing.assert_close(geo, seq / prob.mask.sum(-1), **EXACT)
    assert (geo - seq).abs().max() > 0.1  # ragged lengths: the two levels differ (negative control)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"level": "tokens"}, "unknown ratio level"),
        ({"level": None}, "unknown ratio level"),
        ({"old_logp": torch.zeros(2, 4)}, "old_logp must have the shape"),
        ({"old_logp": torch.zeros(6)}, "old_logp must have the shape"),
        ({"old_logp": torch.tensor([[0.0, float("nan"), 0.0]] * 2)}, "old_logp contains"),
        ({"old_logp": torch.tensor([[0.0, -float("inf"), 0.0]] * 2)}, "old_logp contains"),
        ({"mask": torch.ones(3, 2)}, "mask must have the shape"),
        ({"mask": torch.full((2, 3), 3.0)}, "only 0 and 1"),
        ({"logp": torch.zeros(6), "old_logp": torch.zeros(6), "mask": torch.ones(6)}, "dimension"),
    ],
)
def test_log_ratios_rejects_bad_input(kwargs, match):
    args = {"logp": torch.zeros(2, 3), "old_logp": torch.zeros(2, 3), "mask": torch.ones(2, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        log_ratios(**args)


@pytest.mark.parametrize("fn", ["log_ratios", "ppo_clip_loss", "ppo_kl_penalty_loss"])
def test_non_tensor_logp_raises_value_error(fn):
    logp, z, m = [[0.0, 0.0]], torch.zeros(1, 2), torch.ones(1, 2)
    call = {
        "log_ratios": lambda: log_ratios(logp, z, m),
        "ppo_clip_loss": lambda: ppo_clip_loss(logp, z, z, m),
        "ppo_kl_penalty_loss": lambda: ppo_kl_penalty_loss(logp, z, z, m, beta=0.1),
    }[fn]
    with pytest.raises(ValueError, match="logp"):
        call()


# ==========================================================================================================
# 3. exact: the PPO surrogate at theta = theta_old is the policy gradient; importance sampling away from it
# ==========================================================================================================


def _expectation_pieces(prob, pol, old):
    """Everything an exact expectation over (x, y) ~ rho p_old needs: logp (grad), old_logp, mask, q = rho p_old, R."""
    logp, mask = _flat(prob, pol)
    with torch.no_grad():
        old_logp, _ = _flat(prob, old)
        q = (prob.prompt_probs.unsqueeze(1) * prob.probs(old)).reshape(-1)
    return logp, old_logp, mask, q, prob.returns().reshape(-1).to(F64)


def _expected_ppo_surrogate(prob, pol, old, aggregation="seq-mean-token-sum", **kw):
    """E_{x ~ rho, y ~ p_old}[ sum_t min(r_t A, clip(r_t) A) ] (for seq-mean-token-sum) with A = R(x, y), exactly.

    The batch is every pair once; the sampling probability q_i > 0 is folded into the advantage as
    A_i = B q_i R_i. A positive per-row factor scales min(rA, clip(r)A) without changing which branch is taken,
    so -loss = sum_i q_i sum_t min(r_{i,t} R_i, clip(r_{i,t}) R_i) (divided by |o_i| for seq-mean-token-mean).
    """
    logp, old_logp, mask, q, R = _expectation_pieces(prob, pol, old)
    adv = (q.numel() * q * R).unsqueeze(1) * mask
    loss, stats = ppo_clip_loss(logp, old_logp, adv, mask, aggregation=aggregation, **kw)
    return -loss, stats


SETUPS = {
    "eos": lambda: (_eos_problem(), _tab(2, 3, 3, seed=2, eos=0)),
    "fixed_length": lambda: (_fixed_problem(), _tab(2, 3, 3, seed=1)),
}


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("eps", [(0.2, None), (0.2, 0.28)])
def test_ppo_surrogate_gradient_at_old_policy_is_the_policy_gradient(setup, eps):
    prob, pol = SETUPS[setup]()
    old = copy.deepcopy(pol)
    grad_J = prob.gradient(pol)
    assert grad_J.norm() > 1e-2  # not 0 == 0
    surrogate, stats = _expected_ppo_surrogate(prob, pol, old, eps_low=eps[0], eps_high=eps[1])
    torch.testing.assert_close(flat_grad(surrogate, flat_params(pol)), grad_J, **EXACT)
    # at theta = theta_old every ratio is 1: nothing clipped, value = E_old[|o| R] (sum of r_t = |o|)
    assert stats["clip_frac"] == 0.0 and stats["ratio_mean"] == 1.0 and stats["approx_kl"] == 0.0
    _, _, mask, q, R = _expectation_pieces(prob, pol, old)
    assert surrogate.item() == pytest.approx(float((q * R * mask.sum(-1)).sum()), rel=1e-12)


def test_ppo_surrogate_with_seq_mean_token_mean_is_not_the_policy_gradient():
    """Negative control: dividing each sequence by its length (original GRPO) weights samples by 1/|o| on a
    ragged problem, so the same exact check rejects it — the aggregation is part of the identity."""
    prob, pol = SETUPS["eos"]()
    old = copy.deepcopy(pol)
    grad_J = prob.gradient(pol)
    surrogate, _ = _expected_ppo_surrogate(prob, pol, old, aggregation="seq-mean-token-mean")
    g = flat_grad(surrogate, flat_params(pol))
    assert (g - grad_J).norm() > 0.1 * grad_J.norm()
    cos = float(g @ grad_J / (g.norm() * grad_J.norm()))
    assert cos < 0.99  # not merely a rescaled gradient


@pytest.mark.parametrize("setup", list(SETUPS))
def test_away_from_old_policy_only_the_sequence_ratio_keeps_the_policy_gradient(setup):
    prob, pol = SETUPS[setup]()
    old = copy.deepcopy(pol)
    for _ in range(3):  # a few exact gradient-ascent steps: theta moves well away from theta_old
        step = 3.0 * prob.gradient(pol).reshape_as(pol.logits_table)
        with torch.no_grad():
            pol.logits_table += step
    grad_J = prob.gradient(pol)
    params = flat_params(pol)

    # the clipped surrogate's expected gradient is no longer grad J (negative control) ...
    clipped, stats = _expected_ppo_surrogate(prob, pol, old, eps_low=0.2, eps_high=0.28)
    assert stats["clip_frac"] > 0.02  # the step was big enough for the clip to bite (0.29 eos, 0.056 fixed)
    assert (flat_grad(clipped, params) - grad_J).norm() > 0.1 * grad_J.norm()

    # ... the unclipped importance-weighted surrogate with the *sequence* ratio is exactly J (IS identity) ...
    logp, old_logp, mask, q, R = _expectation_pieces(prob, pol, old)
    seq_ratio = log_ratios(logp, old_logp, mask, "sequence").exp()
    is_seq = (q * seq_ratio * R).sum()
    assert is_seq.item() == pytest.approx(prob.objective(pol).item(), rel=1e-10)
    torch.testing.assert_close(flat_grad(is_seq, params), grad_J, **EXACT)

    # ... while summing *token* ratios is not (negative control for the IS identity)
    logp, old_logp, mask, q, R = _expectation_pieces(prob, pol, old)
    tok_ratio = log_ratios(logp, old_logp, mask, "token").exp() * mask
    is_tok = (q * R * tok_ratio.sum(-1)).sum()
    assert (flat_grad(is_tok, params) - grad_J).norm() > 0.1 * grad_J.norm()


# ==========================================================================================================
# 4. the four clip cases, asymmetric epsilon, dual-clip, diagnostics
# ==========================================================================================================

EPS_LOW, EPS_HIGH = 0.2, 0.28
# (ratio, advantage, clip removes the gradient?) laid out as (2, 4); the last entry of row 1 is padding
CASES = [
    [(1.10, 1.5, False), (1.40, 1.5, True), (0.60, 1.5, False), (1.25, 1.5, False)],
    [(0.90, -2.0, False), (0.60, -2.0, True), (1.50, -2.0, False), (3.00, 5.0, False)],
]
#   A>0, r inside             -> kept          A>0, r > 1+eps_high -> 0   A>0, r < 1-eps_low -> kept (pessimistic min)
#   A>0, r = 1.25 (inside 0.28, outside 0.2)   A<0, r inside -> kept      A<0, r < 1-eps_low -> 0
#   A<0, r > 1+eps_high -> kept (pessimistic min)
CASE_MASK = [[1, 1, 1, 1], [1, 1, 1, 0]]


def _case_tensors(cases=CASES, mask=CASE_MASK):
    r = t64([[c[0] for c in row] for row in cases])
    A = t64([[c[1] for c in row] for row in cases])
    gone = torch.tensor([[c[2] for c in row] for row in cases])
    old = t64([[-0.7, -1.2, -2.0, -0.3], [-1.1, -0.4, -2.5, -0.9]])
    logp = (old + r.log()).requires_grad_(True)
    return logp, old, A, t64(mask), r, gone


def test_ppo_clip_four_cases_value_gradient_and_clip_frac():
    logp, old, A, m, r, gone = _case_tensors()
    loss, stats = ppo_clip_loss(logp, old, A, m, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    # per-token -min(rA, clip(r)A), by hand:
    #  r=1.10 A=1.5: -1.65 | r=1.40: -(1.28*1.5)=-1.92 | r=0.60: -0.9 | r=1.25: -1.875
    #  r=0.90 A=-2: 1.8    | r=0.60: -(0.8*-2)=1.6     | r=1.50: 3.0  | padding: not counted
    N = 7
    want = (-1.65 - 1.92 - 0.9 - 1.875 + 1.8 + 1.6 + 3.0) / N
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    # d(-rA)/dlogp = -rA (dr/dlogp = r); zero where the clip is active or the token is padding
    want_grad = torch.where(gone, torch.zeros_like(r), -A * r / N) * m
    torch.testing.assert_close(logp.grad, want_grad, **EXACT)
    assert int((logp.grad == 0).sum()) == 3  # two clipped tokens + padding: nothing else vanished
    assert stats["clip_frac"] == pytest.approx(2 / 7, rel=1e-12)
    assert stats["dual_clip_frac"] == 0.0
    real = [c[0] for row, mrow in zip(CASES, CASE_MASK, strict=True) for c, k in zip(row, mrow, strict=True) if k]
    assert stats["approx_kl"] == pytest.approx(sum((x - 1) - math.log(x) for x in real) / 7, rel=1e-12)
    assert stats["ratio_mean"] == pytest.approx(sum(real) / 7, rel=1e-12)
    assert stats["ratio_max"] == pytest.approx(1.5, rel=1e-12)  # the padded ratio 3.0 is ignored


def test_ppo_clip_symmetric_eps_clips_the_clip_higher_token():
    """Negative control for eps_high: with the symmetric default, r = 1.25 > 1.2 at A > 0 is clipped too."""
    logp, old, A, m, r, gone = _case_tensors()
    loss, stats = ppo_clip_loss(logp, old, A, m, eps_low=EPS_LOW)
    loss.backward()
    assert logp.grad[0, 3] == 0.0 and stats["clip_frac"] == pytest.approx(3 / 7, rel=1e-12)
    want = (-1.65 - 1.2 * 1.5 - 0.9 - 1.2 * 1.5 + 1.8 + 1.6 + 3.0) / 7
    assert loss.item() == pytest.approx(want, rel=1e-12)


def test_ppo_clip_aggregation_is_passed_through():
    logp, old, A, m, r, gone = _case_tensors()
    per_token = torch.maximum(-r * A, -r.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * A)  # the formula, re-derived
    for mode in AGGREGATIONS:
        loss, _ = ppo_clip_loss(logp, old, A, m, eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation=mode, max_len=5)
        assert loss.item() == pytest.approx(aggregate(per_token, m, mode, max_len=5).item(), rel=1e-12), mode


def test_dual_clip():
    c = 3.0
    cases = [
        [(4.0, -2.0), (2.0, -2.0), (0.5, -2.0), (1.0, -1.0)],  # A<0: r > c capped; r < c untouched; r < 1-eps clipped
        [(4.0, 1.5), (0.5, 1.5), (1.1, 1.5), (10.0, -3.0)],  # A>0: dual-clip changes nothing; last = padding
    ]
    mask = [[1, 1, 1, 1], [1, 1, 1, 0]]
    logp, old, A, m, r, _ = _case_tensors([[(*x, False) for x in row] for row in cases], mask)
    loss_d, stats_d = ppo_clip_loss(logp, old, A, m, eps_low=EPS_LOW, eps_high=EPS_HIGH, dual_clip=c)
    (g_d,) = torch.autograd.grad(loss_d, logp)
    loss_p, stats_p = ppo_clip_loss(logp, old, A, m, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    (g_p,) = torch.autograd.grad(loss_p, logp)
    # per-token losses by hand (without dual clip):
    #  r=4 A=-2: 8 | r=2 A=-2: 4 | r=0.5 A=-2: -(0.8*-2)=1.6 | r=1 A=-1: 1
    #  r=4 A=1.5: -(1.28*1.5)=-1.92 | r=0.5 A=1.5: -0.75 | r=1.1 A=1.5: -1.65
    plain = [8.0, 4.0, 1.6, 1.0, -1.92, -0.75, -1.65]
    assert loss_p.item() == pytest.approx(sum(plain) / 7, rel=1e-12)
    # with c = 3 the first token's loss is capped at -cA = 6, and its gradient vanishes
    dual = [6.0] + plain[1:]
    assert loss_d.item() == pytest.approx(sum(dual) / 7, rel=1e-12)
    assert g_d[0, 0] == 0.0 and g_p[0, 0] == pytest.approx(2.0 * 4.0 / 7, rel=1e-12)  # -A r / N
    assert g_d[0, 1] == pytest.approx(2.0 * 2.0 / 7, rel=1e-12)  # r < c: untouched
    # nothing else changes: A > 0 tokens, the A<0 tokens with r <= c, the padding
    keep = torch.ones(2, 4, dtype=torch.bool)
    keep[0, 0] = False
    assert torch.equal(g_d[keep], g_p[keep])
    assert stats_d["dual_clip_frac"] == pytest.approx(1 / 7, rel=1e-12) and stats_p["dual_clip_frac"] == 0.0
    assert stats_d["clip_frac"] == stats_p["clip_frac"] == pytest.approx(2 / 7, rel=1e-12)  # r=0.5 A<0; r=4 A>0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps_low": 1.0}, "eps_low"),
        ({"eps_low": -0.1}, "eps_low"),
        ({"eps_low": float("nan")}, "eps_low"),
        ({"eps_low": True}, "eps_low"),
        ({"eps_low": "0.2"}, "eps_low"),
        ({"eps_high": 1.5}, "eps_high"),
        ({"eps_high": -0.01}, "eps_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"dual_clip": True}, "dual_clip"),
        ({"dual_clip": float("nan")}, "dual_clip"),
        ({"aggregation": "sum"}, "unknown aggregation"),
        ({"advantages": torch.zeros(2, 4)}, "advantages must have the shape"),
        ({"advantages": torch.zeros(6)}, "advantages must have 2 dimension"),
        ({"advantages": torch.tensor([[0.0, float("nan"), 0.0]] * 2)}, "advantages contains"),
        ({"old_logp": torch.zeros(3, 2)}, "old_logp must have the shape"),
        ({"mask": torch.full((2, 3), 2.0)}, "only 0 and 1"),
    ],
)
def test_ppo_clip_loss_rejects_bad_input(kwargs, match):
    args = {"logp": torch.zeros(2, 3), "old_logp": torch.zeros(2, 3), "advantages": torch.ones(2, 3)}
    args = {**args, "mask": torch.ones(2, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        ppo_clip_loss(**args)


def test_ppo_clip_loss_empty_mask_is_zero_with_zero_gradient():
    logp = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    loss, stats = ppo_clip_loss(logp, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3, dtype=F64))
    assert all(math.isfinite(v) for v in stats.values())


# ==========================================================================================================
# 5. KL estimators against the exact KL
# ==========================================================================================================


def _kl_setup(L):
    """A fixed-length problem (V = 3) with a float64 policy and a different float64 reference."""
    comp, mask = pg.enumerate_completions(3, L)
    R = torch.zeros(2, comp.shape[0], dtype=F64)  # rewards play no role here
    prob = ExactProblem(torch.arange(2), t64([0.3, 0.7]), comp, mask.to(F64), R)
    return prob, _tab(2, 3, L, seed=11), _tab(2, 3, L, seed=12)


def _expected_estimate(prob, pol, ref, kind, per_prompt=False):
    """E_{x ~ rho, y ~ p_theta}[sum_t k(x_t)] by enumeration, the weights p_theta held fixed (as for samples)."""
    logp, mask = _flat(prob, pol)
    with torch.no_grad():
        ref_logp, _ = _flat(prob, ref)
        p = prob.probs(pol)
    per_seq = (kl_estimate(logp, ref_logp, kind) * mask).sum(-1).reshape(p.shape)
    if per_prompt:
        return (p * per_seq).sum(-1)
    return (prob.prompt_probs * (p * per_seq).sum(-1)).sum()


def test_kl_estimator_names():
    assert KL_ESTIMATORS == ("k1", "k2", "k3", "k1+", "k3+")


@pytest.mark.parametrize("L", [1, 3])
def test_k1_and_k3_are_unbiased_for_the_sequence_kl_and_k2_is_not(L):
    prob, pol, ref = _kl_setup(L)
    with torch.no_grad():
        kl = prob.expected_kl(pol, ref)
        kl_x = prob.kl(pol, ref)
        assert kl > 0.1
        for kind in ("k1", "k3", "k1+", "k3+"):
            torch.testing.assert_close(_expected_estimate(prob, pol, ref, kind), kl, **EXACT)
            torch.testing.assert_close(_expected_estimate(prob, pol, ref, kind, per_prompt=True), kl_x, **EXACT)
        k2 = _expected_estimate(prob, pol, ref, "k2")
        assert abs(k2 - kl) > 0.05 * kl  # negative control: k2's value is biased


def _grad_of_expected(prob, pol, ref, kind):
    return flat_grad(_expected_estimate(prob, pol, ref, kind), flat_params(pol))


def test_kl_estimator_gradients_on_a_bandit():
    """One token per completion (L = 1): the expected k2-loss gradient is exactly grad KL(pi_theta || pi_ref)."""
    prob, pol, ref = _kl_setup(1)
    params = flat_params(pol)
    grad_kl = flat_grad(prob.expected_kl(pol, ref), params)
    assert grad_kl.norm() > 0.1
    g = {kind: _grad_of_expected(prob, pol, ref, kind) for kind in KL_ESTIMATORS}
    torch.testing.assert_close(g["k2"], grad_kl, **EXACT)
    assert g["k1"].norm() < 1e-12  # E[grad log pi] = 0: the k1 loss carries no gradient in expectation
    assert (g["k3"] - grad_kl).norm() > 0.1 * grad_kl.norm()  # k3's loss gradient is not the reverse-KL gradient
    # ... it is the gradient of the *forward* KL(pi_ref || pi_theta) = sum_x rho sum_y ref (log ref - log p_theta)
    with torch.no_grad():
        q_ref = prob.prompt_probs.unsqueeze(1) * prob.probs(ref)
    forward = (q_ref * (prob.log_probs(ref).detach() - prob.log_probs(pol))).sum()
    torch.testing.assert_close(g["k3"], flat_grad(forward, params), **EXACT)
    # straight-through variants: the gradient of k2
    torch.testing.assert_close(g["k1+"], g["k2"], **EXACT)
    torch.testing.assert_close(g["k3+"], g["k2"], **EXACT)


def _state_frozen_token_kl(prob, pol, ref):
    """sum_x rho(x) sum_s d(s | x) KL(pi_theta(.|x, s) || pi_ref(.|x, s)) over every prefix s, from the logit table.

    d(s | x) = P_theta(prefix s | x) is computed from the completion probabilities and held fixed; with d not
    held fixed this sum is the sequence KL (the chain rule of KL), which the test checks first.
    """
    p = prob.probs(pol)  # (N, K), differentiable
    idx = pol.prefix_index(prob.completions)  # (K, L); prefixes of different lengths have disjoint ids
    visit = torch.zeros(prob.num_prompts, pol.num_prefixes, dtype=F64)
    for t in range(prob.completions.shape[1]):
        visit = visit.index_add(1, idx[:, t], p)  # P(prefix) = sum of p over the completions that extend it
    lq = torch.log_softmax(pol.logits_table, -1)
    lr = torch.log_softmax(ref.logits_table, -1).detach()
    kl_state = (lq.exp() * (lq - lr)).sum(-1)  # (N, S)
    rho = prob.prompt_probs.unsqueeze(1)
    return (rho * visit * kl_state).sum(), (rho * visit.detach() * kl_state).sum()


def test_k2_loss_gradient_on_sequences_misses_the_state_distribution_term():
    """For L > 1 the expected gradient of sum_t k2 is the gradient of the per-token KLs with the state
    distribution held fixed, NOT the gradient of the sequence KL(p_theta || p_ref): it omits how changing an
    early token's distribution changes the KL of the tokens after it. (k1 stays 0 and k1+/k3+ stay k2.)"""
    prob, pol, ref = _kl_setup(3)
    params = flat_params(pol)
    seq_kl = prob.expected_kl(pol, ref)
    chain, frozen = _state_frozen_token_kl(prob, pol, ref)
    torch.testing.assert_close(chain, seq_kl, **EXACT)  # the chain rule: the visit weights are right
    grad_kl = flat_grad(seq_kl, params)
    g = {kind: _grad_of_expected(prob, pol, ref, kind) for kind in KL_ESTIMATORS}
    torch.testing.assert_close(g["k2"], flat_grad(frozen, params), **EXACT)
    assert (g["k2"] - grad_kl).norm() > 0.1 * grad_kl.norm()
    assert g["k1"].norm() < 1e-12
    assert (g["k3"] - grad_kl).norm() > 0.1 * grad_kl.norm()
    torch.testing.assert_close(g["k1+"], g["k2"], **EXACT)
    torch.testing.assert_close(g["k3+"], g["k2"], **EXACT)


def test_straight_through_estimators_by_hand():
    x = t64([-2.0, -0.3, 0.0, 0.4, 3.0])
    ref = t64([-1.0, -2.0, -0.5, -3.0, -0.1])
    logp = (ref + x).requires_grad_(True)
    want_value = {
        "k1": x,
        "k2": 0.5 * x * x,
        "k3": torch.exp(-x) + x - 1,
        "k1+": x,
        "k3+": torch.exp(-x) + x - 1,
    }
    want_grad = {"k1": torch.ones_like(x), "k2": x, "k3": 1 - torch.exp(-x), "k1+": x, "k3+": x}
    for kind in KL_ESTIMATORS:
        est = kl_estimate(logp, ref, kind)
        torch.testing.assert_close(est.detach(), want_value[kind], atol=1e-14, rtol=1e-14)
        (g,) = torch.autograd.grad(est.sum(), logp)
        torch.testing.assert_close(g, want_grad[kind], atol=1e-14, rtol=1e-14)
    assert torch.equal(kl_estimate(logp, ref), kl_estimate(logp, ref, "k3"))  # default kind
    ref_leaf = ref.clone().requires_grad_(True)
    kl_estimate(logp, ref_leaf, "k3").sum().backward()
    assert ref_leaf.grad is None  # ref_logp is a constant


def test_k3_is_unbiased_on_sampled_sequences():
    """Monte Carlo: the mean of sum_t k3 over n sampled sequences is within 4 sigma / sqrt(n) of the exact KL,
    sigma^2 the exact variance of the per-sequence estimate (CLT; fixed seed). The biased k2 fails the same test."""
    prob, pol, ref = _kl_setup(3)
    n = 4000
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        kl = prob.expected_kl(pol, ref).item()
        s = pol.sample(prob.sample_prompts(n, gen), generator=gen)
        ref_logp = token_log_probs(ref(s.prompts, s.completions), s.completions) * s.mask
        logp, mask = _flat(prob, pol)
        ref_all, _ = _flat(prob, ref)
        w = (prob.prompt_probs.unsqueeze(1) * prob.probs(pol)).reshape(-1)
        for kind, unbiased in (("k3", True), ("k1", True), ("k2", False)):
            per_seq = (kl_estimate(s.log_probs, ref_logp, kind) * s.mask).sum(-1)
            exact_all = (kl_estimate(logp, ref_all, kind) * mask).sum(-1)
            mean = float((w * exact_all).sum())
            sigma = float((w * (exact_all - mean) ** 2).sum()) ** 0.5
            bound = 4 * sigma / n**0.5
            assert bound < 0.1 * kl  # sharp enough to see a 10% bias (k2 is off by ~30%)
            err = abs(float(per_seq.mean()) - kl)
            assert (err < bound) == unbiased, f"{kind}: |mean - KL| = {err:.4g}, bound {bound:.4g}"
            if kind == "k3":
                assert bool((per_seq >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_k3_is_never_negative(dtype):
    mags = torch.logspace(-12, 1.5, 50001, dtype=F64)
    x = torch.cat([mags, -mags, t64([0.0, 1e-8, -1e-8, 3e-8, -3e-8]), 1e-8 * torch.randn(20000, dtype=F64)])
    x = x.to(dtype)
    k3 = kl_estimate(x, torch.zeros_like(x), "k3")
    assert k3.dtype == dtype and bool((k3 >= 0).all())
    assert bool((kl_estimate(x, torch.zeros_like(x), "k3+") >= 0).all())
    if dtype == torch.float32:
        # negative control: the textbook form exp(-x) + x - 1 does go negative in float32 round-off
        naive = torch.exp(-x) + x - 1
        assert bool((naive < 0).any())


def test_kl_loss_by_hand():
    x = t64([[0.5, -1.0, 2.0], [0.2, 9.0, 9.0]])
    ref = t64([[-1.0, -2.0, -0.5], [-0.7, -0.2, -0.1]])
    m = t64([[1, 1, 1], [1, 0, 0]])
    logp = (ref + x).requires_grad_(True)
    k3 = lambda v: math.exp(-v) + v - 1  # noqa: E731
    real = [0.5, -1.0, 2.0, 0.2]
    assert kl_loss(logp, ref, m).item() == pytest.approx(sum(map(k3, real)) / 4, rel=1e-12)
    want = (0.5 * (0.25 + 1 + 4) / 3 + 0.5 * 0.04) / 2
    out = kl_loss(logp, ref, m, kind="k2", aggregation="seq-mean-token-mean")
    assert out.item() == pytest.approx(want, rel=1e-12)
    out.backward()
    torch.testing.assert_close(logp.grad, x * m * t64([[1 / 6], [1 / 2]]), **EXACT)
    z = kl_loss(logp, ref, torch.zeros(2, 3))
    assert z.item() == 0.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_loss(logp, ref, m, kind="k4")
    with pytest.raises(ValueError, match="unknown aggregation"):
        kl_loss(logp, ref, m, aggregation="mean")
    with pytest.raises(ValueError, match="mask"):
        kl_loss(logp, ref, torch.ones(3, 2))


def test_kl_loss_ignores_padding_values():
    logp = torch.tensor([[-1.0, -100.0]], requires_grad=True)  # the second token is padding
    loss = kl_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(math.exp(1.0) - 2.0, rel=1e-6)
    assert bool(torch.isfinite(logp.grad).all())


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(2, 3), torch.zeros(2, 3), "k4"), "unknown KL estimator"),
        ((torch.zeros(2, 3), torch.zeros(3, 2), "k3"), "ref_logp must have the shape"),
        ((torch.zeros(2), torch.tensor([0.0, float("nan")]), "k3"), "ref_logp contains"),
        (([0.0, 1.0], torch.zeros(2), "k3"), "logp must be a torch.Tensor"),
        ((torch.zeros(2), [0.0, 1.0], "k3"), "ref_logp must be a torch.Tensor"),
    ],
)
def test_kl_estimate_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        kl_estimate(*args)


# ==========================================================================================================
# 6. the KL-penalty form of PPO and the adaptive coefficient
# ==========================================================================================================


def test_ppo_kl_penalty_at_old_policy():
    old = t64([[-0.5, -1.0, -2.0], [-0.1, -3.0, -0.7]])
    A = t64([[1.0, -2.0, 0.5], [3.0, 7.0, 7.0]])
    m = t64([[1, 1, 1], [1, 0, 0]])
    logp = old.clone().requires_grad_(True)
    loss, stats = ppo_kl_penalty_loss(logp, old, A, m, beta=0.5)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 0.5 + 3.0) / 4, rel=1e-14)  # -mean(A) over real tokens
    (g,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(g, -A * m / 4, **EXACT)  # the penalty adds nothing to the gradient
    assert stats == {"approx_kl": 0.0, "ratio_mean": 1.0, "ratio_max": 1.0}
    penalty, _ = ppo_kl_penalty_loss(logp, old, torch.zeros_like(A), m, beta=1.0)
    (gp,) = torch.autograd.grad(penalty, logp)
    assert penalty.item() == 0.0 and torch.equal(gp, torch.zeros_like(gp))


def test_ppo_kl_penalty_away_from_old_policy_matches_the_hand_formula():
    gen = torch.Generator().manual_seed(3)
    old = -torch.rand(4, 5, generator=gen, dtype=F64) * 3
    lr = torch.randn(4, 5, generator=gen, dtype=F64) * 0.7
    A = torch.randn(4, 5, generator=gen, dtype=F64)
    m = t64([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]])
    N = 11
    beta = 0.3
    logp = (old + lr).requires_grad_(True)
    penalty, stats = ppo_kl_penalty_loss(logp, old, torch.zeros_like(A), m, beta=1.0)
    hand_pen = ((lr.exp() - 1 - lr) * m).sum() / N
    assert penalty.item() >= 0 and penalty.item() == pytest.approx(hand_pen.item(), rel=1e-12)
    assert hand_pen > 0.05
    assert stats["approx_kl"] == pytest.approx(hand_pen.item(), rel=1e-12)
    loss, _ = ppo_kl_penalty_loss(logp, old, A, m, beta=beta)
    logp2 = (old + lr).requires_grad_(True)
    r = (logp2 - old).exp()
    hand = ((-r * A + beta * ((r - 1) - torch.log(r))) * m).sum() / N
    assert loss.item() == pytest.approx(hand.item(), rel=1e-12)
    (g,) = torch.autograd.grad(loss, logp)
    (g_hand,) = torch.autograd.grad(hand, logp2)
    torch.testing.assert_close(g, g_hand, **EXACT)
    torch.testing.assert_close(g, m * (-A * lr.exp() + beta * (lr.exp() - 1)) / N, **EXACT)  # and in closed form
    # with beta = 0 it is the unclipped token-ratio surrogate; the beta term really changes the gradient
    loss0, _ = ppo_kl_penalty_loss(logp, old, A, m, beta=0.0)
    (g0,) = torch.autograd.grad(loss0, logp)
    assert (g - g0).abs().max() > 1e-2


@pytest.mark.parametrize("beta", [-0.1, float("nan"), True, "0.1", None])
def test_ppo_kl_penalty_rejects_bad_beta(beta):
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="beta"):
        ppo_kl_penalty_loss(z, z, z, torch.ones(2, 3), beta=beta)


def test_ppo_kl_penalty_rejects_bad_tensors():
    z, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="advantages must have the shape"):
        ppo_kl_penalty_loss(z, z, torch.zeros(3, 2), m, beta=0.1)
    with pytest.raises(ValueError, match="advantages contains"):
        ppo_kl_penalty_loss(z, z, torch.full((2, 3), float("nan")), m, beta=0.1)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_kl_penalty_loss(z, torch.zeros(2, 2), z, m, beta=0.1)
    with pytest.raises(ValueError, match="unknown aggregation"):
        ppo_kl_penalty_loss(z, z, z, m, beta=0.1, aggregation="x")


def test_ppo_kl_penalty_rejects_infinite_beta():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="beta"):
        ppo_kl_penalty_loss(z, z, z, torch.ones(2, 3), beta=float("inf"))


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    c = AdaptiveKLController(0.1, target=0.05, horizon=1000)
    assert (c.beta, c.target, c.horizon) == (0.1, 0.05, 1000)
    # above target, inside the clip: error = (0.055 - 0.05) / 0.05 = 0.1; n/H = 0.1
    b = c.update(0.055, 100)
    assert b == c.beta == pytest.approx(0.1 * (1 + 0.1 * 0.1), rel=1e-12)
    # far above: error 19 clipped to +0.2
    b2 = c.update(1.0, 100)
    assert b2 == pytest.approx(b * (1 + 0.2 * 0.1), rel=1e-12) and b2 > b
    # below target, inside the clip: error -0.1
    b3 = c.update(0.045, 100)
    assert b3 == pytest.approx(b2 * (1 - 0.1 * 0.1), rel=1e-12) and b3 < b2
    # far below (even a negative k1 estimate): error clipped to -0.2
    b4 = c.update(-3.0, 500)
    assert b4 == pytest.approx(b3 * (1 - 0.2 * 0.5), rel=1e-12)
    # exactly on target: no change
    assert c.update(0.05, 100) == pytest.approx(b4, rel=1e-15)


def test_adaptive_kl_controller_per_step_change_is_bounded():
    for kl in (1e-9, 0.0, 1e3, 1e12, float("inf")):
        c = AdaptiveKLController(1.0, target=0.1, horizon=64)
        change = c.update(kl, 16) - 1.0
        assert abs(change) == pytest.approx(0.2 * 16 / 64, rel=1e-12)
        assert (change > 0) == (kl > 0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init_beta": 0.0}, "init_beta"),
        ({"init_beta": -1.0}, "init_beta"),
        ({"init_beta": float("nan")}, "init_beta"),
        ({"init_beta": True}, "init_beta"),
        ({"init_beta": "1"}, "init_beta"),
        ({"target": 0.0}, "target"),
        ({"target": -0.1}, "target"),
        ({"target": None}, "target"),
        ({"horizon": 0}, "horizon"),
        ({"horizon": 10.5}, "horizon"),
        ({"horizon": True}, "horizon"),
    ],
)
def test_adaptive_kl_controller_rejects_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(**{"init_beta": 0.1, "target": 0.05, "horizon": 100, **kwargs})


@pytest.mark.parametrize(
    "args, match",
    [
        ((float("nan"), 10), "kl"),
        (("0.1", 10), "kl"),
        ((True, 10), "kl"),
        ((None, 10), "kl"),
        ((0.1, 0), "n_samples"),
        ((0.1, 2.0), "n_samples"),
    ],
)
def test_adaptive_kl_controller_rejects_bad_update(args, match):
    c = AdaptiveKLController(0.1, 0.05, 100)
    with pytest.raises(ValueError, match=match):
        c.update(*args)
    assert c.beta == 0.1  # a rejected update leaves beta alone


def test_adaptive_kl_controller_rejects_infinite_target():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, float("inf"), 100)


# ==========================================================================================================
# 7. the registered methods
# ==========================================================================================================


def _sampled_batch():
    """8 sampled rows (ragged, with EOS) from a float64 tabular policy, one loss-mask token switched off."""
    pol = _tab(2, 3, 4, seed=5, eos=0)
    gen = torch.Generator().manual_seed(6)
    s = pol.sample(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), generator=gen)
    assert len(set(s.mask.sum(-1).tolist())) > 1  # ragged
    loss_mask = s.mask.clone()
    first_long = int((s.mask.sum(-1) >= 2).nonzero()[0])
    loss_mask[first_long, 0] = 0.0  # e.g. a token the policy did not choose
    batch = RolloutBatch(
        prompts=s.prompts.unsqueeze(1),  # a RolloutBatch holds prompt tokens (B, P); here P = 1, the prompt id
        completions=s.completions,
        mask=s.mask,
        loss_mask=loss_mask,
        old_log_probs=s.log_probs,
        ref_log_probs=None,
        rewards=torch.randn(8, generator=gen, dtype=F64),
        group_ids=torch.arange(2).repeat_interleave(4),
        truncated=s.truncated,
    )
    return pol, batch, _batch_logp(pol, batch)


def _batch_logp(pol, batch):
    return token_log_probs(pol(batch.prompts[:, 0], batch.completions), batch.completions) * batch.mask


def test_registered_ppo_methods():
    for name, loss_fn in (("ppo_clip", ppo_loss), ("ppo_kl", ppo_kl_loss)):
        m = get_method(name)
        assert m.loss is loss_fn and m.advantages is batch_loo_advantages
        # relative to plain REINFORCE: the batch baseline (reward side) and the ratios
        # and clip or penalty (trajectory side), by chapter 1's rule
        assert m.changes == ("reward", "trajectory") and m.inner_epochs > 1


@pytest.mark.parametrize("name", ["ppo_clip", "ppo_kl"])
def test_ppo_methods_at_old_policy_are_rescaled_reinforce(name):
    pol, batch, logp = _sampled_batch()
    method = get_method(name)
    adv = method.advantages(batch)
    loss, stats = method.loss(logp, batch, adv)
    assert torch.isfinite(loss) and loss.dim() == 0
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["ratio_mean"] == 1.0 and stats["approx_kl"] == 0.0
    if name == "ppo_clip":
        assert set(stats) == {"clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean", "ratio_max"}
        assert stats["clip_frac"] == 0.0
    params = flat_params(pol)
    g = flat_grad(loss, params)
    logp2 = _batch_logp(pol, batch)
    g_rf = flat_grad(reinforce_loss(logp2, batch, adv)[0], params)
    # token-mean divides by the number of trained tokens, REINFORCE's seq-sum by B: grad_ppo = (B / n_tok) grad_rf
    B, n_tok = len(batch), float(batch.loss_mask.sum())
    assert n_tok != B and g_rf.norm() > 1e-3  # the factor is not 1 and the gradient not 0
    torch.testing.assert_close(g, (B / n_tok) * g_rf, atol=1e-12, rtol=1e-10)
    assert (g - g_rf).norm() > 0.05 * g_rf.norm()  # negative control: without the factor they differ
    # value at r = 1: -mean of A over trained tokens
    assert loss.item() == pytest.approx(-float((adv * batch.loss_mask).sum()) / n_tok, rel=1e-10)


def test_ppo_methods_use_their_documented_constants():
    _, batch, logp = _sampled_batch()
    adv = batch_loo_advantages(batch)
    moved = logp.detach() + 0.3 * torch.randn(logp.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    got, stats = ppo_loss(moved, batch, adv)
    want, want_stats = ppo_clip_loss(moved, batch.old_log_probs, adv, batch.loss_mask, eps_low=0.2, eps_high=0.2)
    assert got.item() == want.item() and stats == want_stats and stats["clip_frac"] > 0
    got_kl, _ = ppo_kl_loss(moved, batch, adv)
    want_kl, _ = ppo_kl_penalty_loss(moved, batch.old_log_probs, adv, batch.loss_mask, beta=0.1)
    other_kl, _ = ppo_kl_penalty_loss(moved, batch.old_log_probs, adv, batch.loss_mask, beta=0.2)
    assert got_kl.item() == want_kl.item() != other_kl.item()
