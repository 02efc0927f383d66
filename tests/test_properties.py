"""Property-based tests (hypothesis) of the public loss, ratio, KL and advantage functions.

Covered, on small random padded batches (B <= 6, T <= 6, a 0/1 mask of dtype float32/float64/int64/bool):

* trajectory side — ``token_log_probs``, ``aggregate``/``aggregation_weights`` (every mode of ``AGGREGATIONS``),
  ``log_ratios`` (every level of ``RATIO_LEVELS``), ``safe_ratio``, ``clip_loss`` (token and sequence log-ratios,
  symmetric, clip-higher, dual-clip, eps 0), ``ppo_clip_loss`` (every level), ``ppo_kl_penalty_loss``,
  ``kl_estimate``/``kl_loss`` (every estimator of ``KL_ESTIMATORS``), ``pg_surrogate``, ``policy_gradient_loss``,
  in float32, float64, bfloat16 and float16;
* reward side — ``returns_to_go``, ``reinforce_weights``, ``td_residuals``, ``gae``, ``whiten``,
  ``group_advantages``, ``group_step_advantages``, ``group_leave_one_out_advantages``, ``leave_one_out_baseline``,
  ``kl_shaped_rewards``, ``clipped_value_loss``, in float32, float64 and bfloat16 (float16 cannot hold 1e6).

Properties:

1. finite in, finite out over wide ranges (log-probs in [-1e4, 0], log-ratios up to +-1e4, advantages up to
   +-1e4, rewards and values up to +-1e6): values and gradients finite; where PPO's clip removes the gradient
   (A > 0, r > 1 + eps_high or A < 0, r < 1 - eps_low) the per-token gradient is exactly 0;
2. whatever sits on a padded position (NaN, +-inf, the dtype's largest finite value, garbage) gives bitwise the
   same output and gradient, and the gradient there is exactly 0;
3. ``loss == (TokenLosses.values * TokenLosses.weights).sum()`` for every loss with ``per_token=True``, and the
   aggregation weights sum to what each mode promises;
4. an all-zero mask gives a loss of exactly 0 and a gradient of exactly 0 (even with NaN everywhere);
5. group advantages sum to 0 within each group, are exactly 0 for a constant group, and do not change when a
   constant is added to every reward of a group (the baseline property);
6. bad inputs raise ValueError (never another exception, never a NaN result): integer/boolean tensors where floats
   are expected, NaN on a trained position (the message names the argument), shapes that would broadcast,
   non-binary masks, unknown aggregation/level/kind/scale strings.

Hypothesis is derandomised (fixed examples, no example database) and every test draws at most 30 examples
(10 per aggregation mode for those run once per mode);
the whole module is budgeted at < 60 s on a 2-core machine (``pytest --durations=0 tests/test_properties.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policygrad.reward_side import (
    clipped_value_loss,
    gae,
    group_advantages,
    group_leave_one_out_advantages,
    group_step_advantages,
    kl_shaped_rewards,
    leave_one_out_baseline,
    reinforce_weights,
    returns_to_go,
    td_residuals,
    whiten,
)
from policygrad.trajectory_side import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LOG_RATIO_CLAMP,
    RATIO_LEVELS,
    aggregate,
    aggregation_weights,
    clip_loss,
    kl_estimate,
    kl_loss,
    log_ratios,
    pg_surrogate,
    policy_gradient_loss,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
    safe_ratio,
    token_log_probs,
)

FEW = settings(derandomize=True, database=None, deadline=None, max_examples=15)
PER_MODE = settings(FEW, max_examples=10)  # tests run once per aggregation mode: 50 examples in all
SOME = settings(derandomize=True, database=None, deadline=None, max_examples=30)

TRAJ_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
REWARD_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
MASK_DTYPES = (torch.float32, torch.float64, torch.int64, torch.bool)
F16_MAX = torch.finfo(torch.float16).max


def _wide(lo: float, hi: float, mid: float = 3.0):
    """Floats over [lo, hi], with extra weight on moderate values and on the ends."""
    return st.one_of(
        st.floats(lo, hi), st.floats(max(lo, -mid), min(hi, mid)), st.sampled_from(sorted({lo, hi, 0.0}))
    )


LOGP = _wide(-1e4, 0.0)
LOG_RATIO = st.one_of(_wide(-1e4, 1e4, mid=1.0), st.floats(-25.0, 25.0), st.integers(-20, 20).map(float))
ADV = _wide(-1e4, 1e4, mid=2.0)
REWARD = _wide(-1e6, 1e6)


def _lists(draw, elements, n: int) -> list[float]:
    return draw(st.lists(elements, min_size=n, max_size=n))


def _tensor(values, shape, dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


def _mask(draw, B: int, T: int, kind: str = "any") -> torch.Tensor:
    """A 0/1 mask ``(B, T)``; ``kind``: "any", "nonempty" (>= 1 trained token) or "empty"."""
    if kind == "empty":
        bits = [0] * (B * T)
    else:
        bits = _lists(draw, st.integers(0, 1), B * T)
        if kind == "nonempty" and not any(bits):
            bits[draw(st.integers(0, B * T - 1))] = 1
    return torch.tensor(bits).reshape(B, T).to(draw(st.sampled_from(MASK_DTYPES)))


def _garbage(kind: str, dtype: torch.dtype) -> float:
    big = torch.finfo(dtype).max
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "max": big, "-max": -big, "junk": 12345.678}[kind]


GARBAGE = st.sampled_from(["nan", "inf", "-inf", "max", "-max", "junk"])


def _fill(x: torch.Tensor, where: torch.Tensor, value: float) -> torch.Tensor:
    """``x`` with ``value`` wherever ``where`` is True (``where`` broadcast to ``x``'s shape)."""
    return torch.where(where, torch.full_like(x, value), x)


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, counting NaN == NaN."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _absmax(x: torch.Tensor) -> float:
    return float(x.double().abs().max()) if x.numel() else 0.0


# ---------------------------------------------------------------------------------------------------------------
# The trajectory-side losses, one uniform signature: fn(logp, old, adv, mask, agg, max_len, per_token)
# -> (loss, stats or None, TokenLosses or None); ``logp`` is the tensor the gradient is taken with respect to.

CLIP_OPTS = (
    {},
    {"eps_low": 0.2, "eps_high": 0.28},
    {"dual_clip": 3.0},
    {"eps_low": 0.1, "eps_high": 0.3, "dual_clip": 2.0},
    {"eps_low": 0.0},
)


def _split(res, per_token):
    if per_token:
        loss, stats, tl = res
        return loss, stats, tl
    loss, stats = res
    return loss, stats, None


def _clip_token(logp, old, adv, mask, agg, max_len, per_token, opts):
    res = clip_loss(logp - old, adv, mask, **opts, aggregation=agg, max_len=max_len, per_token=per_token)
    return _split(res, per_token)


def _ppo(logp, old, adv, mask, agg, max_len, per_token, level, opts):
    res = ppo_clip_loss(
        logp, old, adv, mask, **opts, level=level, aggregation=agg, max_len=max_len, per_token=per_token
    )
    return _split(res, per_token)


def _ppo_kl(logp, old, adv, mask, agg, max_len, per_token, beta):
    res = ppo_kl_penalty_loss(logp, old, adv, mask, beta=beta, aggregation=agg, max_len=max_len, per_token=per_token)
    return _split(res, per_token)


def _kl(logp, old, adv, mask, agg, max_len, per_token, kind):
    res = kl_loss(logp, old, mask, kind=kind, aggregation=agg, max_len=max_len, per_token=per_token)
    return (res[0], None, res[1]) if per_token else (res, None, None)


def _pg(logp, old, adv, mask, agg, max_len, per_token):
    res = policy_gradient_loss(logp, adv, mask, aggregation=agg, max_len=max_len, per_token=per_token)
    return _split(res, per_token)


def _pg_surrogate(logp, old, adv, mask, agg, max_len, per_token):
    return pg_surrogate(logp, adv, mask, aggregation=agg, max_len=max_len), None, None


def _aggregate(logp, old, adv, mask, agg, max_len, per_token):
    return aggregate(logp, mask, agg, max_len=max_len), None, None


def _loss_registry() -> dict[str, Callable]:
    fns: dict[str, Callable] = {}
    for opts in CLIP_OPTS:
        fns[f"clip_loss(token, {opts})"] = partial(_clip_token, opts=opts)
        fns[f"ppo_clip_loss(token, {opts})"] = partial(_ppo, level="token", opts=opts)
    for level in ("sequence", "geometric"):
        for opts in (CLIP_OPTS[0], CLIP_OPTS[3]):
            fns[f"ppo_clip_loss({level}, {opts})"] = partial(_ppo, level=level, opts=opts)
    for beta in (0.0, 0.1, 10.0):
        fns[f"ppo_kl_penalty_loss(beta={beta})"] = partial(_ppo_kl, beta=beta)
    for kind in KL_ESTIMATORS:
        fns[f"kl_loss({kind})"] = partial(_kl, kind=kind)
    fns["policy_gradient_loss"] = _pg
    fns["pg_surrogate"] = _pg_surrogate
    fns["aggregate"] = _aggregate
    return fns


LOSSES = _loss_registry()
PER_TOKEN_LOSSES = tuple(n for n in LOSSES if not n.startswith(("pg_surrogate", "aggregate")))


@dataclass(frozen=True)
class Traj:
    """A padded trajectory-side batch: log-probs, old/reference log-probs, advantages, a mask, a max_len."""

    logp: torch.Tensor
    old: torch.Tensor
    adv: torch.Tensor
    mask: torch.Tensor
    max_len: int | None

    @property
    def pad(self) -> torch.Tensor:
        return self.mask == 0


@st.composite
def traj_batches(draw, mask_kind: str = "any", dtypes=TRAJ_DTYPES) -> Traj:
    B, T = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(dtypes))
    logp = _lists(draw, LOGP, B * T)
    delta = _lists(draw, LOG_RATIO, B * T)
    old = [min(0.0, max(-1e4, lp - d)) for lp, d in zip(logp, delta, strict=True)]
    adv = _lists(draw, ADV, B * T)
    max_len = draw(st.one_of(st.none(), st.integers(1, 8)))
    return Traj(
        _tensor(logp, (B, T), dtype), _tensor(old, (B, T), dtype), _tensor(adv, (B, T), dtype),
        _mask(draw, B, T, mask_kind), max_len,
    )


