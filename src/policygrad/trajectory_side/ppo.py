"""PPO's losses: the clipped surrogate and the KL-penalty form.

The clipped surrogate comes symmetric, asymmetric or with a dual clip. Both losses are
callable on plain tensors (`logp, old_logp, advantages, mask`); `clip_loss` takes
log-ratios directly, per token `(B, T)` or per sequence `(B,)`, so the sequence-level
ratios of `policygrad.trajectory_side.log_ratios` plug into the same clip.
Loss = −surrogate, always. Derived in chapter 5: "PPO: a pessimistic, clipped
surrogate", with its sections "Dual-clip" and "The KL-penalty variant".
"""

from __future__ import annotations

import math

import torch

from .._checks import check_finite, check_float
from .._tensor import select
from .aggregation import aggregate, aggregation_weights
from .masks import TokenLosses, check_constant, check_per_token, check_token_mask
from .ratios import log_ratios, safe_ratio

__all__ = ["clip_loss", "ppo_clip_loss", "ppo_kl_penalty_loss"]


def _check_eps(eps_low, eps_high, dual_clip) -> float:
    for name, eps in (("eps_low", eps_low), ("eps_high", eps_high)):
        if eps is not None and (
            isinstance(eps, bool)
            or not isinstance(eps, (int, float))
            or not 0 <= eps < 1
        ):
            raise ValueError(f"{name} must be a number in [0, 1), got {eps!r}")
    if dual_clip is not None and (
        isinstance(dual_clip, bool)
        or not isinstance(dual_clip, (int, float))
        or not dual_clip > 1
    ):
        raise ValueError(
            f"dual_clip must be a number > 1 (typically 3), got {dual_clip!r}"
        )
    return eps_low if eps_high is None else eps_high


def _finish(per_token, m, aggregation, max_len, per_token_out, stats):
    loss = aggregate(per_token, m, aggregation, max_len=max_len)
    if not per_token_out:
        return loss, stats
    w = aggregation_weights(m, aggregation, max_len=max_len, dtype=per_token.dtype)
    return loss, stats, TokenLosses(select(per_token, m), w)


