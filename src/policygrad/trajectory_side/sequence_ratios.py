"""Sequence-level importance ratios in the loss: GSPO's token form and GMPO.

GSPO (Zheng et al., 2025) replaces the token ratios r_{i,t} by one ratio per sequence,
the geometric mean s_i = exp((1/|o_i|) Σ_t log r_{i,t}), and clips s_i: with ratios
at `level="geometric"`, that is `policygrad.trajectory_side.ppo_clip_loss` (TRL's
`importance_sampling_level="sequence"`). This module adds the two other sequence-level
forms the frameworks run:

* `gspo_token_loss`: GSPO-token (verl's `loss_mode="gspo"`), whose per-token ratio has
  the *value* s_i and the gradient s_i ∇ log π_θ(y_{i,t}); with an advantage constant
  along each row it equals GSPO, and it allows token-level advantages;
* `gmpo_loss`: GMPO (Zhao et al., 2025; verl's `loss_mode="geo_mean"`), the geometric
  mean of the token ratios, each clipped in log space, times the row's mean advantage.

Conventions as in `policygrad.trajectory_side.clips`: `logp (B, T)` with gradient,
`old_logp` and `advantages` (`(B, T)` or `(B,)`) constants, a 0/1 `mask`; padded
positions are selected away before any arithmetic; log-ratios are clamped to ±20
before any exponential. Chapter 10 ("Token ratios and sequence ratios") derives them.
"""

from __future__ import annotations

import torch

from .._tensor import compute_dtype, select
from .clips import _prepare, _ratio_stats
from .ppo import _finish
from .ratios import LOG_RATIO_CLAMP

__all__ = ["gspo_token_loss", "gmpo_loss"]


def _check_log_bound(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 20:
        raise ValueError(f"{name} must be a number in [0, 20), got {v!r}")
    return float(v)


def gspo_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
    aggregation: str = "seq-mean-token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """GSPO-token: PPO's clip on a per-token ratio whose value is the sequence's.

    With sg the stop-gradient, ℓ_{i,t} = log π_θ(y_{i,t} | s_{i,t}) and
    log s_i = (1/|o_i|) Σ_t (ℓ_{i,t} − log π_old(y_{i,t} | s_{i,t})):

        log s_{i,t} = ℓ_{i,t} − sg(ℓ_{i,t}) + sg(log s_i)
        L_{i,t} = −min(s_{i,t} A_{i,t}, clip(s_{i,t}, 1 − ε_low, 1 + ε_high) A_{i,t})

    so s_{i,t} = s_i in value and ∇ s_{i,t} = s_i ∇ℓ_{i,t}. For an advantage constant
    along the row the gradient, (1/|o_i|)·Σ_t of it under seq-mean-token-mean, is
    GSPO's: −A_i s_i (1/|o_i|) Σ_t ∇ℓ_{i,t}, where the clip is inactive. Defaults
    are the GSPO paper's ε_low = 3·10⁻⁴, ε_high = 4·10⁻⁴ (the clip acts on s_i, whose
    spread is that of a mean of |o_i| log-ratios).

    verl: `compute_policy_loss_gspo` (`verl/trainer/ppo/core_algos.py:1545-1619`):
    the same log s_{i,t}, then `torch.clamp(log_s, max=10.0)` before exp (here ±20,
    `LOG_RATIO_CLAMP`), `clip_ratio_low`/`clip_ratio_high` as ε, no dual clip, and
    `loss_agg_mode` as passed by the trainer. TRL 1.16 has no token form (its
    `importance_sampling_level="sequence"` is GSPO with the full gradient of s_i).
    Returns `(loss, stats)` (`(loss, stats, TokenLosses)` with `per_token=True`);
    stats: `clip_frac` (trained tokens whose gradient the clip removed), `approx_kl`,
    `ratio_mean`, `ratio_max` (of s_{i,t}).
    """
    for v, name in ((eps_low, "eps_low"), (eps_high, "eps_high")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")
    m, lr, A = _prepare(logp, old_logp, advantages, mask)
    lp = select(logp.to(compute_dtype(logp)), m)
    n = m.sum(-1, keepdim=True).clamp_min(1).to(lr.dtype)
    seq = (lr.detach().sum(-1, keepdim=True) / n).expand_as(lr)
    log_s = select(lp - lp.detach() + seq, m)
    log_s = log_s.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    s = torch.exp(log_s)
    loss_t = torch.maximum(-s * A, -torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high) * A)
    gone = ((A > 0) & (s > 1.0 + eps_high)) | ((A < 0) & (s < 1.0 - eps_low))
    stats = _ratio_stats(lr, s, m, clip_frac=gone)
    return _finish(loss_t, m, aggregation, max_len, per_token, stats)


def gmpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
) -> tuple[torch.Tensor, dict]:
    """GMPO: the geometric mean of the token ratios, each clipped in log space.

    Per token, with log r_{i,t} = ℓ_{i,t} − log π_old and σ_{i,t} the sign of the
    token's advantage, the pessimistic clip in log space

        ĉ_{i,t} = σ_{i,t} · min(σ_{i,t} log r_{i,t}, σ_{i,t} clip(log r_{i,t}, −c_low,
                  c_high))

    (for A > 0 a log-ratio above c_high stops at c_high, for A < 0 one below −c_low
    stops at −c_low, each then without gradient), and per sequence

        L_i = −Ā_i · exp((1/|o_i|) Σ_t ĉ_{i,t}),   L = (1/B) Σ_i L_i

    with Ā_i the mean advantage over the row's trained tokens. The product of ratios
    is tamed by the geometric mean (a sum of log-ratios divided by the length), and
    one extreme token ratio moves s_i by only 1/|o_i| of its log. Defaults: the GMPO
    paper's range (e^−0.4, e^0.4).

    verl: `compute_policy_loss_geo_mean` (`verl/trainer/ppo/core_algos.py:1928-2011`),
    with `clip_ratio_low`/`clip_ratio_high` read as these log-space bounds (not as
    log(1 ± ε)); it divides by |o_i| + 1e-8 (here by |o_i|, 0 for an empty row) and
    ignores `loss_agg_mode`: the mean over all B rows, an empty row counting as 0, as
    here. The log-ratio is clamped to ±20 here before the exponential (verl's clamp is
    commented out). Returns `(loss, stats)`; stats: `clip_frac` (trained tokens whose
    log-ratio was clipped), `ratio_mean`, `ratio_max` (of the sequences' geometric
    means).
    """
    c_lo = _check_log_bound(clip_low, "clip_low")
    c_hi = _check_log_bound(clip_high, "clip_high")
    m, lr, A = _prepare(logp, old_logp, advantages, mask)
    lr = lr.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    n = m.sum(-1).to(lr.dtype)
    safe_n = n.clamp_min(1)
    A_bar = select(A, m).sum(-1) / safe_n
    sgn = torch.sign(A)
    clipped = torch.clamp(lr, -c_lo, c_hi)
    c_hat = select(sgn * torch.minimum(sgn * lr, sgn * clipped), m)
    s = torch.exp(c_hat.sum(-1) / safe_n)
    loss = (-A_bar * s).mean()
    with torch.no_grad():
        tok = m.sum().clamp_min(1)
        gone = (c_hat != select(lr, m)) & m & (A != 0)
        rows = n > 0
        stats = {
            "clip_frac": float(gone.sum() / tok),
            "ratio_mean": float(s[rows].mean()) if bool(rows.any()) else 1.0,
            "ratio_max": float(s[rows].max()) if bool(rows.any()) else 1.0,
        }
    return loss, stats