def _run(name, b: Traj, agg, per_token=False, *, logp=None, old=None, adv=None):
    """Call loss ``name`` on ``b`` (with optional replacements); return (loss, stats, TokenLosses, d loss/d logp)."""
    leaf = (b.logp if logp is None else logp).detach().clone().requires_grad_(True)
    old = b.old if old is None else old
    adv = b.adv if adv is None else adv
    loss, stats, tl = LOSSES[name](leaf, old, adv, b.mask, agg, b.max_len, per_token)
    (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return loss, stats, tl, torch.zeros_like(leaf) if g is None else g


def _grad_finite(name, b: Traj, agg, g: torch.Tensor) -> bool:
    """Finite, except that a float16 input may get +-inf where the true (float32) gradient exceeds float16's range."""
    if bool(torch.isfinite(g).all()):
        return True
    if g.dtype != torch.float16:
        return False
    *_, g32 = _run(name, Traj(b.logp.float(), b.old.float(), b.adv.float(), b.mask, b.max_len), agg)
    return bool((torch.isfinite(g) | (g32.abs() > F16_MAX)).all()) and bool(torch.isfinite(g32).all())


# ---------------------------------------------------------------------------------------------------------------
# 1. Finite in, finite out


@FEW
@given(
    st.integers(1, 6), st.integers(1, 6), st.integers(1, 5), st.sampled_from(TRAJ_DTYPES), st.data()
)
def test_token_log_probs_finite_and_at_most_zero(B, T, V, dtype, data):
    logits = _tensor(_lists(data.draw, _wide(-1e4, 1e4), B * T * V), (B, T, V), dtype).requires_grad_(True)
    tokens = torch.tensor(_lists(data.draw, st.integers(0, V - 1), B * T)).reshape(B, T)
    logp = token_log_probs(logits, tokens)
    assert logp.shape == (B, T) and bool(torch.isfinite(logp).all()) and bool((logp <= 0).all()), logp
    (g,) = torch.autograd.grad(logp.sum(), logits)
    assert bool(torch.isfinite(g).all()), g


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@PER_MODE
@given(b=traj_batches())
def test_losses_are_finite_with_finite_gradients_over_wide_ranges(aggregation, b):
    for name in LOSSES:
        loss, stats, _, g = _run(name, b, aggregation)
        assert loss.dim() == 0 and bool(torch.isfinite(loss)), (name, loss)
        assert loss.dtype in (torch.float32, torch.float64), (name, loss.dtype)  # summed in >= float32
        assert g.dtype == b.logp.dtype and _grad_finite(name, b, aggregation, g), (name, g)
        assert stats is None or all(math.isfinite(v) for v in stats.values()), (name, stats)


@SOME
@given(b=traj_batches(mask_kind="nonempty"), kind=st.sampled_from(KL_ESTIMATORS))
def test_kl_estimates_are_finite_and_straight_through_is_exact(b, kind):
    x = b.logp.clone().requires_grad_(True)
    k = kl_estimate(x, b.old, kind)
    (g,) = torch.autograd.grad(k.sum(), x)
    assert bool(torch.isfinite(k).all()) and (bool(torch.isfinite(g).all()) or g.dtype == torch.float16), (k, g)
    if kind in ("k2", "k3", "k3+"):
        assert bool((k >= 0).all()), k
    if kind.endswith("+"):  # value of k1 / k3, gradient of k2, both exactly
        base = kl_estimate(b.logp, b.old, kind[:-1])
        x2 = b.logp.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(kl_estimate(x2, b.old, "k2").sum(), x2)
        assert torch.equal(k.detach(), base) and torch.equal(g, g2), (kind, k, base, g, g2)


@SOME
@given(b=traj_batches())
def test_log_ratios_levels_agree_and_safe_ratio_is_finite(b):
    tok, seq, geo = (log_ratios(b.logp, b.old, b.mask, level) for level in RATIO_LEVELS)
    trained = b.mask != 0
    assert tok.shape == b.logp.shape and seq.shape == geo.shape == (b.logp.shape[0],)
    assert bool(torch.isfinite(tok).all() & torch.isfinite(seq).all() & torch.isfinite(geo).all())
    assert torch.equal(tok[~trained], torch.zeros_like(tok[~trained]))
    n = trained.sum(-1)
    tol = 8 * _eps(tok.dtype) * (tok.abs().sum(-1) + 1e-30) * (n + 1)
    assert bool(((seq - tok.sum(-1)).abs() <= tol).all()), (seq, tok)
    assert bool(((geo * n.clamp_min(1) - seq).abs() <= tol).all()) and bool((geo[n == 0] == 0).all()), (geo, seq)
    x = tok.detach().clone().requires_grad_(True)
    r = safe_ratio(x)
    (g,) = torch.autograd.grad(r.sum(), x)
    assert bool(torch.isfinite(r).all() & (r > 0).all() & torch.isfinite(g).all()), r
    assert bool((g[x.abs() > LOG_RATIO_CLAMP] == 0).all()), g


@st.composite
def clip_cases(draw):
    B, T = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(TRAJ_DTYPES))
    inside_out = st.sampled_from([0.1, 0.25, 0.35, 0.5, 0.69, -0.1, -0.25, -0.35, -0.5, -0.69])  # log(0.5..2)
    near = st.one_of(LOG_RATIO, st.integers(-70, 70).map(lambda k: k / 100), inside_out)  # around the clip
    lr = _tensor(_lists(draw, near, B * T), (B, T), dtype)
    lr_seq = _tensor(_lists(draw, near, B), (B,), dtype)
    adv = _tensor(_lists(draw, ADV, B * T), (B, T), dtype)
    return lr, lr_seq, adv, _mask(draw, B, T), draw(st.sampled_from(CLIP_OPTS)), draw(st.sampled_from(AGGREGATIONS))