def clip_loss(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """PPO's clipped loss from log importance ratios, and its diagnostics.

    log_ratio: `(B, T)` token log-ratios, or `(B,)` one per sequence
    (`log_ratios(..., "sequence")` or `"geometric"`, GSPO), which every token of the row
    shares; it carries the gradient. advantages `(B, T)` and mask `(B, T)`. Per token
    (loss = −surrogate), with r = e^(log r):

        L_{i,t} = −min(r_{i,t} A_{i,t},
                       clip(r_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t})

    `eps_high` defaults to `eps_low` (symmetric; `eps_high > eps_low` is DAPO's
    clip-higher). `dual_clip=c` (`c > 1`) also caps the loss of a negative-advantage
    token at −c·A. Reduced by `aggregate` with `aggregation`. The ratio is formed by
    `policygrad.trajectory_side.safe_ratio` (log-ratio clamped to ±20), so huge
    log-ratios give finite losses and finite gradients (zero where the clip removes the
    gradient).

    Returns `(loss, stats)`, or `(loss, stats, TokenLosses)` with `per_token=True`;
    stats: `clip_frac` (fraction of trained tokens whose gradient the clip removed:
    A > 0, r > 1 + ε_high or A < 0, r < 1 − ε_low), `dual_clip_frac`, `approx_kl`
    (mean k3 estimate (r − 1) − log r of KL(π_old ‖ π_θ) over trained tokens),
    `ratio_mean`, `ratio_max`. Derived in chapter 5 ("PPO: a pessimistic, clipped
    surrogate" and its "Dual-clip" section).
    """
    check_float(log_ratio, "log_ratio", (1, 2))
    check_float(advantages, "advantages", 2)
    if log_ratio.dim() == 2 and advantages.shape != log_ratio.shape:
        raise ValueError(
            "advantages must have the shape of the log-ratios "
            f"{tuple(log_ratio.shape)}, got {tuple(advantages.shape)}"
        )
    m = check_token_mask(mask, advantages.shape, "advantages")
    if log_ratio.dim() == 1:
        if log_ratio.shape[0] != advantages.shape[0]:
            raise ValueError(
                f"a sequence log_ratio must have shape ({advantages.shape[0]},), got "
                f"{tuple(log_ratio.shape)}"
            )
        row = m.any(-1)
        check_finite(log_ratio, "log_ratio", mask=row)
        lr = select(log_ratio, row).unsqueeze(1).expand(advantages.shape)
    else:
        lr = select(log_ratio, check_per_token(log_ratio, mask, "log_ratio"))
    lr = lr.to(torch.promote_types(lr.dtype, torch.float32))
    A = check_constant(advantages, lr, "advantages", m)
    e_hi = _check_eps(eps_low, eps_high, dual_clip)
    ratio = safe_ratio(lr)
    unclipped = -ratio * A
    clipped = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + e_hi) * A
    loss_t = torch.maximum(unclipped, clipped)  # -min(rA, clip(r)A)
    dual = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -dual_clip * A  # for A < 0 a positive cap on the loss
        dual = (A < 0) & (loss_t > bound)
        loss_t = torch.where(dual, bound, loss_t)
    with torch.no_grad():
        n = m.sum().clamp_min(1).to(lr.dtype)
        r, c = ratio.detach(), lr.detach().clamp(-20.0, 20.0)
        gone = ((A > 0) & (r > 1.0 + e_hi)) | ((A < 0) & (r < 1.0 - eps_low))
        stats = {
            "clip_frac": float((gone & m).sum() / n),
            "dual_clip_frac": float((dual & m).sum() / n),
            "approx_kl": float(select(torch.expm1(c) - c, m).sum() / n),
            "ratio_mean": float(select(r, m).sum() / n),
            "ratio_max": float(r[m].max()) if bool(m.any()) else 1.0,
        }
    return _finish(loss_t, m, aggregation, max_len, per_token, stats)


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    level: str = "token",
    per_token: bool = False,
):
    """PPO's clipped loss with ratios r = π_θ / π_old at `level`.

    `clip_loss` of `policygrad.trajectory_side.log_ratios`. logp `(B, T)` with gradient;
    old_logp, advantages `(B, T)` constants (detached); mask `(B, T)`. `level="token"`
    is PPO; `"sequence"` clips the ratio of whole-sequence probabilities and
    `"geometric"` its per-token geometric mean (GSPO). Everything else as in
    `clip_loss`. Derived in chapter 5 ("PPO: a pessimistic, clipped surrogate" and its
    "Dual-clip" section).
    """
    lr = log_ratios(logp, old_logp, mask, level)
    return clip_loss(
        lr,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        dual_clip=dual_clip,
        aggregation=aggregation,
        max_len=max_len,
        per_token=per_token,
    )


def ppo_kl_penalty_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """The KL-penalty form of PPO:

        L_{i,t} = −r_{i,t} A_{i,t} + β ((r_{i,t} − 1) − log r_{i,t})

    The second term is the k3 estimate of KL(π_old ‖ π_θ) from tokens sampled by
    π_old (E_old[r] = 1), so the penalty is 0 with zero gradient at θ = θ_old and
    grows as the policy moves; no clipping. `beta >= 0` fixed here; adapt it between
    steps with `AdaptiveKLController`. The log-ratio is clamped to ±20 as in
    `clip_loss`. Returns `(loss, stats)` (`(loss, stats, TokenLosses)` with
    `per_token=True`) with `approx_kl`, `ratio_mean`, `ratio_max`. Derived in chapter 5
    ("The KL-penalty variant").
    """
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not 0 <= beta < math.inf
    ):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    lr = log_ratios(logp, old_logp, mask, "token")
    m = check_per_token(logp, mask, "logp")
    A = check_constant(advantages, lr, "advantages", m)
    clamped = torch.clamp(lr, -20.0, 20.0)
    ratio = safe_ratio(lr)
    kl = torch.expm1(clamped) - clamped  # (r - 1) - log r >= 0
    loss_t = -ratio * A + beta * kl
    with torch.no_grad():
        n = m.sum().clamp_min(1).to(lr.dtype)
        r = ratio.detach()
        stats = {
            "approx_kl": float(select(kl.detach(), m).sum() / n),
            "ratio_mean": float(select(r, m).sum() / n),
            "ratio_max": float(r[m].max()) if bool(m.any()) else 1.0,
        }
    return _finish(loss_t, m, aggregation, max_len, per_token, stats)
