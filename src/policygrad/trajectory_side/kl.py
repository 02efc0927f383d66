"""KL to a reference policy as a loss term.

The k1/k2/k3 estimators, their straight-through variants, the KL loss, and the adaptive
KL coefficient. Derived in chapter 6 ("Three estimators of the KL from one completion").
"""

from __future__ import annotations

import math

import torch

from .._checks import check_finite, check_float, check_positive_int
from .._tensor import compute_dtype, select
from .aggregation import aggregate, aggregation_weights
from .masks import TokenLosses, check_constant, check_per_token
from .ratios import LOG_RATIO_CLAMP

__all__ = ["KL_ESTIMATORS", "kl_estimate", "kl_loss", "AdaptiveKLController"]


#: The KL estimators `kl_estimate` knows. `"k1+"`/`"k3+"`: value of k1/k3, gradient of
#: k2.
KL_ESTIMATORS = ("k1", "k2", "k3", "k1+", "k3+")


def kl_estimate(
    logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3"
) -> torch.Tensor:
    """Per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled from π_θ.

    With x = log π_θ(y_t | s_t) − log π_ref(y_t | s_t) (any shape; `ref_logp` is a
    constant):

    * `"k1"`: x — unbiased, can be negative, high variance;
    * `"k2"`: x^2 / 2 — biased value, but as an on-policy loss its gradient is that of
      the per-token reverse KL with the distribution of prefixes held fixed (the full
      gradient of the reverse KL for one-token completions, not for sequences);
    * `"k3"`: e^(−x) + x − 1 ≥ 0 — unbiased, low variance (GRPO's KL term),
      computed as `expm1(-x) + x` so round-off cannot make it negative, with x clamped
      to ±20 first (as verl's `low_var_kl`; verl also clamps the result to ±10, which
      we do not) so it stays finite;
    * `"k1+"`, `"k3+"`: the value of k1 / k3 with the gradient of k2 (straight-through:
      value + k2 − sg(k2)).

    Inputs must be finite floats (use `kl_loss` for padded batches); computed in at
    least float32. Derived in chapter 6 ("Three estimators of the KL from one
    completion").
    """
    check_float(logp, "logp")
    check_float(ref_logp, "ref_logp")
    if ref_logp.shape != logp.shape:
        raise ValueError(
            f"ref_logp must have the shape of logp {tuple(logp.shape)}, got "
            f"{tuple(ref_logp.shape)}"
        )
    check_finite(logp, "logp")
    check_finite(ref_logp, "ref_logp")
    if kind not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {kind!r}; choose one of {KL_ESTIMATORS}"
        )
    dt = compute_dtype(logp, ref_logp)
    x = logp.to(dt) - ref_logp.detach().to(dt)
    if kind == "k1":
        return x
    k2 = 0.5 * x * x
    if kind == "k2":
        return k2
    xc = torch.clamp(x, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    k3 = torch.expm1(-xc) + xc
    if kind == "k3":
        return k3
    value = x if kind == "k1+" else k3
    return value.detach() + (k2 - k2.detach())


def kl_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: str = "k3",
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """The KL-to-reference loss: `aggregate` of `kl_estimate` over the trained tokens.

    Multiply by a coefficient β and add to a policy loss (trajectory side). Its
    gradient is the gradient of KL(π_θ ‖ π_ref) only in special cases: k2's is the
    gradient of the per-token KLs with the distribution of prefixes held fixed, which is
    the sequence KL's gradient only for one-token completions (chapter 6, "KL in the
    reward or KL in the loss: which gradient do you get?", measures this). Padded
    positions are selected away before the estimate (a NaN or inf there changes
    nothing). Returns the loss, or `(loss, TokenLosses)` with `per_token=True`.
    """
    m = check_per_token(logp, mask, "logp")
    ref = check_constant(ref_logp, logp, "ref_logp", m)
    k = select(kl_estimate(select(logp, m), ref, kind), m)
    loss = aggregate(k, m, aggregation, max_len=max_len)
    if not per_token:
        return loss
    return loss, TokenLosses(
        k, aggregation_weights(m, aggregation, max_len=max_len, dtype=k.dtype)
    )


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019): move β towards a target KL.

    After each step with measured KL d̂:

        β ← β · (1 + clip((d̂ − d_target) / d_target, −0.2, 0.2) · n / H)

    with `n` the samples in the step and `H` the horizon. Above target, β grows; below,
    it shrinks; the clip bounds the change per step. Derived in chapter 5 ("The
    KL-penalty variant").
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        for name, v in (("init_beta", init_beta), ("target", target)):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not 0 < v < math.inf
            ):
                raise ValueError(f"{name} must be a finite positive number, got {v!r}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = check_positive_int(horizon, "horizon")

    def update(self, kl: float, n_samples: int) -> float:
        """Update and return β after a step measuring `kl` on `n_samples` samples."""
        # +inf is fine: the step is clipped
        if isinstance(kl, bool) or not isinstance(kl, (int, float)) or kl != kl:
            raise ValueError(f"kl must be a number (not NaN), got {kl!r}")
        check_positive_int(n_samples, "n_samples")
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.beta *= 1.0 + error * n_samples / self.horizon
        return self.beta
