"""The trajectory side: how the score :math:`\\nabla_\\theta\\log p_\\theta(\\tau)` is formed and aggregated.

Part I needs one surrogate: the plain score-function (REINFORCE) surrogate whose gradient is the
estimator. Part II adds importance ratios between the current policy and the one that sampled the batch
(token level, sequence product, sequence geometric mean), the PPO clipped surrogate with symmetric or
asymmetric :math:`\\varepsilon` and dual-clip, the named aggregation modes that turn per-token losses into
one number, and the k1/k2/k3 estimators of the KL divergence to a reference policy (with their
straight-through variants) used as a loss term. Loss = −surrogate, always.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_finite, check_mask, check_positive_int, check_tensor
from .exact import flat_grad, flat_params
from .policies import token_log_probs
from .rollout import Samples

__all__ = [
    "pg_surrogate",
    "score_function_gradient",
    "AGGREGATIONS",
    "aggregate",
    "RATIO_LEVELS",
    "log_ratios",
    "ppo_clip_loss",
    "KL_ESTIMATORS",
    "kl_estimate",
    "kl_loss",
    "ppo_kl_penalty_loss",
    "AdaptiveKLController",
]


def pg_surrogate(logp: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate :math:`\\frac1B\\sum_i\\sum_t m_{i,t}\\, w_{i,t}\\, \\log\\pi_\\theta(y_{i,t}\\mid s_{i,t})`.

    logp: ``(B, T)`` with gradient; weights: ``(B, T)`` treated as constants (detached); mask ``(B, T)``.
    Its gradient is the Monte Carlo estimate of :math:`\\nabla J` (eq. {eq}`eq-reinforce`); its *value*
    means nothing on its own. Derived in {ref}`sec-reinforce-estimator`.
    """
    check_tensor(logp, "logp", 2)
    check_tensor(weights, "weights", 2)
    if weights.shape != logp.shape:
        raise ValueError(f"weights must have the shape of logp {tuple(logp.shape)}, got {tuple(weights.shape)}")
    check_finite(weights, "weights")
    m = check_mask(mask, "mask", logp.shape).to(logp.dtype)
    return (m * weights.detach().to(logp.dtype) * logp).sum() / logp.shape[0]


def score_function_gradient(policy: torch.nn.Module, samples: Samples, weights: torch.Tensor) -> torch.Tensor:
    """The Monte Carlo policy-gradient estimate as a flat vector ``(P,)``: the gradient of :func:`pg_surrogate`.

    weights ``(B, T)`` come from the reward side (e.g. :func:`policygrad.reward_side.reinforce_weights`).
    """
    logits = policy(samples.prompts, samples.completions)
    logp = token_log_probs(logits, samples.completions)
    return flat_grad(pg_surrogate(logp, weights, samples.mask), flat_params(policy)).detach()


# ------------------------------------------------------------------------------------------------------
# Part II: aggregation, importance ratios, PPO clipping, KL estimators
# ------------------------------------------------------------------------------------------------------
#: The named ways of turning per-token losses ``(B, T)`` into one number (see :func:`aggregate`).
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm", "seq-mean-token-sum")


def _check_per_token(x: torch.Tensor, mask: torch.Tensor, name: str) -> torch.Tensor:
    check_tensor(x, name, 2)
    check_tensor(mask, "mask", 2)
    if mask.shape != x.shape:
        raise ValueError(f"mask must have the shape of {name} {tuple(x.shape)}, got {tuple(mask.shape)}")
    m = check_mask(mask, "mask", allow_empty=True)
    return m.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())


