"""Tests of policygrad.trajectory_side.corrections (sampler/trainer mismatch corrections) against exact
quantities: hand values, enumeration of a known behaviour policy, and Monte Carlo with CLT tolerances."""

from __future__ import annotations

import math

import pytest
import torch

from policygrad.trajectory_side import corrections as C

DT = torch.float64
NAN, INF = float("nan"), float("inf")
L3 = math.log(3.0)


def t(x, dtype=DT):
    return torch.tensor(x, dtype=dtype)


def batch(seed=0, B=6, T=9, scale=1.0, garbage=NAN):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B, 1), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths).to(DT)
    rollout = -2 + torch.randn(B, T, generator=g, dtype=DT)
    old = rollout + scale * torch.randn(B, T, generator=g, dtype=DT)
    pad = mask == 0
    old = torch.where(pad, torch.tensor(garbage, dtype=DT), old)
    rollout = torch.where(pad, torch.tensor(-garbage if garbage == garbage else garbage, dtype=DT), rollout)
    return old, rollout, mask


# --------------------------------------------------------------------------------------- hand values

# row 0: token log-ratios log 3, 0, -log 2 (sum log 1.5); row 1: log 3 then padding; row 2: empty
OLD = t([[L3 - 1.0, -1.0, -math.log(2.0)], [L3 - 2.0, NAN, 1e4], [NAN, 1e4, -1e4]])
ROLL = t([[-1.0, -1.0, 0.0], [-2.0, 1e4, NAN], [1e4, NAN, INF]])
MASK = t([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_log_ratios_hand_values():
    lr = C.rollout_log_ratios(OLD, ROLL, MASK)
    torch.testing.assert_close(lr, t([[L3, 0, -math.log(2)], [L3, 0, 0], [0, 0, 0]]), rtol=0, atol=1e-15)
    seq = C.rollout_log_ratios(OLD, ROLL, MASK, level="sequence")
    torch.testing.assert_close(seq, t([math.log(1.5), L3, 0.0]), rtol=0, atol=1e-15)
    # the sum, not the mean
    assert not torch.allclose(seq[0], lr[0].mean())


def test_truncated_token_hand_values():
    w = C.truncated_is_weights(OLD, ROLL, MASK, cap=2.0)
    torch.testing.assert_close(w, t([[2.0, 1.0, 0.5], [2.0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)
    w = C.truncated_is_weights(OLD, ROLL, MASK, cap=5.0, floor=0.8)
    torch.testing.assert_close(w, t([[3.0, 1.0, 0.8], [3.0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)
    w = C.truncated_is_weights(OLD, ROLL, MASK, cap=None, floor=0.8)
    torch.testing.assert_close(w, t([[3.0, 1.0, 0.8], [3.0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)


def test_truncated_sequence_hand_values():
    # a sequence whose token log-ratios sum to log 3 gets min(3, cap) on each trained token
    w = C.truncated_is_weights(OLD, ROLL, MASK, level="sequence", cap=2.0)
    torch.testing.assert_close(w, t([[1.5, 1.5, 1.5], [2.0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)
    w = C.truncated_is_weights(OLD, ROLL, MASK, level="sequence", cap=10.0)
    torch.testing.assert_close(w, t([[1.5, 1.5, 1.5], [3.0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)


def test_masked_hand_values():
    w = C.masked_is_weights(OLD, ROLL, MASK, lo=0.5, hi=2.0)  # 0.5 is kept: bounds inclusive
    torch.testing.assert_close(w, t([[0, 1.0, 0.5], [0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)
    w = C.masked_is_weights(OLD, ROLL, MASK, lo=0.6, hi=None)
    torch.testing.assert_close(w, t([[3.0, 1.0, 0], [3.0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)
    w = C.masked_is_weights(OLD, ROLL, MASK, lo=None, hi=2.0)
    torch.testing.assert_close(w, t([[0, 1.0, 0.5], [0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)
    w = C.masked_is_weights(OLD, ROLL, MASK, level="sequence", lo=0.5, hi=2.0)
    torch.testing.assert_close(w, t([[1.5, 1.5, 1.5], [0, 0, 0], [0, 0, 0]]), rtol=1e-14, atol=0)


def test_batch_normalize_hand_values():
    # token level: mean of the trained weights (2 + 1 + 0.5 + 2) / 4 = 1.375
    w = C.truncated_is_weights(OLD, ROLL, MASK, cap=2.0, batch_normalize=True)
    torch.testing.assert_close(w, t([[2.0, 1.0, 0.5], [2.0, 0, 0], [0, 0, 0]]) / 1.375, rtol=1e-14, atol=0)
    # sequence level: mean over the two non-empty rows of (1.5, 2.0) = 1.75, the empty row not counted
    w = C.truncated_is_weights(OLD, ROLL, MASK, level="sequence", cap=2.0, batch_normalize=True)
    torch.testing.assert_close(w, t([[1.5, 1.5, 1.5], [2.0, 0, 0], [0, 0, 0]]) / 1.75, rtol=1e-14, atol=0)
    # everything masked out: the mean is 0 and nothing is divided
    w = C.masked_is_weights(OLD, ROLL, MASK, lo=5.0, hi=6.0, batch_normalize=True)
    assert torch.equal(w, torch.zeros_like(w))


def test_log_ratio_clamped_at_20():
    old = t([[30.0, 0.0], [-30.0, 0.0]])
    roll = t([[0.0, 0.0], [0.0, 0.0]])
    m = t([[1, 0], [1, 0]])
    w = C.truncated_is_weights(old, roll, m, cap=None, floor=0.0)
    torch.testing.assert_close(w[:, 0], t([math.exp(20), math.exp(-20)]), rtol=1e-14, atol=0)
    # the sequence level clamps the sum of unclamped token log-ratios
    old = t([[15.0, 15.0, -15.0]])
    w = C.truncated_is_weights(old, torch.zeros_like(old), torch.ones_like(old), level="sequence", cap=1e12)
    torch.testing.assert_close(w, torch.full_like(old, math.exp(15)), rtol=1e-14, atol=0)


def test_off_policy_sequence_mask_hand_values():
    # row KL means (rollout - logp): 0.4, 0.4, 0.0 (empty row), 0.1
    logp = t([[-1.0, -1.0, NAN], [-1.0, -1.0, 1e4], [NAN, NAN, NAN], [-1.0, -2.0, -3.0]])
    roll = t([[-0.6, -0.6, 1e4], [-0.8, -0.4, NAN], [INF, 0.0, 0.0], [-0.7, -2.0, -3.0]])
    mask = t([[1, 1, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1]])
    A = t([-1.0, 0.0, -5.0, -1.0])
    keep = C.off_policy_sequence_mask(A, logp, roll, mask, delta=0.2)
    assert keep.dtype == torch.bool and keep.shape == (4,)
    assert keep.tolist() == [False, True, True, True]  # A = 0 is kept; an empty row is kept
    assert C.off_policy_sequence_mask(A, logp, roll, mask, delta=0.4).tolist() == [True] * 4
    # (B, T) advantages constant along trained tokens, garbage on padding
    A2 = torch.where(mask.bool(), A[:, None].expand(4, 3), t(NAN))
    assert C.off_policy_sequence_mask(A2, logp, roll, mask, delta=0.2).tolist() == [False, True, True, True]
    # positive advantages are always kept
    assert C.off_policy_sequence_mask(A.abs(), logp, roll, mask, delta=0.0).all()


def test_rejection_token_hand_values():
    # token log-ratios log 3, 0, -log 2 on row 0, log 3 on row 1
    # token_k1 = -log r in [log(1/2.5), log 2.5]: r in [0.4, 2.5] keeps r = 1, 0.5, drops r = 3
    keep = C.rejection_mask(OLD, ROLL, MASK, statistic="token_k1", threshold=2.5)
    assert keep.tolist() == [[False, True, True], [False, False, False], [False] * 3]
    # asymmetric window (lower, upper) on 1/r: 1/r in [0.3, 1.5] means r in [2/3, 3.33]
    keep = C.rejection_mask(OLD, ROLL, MASK, statistic="token_k1", threshold=(0.3, 1.5))
    assert keep.tolist() == [[True, True, False], [True, False, False], [False] * 3]
    # token_k2 = (log r)^2 / 2: (log 3)^2/2 = 0.603, (log 2)^2/2 = 0.240
    keep = C.rejection_mask(OLD, ROLL, MASK, statistic="token_k2", threshold=0.3)
    assert keep.tolist() == [[False, True, True], [False, False, False], [False] * 3]
    # token_k3 = r - 1 - log r: 3 - 1 - log 3 = 0.901, 0.5 - 1 + log 2 = 0.193
    keep = C.rejection_mask(OLD, ROLL, MASK, statistic="token_k3", threshold=0.9)
    assert keep.tolist() == [[False, True, True], [False, False, False], [False] * 3]
    keep = C.rejection_mask(OLD, ROLL, MASK, statistic="token_k3", threshold=0.902)
    assert keep.tolist() == [[True, True, True], [True, False, False], [False] * 3]


def test_rejection_sequence_hand_values():
    k2 = [0.5 * L3**2, 0.0, 0.5 * math.log(2) ** 2]
    k3 = [2 - L3, 0.0, math.log(2) - 0.5]
    cases = {
        # row 0: sum of -log r = -log 1.5, row 1: -log 3
        ("seq_sum_k1", 2.0): [True, False],
        ("seq_sum_k1", 3.0): [True, True],
        ("seq_sum_k2", sum(k2) + 1e-9): [True, True],
        ("seq_sum_k2", sum(k2) - 1e-9): [False, True],
        ("seq_sum_k3", sum(k3) - 1e-9): [False, True],
        ("seq_mean_k1", (1.0, 1.0)): [False, False],
        # mean of -log r on row 0 = -log(1.5)/3, i.e. 1/(geometric mean) = 1.5^(-1/3)
        ("seq_mean_k1", (1.5 ** (-1 / 3) - 1e-9, 1.0)): [True, False],
        ("seq_mean_k2", sum(k2) / 3 + 1e-9): [True, False],
        ("seq_mean_k2", k2[0] + 1e-9): [True, True],
        ("seq_mean_k3", sum(k3) / 3 + 1e-9): [True, False],
        ("seq_max_k2", k2[0] + 1e-9): [True, True],
        ("seq_max_k2", k2[0] - 1e-9): [False, False],
        ("seq_max_k3", k3[0] - 1e-9): [False, False],
    }
    for (stat, thr), rows in cases.items():
        keep = C.rejection_mask(OLD, ROLL, MASK, statistic=stat, threshold=thr)
        want = (torch.tensor(rows + [False])[:, None] & MASK.bool()).tolist()
        assert keep.tolist() == want, (stat, thr)


# ------------------------------------------------------------------------- garbage, empties, dtypes


@pytest.mark.parametrize("garbage", [NAN, 1e4, INF])
def test_padding_never_leaks(garbage):
    old, roll, mask = batch(3, garbage=garbage)
    clean_old, clean_roll, _ = batch(3, garbage=0.0)
    pad = mask == 0
    A = torch.randn(old.shape[0], generator=torch.Generator().manual_seed(1), dtype=DT)
    fns = [
        lambda o, r: C.rollout_log_ratios(o, r, mask),
        lambda o, r: C.rollout_log_ratios(o, r, mask, level="sequence"),
        lambda o, r: C.truncated_is_weights(o, r, mask, cap=2.0, floor=0.3),
        lambda o, r: C.truncated_is_weights(o, r, mask, level="sequence", cap=2.0, batch_normalize=True),
        lambda o, r: C.masked_is_weights(o, r, mask, lo=0.5, hi=None),
        lambda o, r: C.masked_is_weights(o, r, mask, level="sequence", lo=0.1, hi=3.0, batch_normalize=True),
        lambda o, r: C.off_policy_sequence_mask(A, o, r, mask, delta=0.1),
    ] + [lambda o, r, s=s: C.rejection_mask(o, r, mask, statistic=s, threshold=2.0) for s in C.REJECTION_STATISTICS]
    for f in fns:
        out, ref = f(old, roll), f(clean_old, clean_roll)
        assert torch.equal(out, ref)
        if out.is_floating_point():
            assert torch.isfinite(out).all()
        if out.shape == mask.shape:
            assert not out[pad].any()


def test_empty_rows_and_empty_mask():
    old, roll, _ = batch(0)
    mask = torch.zeros_like(old)
    for level in C.CORRECTION_LEVELS:
        for w in (
            C.truncated_is_weights(old, roll, mask, level=level, batch_normalize=True),
            C.masked_is_weights(old, roll, mask, level=level, batch_normalize=True),
        ):
            assert torch.equal(w, torch.zeros_like(old))
        assert torch.equal(C.rollout_log_ratios(old, roll, mask, level=level).abs().sum(), t(0.0))
    for s in C.REJECTION_STATISTICS:
        assert not C.rejection_mask(old, roll, mask, statistic=s, threshold=2.0).any()
    assert C.off_policy_sequence_mask(-torch.ones(old.shape[0], dtype=DT), old, roll, mask, delta=0.0).all()


def test_bool_mask_dtypes_and_detached():
    old, roll, mask = batch(2, garbage=0.0)
    o32 = old.float().requires_grad_()
    w = C.truncated_is_weights(o32, roll.float(), mask.bool())
    assert w.dtype == torch.float32 and not w.requires_grad
    w64 = C.truncated_is_weights(old.requires_grad_(), roll, mask)
    assert w64.dtype == DT and not w64.requires_grad
    torch.testing.assert_close(w, w64.float(), rtol=1e-5, atol=1e-6)
    # half precision is computed in float32
    assert C.masked_is_weights(old.detach().bfloat16(), roll.bfloat16(), mask).dtype == torch.float32
    assert not C.rollout_log_ratios(o32, roll.float(), mask).requires_grad
    assert C.rejection_mask(old, roll, mask.bool(), statistic="token_k3", threshold=0.5).dtype == torch.bool


# --------------------------------------------------------------------------------------- validation

X = torch.zeros(2, 3, dtype=DT)
M = torch.ones(2, 3, dtype=DT)


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda: C.rollout_log_ratios(X, X, M, level="geometric"), "unknown correction level"),
        (lambda: C.truncated_is_weights(X, X, M, level="seq"), "unknown correction level"),
        (lambda: C.masked_is_weights(X, X, M, level=None), "unknown correction level"),
        (lambda: C.truncated_is_weights(X, X, M, cap=0.0), r"cap must be a finite number in \(0.0"),
        (lambda: C.truncated_is_weights(X, X, M, cap=-1.0), "cap must be a finite number"),
        (lambda: C.truncated_is_weights(X, X, M, cap=INF), "cap must be a finite number"),
        (lambda: C.truncated_is_weights(X, X, M, cap=NAN), "cap must be a number"),
        (lambda: C.truncated_is_weights(X, X, M, cap=True), "cap must be a number"),
        (lambda: C.truncated_is_weights(X, X, M, cap="2"), "cap must be a number"),
        (lambda: C.truncated_is_weights(X, X, M, floor=-0.1), "floor must be a finite number"),
        (lambda: C.truncated_is_weights(X, X, M, cap=2.0, floor=3.0), "floor must be <= cap"),
        (lambda: C.truncated_is_weights(X, X, M, cap=None), "truncated IS needs a bound"),
        (lambda: C.truncated_is_weights(X, X, M, batch_normalize=1), "batch_normalize must be True or False"),
        (lambda: C.masked_is_weights(X, X, M, lo=3.0, hi=2.0), "lo must be <= hi"),
        (lambda: C.masked_is_weights(X, X, M, lo=None, hi=None), "masked IS needs a bound"),
        (lambda: C.masked_is_weights(X, X, M, hi=0.0), "hi must be a finite number"),
        (lambda: C.masked_is_weights(X, X, M, lo=-1.0), "lo must be a finite number"),
        (lambda: C.truncated_is_weights(X, X[:, :2], M), r"rollout_logp must have the shape \(2, 3\)"),
        (lambda: C.truncated_is_weights(X, X, M[:, :2]), "mask must have the shape of old_logp"),
        (lambda: C.truncated_is_weights(X[0], X[0], M[0]), "old_logp must have 2 dimension"),
        (lambda: C.truncated_is_weights(X.bool(), X, M), "old_logp must be a floating-point tensor"),
        (lambda: C.truncated_is_weights(X, X.long(), M), "rollout_logp must be a floating-point tensor"),
        (lambda: C.truncated_is_weights(X, X, 2 * M), "mask must contain only 0 and 1"),
        (lambda: C.truncated_is_weights(X.numpy(), X, M), "old_logp must be a torch.Tensor"),
        (lambda: C.truncated_is_weights(t([[NAN, 0, 0], [0, 0, 0]]), X, M), "old_logp contains 1 NaN"),
        (lambda: C.masked_is_weights(X, t([[0, INF, 0], [0, 0, 0]]), M), "rollout_logp contains 1 NaN or inf"),
        (lambda: C.rollout_log_ratios(X, t([[0, 0, 0], [0, 0, NAN]]), M), "on trained"),
        (lambda: C.off_policy_sequence_mask(t([1.0, 1.0]), X, X, M, delta=-0.1), "delta must be a finite number"),
        (lambda: C.off_policy_sequence_mask(t([1.0, 1.0]), X, X, M, delta=None), "delta must be a number"),
        (lambda: C.off_policy_sequence_mask(t([1.0]), X, X, M, delta=0.1), r"advantages must have shape \(2,\)"),
        (lambda: C.off_policy_sequence_mask(t([[1.0, 2, 1], [0, 0, 0]]), X, X, M, delta=0.1), "constant along"),
        (lambda: C.off_policy_sequence_mask(torch.ones(2, 2, dtype=DT), X, X, M, delta=0.1), "advantages must have"),
        (lambda: C.off_policy_sequence_mask(t([1.0, NAN]), X, X, M, delta=0.1), "advantages contains 1 NaN"),
        (lambda: C.off_policy_sequence_mask(torch.ones(2), X, X.bool(), M, delta=0.1), "rollout_logp must be a float"),
        (lambda: C.off_policy_sequence_mask(torch.ones(2).long(), X, X, M, delta=0.1), "advantages must be a float"),
        (lambda: C.off_policy_sequence_mask(torch.ones(2), X, X, M[:1], delta=0.1), "mask must have the shape"),
        (lambda: C.rejection_mask(X, X, M, statistic="seq_max_k1", threshold=2.0), "unknown rejection statistic"),
        (lambda: C.rejection_mask(X, X, M, statistic="token_k2", threshold=(0.5, 2.0)), "single upper bound"),
        (lambda: C.rejection_mask(X, X, M, statistic="token_k2", threshold=0.0), "threshold must be a finite"),
        (lambda: C.rejection_mask(X, X, M, statistic="token_k3", threshold=None), "threshold must be a number"),
        (lambda: C.rejection_mask(X, X, M, statistic="token_k1", threshold=0.5), "lower <= upper"),
        (lambda: C.rejection_mask(X, X, M, statistic="token_k1", threshold=(2.0, 1.0)), "lower <= upper"),
        (lambda: C.rejection_mask(X, X, M, statistic="seq_sum_k1", threshold=(0.0, 1.0)), "lower bound must be"),
        (lambda: C.rejection_mask(X, X, M, statistic="seq_mean_k1", threshold=(1.0,)), "a k1 threshold is"),
        (lambda: C.rejection_mask(X, X.int(), M, statistic="token_k1", threshold=2.0), "floating-point"),
    ],
)
def test_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


# ----------------------------------------------------------------- a known behaviour policy, exactly

# the sampler q and the trainer p over 5 tokens, and a test function f
Q = t([0.4, 0.3, 0.15, 0.1, 0.05])
P = t([0.1, 0.2, 0.2, 0.2, 0.3])
FV = t([1.0, -2.0, 0.5, 3.0, 4.0])


def _exact_tis(cap):
    """E_q[min(p/q, C) f] by enumeration."""
    return float((Q * torch.clamp(P / Q, max=cap) * FV).sum())


def test_exact_truncation_bias():
    rho = P / Q  # 0.25, 0.667, 1.333, 2, 6
    assert _exact_tis(1e9) == pytest.approx(float((P * FV).sum()), rel=1e-14)  # no truncation: unbiased
    # the bias is carried by the tokens above the cap only: E_q[(rho - C)^+ f]
    for cap in (1.0, 2.0, 4.0):
        bias = float((Q * torch.clamp(rho - cap, min=0) * FV).sum())
        assert _exact_tis(cap) == pytest.approx(float((P * FV).sum()) - bias, rel=1e-14)
        assert bias > 0.05


@pytest.mark.parametrize("cap", [1.5, 3.0])
def test_token_tis_monte_carlo(cap):
    g = torch.Generator().manual_seed(20240611 + int(cap * 10))
    N = 200_000
    y = torch.multinomial(Q, N, replacement=True, generator=g)
    old, roll = P.log()[y].reshape(N, 1), Q.log()[y].reshape(N, 1)
    w = C.truncated_is_weights(old, roll, torch.ones_like(old), cap=cap)[:, 0]
    x = w * FV[y]
    est, se = float(x.mean()), float(x.std() / math.sqrt(N))
    exact = _exact_tis(cap)
    assert abs(est - exact) < 4 * se
    # the truncation bias is resolved: E_p[f] is far outside the band
    assert abs(float((P * FV).sum()) - exact) > 10 * se


def test_sequence_tis_and_masked_monte_carlo():
    """Sequences of two i.i.d. tokens: the sequence weight is min(p(y1) p(y2) / (q(y1) q(y2)), C); the
    masked weight rho 1[lo <= rho <= hi]; exact values by enumeration of the 25 sequences."""
    cap, lo, hi = 2.5, 0.3, 3.0
    q2, p2 = Q[:, None] * Q[None, :], P[:, None] * P[None, :]
    f2 = FV[:, None] + FV[None, :] ** 2
    rho2 = p2 / q2
    exact_tis = float((q2 * torch.clamp(rho2, max=cap) * f2).sum())
    exact_mis = float((q2 * torch.where((rho2 >= lo) & (rho2 <= hi), rho2, 0) * f2).sum())
    assert float((q2 * rho2 * f2).sum()) == pytest.approx(float((p2 * f2).sum()), rel=1e-13)
    g = torch.Generator().manual_seed(7)
    N = 200_000
    y = torch.multinomial(Q, 2 * N, replacement=True, generator=g).reshape(N, 2)
    old, roll = P.log()[y], Q.log()[y]
    # a padded third position full of garbage changes nothing
    old = torch.cat([old, torch.full((N, 1), NAN, dtype=DT)], 1)
    roll = torch.cat([roll, torch.full((N, 1), 1e4, dtype=DT)], 1)
    mask = torch.cat([torch.ones(N, 2, dtype=DT), torch.zeros(N, 1, dtype=DT)], 1)
    fy = FV[y[:, 0]] + FV[y[:, 1]] ** 2
    for w, exact in (
        (C.truncated_is_weights(old, roll, mask, level="sequence", cap=cap), exact_tis),
        (C.masked_is_weights(old, roll, mask, level="sequence", lo=lo, hi=hi), exact_mis),
    ):
        assert torch.equal(w[:, 0], w[:, 1]) and not w[:, 2].any()
        x = w[:, 0] * fy
        est, se = float(x.mean()), float(x.std() / math.sqrt(N))
        assert abs(est - exact) < 4 * se
        assert abs(float((p2 * f2).sum()) - exact) > 10 * se
