"""PPO's losses: the clipped surrogate (symmetric, asymmetric, dual-clip) and the KL-penalty form.

Loss = −surrogate, always. Derived in {ref}`sec-ppo-clip`, {ref}`sec-ppo-dual-clip` and {ref}`sec-ppo-kl-penalty`.
"""

from __future__ import annotations

import math

import torch

from .aggregation import aggregate
from .masks import _check_advantages
from .ratios import log_ratios

__all__ = ["ppo_clip_loss", "ppo_kl_penalty_loss"]


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
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped loss with token ratios :math:`r = \\pi_\\theta/\\pi_\\text{old}`, and its diagnostics.

    Per token (loss = −surrogate):

    .. math:: L_{i,t} = -\\min\\big(r_{i,t}A_{i,t},\\ \\mathrm{clip}(r_{i,t}, 1-\\varepsilon_\\text{low}, 1+\\varepsilon_\\text{high})A_{i,t}\\big)

    with ``eps_high`` defaulting to ``eps_low`` (symmetric; ``eps_high > eps_low`` is DAPO's clip-higher).
    ``dual_clip=c`` (``c > 1``) also bounds the loss of a negative-advantage token by :math:`-cA`, so a
    huge ratio cannot make one token dominate. The result is reduced by :func:`aggregate` with
    ``aggregation``. advantages ``(B, T)`` and old_logp are constants (detached).

    Returns ``(loss, stats)``; stats: ``clip_frac`` (fraction of trained tokens whose gradient the clip
    removed: :math:`A>0, r>1+\\varepsilon_\\text{high}` or :math:`A<0, r<1-\\varepsilon_\\text{low}`),
    ``dual_clip_frac``, ``approx_kl`` (mean k3 estimate of :math:`\\mathrm{KL}(\\pi_\\text{old}\\|\\pi_\\theta)` over trained
    tokens: :math:`(r-1)-\\log r`), ``ratio_mean``, ``ratio_max``. Derived in {ref}`sec-ppo-clip` and {ref}`sec-ppo-dual-clip`.
    """
    lr = log_ratios(logp, old_logp, mask, "token")
    m = mask.to(lr.dtype)
    A = _check_advantages(advantages, logp)
    for name, eps in (("eps_low", eps_low), ("eps_high", eps_high)):
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1):
            raise ValueError(f"{name} must be a number in [0, 1), got {eps!r}")
    e_hi = eps_low if eps_high is None else eps_high
    if dual_clip is not None and (isinstance(dual_clip, bool) or not isinstance(dual_clip, (int, float)) or not dual_clip > 1):
        raise ValueError(f"dual_clip must be a number > 1 (typically 3), got {dual_clip!r}")
    ratio = torch.exp(lr)  # (B, T); exactly 1 on padding
    unclipped = -ratio * A
    clipped = -torch.clamp(ratio, 1.0 - eps_low, 1.0 + e_hi) * A
    per_token = torch.maximum(unclipped, clipped)  # -min(rA, clip(r)A)
    dual = torch.zeros_like(m, dtype=torch.bool)
    if dual_clip is not None:
        bound = -dual_clip * A  # for A < 0 this is a positive cap on the loss
        dual = (A < 0) & (per_token > bound)
        per_token = torch.where(dual, bound, per_token)
    loss = aggregate(per_token, mask, aggregation, max_len=max_len)
    with torch.no_grad():
        n = m.sum().clamp_min(1.0)
        r = ratio.detach()
        gone = ((A > 0) & (r > 1.0 + e_hi)) | ((A < 0) & (r < 1.0 - eps_low))
        stats = {
            "clip_frac": float((gone.to(m.dtype) * m).sum() / n),
            "dual_clip_frac": float((dual.to(m.dtype) * m).sum() / n),
            "approx_kl": float((((r - 1.0) - lr.detach()) * m).sum() / n),
            "ratio_mean": float((r * m).sum() / n),
            "ratio_max": float((r * m).max()) if bool(m.any()) else 1.0,
        }
    return loss, stats


def ppo_kl_penalty_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The KL-penalty form of PPO: :math:`L_{i,t} = -r_{i,t}A_{i,t} + \\beta\\big((r_{i,t}-1) - \\log r_{i,t}\\big)`.

    The second term is the k3 estimate of :math:`\\mathrm{KL}(\\pi_\\text{old}\\|\\pi_\\theta)` from tokens sampled by
    :math:`\\pi_\\text{old}` (:math:`\\mathbb E_\\text{old}[r] = 1`), so the penalty is 0 with zero gradient at
    :math:`\\theta = \\theta_\\text{old}` and grows as the policy moves; no clipping. ``beta >= 0`` fixed here; adapt it
    between steps with :class:`AdaptiveKLController`. Returns ``(loss, stats)`` with ``approx_kl``,
    ``ratio_mean``, ``ratio_max`` (``clip_frac`` is 0 by construction). Derived in {ref}`sec-ppo-kl-penalty`.
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < math.inf:
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    lr = log_ratios(logp, old_logp, mask, "token")
    A = _check_advantages(advantages, logp)
    m = mask.to(lr.dtype)
    ratio = torch.exp(lr)
    kl = torch.expm1(lr) - lr  # (r - 1) - log r >= 0
    per_token = -ratio * A + beta * kl
    loss = aggregate(per_token, mask, aggregation, max_len=max_len)
    with torch.no_grad():
        n = m.sum().clamp_min(1.0)
        r = ratio.detach()
        stats = {
            "approx_kl": float((kl.detach() * m).sum() / n),
            "ratio_mean": float((r * m).sum() / n),
            "ratio_max": float((r * m).max()) if bool(m.any()) else 1.0,
        }
    return loss, stats