def _check_advantages(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    check_tensor(advantages, "advantages", 2)
    if advantages.shape != logp.shape:
        raise ValueError(f"advantages must have the shape of logp {tuple(logp.shape)}, got {tuple(advantages.shape)}")
    check_finite(advantages, "advantages")
    return advantages.detach().to(logp.dtype)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, *, max_len: int | None = None) -> torch.Tensor:
    """Reduce per-token values ``(B, T)`` (e.g. per-token losses) over the tokens where ``mask`` is 1.

    With :math:`m_{i,t}` the mask and :math:`|o_i| = \\sum_t m_{i,t}`:

    * ``"seq-mean-token-mean"``: :math:`\\frac1B\\sum_i \\frac{1}{|o_i|}\\sum_t m_{i,t}L_{i,t}` — each sequence
      weighs the same, whatever its length (original GRPO);
    * ``"token-mean"``: :math:`\\sum_{i,t} m_{i,t}L_{i,t} / \\sum_{i,t} m_{i,t}` — each token weighs the same
      (DAPO; verl's default);
    * ``"seq-mean-token-sum-norm"``: :math:`\\sum_{i,t} m_{i,t}L_{i,t} / (B\\,L_\\text{max})` with
      :math:`L_\\text{max}` = ``max_len`` (default ``T``) — a constant normaliser (Dr.GRPO);
    * ``"seq-mean-token-sum"``: :math:`\\frac1B\\sum_i\\sum_t m_{i,t}L_{i,t}` — the REINFORCE sum
      (:func:`pg_surrogate`'s normalisation).

    Edge cases, all defined and never NaN: a row with an empty mask contributes 0 to the sequence modes
    (and still counts in :math:`B`); an entirely empty mask gives 0 (with a zero gradient).
    Used from {ref}`sec-ppo-clip` on (chapter 9 studies their length bias).
    """
    m = _check_per_token(per_token, mask, "per_token")
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {AGGREGATIONS}")
    B, T = per_token.shape
    if B == 0:
        raise ValueError("per_token has no rows")
    masked = per_token * m
    if mode == "token-mean":
        n = m.sum()
        return masked.sum() / n.clamp_min(1.0)
    if mode == "seq-mean-token-mean":
        lengths = m.sum(-1)
        return (masked.sum(-1) / lengths.clamp_min(1.0)).sum() / B
    if mode == "seq-mean-token-sum":
        return masked.sum() / B
    L = T if max_len is None else check_positive_int(max_len, "max_len")
    return masked.sum() / (B * L)


#: Levels at which an importance ratio can be formed (see :func:`log_ratios`).
RATIO_LEVELS = ("token", "sequence", "geometric")


def log_ratios(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str = "token") -> torch.Tensor:
    """Log importance ratios between the current policy and the one that sampled the tokens.

    logp ``(B, T)`` (with gradient), old_logp ``(B, T)`` (treated as constants), mask ``(B, T)``:

    * ``"token"``: :math:`\\log r_{i,t} = \\log\\pi_\\theta(y_{i,t}\\mid s_{i,t}) - \\log\\pi_\\text{old}(y_{i,t}\\mid s_{i,t})`,
      ``(B, T)``, 0 where the mask is 0;
    * ``"sequence"``: :math:`\\sum_t \\log r_{i,t} = \\log\\frac{p_\\theta(y_i\\mid x_i)}{p_\\text{old}(y_i\\mid x_i)}`, the
      log of the *product* of token ratios (the exact sequence ratio), ``(B,)``;
    * ``"geometric"``: :math:`\\frac{1}{|o_i|}\\sum_t \\log r_{i,t}`, the log of their *geometric mean*
      (GSPO's length-normalised sequence ratio), ``(B,)``; 0 for a row with an empty mask.

    Derived in {ref}`sec-ppo-reuse` and {ref}`sec-ppo-epochs`.
    """
    check_tensor(logp, "logp", 2)
    check_tensor(old_logp, "old_logp", 2)
    if old_logp.shape != logp.shape:
        raise ValueError(f"old_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(old_logp.shape)}")
    m = _check_per_token(logp, mask, "logp")
    check_finite(old_logp, "old_logp")
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; choose one of {RATIO_LEVELS}")
    lr = (logp - old_logp.detach().to(logp.dtype)) * m
    if level == "token":
        return lr
    if level == "sequence":
        return lr.sum(-1)
    return lr.sum(-1) / m.sum(-1).clamp_min(1.0)


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


