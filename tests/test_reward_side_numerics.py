"""Numerical contracts of the reward side (policygrad.reward_side).

1. masks select, never multiply: NaN / inf / huge garbage on padded positions changes no bit of a result and
   gives exactly zero (finite) gradient there;
2. a non-finite value on a trained token is a ValueError naming the argument;
3. integer / bool tensors where floats are expected, and shapes that would broadcast silently, are refused;
4. group advantages sum to zero within a group and are exactly 0 for a group constant up to round-off;
5. one std convention: ``unbiased=True`` by default in whiten and every group normaliser (as TRL and verl);
6. group-wise leave-one-out (RLOO) advantages;
7. optimal_constant_baseline refuses negative squared norms and probabilities that are not a distribution;
8. source hygiene: line length, positional signatures, the book references of the docstrings.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

import policygrad.reward_side as rs

F32, F64 = torch.float32, torch.float64
NAN, INF = float("nan"), float("inf")
B, T = 4, 5
#: a full row, a right-padded row, a row with a hole, an empty row
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]])


def _cases(dtype, m=None):
    """name -> (function of keyword tensors, {argument: (tensor, where padding may hold anything)})."""
    g = torch.Generator().manual_seed(0)
    m = MASK.to(dtype) if m is None else m
    pad, row_pad = m == 0, (m == 0).all(1)

    def tok():
        return torch.randn(B, T, generator=g, dtype=dtype), pad

    def row():
        return torch.randn(B, generator=g, dtype=dtype), row_pad

    return {
        "returns_to_go": (lambda rewards: rs.returns_to_go(rewards, m, 0.9), {"rewards": tok()}),
        "total_return": (lambda rewards: rs.total_return(rewards, m, 0.9), {"rewards": tok()}),
        "broadcast_to_tokens": (lambda values: rs.broadcast_to_tokens(values, m), {"values": row()}),
        "reinforce_weights/terminal": (
            lambda rewards, baseline: rs.reinforce_weights(rewards, m, baseline=baseline),
            {"rewards": row(), "baseline": tok()},
        ),
        "reinforce_weights/to_go": (
            lambda rewards, baseline: rs.reinforce_weights(rewards, m, reward_to_go=True, baseline=baseline, gamma=0.9),
            {"rewards": tok(), "baseline": row()},
        ),
        "reinforce_weights/total": (
            lambda rewards: rs.reinforce_weights(rewards, m, baseline=-0.5, gamma=0.8),
            {"rewards": tok()},
        ),
        "td_residuals": (
            lambda rewards, values, last_value: rs.td_residuals(rewards, values, m, 0.9, last_value),
            {"rewards": tok(), "values": tok(), "last_value": row()},
        ),
        "n_step_returns": (
            lambda rewards, values: rs.n_step_returns(rewards, values, m, 2, 0.9),
            {"rewards": tok(), "values": tok()},
        ),
        "gae": (
            lambda rewards, values, last_value: rs.gae(rewards, values, m, 0.9, 0.8, last_value),
            {"rewards": tok(), "values": tok(), "last_value": row()},
        ),
        "terminal_to_steps": (lambda rewards: rs.terminal_to_steps(rewards, m), {"rewards": row()}),
        "kl_shaped_rewards/outcome": (
            lambda rewards, logp, ref_logp: rs.kl_shaped_rewards(rewards, logp, ref_logp, m, beta=0.1, kind="k3"),
            {"rewards": row(), "logp": tok(), "ref_logp": tok()},
        ),
        "kl_shaped_rewards/steps": (
            lambda rewards, logp, ref_logp: rs.kl_shaped_rewards(rewards, logp, ref_logp, m, beta=0.5, kind="k2"),
            {"rewards": tok(), "logp": tok(), "ref_logp": tok()},
        ),
        "whiten": (lambda values: rs.whiten(values, m), {"values": tok()}),
        "whiten/no_shift": (lambda values: rs.whiten(values, m, shift_mean=False, unbiased=False), {"values": tok()}),
        "clipped_value_loss": (
            lambda values, old_values, returns: rs.clipped_value_loss(values, old_values, returns, m, clip=0.2),
            {"values": tok(), "old_values": tok(), "returns": tok()},
        ),
        "explained_variance": (
            lambda values, targets: torch.tensor(rs.explained_variance(values, targets, m), dtype=F64),
            {"values": tok(), "targets": tok()},
        ),
        "group_step_advantages": (lambda rewards: rs.group_step_advantages(rewards, m, 2), {"rewards": tok()}),
        "group_step_advantages/dr_grpo": (
            lambda rewards: rs.group_step_advantages(rewards, m, 2, scale=None),
            {"rewards": tok()},
        ),
    }


CASES = list(_cases(F64))


def _clean(tensors):
    return {k: torch.where(p, torch.zeros_like(x), x) for k, (x, p) in tensors.items()}


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view({F64: torch.int64, F32: torch.int32}[x.dtype])


# -- 1. masks select, never multiply --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_padding_never_reaches_a_result_or_a_gradient(case, dtype):
    fn, tensors = _cases(dtype)[case]
    big = 0.5 * torch.finfo(dtype).max  # its square overflows: garbage * 0 is 0, garbage**2 * 0 is NaN

    def run(fill):
        leaves = {k: torch.where(p, torch.full_like(x, fill), x).requires_grad_() for k, (x, p) in tensors.items()}
        out = fn(**leaves)
        if out.requires_grad:
            w = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
            (out * w).sum().backward()
        return out.detach(), {k: t.grad for k, t in leaves.items() if t.grad is not None}

    ref, ref_grads = run(0.0)
    assert torch.isfinite(ref).all()
    for fill in (NAN, INF, -INF, big, -big):
        out, grads = run(fill)
        assert out.dtype == ref.dtype and torch.equal(_bits(out), _bits(ref)), f"padding {fill} leaked into {case}"
        assert grads.keys() == ref_grads.keys()
        for k, grad in grads.items():
            assert torch.isfinite(grad).all(), f"{case}: non-finite gradient for {k} with padding {fill}"
            assert torch.equal(grad, ref_grads[k])
            assert bool((grad[tensors[k][1]] == 0).all()), f"{case}: gradient on padded {k}"


def test_padding_outputs_are_zero_and_clipped_value_loss_gradient_is_exactly_zero_there():
    m = MASK.to(F64)
    values = torch.where(m > 0, torch.linspace(-1, 1, B * T, dtype=F64).reshape(B, T), torch.full((B, T), INF))
    values.requires_grad_()
    old = torch.where(m > 0, torch.zeros(B, T, dtype=F64), torch.full((B, T), NAN))
    ret = torch.where(m > 0, torch.ones(B, T, dtype=F64), torch.full((B, T), -INF))
    loss = rs.clipped_value_loss(values, old, ret, m, clip=0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(values.grad).all()
    assert bool((values.grad[m == 0] == 0).all()) and bool((values.grad[m > 0] != 0).any())
    r = torch.where(m > 0, torch.ones(B, T, dtype=F64), torch.full((B, T), NAN))
    for out in (rs.returns_to_go(r, m), rs.td_residuals(r, r, m), rs.gae(r, r, m), rs.whiten(r + m.cumsum(1), m)):
        assert torch.isfinite(out).all() and bool((out[m == 0] == 0).all())


def test_tabular_value_fit_ignores_padded_targets():
    states = torch.tensor([[0, 1, 2], [1, 2, 0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    targets = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float32)
    a, b = rs.TabularValue(3), rs.TabularValue(3)
    err = a.fit(states, targets, lr=0.5, mask=mask)
    poisoned = torch.where(mask > 0, targets, torch.full_like(targets, NAN))
    assert b.fit(states, poisoned, lr=0.5, mask=mask) == err
    assert torch.equal(a.table, b.table) and torch.isfinite(b.table).all()


# -- 2. non-finite values on trained tokens -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_non_finite_on_a_trained_token_is_a_value_error_naming_the_argument(case):
    fn, tensors = _cases(F64)[case]
    for name, (_, pad) in tensors.items():
        where = tuple((~pad).nonzero()[0].tolist())  # the first trained position of this argument
        for bad in (NAN, INF, -INF):
            args = _clean(tensors)
            args[name] = args[name].clone()
            args[name][where] = bad
            with pytest.raises(ValueError, match=rf"^{name} contains 1 NaN or infinite value\(s\) on trained"):
                fn(**args)


def test_non_finite_unmasked_inputs_are_value_errors_naming_the_argument():
    r = torch.tensor([1.0, NAN, 0.0, 1.0], dtype=F64)
    ok = torch.tensor([1.0, 2.0, 0.0, 1.0], dtype=F64)
    ids = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="^rewards contains"):
        rs.group_advantages(r, 2)
    with pytest.raises(ValueError, match="^rewards contains"):
        rs.group_leave_one_out_advantages(r, ids)
    with pytest.raises(ValueError, match="^values contains"):
        rs.leave_one_out_baseline(r)
    probs = torch.full((4,), 0.25, dtype=F64)
    with pytest.raises(ValueError, match="^returns contains"):
        rs.optimal_constant_baseline(r, ok, probs)
    with pytest.raises(ValueError, match="^score_sq_norms contains"):
        rs.optimal_constant_baseline(ok, r.abs(), probs)
    with pytest.raises(ValueError, match="^probs contains"):
        rs.optimal_constant_baseline(ok, ok, torch.tensor([0.5, INF, 0.25, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="^baseline contains"):
        rs.reinforce_weights(ok, MASK.to(F64), baseline=torch.tensor(NAN, dtype=F64))
    with pytest.raises(ValueError, match="baseline"):
        rs.reinforce_weights(ok, MASK.to(F64), baseline=INF)


# -- 3. integer / bool inputs, silent broadcasting, non-binary masks --------------------------------------------


@pytest.mark.parametrize("kind", [torch.int64, torch.int32, torch.bool], ids=["int64", "int32", "bool"])
@pytest.mark.parametrize("case", CASES)
def test_integer_and_bool_tensors_are_refused_not_promoted(case, kind):
    fn, tensors = _cases(F64)[case]
    for name in tensors:
        args = _clean(tensors)
        args[name] = (args[name] > 0).to(kind)
        with pytest.raises(ValueError, match=rf"^{name} must be a floating-point tensor"):
            fn(**args)


@pytest.mark.parametrize("kind", [torch.int64, torch.bool], ids=["int64", "bool"])
def test_integer_and_bool_unmasked_inputs_are_refused(kind):
    x = torch.tensor([1, 0, 0, 1]).to(kind)
    f = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    probs = torch.full((4,), 0.25, dtype=F64)
    with pytest.raises(ValueError, match="^rewards must be a floating-point"):
        rs.group_advantages(x, 2)
    with pytest.raises(ValueError, match="^rewards must be a floating-point"):
        rs.group_leave_one_out_advantages(x, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="^values must be a floating-point"):
        rs.leave_one_out_baseline(x)
    with pytest.raises(ValueError, match="^returns must be a floating-point"):
        rs.optimal_constant_baseline(x, f, probs)
    with pytest.raises(ValueError, match="^score_sq_norms must be a floating-point"):
        rs.optimal_constant_baseline(f, x, probs)
    with pytest.raises(ValueError, match="^probs must be a floating-point"):
        rs.optimal_constant_baseline(f, f, x)
    with pytest.raises(ValueError, match="^targets must be a floating-point"):
        rs.TabularValue(3).fit(torch.tensor([0, 1, 2, 0]), x)


def _shape_errors():
    g = torch.Generator().manual_seed(1)
    m = MASK.to(F64)
    r, v = torch.randn(B, T, generator=g, dtype=F64), torch.randn(B, T, generator=g, dtype=F64)
    R = torch.randn(B, generator=g, dtype=F64)
    return {
        "returns_to_go rewards (B,1)": lambda: rs.returns_to_go(r[:, :1], m),
        "td_residuals values (B,)": lambda: rs.td_residuals(r, v[:, 0], m),
        "td_residuals values (B,1)": lambda: rs.td_residuals(r, v[:, :1], m),
        "gae values (1,T)": lambda: rs.gae(r, v[:1], m),
        "gae last_value (B,1)": lambda: rs.gae(r, v, m, last_value=R[:, None]),
        "n_step_returns values (B,1)": lambda: rs.n_step_returns(r, v[:, :1], m, 2),
        "reinforce_weights rewards (B,1)": lambda: rs.reinforce_weights(r[:, :1], m),
        "reinforce_weights baseline (B,1)": lambda: rs.reinforce_weights(R, m, baseline=R[:, None]),
        "reinforce_weights baseline (1,T)": lambda: rs.reinforce_weights(R, m, baseline=v[:1]),
        "reinforce_weights baseline (T,)": lambda: rs.reinforce_weights(R, m, baseline=v[0]),
        "broadcast_to_tokens values (B,1)": lambda: rs.broadcast_to_tokens(R[:, None], m),
        "terminal_to_steps rewards (B,T)": lambda: rs.terminal_to_steps(r, m),
        "kl_shaped_rewards ref_logp (B,1)": lambda: rs.kl_shaped_rewards(R, r, v[:, :1], m, beta=0.1),
        "kl_shaped_rewards ref_logp (1,T)": lambda: rs.kl_shaped_rewards(R, r, v[:1], m, beta=0.1),
        "kl_shaped_rewards rewards (B,1)": lambda: rs.kl_shaped_rewards(R[:, None], r, v, m, beta=0.1),
        "whiten mask (B,1)": lambda: rs.whiten(v, m[:, :1]),
        "clipped_value_loss old_values (B,1)": lambda: rs.clipped_value_loss(v, r[:, :1], r, m),
        "clipped_value_loss returns (1,T)": lambda: rs.clipped_value_loss(v, r, r[:1], m),
        "explained_variance targets (1,T)": lambda: rs.explained_variance(v, r[:1], m),
        "group_step_advantages step_mask (B,1)": lambda: rs.group_step_advantages(r, m, 2, step_mask=m[:, :1]),
        "group_advantages rewards (B,1)": lambda: rs.group_advantages(R[:, None], 2),
        "group_leave_one_out group_ids (B,1)": lambda: rs.group_leave_one_out_advantages(R, torch.zeros(B, 1).long()),
        "optimal_constant_baseline probs (B,1)": lambda: rs.optimal_constant_baseline(R, R.abs(), R[:, None].abs()),
    }


@pytest.mark.parametrize("case", list(_shape_errors()))
def test_shapes_that_would_broadcast_are_refused(case):
    with pytest.raises(ValueError, match="shape|dimension|rows|does not match"):
        _shape_errors()[case]()


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, NAN])
@pytest.mark.parametrize("case", CASES)
def test_masks_must_be_zero_one(case, bad):
    poisoned = MASK.to(F64)
    poisoned[0, 0] = bad
    fn, tensors = _cases(F64, poisoned)[case]
    with pytest.raises(ValueError, match="0 and 1"):
        fn(**_clean(tensors))


# -- 4. group advantages: zero sum, exactly zero for a group constant up to round-off ------------------------------


def _zero_sum_ok(A: torch.Tensor, G: int) -> bool:
    eps = torch.finfo(A.dtype).eps
    for a in A.reshape(-1, G):
        if float(a.sum().abs()) > 8 * eps * G * float(a.abs().max()):
            return False
    return True


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", ["std", None])
@pytest.mark.parametrize("offset", [0.0, 1.0e3, -7.5e4])
def test_group_advantages_sum_to_zero_up_to_round_off_of_their_own_size(dtype, scale, offset):
    g = torch.Generator().manual_seed(3)
    G = 8
    R = (offset + 0.37 * torch.rand(16 * G, generator=g, dtype=F64) ** 3).to(dtype)
    A = rs.group_advantages(R, G, scale=scale)
    assert A.dtype == dtype and torch.isfinite(A).all()
    assert _zero_sum_ok(A, G)
    # the step version: the normalised step rewards of a group (every token a step) sum to zero too; with a
    # prefix mask they telescope to the advantage of each row's first token
    Rt = (offset + 0.37 * torch.rand(4 * G, 3, generator=g, dtype=F64) ** 3).to(dtype)
    At = rs.group_step_advantages(Rt, torch.ones_like(Rt), G, scale=scale)
    first = At[:, 0].reshape(-1, G)
    steps = (At - torch.cat([At[:, 1:], torch.zeros_like(At[:, :1])], 1)).reshape(-1, G * 3)
    eps = torch.finfo(dtype).eps
    for f, s in zip(first, steps, strict=True):
        assert float(f.sum().abs()) <= 8 * eps * G * 3 * float(s.abs().max())


def _nearly_constant(dtype):
    """Groups of 4 whose rewards are equal up to round-off (the rule: spread <= 16 eps max(1, max|r|))."""
    if dtype == F64:
        a, b = 0.1 + 0.2, 0.3  # differ in the last bit
        big = torch.tensor(1234.5, dtype=F64)
    else:
        a = 0.7
        b = torch.nextafter(torch.tensor(0.7, dtype=F32), torch.tensor(1.0, dtype=F32)).item()
        big = torch.tensor(1234.5, dtype=F32)
    big_next = torch.nextafter(big, big + 1)
    ulp1 = torch.nextafter(torch.tensor(1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype))
    rows = [
        torch.tensor([a, b, b, a], dtype=dtype),
        torch.stack([big, big_next, big, big_next]),
        torch.stack([ulp1, torch.ones((), dtype=dtype), ulp1, ulp1]),
        torch.full((4,), -3.25, dtype=dtype),
    ]
    return torch.cat(rows)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("scale", ["std", None])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_groups_constant_up_to_round_off_get_exactly_zero(dtype, scale, eps):
    R = _nearly_constant(dtype)
    assert not bool((R.reshape(-1, 4) == R.reshape(-1, 4)[:, :1]).all())  # not exactly equal: round-off only
    for unbiased in (True, False):
        A = rs.group_advantages(R, 4, scale=scale, eps=eps, unbiased=unbiased)
        assert torch.equal(A, torch.zeros_like(A)), A
        # the step version: every token a step, each group of 2 rows x 2 tokens
        At = rs.group_step_advantages(R.reshape(-1, 2), torch.ones(R.numel() // 2, 2), 2, scale=scale, eps=eps,
                                      unbiased=unbiased)  # fmt: skip
        assert torch.equal(At, torch.zeros_like(At)), At
    # negative control: a spread well beyond round-off keeps its signal
    R2 = R.clone()
    R2[0] = R2[0] + 1e-3
    assert bool((rs.group_advantages(R2, 4, scale=scale, eps=eps)[:4] != 0).all())


def test_constant_tolerance_is_relative_to_the_dtype_and_the_magnitude():
    one = torch.tensor(1.0, dtype=F64)
    eps = torch.finfo(F64).eps
    near = torch.stack([one, one + 8 * eps, one, one])  # 8 ulps apart at 1: inside 16 eps
    far = torch.stack([one, one + 64 * eps, one, one])  # 64 ulps: outside
    assert torch.equal(rs.group_advantages(near, 4), torch.zeros(4, dtype=F64))
    assert bool((rs.group_advantages(far, 4) != 0).all())
    # relative to max(1, max|r|): at 1e6 the tolerance is 1e6 times larger
    big = torch.tensor([1e6, 1e6 + 1e6 * 8 * eps, 1e6, 1e6], dtype=F64)
    assert torch.equal(rs.group_advantages(big, 4), torch.zeros(4, dtype=F64))
    assert "16" in rs.group_advantages.__doc__ and "dtype" in rs.group_advantages.__doc__


# -- 5. one std convention: unbiased=True ----------------------------------------------------------------------


def test_unbiased_is_the_default_everywhere_and_is_validated():
    for fn in (rs.whiten, rs.group_advantages, rs.group_step_advantages):
        param = inspect.signature(fn).parameters["unbiased"]
        assert param.default is True and param.kind is inspect.Parameter.KEYWORD_ONLY, fn.__name__
    v = torch.randn(3, 4, dtype=F64)
    m = torch.ones(3, 4)
    for bad in (1, 0, "yes", None):
        with pytest.raises(ValueError, match="unbiased"):
            rs.whiten(v, m, unbiased=bad)
        with pytest.raises(ValueError, match="unbiased"):
            rs.group_step_advantages(v, m, 3, unbiased=bad)


def test_group_normalisers_match_trl_and_verl():
    """TRL GRPO: (R - mean) / (nanstd + 1e-4), nanstd Bessel-corrected; verl GRPO: (R - mean) / (torch.std + 1e-6)."""
    g = torch.Generator().manual_seed(5)
    R = torch.rand(6 * 4, generator=g, dtype=F64)
    grouped = R.reshape(-1, 4)
    mean = grouped.mean(1, keepdim=True)
    verl = ((grouped - mean) / (grouped.std(1, keepdim=True) + 1e-6)).reshape(-1)
    n = 4
    nanstd = (((grouped - mean) ** 2).mean(1, keepdim=True) * n / (n - 1)).sqrt()
    trl = ((grouped - mean) / (nanstd + 1e-4)).reshape(-1)
    torch.testing.assert_close(rs.group_advantages(R, 4), verl, rtol=0, atol=1e-12)
    torch.testing.assert_close(rs.group_advantages(R, 4, eps=1e-4), trl, rtol=0, atol=1e-12)
    pop = ((grouped - mean) / (grouped.std(1, keepdim=True, correction=0) + 1e-6)).reshape(-1)
    torch.testing.assert_close(rs.group_advantages(R, 4, unbiased=False), pop, rtol=0, atol=1e-12)
    # the step version with one step per row reduces to group_advantages, with the same default
    step = rs.group_step_advantages(R[:, None], torch.ones(R.numel(), 1), 4)[:, 0]
    torch.testing.assert_close(step, verl, rtol=0, atol=1e-12)


def test_whiten_is_bessel_corrected_by_default_as_verl_masked_whiten():
    g = torch.Generator().manual_seed(6)
    v = torch.randn(3, 6, generator=g, dtype=F64)
    m = (torch.rand(3, 6, generator=g) < 0.7).to(F64)
    m[0, 0] = 1
    x = v[m > 0]
    w = rs.whiten(v, m)[m > 0]
    torch.testing.assert_close(w, (x - x.mean()) / x.std(correction=1), rtol=0, atol=1e-12)
    assert abs(float(w.std(correction=1)) - 1.0) < 1e-12
    # verl_F.masked_whiten: (x - mu) * rsqrt(masked_var(unbiased=True) + 1e-8)
    verl = (x - x.mean()) * torch.rsqrt(x.var(correction=1) + 1e-8)
    torch.testing.assert_close(w, verl, rtol=1e-7, atol=1e-7)
    pop = rs.whiten(v, m, unbiased=False)[m > 0]
    torch.testing.assert_close(pop, (x - x.mean()) / x.std(correction=0), rtol=0, atol=1e-12)
    # shift_mean=False: ours rescales, x / sigma; verl re-adds the mean, (x - mu) / sigma + mu
    torch.testing.assert_close(rs.whiten(v, m, shift_mean=False)[m > 0], x / x.std(correction=1), rtol=0, atol=1e-12)


def test_whiten_edge_cases_are_defined_never_nan():
    v = torch.tensor([[0.5, NAN, 2.0], [INF, -3.0, 1.0]], dtype=F64)
    one = torch.tensor([[1, 0, 0], [0, 0, 0]])
    for unbiased in (True, False):  # a single selected token: no spread to divide by
        assert torch.equal(rs.whiten(v, one, unbiased=unbiased), torch.zeros(2, 3, dtype=F64))
        got = rs.whiten(v, one, shift_mean=False, unbiased=unbiased)
        assert torch.equal(got, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64))
    # equal up to round-off, even with eps = 0: zeros (shift_mean) or the masked input (no shift)
    c = torch.tensor([[0.1 + 0.2, 0.3, 0.3], [0.3, 0.1 + 0.2, 9.0]], dtype=F64)
    cm = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(rs.whiten(c, cm, eps=0.0), torch.zeros(2, 3, dtype=F64))
    assert torch.equal(rs.whiten(c, cm, eps=0.0, shift_mean=False), torch.where(cm > 0, c, 0.0))
    c32 = torch.tensor([[0.7, 0.7]], dtype=F32)
    c32[0, 1] = torch.nextafter(c32[0, 1], torch.tensor(1.0))
    assert torch.equal(rs.whiten(c32, torch.ones(1, 2), eps=0.0), torch.zeros(1, 2))
    assert torch.equal(rs.whiten(v, torch.zeros(2, 3)), torch.zeros(2, 3, dtype=F64))
    for bad in (-1.0, NAN, "1e-8"):
        with pytest.raises(ValueError, match="eps"):
            rs.whiten(c, cm, eps=bad)


def test_normalise_docstrings_state_the_convention_and_the_framework_sources():
    doc = rs.normalise.__doc__
    for needle in ("unbiased=True", "trl/trainer/utils.py", "nanstd", "1e-4", "1e-6", "compute_grpo_outcome_advantage",
                   "verl/utils/torch_functional.py", "masked_whiten", "shift_mean"):  # fmt: skip
        assert needle in doc, needle
    assert "masked_whiten" in rs.whiten.__doc__ and "unbiased" in rs.whiten.__doc__


# -- 6. group-wise leave-one-out (RLOO) ----------------------------------------------------------------------------


def _rloo_loop(R, ids):
    out = torch.empty_like(R)
    for i in range(len(R)):
        others = [float(R[j]) for j in range(len(R)) if j != i and int(ids[j]) == int(ids[i])]
        out[i] = float(R[i]) - sum(others) / len(others)
    return out


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_group_leave_one_out_matches_a_loop_with_unordered_ids_and_unequal_sizes(dtype):
    g = torch.Generator().manual_seed(7)
    ids = torch.tensor([5, 2, 5, 9, 2, 5, 9, 9, 9, 2, 5, -1, -1, 5])  # sizes 5 (id 5), 3, 4, 2; interleaved
    R = torch.randn(len(ids), generator=g, dtype=F64).to(dtype)
    A = rs.group_leave_one_out_advantages(R, ids)
    assert A.dtype == dtype and A.shape == R.shape
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(A.double(), _rloo_loop(R.double(), ids), rtol=0, atol=tol)
    for gid in ids.unique():
        sel = ids == gid
        G = int(sel.sum())
        Rg = R[sel].double()
        torch.testing.assert_close(A[sel].double(), G / (G - 1) * (Rg - Rg.mean()), rtol=0, atol=tol)
        a = A[sel]
        assert float(a.sum().abs()) <= 8 * torch.finfo(dtype).eps * G * float(a.abs().max())
    assert "group_leave_one_out_advantages" in rs.__all__
    assert "group_leave_one_out_advantages" in rs.baselines.__all__


def test_group_leave_one_out_baseline_does_not_depend_on_the_own_reward():
    ids = torch.tensor([0, 1, 0, 0, 1, 2, 2, 0])
    R = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.25, 1.0, 4.0, -0.75], dtype=F64)
    J = torch.autograd.functional.jacobian(lambda r: rs.group_leave_one_out_advantages(r, ids), R)
    sizes = torch.bincount(ids)[ids].to(F64)
    same = ids[:, None] == ids[None, :]
    want = torch.where(same, -1.0 / (sizes[:, None] - 1), torch.zeros(8, 8, dtype=F64))
    want.fill_diagonal_(1.0)
    torch.testing.assert_close(J, want, rtol=0, atol=1e-12)  # dA_i/dR_i = 1, dA_j/dR_i = -1/(G-1)
    # b_i = R_i - A_i: changing R_i leaves b_i unchanged and moves every other b_j of the group by dR/(G-1)
    for i in range(8):
        R2 = R.clone()
        R2[i] += 0.5
        b, b2 = R - rs.group_leave_one_out_advantages(R, ids), R2 - rs.group_leave_one_out_advantages(R2, ids)
        assert abs(float(b2[i] - b[i])) < 1e-12


def test_group_leave_one_out_is_unbiased_in_expectation_over_a_bandit():
    """E[(1/G) sum_i A_i grad log pi(y_i)] over every G-tuple of arms equals grad J exactly; the group-mean
    baseline (GRPO without the std, Dr.GRPO) gives (G-1)/G of it."""
    theta = torch.tensor([0.3, -0.5, 1.1], dtype=F64)
    r = torch.tensor([1.0, 0.0, 0.25], dtype=F64)
    pi = torch.softmax(theta, 0)
    score = torch.eye(3, dtype=F64) - pi  # row k: grad log pi_k
    grad_J = (pi * r) @ score
    G = 3
    loo, mean_b = torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64)
    for ys in itertools.product(range(3), repeat=G):
        y = torch.tensor(ys)
        p = pi[y].prod()
        A = rs.group_leave_one_out_advantages(r[y], torch.zeros(G, dtype=torch.long))
        loo += p * (A[:, None] * score[y]).mean(0)
        mean_b += p * (rs.group_advantages(r[y], G, scale=None)[:, None] * score[y]).mean(0)
    torch.testing.assert_close(loo, grad_J, rtol=0, atol=1e-12)
    torch.testing.assert_close(mean_b, grad_J * (G - 1) / G, rtol=0, atol=1e-12)


def test_group_leave_one_out_validation_and_constant_groups():
    R = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=F64)
    with pytest.raises(ValueError, match=r"group id 7 has a single row"):
        rs.group_leave_one_out_advantages(R, torch.tensor([0, 0, 7, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        rs.group_leave_one_out_advantages(R, torch.tensor([0.0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="integer"):
        rs.group_leave_one_out_advantages(R, torch.tensor([True, True, True, False, False]))
    with pytest.raises(ValueError, match="shape"):
        rs.group_leave_one_out_advantages(R, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="empty"):
        rs.group_leave_one_out_advantages(R[:0], torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="group_ids must be a torch.Tensor"):
        rs.group_leave_one_out_advantages(R, [0, 0, 1, 1, 1])
    for dtype in (F32, F64):
        Rc = _nearly_constant(dtype)
        ids = torch.arange(len(Rc)) // 4
        A = rs.group_leave_one_out_advantages(Rc, ids.flip(0))
        assert torch.equal(A, torch.zeros_like(A))


# -- 7. optimal_constant_baseline ----------------------------------------------------------------------------------


def test_optimal_constant_baseline_refuses_negative_norms_and_weights():
    R = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    s = torch.tensor([1.0, 0.5, 3.0], dtype=F64)
    p = torch.tensor([0.5, 0.25, 0.25], dtype=F64)
    with pytest.raises(ValueError, match="score_sq_norms must be non-negative"):
        rs.optimal_constant_baseline(R, torch.tensor([1.0, -0.5, 3.0], dtype=F64), p)
    with pytest.raises(ValueError, match="score_sq_norms must be non-negative"):
        rs.optimal_constant_baseline(R, torch.tensor([1.0, -0.5, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="probs must be non-negative"):
        rs.optimal_constant_baseline(R, s, torch.tensor([1.25, -0.5, 0.25], dtype=F64))
    with pytest.raises(ValueError, match="probs are all zero"):
        rs.optimal_constant_baseline(R, s, p * 0)
    # b* is a ratio of two expectations under the same weights: any positive scale gives the same value
    want = (0.5 * 1 + 0.125 * 2 + 0.75 * 4) / (0.5 + 0.125 + 0.75)
    for total in (0.5, 1.0, 2.0):
        assert rs.optimal_constant_baseline(R, s, p * total) == pytest.approx(want, rel=1e-12)
    p32 = torch.softmax(torch.randn(1000, generator=torch.Generator().manual_seed(0)), 0)
    assert math.isfinite(rs.optimal_constant_baseline(torch.ones(1000), torch.ones(1000), p32))


# -- 8. source hygiene -----------------------------------------------------------------------------------------------

SRC = Path(rs.__file__).resolve().parent

#: the book references each module's docstrings carried before this rewrite: none may be lost
CHAPTERS = {  # the chapters each module's docstrings point the reader to (the derivations)
    "returns.py": {2, 3},
    "td.py": {3},
    "baselines.py": {2},
    "normalise.py": {6, 7},
    "shaping.py": {6},
    "critic.py": {6},
}


def test_reward_side_sources_keep_lines_short_and_their_book_references():
    for path in SRC.glob("*.py"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert len(line) <= 88, f"{path.name}:{i} is {len(line)} characters long"
    for name, chapters in CHAPTERS.items():
        text = re.sub(r"\s+", " ", (SRC / name).read_text(encoding="utf-8"))
        used = {int(n) for n in re.findall(r"chapter (\d+) \(", text)}
        assert chapters <= used, f"{name} no longer names chapter(s) {chapters - used}"


def test_positional_signatures_are_unchanged():
    want = {
        "returns_to_go": ["rewards", "mask", "gamma"],
        "total_return": ["rewards", "mask", "gamma"],
        "broadcast_to_tokens": ["values", "mask"],
        "reinforce_weights": ["rewards", "mask"],
        "terminal_to_steps": ["rewards", "mask"],
        "td_residuals": ["rewards", "values", "mask", "gamma", "last_value"],
        "n_step_returns": ["rewards", "values", "mask", "n", "gamma"],
        "gae": ["rewards", "values", "mask", "gamma", "lam", "last_value"],
        "optimal_constant_baseline": ["returns", "score_sq_norms", "probs"],
        "leave_one_out_baseline": ["values"],
        "whiten": ["values", "mask"],
        "group_advantages": ["rewards", "group_size"],
        "group_step_advantages": ["rewards", "mask", "group_size"],
        "kl_shaped_rewards": ["rewards", "logp", "ref_logp", "mask"],
        "clipped_value_loss": ["values", "old_values", "returns", "mask"],
        "explained_variance": ["values", "targets", "mask"],
        "group_leave_one_out_advantages": ["rewards", "group_ids"],
    }
    for name, params in want.items():
        sig = inspect.signature(getattr(rs, name)).parameters.values()
        positional = [p.name for p in sig if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert positional == params, name