def _gone(lr: torch.Tensor, adv: torch.Tensor, opts: dict) -> torch.Tensor:
    """Where the clip removes the gradient, leaving a 1e-4 relative margin around the clip boundaries."""
    lo = opts.get("eps_low", 0.2)
    hi = opts.get("eps_high") or lo
    r = torch.exp(lr.double().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    A = adv.double()
    return ((A > 0) & (r > (1 + hi) * (1 + 1e-4))) | ((A < 0) & (r < (1 - lo) * (1 - 1e-4)))


# every regime at least once: A > 0 and A < 0, each inside the clip range, just outside it (1 +- 0.25 .. 0.5),
# far outside (+-12) and beyond the log-ratio clamp (+-1e4)
_LR = [0.1, 0.25, 0.4, 12.0, 1e4, -0.1, -0.3, -0.5, -12.0, -1e4]
_CLIP_EXAMPLE = (
    torch.tensor([_LR, _LR]), torch.tensor([0.3, -0.4]), torch.tensor([[1.0] * 10, [-1.0] * 10]),
    torch.ones(2, 10), CLIP_OPTS[0], "token-mean",
)


@settings(SOME, max_examples=60)
@given(case=clip_cases())
@example(case=_CLIP_EXAMPLE)
@example(case=(*_CLIP_EXAMPLE[:4], CLIP_OPTS[3], "seq-mean-token-sum"))
def test_where_the_clip_removes_the_gradient_it_is_exactly_zero(case):
    lr, lr_seq, adv, mask, opts, agg = case
    trained = mask != 0
    # token log-ratios: the per-token gradient (of the loss and of each token's loss) is exactly 0 where clipped
    x = lr.clone().requires_grad_(True)
    loss, _, tl = clip_loss(x, adv, mask, **opts, aggregation=agg, per_token=True)
    g_loss, = torch.autograd.grad(loss, x, retain_graph=True)
    g_tok, = torch.autograd.grad(tl.values.sum(), x)
    gone = _gone(lr, adv, opts) & trained
    assert bool((g_loss[gone] == 0).all()) and bool((g_tok[gone] == 0).all()), (g_loss, g_tok, gone)
    assert bool(torch.isfinite(g_loss).all()) or lr.dtype == torch.float16, g_loss
    # the same through ppo_clip_loss, with the ratio formed from log-probs
    logp = lr.clamp(max=0).clone().requires_grad_(True)
    old = (logp.detach().double() - lr.double()).clamp(-1e4, 0).to(lr.dtype)
    cd = torch.promote_types(lr.dtype, torch.float32)
    lr2 = logp.detach().to(cd) - old.to(cd)  # the log-ratio exactly as ppo_clip_loss forms it
    _, _, tl2 = ppo_clip_loss(logp, old, adv, mask, **opts, aggregation=agg, per_token=True)
    g2, = torch.autograd.grad(tl2.values.sum(), logp)
    gone2 = _gone(lr2, adv, opts) & trained
    assert bool((g2[gone2] == 0).all()), (g2, gone2)
    # a sequence log-ratio (B,): a row whose trained tokens are all clipped (or that has none) gets gradient 0
    xs = lr_seq.clone().requires_grad_(True)
    gs, = torch.autograd.grad(clip_loss(xs, adv, mask, **opts, aggregation=agg)[0], xs)
    row_gone = (_gone(lr_seq[:, None].expand_as(adv), adv, opts) | ~trained).all(-1)
    assert bool((gs[row_gone] == 0).all()), (gs, row_gone)


# ---------------------------------------------------------------------------------------------------------------
# 2. Padded values change nothing


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@PER_MODE
@given(b=traj_batches(), garbage=st.tuples(GARBAGE, GARBAGE, GARBAGE))
def test_padded_values_change_nothing_in_the_losses(aggregation, b, garbage):
    pad = b.pad
    dt = b.logp.dtype
    dirty = {
        "logp": _fill(b.logp, pad, _garbage(garbage[0], dt)),
        "old": _fill(b.old, pad, _garbage(garbage[1], dt)),
        "adv": _fill(b.adv, pad, _garbage(garbage[2], dt)),
    }
    for name in LOSSES:
        per_token = name in PER_TOKEN_LOSSES
        loss, stats, tl, g = _run(name, b, aggregation, per_token)
        loss2, stats2, tl2, g2 = _run(name, b, aggregation, per_token, **dirty)
        assert torch.equal(loss, loss2), (name, loss, loss2)
        assert torch.equal(g, g2), (name, g, g2)
        assert torch.equal(g2[pad], torch.zeros_like(g2[pad])), (name, g2)
        assert stats == stats2, (name, stats, stats2)
        if per_token:
            assert torch.equal(tl.values, tl2.values) and torch.equal(tl.weights, tl2.weights), name


# ---------------------------------------------------------------------------------------------------------------
# 3. Aggregation consistency


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@PER_MODE
@given(b=traj_batches())
def test_loss_is_the_weighted_sum_of_its_token_losses(aggregation, b):
    pad = b.pad
    for name in PER_TOKEN_LOSSES:
        loss, _, tl, _ = _run(name, b, aggregation, per_token=True)
        assert tl.values.shape == tl.weights.shape == b.logp.shape, name
        assert torch.equal(tl.weights[pad], torch.zeros_like(tl.weights[pad])), name
        assert torch.equal(tl.values[pad], torch.zeros_like(tl.values[pad])), name
        terms = tl.values.double() * tl.weights.double()
        tol = 8 * _eps(loss.dtype) * (terms.numel() + 2) * float(terms.detach().abs().sum()) + 1e-300
        got, want = float(loss.detach()), float(terms.detach().sum())
        assert abs(got - want) <= tol, (name, got, want, tol)


@SOME
@given(
    b=traj_batches(),
    mode=st.sampled_from(AGGREGATIONS),
    wdtype=st.sampled_from((torch.float32, torch.float64)),
)
def test_aggregation_weights_sum_to_what_each_mode_promises(b, mode, wdtype):
    w = aggregation_weights(b.mask, mode, max_len=b.max_len, dtype=wdtype)
    trained = b.mask != 0
    B, T = trained.shape
    n, rows = int(trained.sum()), int(trained.any(-1).sum())
    L = T if b.max_len is None else b.max_len
    want = {
        "token-mean": 1.0 if n else 0.0,
        "seq-mean-token-mean": rows / B,
        "seq-mean-token-sum": n / B,
        "token-sum": float(n),
        "seq-mean-token-sum-norm": n / (B * L),
    }[mode]
    assert w.dtype == wdtype and bool((w[~trained] == 0).all()) and bool((w[trained] > 0).all()), w
    assert abs(float(w.double().sum()) - want) <= 8 * _eps(wdtype) * (n + 1) * max(1.0, want), (float(w.sum()), want)
    # aggregate(x) == sum(w * x) for arbitrary per-token values
    x = b.adv
    got = aggregate(x, b.mask, mode, max_len=b.max_len)
    w64 = aggregation_weights(b.mask, mode, max_len=b.max_len, dtype=torch.float64)
    ref = w64 * torch.where(trained, x, 0).double()
    tol = 8 * _eps(x.dtype) * (n + 2) * float(ref.abs().sum()) + 1e-300
    assert abs(float(got) - float(ref.sum())) <= tol, (float(got), float(ref.sum()))


# ---------------------------------------------------------------------------------------------------------------
# 4. All-zero mask


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@PER_MODE
@given(b=traj_batches(mask_kind="empty"), garbage=GARBAGE)
def test_an_all_zero_mask_gives_zero_loss_and_zero_gradient(aggregation, b, garbage):
    dt = b.logp.dtype
    everywhere = torch.ones_like(b.pad)
    for fill in (None, _garbage(garbage, dt)):
        kw = {} if fill is None else {k: _fill(getattr(b, k), everywhere, fill) for k in ("logp", "old", "adv")}
        for name in LOSSES:
            loss, stats, _, g = _run(name, b, aggregation, **kw)
            assert float(loss.detach()) == 0.0 and torch.equal(g, torch.zeros_like(g)), (name, fill, loss, g)
            assert stats is None or all(math.isfinite(v) for v in stats.values()), (name, stats)
        lr = log_ratios(kw.get("logp", b.logp), kw.get("old", b.old), b.mask, "geometric")
        assert torch.equal(lr, torch.zeros_like(lr)), lr


# ---------------------------------------------------------------------------------------------------------------
# Reward side: finite in, finite out, and padded values change nothing


@dataclass
class Rew:
    """A padded reward-side batch (all tensors ``(B, T)`` unless noted) and a group size ``G`` dividing ``B``."""

    rewards: torch.Tensor
    values: torch.Tensor
    old_values: torch.Tensor
    targets: torch.Tensor
    logp: torch.Tensor
    ref: torch.Tensor
    term: torch.Tensor  # (B,) outcome rewards
    last: torch.Tensor  # (B,) bootstrap values
    mask: torch.Tensor
    G: int
    per_token: tuple[str, ...] = field(default=("rewards", "values", "old_values", "targets", "logp", "ref"))


@st.composite
def reward_batches(draw) -> Rew:
    B, T = draw(st.integers(2, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(REWARD_DTYPES))
    G = draw(st.sampled_from([g for g in range(2, B + 1) if B % g == 0]))

    def mat(el):
        return _tensor(_lists(draw, el, B * T), (B, T), dtype)

    def vec(el):
        return _tensor(_lists(draw, el, B), (B,), dtype)

    return Rew(
        mat(REWARD), mat(REWARD), mat(REWARD), mat(REWARD), mat(LOGP), mat(LOGP), vec(REWARD), vec(REWARD),
        _mask(draw, B, T), G,
    )


def _loo_ids(b: Rew) -> torch.Tensor:
    return torch.arange(b.term.shape[0]) % (b.term.shape[0] // b.G)  # groups of G rows, interleaved


# name -> (function of the batch, arguments the gradient is taken with respect to, whether it takes a mask)
REWARD_FNS: dict[str, tuple[Callable[[Rew], torch.Tensor], tuple[str, ...], bool]] = {
    "returns_to_go": (lambda b: returns_to_go(b.rewards, b.mask, gamma=0.9), ("rewards",), True),
    "reinforce_weights(reward_to_go, baseline (B, T))": (
        lambda b: reinforce_weights(b.rewards, b.mask, reward_to_go=True, baseline=b.values, gamma=0.9),
        ("rewards", "values"), True,
    ),
    "reinforce_weights(total, baseline (B, T))": (
        lambda b: reinforce_weights(b.rewards, b.mask, baseline=b.values), ("rewards", "values"), True,
    ),
    "reinforce_weights(terminal (B,), baseline (B,))": (
        lambda b: reinforce_weights(b.term, b.mask, baseline=b.last), ("term", "last"), True,
    ),
    "td_residuals": (
        lambda b: td_residuals(b.rewards, b.values, b.mask, 0.9, b.last), ("rewards", "values", "last"), True,
    ),
    "gae": (lambda b: gae(b.rewards, b.values, b.mask, 0.99, 0.95, b.last), ("rewards", "values", "last"), True),
    "gae(lam=1, no bootstrap)": (lambda b: gae(b.rewards, b.values, b.mask, 1.0, 1.0), ("rewards", "values"), True),
    "whiten": (lambda b: whiten(b.values, b.mask), ("values",), True),
    "whiten(shift_mean=False, unbiased=False)": (
        lambda b: whiten(b.values, b.mask, shift_mean=False, unbiased=False), ("values",), True,
    ),
    "group_step_advantages(std)": (lambda b: group_step_advantages(b.rewards, b.mask, b.G), ("rewards",), True),
    "group_step_advantages(None, biased)": (
        lambda b: group_step_advantages(b.rewards, b.mask, b.G, scale=None, unbiased=False), ("rewards",), True,
    ),
    "kl_shaped_rewards(k1)": (lambda b: kl_shaped_rewards(b.rewards, b.logp, b.ref, b.mask, beta=0.1), (), True),
    "kl_shaped_rewards(terminal, k3)": (
        lambda b: kl_shaped_rewards(b.term, b.logp, b.ref, b.mask, beta=10.0, kind="k3"), (), True,
    ),
    "clipped_value_loss": (lambda b: clipped_value_loss(b.values, b.old_values, b.targets, b.mask), ("values",), True),
    "clipped_value_loss(clip=None)": (
        lambda b: clipped_value_loss(b.values, b.old_values, b.targets, b.mask, clip=None), ("values",), True,
    ),
    "group_advantages(std)": (lambda b: group_advantages(b.term, b.G), ("term",), False),
    "group_advantages(None, biased)": (
        lambda b: group_advantages(b.term, b.G, scale=None, unbiased=False), ("term",), False,
    ),
    "group_leave_one_out_advantages": (
        lambda b: group_leave_one_out_advantages(b.term, _loo_ids(b)), ("term",), False,
    ),
    "leave_one_out_baseline(B,)": (lambda b: leave_one_out_baseline(b.term), ("term",), False),
    "leave_one_out_baseline(B, T)": (lambda b: leave_one_out_baseline(b.values), ("values",), False),
}


def _reward_run(name: str, b: Rew):
    """Output of ``name`` on ``b`` and the gradients of a weighted sum of it w.r.t. its differentiable arguments."""
    fn, wrt, _ = REWARD_FNS[name]
    leaves = {k: getattr(b, k).detach().clone().requires_grad_(True) for k in wrt}
    args = {k: getattr(b, k) for k in ("rewards", "values", "old_values", "targets", "logp", "ref", "term", "last")}
    bb = Rew(**{**args, **leaves}, mask=b.mask, G=b.G)
    out = fn(bb)
    if not leaves or not out.requires_grad:  # e.g. whiten of constant values returns fresh zeros
        return out.detach(), {k: torch.zeros_like(v) for k, v in leaves.items()}
    w = 1.0 + torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape) / 7.0
    grads = torch.autograd.grad((out * w).sum(), list(leaves.values()), allow_unused=True)
    pairs = zip(leaves.items(), grads, strict=True)
    return out.detach(), {k: torch.zeros_like(v) if g is None else g for (k, v), g in pairs}


@SOME
@given(b=reward_batches())
def test_reward_side_is_finite_with_finite_gradients_over_wide_ranges(b):
    bad = []
    for name in REWARD_FNS:
        out, grads = _reward_run(name, b)
        if not bool(torch.isfinite(out).all()):
            bad.append(f"{name}: non-finite output {out}")
        bad += [f"{name}: non-finite d/d{k} {g}" for k, g in grads.items() if not bool(torch.isfinite(g).all())]
    assert not bad, "\n".join(bad)


@SOME
@given(b=reward_batches(), garbage=st.tuples(GARBAGE, GARBAGE))
def test_padded_values_change_nothing_on_the_reward_side(b, garbage):
    pad = b.mask == 0
    empty_row = pad.all(-1)
    dt = b.rewards.dtype
    g1, g2 = _garbage(garbage[0], dt), _garbage(garbage[1], dt)
    dirty = Rew(
        **{k: _fill(getattr(b, k), pad, g1 if i % 2 else g2) for i, k in enumerate(b.per_token)},
        term=_fill(b.term, empty_row, g1), last=_fill(b.last, empty_row, g2), mask=b.mask, G=b.G,
    )
    for name, (_, _, masked) in REWARD_FNS.items():
        if not masked:
            continue
        out, grads = _reward_run(name, b)
        out2, grads2 = _reward_run(name, dirty)
        assert torch.equal(out, out2), (name, out, out2)
        for k, g in grads.items():
            where = empty_row if k in ("term", "last") else pad
            assert _same(g, grads2[k]), (name, k, g, grads2[k])  # a NaN gradient is test_reward_side_is_finite's
            assert torch.equal(grads2[k][where], torch.zeros_like(grads2[k][where])), (name, k, grads2[k])
        if out.dim() == 2:
            assert torch.equal(out[pad], torch.zeros_like(out[pad])), (name, out)


@SOME
@given(b=reward_batches(), garbage=GARBAGE)
def test_an_all_zero_mask_on_the_reward_side_gives_zeros(b, garbage):
    """Every masked reward-side function: all-zero output and gradient, whatever the (never read) inputs are."""
    g = _garbage(garbage, b.rewards.dtype)
    junk = {k: torch.full_like(getattr(b, k), g) for k in (*b.per_token, "term", "last")}
    empty = Rew(**junk, mask=torch.zeros_like(b.mask), G=b.G)
    for name, (_, _, masked) in REWARD_FNS.items():
        if not masked:
            continue
        out, grads = _reward_run(name, empty)
        assert torch.equal(out, torch.zeros_like(out)), (name, out)
        for k, gr in grads.items():
            assert torch.equal(gr, torch.zeros_like(gr)), (name, k, gr)


# ---------------------------------------------------------------------------------------------------------------
# 5. Groups


def _group_values(draw, n: int, dtype: torch.dtype, kinds=("random", "constant", "round-off", "ties")) -> list:
    """``n`` rewards of one group: random, all equal, equal up to one ulp, or a few small integers (ties)."""
    kind = draw(st.sampled_from(kinds))
    if kind == "random":
        return _lists(draw, REWARD, n)
    if kind == "ties":
        return [float(v) for v in _lists(draw, st.integers(-2, 2), n)]
    x = torch.tensor(draw(REWARD), dtype=torch.float64).to(dtype)
    if kind == "constant":
        return [float(x)] * n
    up = torch.nextafter(x, torch.tensor(math.inf, dtype=dtype))
    return [float(draw(st.sampled_from([x, up]))) for _ in range(n)]


def _sum_tol(A: torch.Tensor, dtype: torch.dtype) -> float:
    """|sum| <= 8 eps G max|A| + tiny: round-off of the group's own advantages."""
    return 8 * _eps(dtype) * A.numel() * _absmax(A) + torch.finfo(dtype).tiny


def _is_constant(r: torch.Tensor, dtype: torch.dtype) -> bool:
    """The package's documented rule: spread <= 16 eps max(1, max|R|), eps of the dtype (float32's for half)."""
    r = r.double()
    eps = _eps(torch.promote_types(dtype, torch.float32))
    return float(r.max() - r.min()) <= 16 * eps * max(1.0, float(r.abs().max()))


def _check_group(A: torch.Tensor, r: torch.Tensor, dtype, what) -> None:
    s = float(A.double().sum())
    assert abs(s) <= _sum_tol(A, dtype), (what, "group sum", s, A, r)
    if _is_constant(r, dtype):
        assert torch.equal(A, torch.zeros_like(A)), (what, "constant group", A, r)


@SOME
@given(
    G=st.integers(2, 6), dtype=st.sampled_from(REWARD_DTYPES), scale=st.sampled_from(["std", None]),
    unbiased=st.booleans(), data=st.data(),
)
def test_group_advantages_sum_to_zero_and_vanish_on_constant_groups(G, dtype, scale, unbiased, data):
    n_groups = data.draw(st.integers(1, 6 // G))
    rows = [_group_values(data.draw, G, dtype) for _ in range(n_groups)]
    r = torch.tensor(rows, dtype=torch.float64).to(dtype).reshape(-1)
    A = group_advantages(r, G, scale=scale, unbiased=unbiased)
    assert A.dtype == dtype and A.shape == r.shape and bool(torch.isfinite(A).all()), A
    for g in range(n_groups):
        _check_group(A[g * G:(g + 1) * G], r[g * G:(g + 1) * G], dtype, (scale, unbiased))


@SOME
@given(dtype=st.sampled_from(REWARD_DTYPES), data=st.data())
def test_group_leave_one_out_advantages_sum_to_zero_and_vanish_on_constant_groups(dtype, data):
    sizes = data.draw(st.lists(st.integers(2, 3), min_size=1, max_size=3).filter(lambda s: sum(s) <= 6))
    labels = data.draw(st.lists(st.integers(-1000, 1000), min_size=len(sizes), max_size=len(sizes), unique=True))
    ids = [lab for lab, n in zip(labels, sizes, strict=True) for _ in range(n)]
    vals = [v for n in sizes for v in _group_values(data.draw, n, dtype)]
    order = data.draw(st.permutations(range(len(ids))))  # groups need not be contiguous
    gid = torch.tensor([ids[i] for i in order])
    r = torch.tensor([vals[i] for i in order], dtype=torch.float64).to(dtype)
    A = group_leave_one_out_advantages(r, gid)
    assert A.dtype == dtype and A.shape == r.shape and bool(torch.isfinite(A).all()), A
    for lab in labels:
        sel = gid == lab
        _check_group(A[sel], r[sel], dtype, lab)
        n = int(sel.sum())
        ref = r[sel].double() - (r[sel].double().sum() - r[sel].double()) / (n - 1)  # R_i - mean of the others
        if not _is_constant(r[sel], dtype):
            tol = 4 * _eps(dtype) * float(ref.abs().max()) + 64 * 2.0**-52 * float(r[sel].double().abs().max())
            assert bool(((A[sel].double() - ref).abs() <= tol).all()), (A[sel], ref)


def _next_trained(A: torch.Tensor, trained: torch.Tensor) -> torch.Tensor:
    """For each position, the advantage at the next trained position of its row (0 if there is none)."""
    B, T = A.shape
    out = torch.zeros_like(A)
    for i in range(B):
        nxt = 0.0
        for t in range(T - 1, -1, -1):
            out[i, t] = nxt
            if trained[i, t]:
                nxt = A[i, t]
    return out


@SOME
@given(
    G=st.integers(2, 6), T=st.integers(1, 6), dtype=st.sampled_from(REWARD_DTYPES),
    scale=st.sampled_from(["std", None]), unbiased=st.booleans(), data=st.data(),
)
def test_group_step_advantages_normalised_steps_sum_to_zero(G, T, dtype, scale, unbiased, data):
    n_groups = data.draw(st.integers(1, 6 // G))
    B = G * n_groups
    mask = _mask(data.draw, B, T)
    trained = mask != 0
    steps = trained & torch.tensor(_lists(data.draw, st.booleans(), B * T)).reshape(B, T)
    vals = torch.tensor([_group_values(data.draw, G * T, dtype) for _ in range(n_groups)], dtype=torch.float64)
    r = torch.where(steps, vals.reshape(B, T), 0.0).to(dtype)
    r = torch.where(trained, r, torch.full_like(r, math.nan))  # never read
    A = group_step_advantages(r, mask, G, step_mask=steps, scale=scale, unbiased=unbiased)
    assert A.dtype == dtype and bool(torch.isfinite(A).all()) and bool((A[~trained] == 0).all()), A
    normed = A.double() - _next_trained(A.double(), trained)  # the normalised step reward of each step
    for g in range(n_groups):
        rows = slice(g * G, (g + 1) * G)
        s, a = steps[rows], A[rows]
        n = int(s.sum())
        tol = 8 * _eps(dtype) * max(n, 1) * _absmax(a) + torch.finfo(dtype).tiny
        assert abs(float(normed[rows][s].sum())) <= tol, ("group sum", normed[rows], a)
        if n < 2 or _is_constant(r[rows][s], dtype):
            assert torch.equal(a, torch.zeros_like(a)), ("constant group", a, r[rows])


@SOME
@given(dtype=st.sampled_from(REWARD_DTYPES), two_d=st.booleans(), data=st.data())
def test_leave_one_out_baseline_is_the_mean_of_the_others(dtype, two_d, data):
    N, T = data.draw(st.integers(2, 6)), data.draw(st.integers(1, 6))
    shape = (N, T) if two_d else (N,)
    v = _tensor(_lists(data.draw, REWARD, math.prod(shape)), shape, dtype)
    b = leave_one_out_baseline(v)
    ref = (v.double().sum(0, keepdim=True) - v.double()) / (N - 1)
    tol = 8 * _eps(dtype) * N * float(v.double().abs().max()) + torch.finfo(dtype).tiny
    assert b.shape == v.shape and bool(((b.double() - ref).abs() <= tol).all()), (b, ref)
    assert bool(((v.double() - b.double()).sum(0).abs() <= 2 * tol).all()), (v - b).sum(0)


# the baseline property: rewards are quarter-integers and shifts integers, so every shifted reward is exact
EXACT_REWARD = st.integers(-4_000_000, 4_000_000).map(lambda k: k / 4.0)


def _shift_tol(A1, A2, r1, r2, extra: int = 1) -> torch.Tensor:
    M = max(float(r1.double().abs().max()), float(r2.double().abs().max()))
    spread = float(r1.double().max() - r1.double().min())
    amax = max(float(A1.double().abs().max()), float(A2.double().abs().max()))
    return 4 * _eps(A1.dtype) * amax + 64 * 2.0**-52 * M * extra * (1 + amax / max(spread, 1e-300))


def _same_class(r1, r2, dtype) -> bool:
    return _is_constant(r1, dtype) == _is_constant(r2, dtype)


@SOME
@given(
    G=st.integers(2, 6), dtype=st.sampled_from((torch.float32, torch.float64)),
    c=st.one_of(st.integers(-1_000_000, 1_000_000), st.integers(-3, 3)), data=st.data(),
)
def test_adding_a_constant_to_a_group_leaves_its_advantages_unchanged(G, dtype, c, data):
    n_groups = data.draw(st.integers(1, 6 // G))
    B = G * n_groups
    r = torch.tensor(_lists(data.draw, EXACT_REWARD, B), dtype=dtype)
    g = data.draw(st.integers(0, n_groups - 1))
    rows = slice(g * G, (g + 1) * G)
    r2 = r.clone()
    r2[rows] += c
    r1g, r2g = r[rows], r2[rows]
    # the round-off rule is relative to max|R|: a shift that changes whether a group counts as constant is excluded
    if not _same_class(r1g, r2g, dtype):
        return
    ids = torch.arange(B) // G
    cases = [
        (f"group_advantages({s}, unbiased={u})", partial(group_advantages, group_size=G, scale=s, unbiased=u))
        for s in ("std", None) for u in (True, False)
    ]
    cases.append(("group_leave_one_out_advantages", lambda x: group_leave_one_out_advantages(x, ids)))
    for what, fn in cases:
        A1, A2 = fn(r), fn(r2)
        if _is_constant(r1g, dtype):  # constant before and after: exactly 0 both times
            assert torch.equal(A1[rows], torch.zeros_like(A1[rows])) and torch.equal(A1[rows], A2[rows]), (what, A1, A2)
        tol = _shift_tol(A1[rows], A2[rows], r1g, r2g)
        assert bool(((A1 - A2).abs()[rows] <= tol).all()), (what, A1, A2, tol)
        others = torch.ones(B, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(A1[others], A2[others]), (what, "another group changed", A1, A2)
    # group_step_advantages: add c to every step reward of group g
    T = data.draw(st.integers(1, 4))
    mask = _mask(data.draw, B, T)
    steps = (mask != 0) & torch.tensor(_lists(data.draw, st.booleans(), B * T)).reshape(B, T)
    R = torch.where(steps, torch.tensor(_lists(data.draw, EXACT_REWARD, B * T), dtype=dtype).reshape(B, T), 0.0)
    R2 = R.clone()
    R2[rows] = torch.where(steps[rows], R[rows] + c, 0.0)
    s1, s2 = R[rows][steps[rows]], R2[rows][steps[rows]]
    if s1.numel() == 0 or not _same_class(s1, s2, dtype):
        return
    for scale in ("std", None):
        A1 = group_step_advantages(R, mask, G, step_mask=steps, scale=scale)
        A2 = group_step_advantages(R2, mask, G, step_mask=steps, scale=scale)
        if _is_constant(s1, dtype) or s1.numel() < 2:
            assert torch.equal(A1[rows], torch.zeros_like(A1[rows])) and torch.equal(A1[rows], A2[rows]), (A1, A2)
        tol = _shift_tol(A1[rows], A2[rows], s1, s2, extra=G * T)
        assert bool(((A1 - A2).abs()[rows] <= tol).all()), ("group_step_advantages", scale, A1, A2, tol)


# ---------------------------------------------------------------------------------------------------------------
# 6. Bad inputs raise ValueError


@dataclass
class Ctx:
    """Valid inputs for the bad-input tests: ``B >= 2``, ``T >= 2``, a mask with at least ``mask[0, 0] = 1``."""

    B: int
    T: int
    dtype: torch.dtype
    mask: torch.Tensor
    gen: torch.Generator

    def lp(self) -> torch.Tensor:
        return (-3 * torch.rand(self.B, self.T, generator=self.gen)).to(self.dtype)

    def x(self, *shape) -> torch.Tensor:
        return torch.randn(*(shape or (self.B, self.T)), generator=self.gen).to(self.dtype)


@dataclass(frozen=True)
class Spec:
    fn: Callable
    build: Callable[[Ctx], dict]
    nan: dict[str, str]  # float argument -> where a NaN is checked: "token" (trained), "row" (non-empty row), "any"
    shapes: tuple[str, ...] = ()  # arguments whose shape must match exactly (no broadcasting)
    masks: tuple[str, ...] = ("mask",)
    mask_shapes: tuple[str, ...] = ("B1", "1T", "B")  # mask shape mutations that must be refused
    strings: tuple[str, ...] = ()  # option strings that must be one of a known set
    ints: tuple[str, ...] = ()  # integer-tensor arguments (a float tensor there must be refused)
    other_valid: tuple[str, ...] = ()  # "arg (shape)" mutations of ``shapes`` that are documented valid inputs


def _ppo_kw(c: Ctx) -> dict:
    return {"logp": c.lp(), "old_logp": c.lp(), "advantages": c.x(), "mask": c.mask}


SPECS: dict[str, Spec] = {
    "token_log_probs": Spec(
        token_log_probs,
        lambda c: {"logits": c.x(c.B, c.T, 4), "tokens": torch.randint(0, 4, (c.B, c.T), generator=c.gen)},
        # NaN logits pass through by design (a padded position may hold anything); the losses refuse the
        # resulting NaN log-probs on trained tokens, naming ``logp``
        nan={}, shapes=("logits", "tokens"), masks=(), ints=("tokens",),
    ),
    "aggregate": Spec(
        aggregate, lambda c: {"per_token": c.x(), "mask": c.mask, "mode": "token-mean"},
        nan={"per_token": "token"}, shapes=("per_token",), strings=("mode",),
    ),
    "aggregation_weights": Spec(
        aggregation_weights, lambda c: {"mask": c.mask, "mode": "seq-mean-token-mean"},
        nan={}, mask_shapes=("B",), strings=("mode",),
    ),
    "log_ratios": Spec(
        log_ratios, lambda c: {"logp": c.lp(), "old_logp": c.lp(), "mask": c.mask, "level": "token"},
        nan={"logp": "token", "old_logp": "token"}, shapes=("logp", "old_logp"), strings=("level",),
    ),
    "safe_ratio": Spec(safe_ratio, lambda c: {"log_ratio": c.x()}, nan={"log_ratio": "any"}, masks=()),
    "clip_loss(token)": Spec(
        clip_loss, lambda c: {"log_ratio": c.x(), "advantages": c.x(), "mask": c.mask, "aggregation": "token-mean"},
        nan={"log_ratio": "token", "advantages": "token"}, shapes=("log_ratio", "advantages"), strings=("aggregation",),
        other_valid=("log_ratio (B,)",),  # a sequence log-ratio
    ),
    "clip_loss(sequence)": Spec(
        clip_loss, lambda c: {"log_ratio": c.x(c.B), "advantages": c.x(), "mask": c.mask, "dual_clip": 3.0},
        nan={"log_ratio": "row", "advantages": "token"}, shapes=("log_ratio", "advantages"),
    ),
    "ppo_clip_loss": Spec(
        ppo_clip_loss, lambda c: {**_ppo_kw(c), "level": "geometric", "aggregation": "seq-mean-token-mean"},
        nan={"logp": "token", "old_logp": "token", "advantages": "token"},
        shapes=("logp", "old_logp", "advantages"), strings=("level", "aggregation"),
    ),
    "ppo_kl_penalty_loss": Spec(
        ppo_kl_penalty_loss, lambda c: {**_ppo_kw(c), "beta": 0.1, "aggregation": "token-sum"},
        nan={"logp": "token", "old_logp": "token", "advantages": "token"},
        shapes=("logp", "old_logp", "advantages"), strings=("aggregation",),
    ),
    "kl_estimate": Spec(
        kl_estimate, lambda c: {"logp": c.lp(), "ref_logp": c.lp(), "kind": "k3"},
        nan={"logp": "any", "ref_logp": "any"}, shapes=("ref_logp",), masks=(), strings=("kind",),
    ),
    "kl_loss": Spec(
        kl_loss,
        lambda c: {"logp": c.lp(), "ref_logp": c.lp(), "mask": c.mask, "kind": "k1+", "aggregation": "token-mean"},
        nan={"logp": "token", "ref_logp": "token"}, shapes=("logp", "ref_logp"), strings=("kind", "aggregation"),
    ),
    "pg_surrogate": Spec(
        pg_surrogate, lambda c: {"logp": c.lp(), "weights": c.x(), "mask": c.mask, "aggregation": "seq-mean-token-sum"},
        nan={"logp": "token", "weights": "token"}, shapes=("logp", "weights"), strings=("aggregation",),
    ),
    "policy_gradient_loss": Spec(
        policy_gradient_loss,
        lambda c: {"logp": c.lp(), "advantages": c.x(), "mask": c.mask, "aggregation": "token-mean"},
        nan={"logp": "token", "advantages": "token"}, shapes=("logp", "advantages"), strings=("aggregation",),
    ),
    "returns_to_go": Spec(
        returns_to_go, lambda c: {"rewards": c.x(), "mask": c.mask, "gamma": 0.9},
        nan={"rewards": "token"}, shapes=("rewards",),
    ),
    "reinforce_weights(B, T)": Spec(
        reinforce_weights, lambda c: {"rewards": c.x(), "mask": c.mask, "reward_to_go": True, "baseline": c.x()},
        nan={"rewards": "token", "baseline": "token"}, shapes=("rewards", "baseline"),
        other_valid=("baseline (B,)",),  # one baseline per trajectory
    ),
    "reinforce_weights(B,)": Spec(
        reinforce_weights, lambda c: {"rewards": c.x(c.B), "mask": c.mask, "baseline": c.x(c.B)},
        nan={"rewards": "row", "baseline": "row"}, shapes=("rewards", "baseline"), mask_shapes=("B", "1T"),
        other_valid=("baseline ()",),  # a scalar baseline
    ),
    "td_residuals": Spec(
        td_residuals, lambda c: {"rewards": c.x(), "values": c.x(), "mask": c.mask, "last_value": c.x(c.B)},
        nan={"rewards": "token", "values": "token", "last_value": "row"}, shapes=("rewards", "values", "last_value"),
    ),
    "gae": Spec(
        gae, lambda c: {"rewards": c.x(), "values": c.x(), "mask": c.mask, "lam": 0.9, "last_value": c.x(c.B)},
        nan={"rewards": "token", "values": "token", "last_value": "row"}, shapes=("rewards", "values", "last_value"),
    ),
    "whiten": Spec(whiten, lambda c: {"values": c.x(), "mask": c.mask}, nan={"values": "token"}, shapes=("values",)),
    "group_advantages": Spec(
        group_advantages, lambda c: {"rewards": c.x(c.B), "group_size": c.B, "scale": "std"},
        nan={"rewards": "any"}, shapes=("rewards",), masks=(), strings=("scale",),
    ),
    "group_step_advantages": Spec(
        group_step_advantages,
        lambda c: {"rewards": c.x(), "mask": c.mask, "group_size": c.B, "step_mask": c.mask.clone(), "scale": None},
        nan={"rewards": "token"}, shapes=("rewards",), masks=("mask", "step_mask"), strings=("scale",),
    ),
    "group_leave_one_out_advantages": Spec(
        group_leave_one_out_advantages,
        lambda c: {"rewards": c.x(c.B), "group_ids": torch.zeros(c.B, dtype=torch.long)},
        nan={"rewards": "any"}, shapes=("rewards", "group_ids"), masks=(), ints=("group_ids",),
    ),
    "leave_one_out_baseline": Spec(
        leave_one_out_baseline, lambda c: {"values": c.x()}, nan={"values": "any"}, masks=()
    ),
    "kl_shaped_rewards(B, T)": Spec(
        kl_shaped_rewards,
        lambda c: {"rewards": c.x(), "logp": c.lp(), "ref_logp": c.lp(), "mask": c.mask, "beta": 0.1, "kind": "k1"},
        nan={"rewards": "token", "logp": "token", "ref_logp": "token"}, shapes=("rewards", "logp", "ref_logp"),
        strings=("kind",), other_valid=("rewards (B,)",),  # outcome rewards
    ),
    "kl_shaped_rewards(B,)": Spec(
        kl_shaped_rewards,
        lambda c: {"rewards": c.x(c.B), "logp": c.lp(), "ref_logp": c.lp(), "mask": c.mask, "beta": 0.1},
        nan={"rewards": "row", "logp": "token", "ref_logp": "token"}, shapes=("rewards", "logp", "ref_logp"),
    ),
    "clipped_value_loss": Spec(
        clipped_value_loss,
        lambda c: {"values": c.x(), "old_values": c.x(), "returns": c.x(), "mask": c.mask, "clip": 0.2},
        nan={"values": "token", "old_values": "token", "returns": "token"}, shapes=("values", "old_values", "returns"),
    ),
}


@st.composite
def contexts(draw) -> Ctx:
    B, T = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    mask = _mask(draw, B, T)
    mask[0, 0] = 1
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return Ctx(B, T, draw(st.sampled_from(TRAJ_DTYPES)), mask, gen)


def _outcome(spec_name: str, spec: Spec, kw: dict, what: str, must_name: str | None = None) -> str | None:
    """None if the call raised a ValueError (naming ``must_name`` if given), else a description of what went wrong."""
    try:
        out = spec.fn(**kw)
    except ValueError as err:
        if must_name is not None and must_name not in str(err):
            return f"{spec_name}, {what}: ValueError does not name {must_name!r}: {err}"
        return None
    except Exception as err:  # noqa: BLE001 - the property is precisely that nothing else is raised
        return f"{spec_name}, {what}: raised {type(err).__name__} ({err}) instead of ValueError"
    return f"{spec_name}, {what}: no ValueError; returned {out!r}"


def _valid(c: Ctx) -> dict[str, tuple[Spec, dict]]:
    cases = {}
    for name, spec in SPECS.items():
        kw = spec.build(c)
        spec.fn(**kw)  # the unmutated call must succeed, or the test is vacuous
        cases[name] = (spec, kw)
    return cases


def _bad_shapes(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Shapes that would broadcast against (or be confused with) ``x``'s: (B, 1), (1, T), (B,) for a (B, T) tensor."""
    if x.dim() == 3:
        return {"(B, 1, V)": x[:, :1], "(1, T, V)": x[:1]}
    if x.dim() == 2:
        return {"(B, 1)": x[:, :1], "(1, T)": x[:1], "(B,)": x[:, 0]}
    return {"(1,)": x[:1], "(B, 1)": x[:, None], "()": x[0]}


@FEW
@given(c=contexts(), bad=st.sampled_from([torch.int64, torch.int32, torch.bool]))
def test_integer_and_boolean_tensors_are_refused_where_floats_are_expected(c, bad):
    fails = []
    for name, (spec, kw) in _valid(c).items():
        for arg in spec.nan:
            fails.append(_outcome(name, spec, {**kw, arg: kw[arg].to(bad)}, f"{arg} of dtype {bad}"))
        for arg in spec.ints:  # and the converse: float tensors where integer ids are expected
            fails.append(_outcome(name, spec, {**kw, arg: kw[arg].float() + 0.5}, f"{arg} of dtype float32"))
    fails = [f for f in fails if f]
    assert not fails, "\n".join(fails)


@FEW
@given(c=contexts(), value=st.sampled_from([math.nan, math.inf, -math.inf]), data=st.data())
def test_a_nan_on_a_trained_position_is_refused_and_named(c, value, data):
    trained = [tuple(ix) for ix in (c.mask != 0).nonzero().tolist()]
    i, t = data.draw(st.sampled_from(trained))
    fails = []
    for name, (spec, kw) in _valid(c).items():
        for arg, where in spec.nan.items():
            x = kw[arg].clone()
            x[(i,) if where == "row" else (i, t) if x.dim() >= 2 else (i,)] = value
            fails.append(_outcome(name, spec, {**kw, arg: x}, f"{value} in {arg} at {(i, t)}", must_name=arg))
    fails = [f for f in fails if f]
    assert not fails, "\n".join(fails)


@FEW
@given(c=contexts())
def test_shapes_that_would_broadcast_are_refused(c):
    fails = []
    for name, (spec, kw) in _valid(c).items():
        for arg in spec.shapes:
            for label, x in _bad_shapes(kw[arg]).items():
                if f"{arg} {label}" in spec.other_valid:
                    continue
                fails.append(_outcome(name, spec, {**kw, arg: x}, f"{arg} of shape {label}"))
        for arg in spec.masks:
            bad = {"B1": kw[arg][:, :1], "1T": kw[arg][:1], "B": kw[arg][:, 0]}
            for label in spec.mask_shapes:
                fails.append(_outcome(name, spec, {**kw, arg: bad[label]}, f"{arg} of shape {label}"))
    fails = [f for f in fails if f]
    assert not fails, "\n".join(fails)


@FEW
@given(c=contexts(), value=st.sampled_from([2.0, 0.5, -1.0, math.nan]), data=st.data())
def test_masks_with_values_other_than_zero_and_one_are_refused(c, value, data):
    i, t = data.draw(st.integers(0, c.B - 1)), data.draw(st.integers(0, c.T - 1))
    fails = []
    for name, (spec, kw) in _valid(c).items():
        for arg in spec.masks:
            m = kw[arg].to(torch.float32).clone()
            m[i, t] = value
            fails.append(_outcome(name, spec, {**kw, arg: m}, f"{arg}[{i}, {t}] = {value}"))
    fails = [f for f in fails if f]
    assert not fails, "\n".join(fails)


@FEW
@given(c=contexts(), bad=st.sampled_from(["", "bogus", "Token-Mean", "token_mean", "k4", "std ", "TOKEN"]))
def test_unknown_option_strings_are_refused(c, bad):
    fails = []
    for name, (spec, kw) in _valid(c).items():
        for arg in spec.strings:
            fails.append(_outcome(name, spec, {**kw, arg: bad}, f"{arg}={bad!r}"))
    fails = [f for f in fails if f]
    assert not fails, "\n".join(fails)