#: The KL estimators :func:`kl_estimate` knows. ``"k1+"``/``"k3+"``: value of k1/k3, gradient of k2.
KL_ESTIMATORS = ("k1", "k2", "k3", "k1+", "k3+")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of :math:`\\mathrm{KL}(\\pi_\\theta\\,\\|\\,\\pi_\\text{ref})` from tokens sampled from :math:`\\pi_\\theta`.

    With :math:`x = \\log\\pi_\\theta(y_t\\mid s_t) - \\log\\pi_\\text{ref}(y_t\\mid s_t)` (any shape; ``ref_logp`` is a
    constant):

    * ``"k1"``: :math:`x` — unbiased, can be negative, high variance;
    * ``"k2"``: :math:`\\tfrac12 x^2` — biased value, but as an on-policy loss its gradient is that of the
      per-token reverse KL with the distribution of prefixes held fixed (the full gradient of the reverse KL
      for one-token completions, not for sequences);
    * ``"k3"``: :math:`e^{-x} + x - 1 \\ge 0` — unbiased, low variance (GRPO's KL term), computed as
      ``expm1(-x) + x`` so round-off cannot make it negative;
    * ``"k1+"``, ``"k3+"``: the value of k1 / k3 with the gradient of k2 (straight-through: value + k2 − sg(k2)).

    Derived in {ref}`sec-rlhf-estimators`.
    """
    check_tensor(logp, "logp")
    check_tensor(ref_logp, "ref_logp")
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
    check_finite(ref_logp, "ref_logp")
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_ESTIMATORS}")
    x = logp - ref_logp.detach().to(logp.dtype)
    if kind == "k1":
        return x
    k2 = 0.5 * x * x
    if kind == "k2":
        return k2
    k3 = torch.expm1(-x) + x
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
) -> torch.Tensor:
    """The KL-to-reference loss term: :func:`aggregate` of :func:`kl_estimate` over the trained tokens.

    Multiply by a coefficient :math:`\\beta` and add to a policy loss (trajectory side). Its gradient is
    the gradient of :math:`\\mathrm{KL}(\\pi_\\theta\\|\\pi_\\text{ref})` only in special cases: k2's is the gradient of
    the per-token KLs with the distribution of prefixes held fixed, which is the sequence KL's gradient only
    for one-token completions ({ref}`sec-rlhf-kl-gradients` measures this).
    """
    m = _check_per_token(logp, mask, "logp")
    check_tensor(ref_logp, "ref_logp", 2)
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp must have the shape of logp {tuple(logp.shape)}, got {tuple(ref_logp.shape)}")
    # zero both on padding *before* the estimate: an inf on padding times a 0 mask would be NaN
    return aggregate(kl_estimate(logp * m, ref_logp.to(logp.dtype) * m, kind) * m, mask, aggregation, max_len=max_len)


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


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. (2019): move :math:`\\beta` towards a target KL.

    After each step with measured KL :math:`\\hat d`:
    :math:`\\beta \\leftarrow \\beta\\,\\big(1 + \\mathrm{clip}((\\hat d - d_\\text{target})/d_\\text{target}, -0.2, 0.2)\\cdot n/H\\big)`
    with ``n`` the samples in the step and ``H`` the horizon. Above target, :math:`\\beta` grows; below, it
    shrinks; the clip bounds the change per step. Derived in {ref}`sec-ppo-kl-penalty`.
    """

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        for name, v in (("init_beta", init_beta), ("target", target)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a finite positive number, got {v!r}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = check_positive_int(horizon, "horizon")

    def update(self, kl: float, n_samples: int) -> float:
        """Update and return :math:`\\beta` after a step that measured ``kl`` on ``n_samples`` samples."""
        if isinstance(kl, bool) or not isinstance(kl, (int, float)) or kl != kl:
            raise ValueError(f"kl must be a number (not NaN), got {kl!r}")  # +inf is fine: the step is clipped
        check_positive_int(n_samples, "n_samples")
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.beta *= 1.0 + error * n_samples / self.horizon
        return self.beta
