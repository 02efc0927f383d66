"""The clip zoo: two-sided clipping, CISPO and SAPO, and the gradient weight of each.

Every loss of the PPO family is, per token, a function of the importance ratio
r = π_θ(y_t | s_t) / π_old(y_t | s_t) and the advantage A, and its gradient is the
score times a scalar:

    ∇_θ L_t = −w(r, A) ∇_θ log π_θ(y_t | s_t)

(loss = −surrogate). The families differ only in the weight w(r, A), the factor in
front of the score; `gradient_weight` gives it in closed form for each of them, and
chapter 9 ("The clip zoo") plots it against r for A > 0 and A < 0. The
plain policy gradient at θ = θ_old has w = r A = A.

| family        | w(r, A), A > 0                   | w(r, A), A < 0            |
|---------------|----------------------------------|---------------------------|
| `ppo`         | r A, r < 1 + ε_high              | r A, r > 1 − ε_low        |
| `clip-higher` | the same, ε_high > ε_low         | the same                  |
| `dual-clip`   | as `ppo`                         | r A, 1 − ε_low < r < c    |
| `two-sided`   | r A, r < min(δ, 1 + ε_high)      | r A, 1 − ε_low < r < δ′   |
| `cispo-verl`  | clip(r, 1 − ε_low, 1 + ε_high) A | the same                  |
| `cispo-trl`   | min(r, ε_max) A                  | the same                  |
| `sapo`        | r sech²(τ₊ (r − 1)/2) A          | r sech²(τ₋ (r − 1)/2) A   |

with δ′ = max(δ, 1 + ε_high), and w = 0 elsewhere for the hard clips. The losses here
take the conventions of
`policygrad.trajectory_side.ppo_clip_loss`: `logp (B, T)` with gradient, `old_logp`
and `advantages` (`(B, T)`, or `(B,)`: one per row) constants, a 0/1 `mask`, an
aggregation mode of `policygrad.trajectory_side.aggregate`; they return
`(loss, stats)`, or `(loss, stats, TokenLosses)` with `per_token=True`. Ratios are
formed by `policygrad.trajectory_side.safe_ratio` (log-ratio clamped to ±20), padded
positions are selected away before any arithmetic, so neither a log-ratio of 10⁴ nor
a NaN on padding gives a NaN. The symmetric, clip-higher and dual clips are
`policygrad.trajectory_side.ppo_clip_loss` (chapter 5 ("PPO: a pessimistic, clipped
surrogate")); this module adds the other three.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_finite, check_float
from .._tensor import compute_dtype, select
from .masks import check_constant, check_per_token
from .ppo import _check_eps, _finish
from .ratios import LOG_RATIO_CLAMP, log_ratios, safe_ratio

__all__ = [
    "CLIP_FAMILIES",
    "CISPO_VARIANTS",
    "two_sided_clip_loss",
    "cispo_loss",
    "sapo_loss",
    "gradient_weight",
]

#: The families `gradient_weight` knows, in the order chapter 9 plots them.
CLIP_FAMILIES = (
    "ppo",
    "clip-higher",
    "dual-clip",
    "two-sided",
    "cispo-trl",
    "cispo-verl",
    "sapo",
)

#: The two CISPO weights of `cispo_loss`: TRL's absolute cap, verl's relative clip.
CISPO_VARIANTS = ("trl", "verl")


# ------------------------------------------------------------------------- validation


def _number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _check_delta(delta) -> float:
    if not _number(delta) or not delta > 1:
        raise ValueError(
            f"delta must be a finite number > 1 (INTELLECT-2 takes it above "
            f"1 + eps_high), got {delta!r}"
        )
    return float(delta)


def _check_tau(tau, name: str) -> float:
    if not _number(tau) or not tau > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {tau!r}")
    return float(tau)


def _check_cispo(variant, eps_low, eps_high, eps_max) -> tuple[float, float]:
    """The bounds (lo, hi) of CISPO's weight clip(r, lo, hi) for `variant`."""
    if variant not in CISPO_VARIANTS:
        raise ValueError(
            f"unknown CISPO variant {variant!r}; choose one of {CISPO_VARIANTS}"
        )
    if variant == "trl":
        if eps_low is not None or eps_high is not None:
            raise ValueError(
                "variant='trl' caps the raw ratio at eps_max only; eps_low and "
                "eps_high belong to variant='verl'"
            )
        eps_max = 5.0 if eps_max is None else eps_max
        if not _number(eps_max) or not eps_max > 0:
            raise ValueError(f"eps_max must be a finite number > 0, got {eps_max!r}")
        return 0.0, float(eps_max)
    if eps_max is not None:
        raise ValueError(
            "variant='verl' clips the ratio to [1 - eps_low, 1 + eps_high]; eps_max "
            "belongs to variant='trl'"
        )
    eps_low = 0.2 if eps_low is None else eps_low
    if not _number(eps_low) or not 0 <= eps_low <= 1:
        raise ValueError(f"eps_low must be a number in [0, 1], got {eps_low!r}")
    eps_high = eps_low if eps_high is None else eps_high
    if not _number(eps_high) or not eps_high >= 0:
        raise ValueError(f"eps_high must be a finite number >= 0, got {eps_high!r}")
    return 1.0 - eps_low, 1.0 + eps_high


def _prepare(logp, old_logp, advantages, mask):
    """The mask (bool), the selected token log-ratios and advantages `(B, T)`."""
    lr = log_ratios(logp, old_logp, mask, "token")
    m = check_per_token(logp, mask, "logp")
    check_float(advantages, "advantages", (1, 2))
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(
                f"per-sequence advantages must have shape ({logp.shape[0]},), got "
                f"{tuple(advantages.shape)}"
            )
        advantages = advantages.detach()[:, None].expand(logp.shape)
    A = check_constant(advantages, lr, "advantages", m)
    return m, lr, A


def _ratio_stats(lr, ratio, m, **fracs) -> dict:
    with torch.no_grad():
        n = m.sum().clamp_min(1).to(lr.dtype)
        r = ratio.detach()
        c = lr.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        stats = {k: float((v & m).sum() / n) for k, v in fracs.items()}
        stats["approx_kl"] = float(select(torch.expm1(c) - c, m).sum() / n)
        stats["ratio_mean"] = float(select(r, m).sum() / n)
        stats["ratio_max"] = float(r[m].max()) if bool(m.any()) else 1.0
    return stats


# ----------------------------------------------------------------------------- losses


def two_sided_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    delta: float,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """INTELLECT-2's two-sided clip: PPO's clip plus an upper bound δ on the ratio.

    Per token (loss = −surrogate), with r = π_θ / π_old:

        L_t = −min(min(r, δ) A, clip(r, 1 − ε_low, 1 + ε_high) A)

    For A > 0 with δ ≥ 1 + ε_high the bound changes nothing: this is PPO. For A < 0 it
    is the missing half of PPO's pessimism: L_t = |A| max(min(r, δ), clip(r)), and
    without δ a token whose probability the update *raised* although its advantage is
    negative (r ≫ 1) keeps the loss |A| r and the weight w = r A, unbounded in r: one
    token of a stale batch can dominate the step. With δ the loss stops at δ |A| and
    the gradient is 0 for r > δ, so

        w(r, A) = r A · 1[r < min(δ, 1 + ε_high)]                    for A > 0,
        w(r, A) = r A · 1[1 − ε_low < r < max(δ, 1 + ε_high)]        for A < 0.

    With δ ≥ 1 + ε_high this is exactly the dual clip with c = δ
    (`ppo_clip_loss(..., dual_clip=delta)`, Ye et al. 2019), which verl's
    `compute_policy_loss_vanilla` always applies with `clip_ratio_c` (default 3.0,
    `verl/workers/config/actor.py:163`; the cap `torch.min(-A c, ·)` for A < 0 at
    `verl/trainer/ppo/core_algos.py:1355-1361`). For δ < 1 + ε_high the two differ:
    the formula above (INTELLECT-2's and TRL's) then also clips positive advantages
    at r = δ, and for A < 0 keeps the gradient up to 1 + ε_high.

    Reproduces TRL's `GRPOConfig(delta=δ)` (`trl/trainer/grpo_trainer.py:3113-3120`:
    `coef_1 = torch.clamp(coef_1, max=self.args.delta)` before
    `-torch.min(coef_1 * advantages, coef_2 * advantages)`; `delta` documented at
    `trl/trainer/grpo_config.py:180-183`), which applies the cap to every token as
    written here; verl has no `delta` option. TRL forms the ratio without clamping the
    log-ratio (`grpo_trainer.py:3095`), here it is clamped to ±20. Paper: Prime
    Intellect Team, "INTELLECT-2: A Reasoning Model Trained Through Globally
    Decentralized Reinforcement Learning" (2025), arXiv:2505.07291.

    `delta > 1` is required (no default: TRL's is `None`, off); `eps_low`, `eps_high`
    as in `ppo_clip_loss`. Returns `(loss, stats)` (`(loss, stats, TokenLosses)` with
    `per_token=True`); stats: `clip_frac` (trained tokens whose gradient the PPO side
    removed: A > 0, r > min(δ, 1 + ε_high) or A < 0, r < 1 − ε_low), `delta_clip_frac`
    (A < 0, r > max(δ, 1 + ε_high)), `approx_kl` (k3), `ratio_mean`, `ratio_max`.
    Derived in chapter 9 ("The clip zoo").
    """
    m, lr, A = _prepare(logp, old_logp, advantages, mask)
    if eps_low is None:
        raise ValueError("eps_low must be a number in [0, 1), got None")
    e_hi = _check_eps(eps_low, eps_high, None)
    d = _check_delta(delta)
    ratio = safe_ratio(lr)
    capped = torch.clamp(ratio, max=d)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + e_hi)
    loss_t = -torch.minimum(capped * A, clipped * A)
    r = ratio.detach()
    stats = _ratio_stats(
        lr,
        ratio,
        m,
        clip_frac=((A > 0) & (r > min(d, 1.0 + e_hi)))
        | ((A < 0) & (r < 1.0 - eps_low)),
        delta_clip_frac=(A < 0) & (r > max(d, 1.0 + e_hi)),
    )
    return _finish(loss_t, m, aggregation, max_len, per_token, stats)


def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    variant: str = "verl",
    eps_low: float | None = None,
    eps_high: float | None = None,
    eps_max: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """CISPO (MiniMax-M1): clip the importance weight, not the update.

    Per token, with sg the stop-gradient and r = π_θ / π_old:

        L_t = −sg(ŵ(r)) A log π_θ(y_t | s_t),   ∇_θ L_t = −ŵ(r) A ∇_θ log π_θ(y_t | s_t)

    a REINFORCE loss whose gradient flows through log π_θ only, weighted by the
    clipped ratio ŵ(r). So w(r, A) = ŵ(r) A is never 0: where PPO's clip removes a
    token's gradient altogether (A > 0 and r > 1 + ε_high: typically a rare token the
    update made more likely, such as a reflective "wait", whose ratio reaches the
    bound first), CISPO keeps it with the weight capped. The value of L_t is not a
    surrogate of anything (it depends on log π_θ itself, not on log r); only its
    gradient is meaningful. Two weights, chosen with `variant`:

    * `"verl"` (default): ŵ(r) = clip(r, 1 − ε_low, 1 + ε_high), `eps_low` (in [0, 1],
      default 0.2) and `eps_high` (≥ 0, default `eps_low`) relative to 1, as verl's
      `compute_policy_loss_cispo`
      (`verl/trainer/ppo/core_algos.py:2079-2084`: `clipped_ratio = torch.clamp(ratio,
      1 - clip_ratio_low, 1 + clip_ratio_high)`, `.detach()`, `pg_losses =
      -clipped_ratio_sg * advantages * log_prob`; defaults 0.2 and 0.2 at
      `verl/workers/config/actor.py:159-160`). A low ratio is raised to 1 − ε_low.
    * `"trl"`: ŵ(r) = min(r, ε_max), an absolute cap on the raw ratio and no lower
      bound, as TRL's `loss_type="cispo"` (`trl/trainer/grpo_trainer.py:3109-3111`:
      `torch.clamp(coef_1, max=self.epsilon_high).detach()`, `-clamped_ratios *
      advantages * per_token_logps`). TRL reads ε_max from `epsilon_high`
      (`grpo_config.py:184-188`, recommended 5.0, ScaleRL's ε_max: the default here);
      left unset, `epsilon_high` falls back to `epsilon` = 0.2
      (`grpo_trainer.py:946`), which caps the weight at 0.2, below the ratio of
      every token that did not move.

    Both detach the weight and multiply by `log_prob`, so the two give equal losses
    and gradients wherever their weights agree (e.g. verl's `eps_low=1,
    eps_high=ε_max − 1` is TRL's cap for ratios ≥ e^−20). The ratio is formed by
    `safe_ratio` (log-ratio clamped to ±20, as verl at `core_algos.py:2071`; TRL does
    not clamp, `grpo_trainer.py:3095`), so TRL's weight on a token with log r < −20 is
    r, here e^−20 ≈ 2·10⁻⁹. Aggregation: verl uses `loss_agg_mode` (default
    "token-mean"); TRL sums and divides by `num_items_in_batch`
    (`grpo_trainer.py:3168-3173`), our "token-mean" when that is the batch's token
    count. Paper: MiniMax, "MiniMax-M1: Scaling Test-Time Compute Efficiently with
    Lightning Attention" (2025), arXiv:2506.13585.

    Returns `(loss, stats)` (`(loss, stats, TokenLosses)` with `per_token=True`);
    stats: `clip_frac` (trained tokens whose weight was clipped, ŵ(r) ≠ r, as verl's
    `pg_clipfrac` at `core_algos.py:2087`; TRL's `cispo_clip_ratio` counts only those
    with A > 0, `grpo_trainer.py:3285`), `approx_kl` (k3), `ratio_mean`, `ratio_max`.
    Derived in chapter 9 ("The clip zoo").
    """
    lo, hi = _check_cispo(variant, eps_low, eps_high, eps_max)
    m, lr, A = _prepare(logp, old_logp, advantages, mask)
    lp = select(logp.to(compute_dtype(logp)), m)
    ratio = safe_ratio(lr)
    weight = torch.clamp(ratio, lo, hi).detach()
    loss_t = -weight * A * lp
    stats = _ratio_stats(lr, ratio, m, clip_frac=weight != ratio.detach())
    return _finish(loss_t, m, aggregation, max_len, per_token, stats)


def sapo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    aggregation: str = "seq-mean-token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """SAPO: a soft, sigmoid gate in place of the hard clip.

    Per token, with r = π_θ / π_old, σ the logistic function and τ = τ₊ for A > 0,
    τ = τ₋ for A ≤ 0:

        L_t = −f_τ(r) A,   f_τ(r) = (4/τ) σ(τ (r − 1))

    Since σ' = σ (1 − σ) and 4 σ(x)(1 − σ(x)) = sech²(x/2), the gradient weight is

        w(r, A) = r f_τ'(r) A = r sech²(τ (r − 1)/2) A,

    the unclipped weight r A damped by sech²(τ (r − 1)/2) ≤ 1, which is 1 at r = 1 (the
    policy gradient: the 4/τ makes f_τ'(1) = 1) and falls like 4 e^(−τ |r − 1|) as the
    ratio moves away. No token's gradient is cut at a kink: for τ = 1 and A > 0 the
    weight still grows past r = 1 + ε, peaks at r ≈ 2.06 with w ≈ 1.57 A, and is
    0.35 A at r = 5 and 0.005 A at r = 10; below 1 it is 0.47 A at r = 0.5. A larger
    τ₋ (default 1.05 > τ₊ = 1) damps negative-advantage tokens faster. The value at
    r = 1 is −2A/τ, not −A; only the gradient matches PPO's there.

    Reproduces verl's `compute_policy_loss_sapo`
    (`verl/trainer/ppo/core_algos.py:1657-1681`: `gate_function(x, tau) =
    torch.sigmoid(tau * (x - 1.0)) * (4.0 / tau)`, `taus = torch.where(advantages >
    0, tau_pos, tau_neg)`, `pg_losses = -gates * advantages`; defaults `tau_pos=1.0`,
    `tau_neg=1.05` at `verl/workers/config/actor.py:167-168`) and TRL's
    `loss_type="sapo"` (`trl/trainer/grpo_trainer.py:3121-3124`: the same gate,
    `torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures`, with
    `sapo_temperature_pos=1.0`, `sapo_temperature_neg=1.05` at
    `trl/trainer/grpo_config.py:714-728`). The formula is the same in both; the
    differences: verl always aggregates with "seq-mean-token-mean" whatever its
    `loss_agg_mode` (`core_algos.py:1687-1690`), TRL with its "grpo" rule, also a
    per-sequence mean then a batch mean (`grpo_trainer.py:3153-3154`); hence this
    default `aggregation`. verl clamps the log-ratio to ±20 (`core_algos.py:1666`),
    as here; TRL does not (`grpo_trainer.py:3095`).

    Paper: "Soft Adaptive Policy Optimization" (2025), arXiv:2511.20347 (the URL in
    both frameworks' docstrings). `tau_pos`, `tau_neg` must be > 0. Returns
    `(loss, stats)` (`(loss, stats, TokenLosses)` with `per_token=True`); stats:
    `approx_kl` (k3), `ratio_mean`, `ratio_max`. Derived in chapter 9 ("The clip zoo").
    """
    t_pos = _check_tau(tau_pos, "tau_pos")
    t_neg = _check_tau(tau_neg, "tau_neg")
    m, lr, A = _prepare(logp, old_logp, advantages, mask)
    ratio = safe_ratio(lr)
    taus = torch.where(
        A > 0,
        torch.as_tensor(t_pos, dtype=A.dtype, device=A.device),
        torch.as_tensor(t_neg, dtype=A.dtype, device=A.device),
    )
    gates = torch.sigmoid(taus * (ratio - 1.0)) * (4.0 / taus)
    loss_t = -gates * A
    stats = _ratio_stats(lr, ratio, m)
    return _finish(loss_t, m, aggregation, max_len, per_token, stats)


# ---------------------------------------------------------------------------- weights

_PARAMS = {
    "ppo": {"eps_low": 0.2, "eps_high": None, "dual_clip": None},
    "clip-higher": {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": None},
    "dual-clip": {"eps_low": 0.2, "eps_high": None, "dual_clip": 3.0},
    "two-sided": {"eps_low": 0.2, "eps_high": None, "delta": None},
    "cispo-trl": {"eps_max": 5.0},
    "cispo-verl": {"eps_low": 0.2, "eps_high": None},
    "sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
}


def gradient_weight(
    family: str, ratio: torch.Tensor, advantage: torch.Tensor, **params
) -> torch.Tensor:
    """The factor w(r, A) in front of the score: ∇_θ L_t = −w(r, A) ∇_θ log π_θ(y_t).

    Closed form, elementwise over `ratio` (r > 0) and `advantage` (broadcast
    together), for each of `CLIP_FAMILIES`. The chain rule through r = e^(log π_θ −
    log π_old) gives w = r ∂J/∂r for the surrogate J = −L_t, so wherever a hard clip
    holds the surrogate constant w = 0, and elsewhere w = r A:

    * `"ppo"` (`eps_low=0.2`, `eps_high=eps_low`, `dual_clip=None`): w = r A on
      r < 1 + ε_high for A > 0 and on r > 1 − ε_low for A < 0, else 0. The clip
      bounds the *relative* move: a token at π_old = 0.01 whose probability the update
      raises loses its gradient at π_θ = 0.01 (1 + ε) (0.012 for ε = 0.2), an
      absolute gain of 0.002, while one at 0.5 may gain 0.1; for A < 0 nothing bounds
      a ratio that grew, and w = r A grows with it.
    * `"clip-higher"`: the same with DAPO's `eps_high=0.28` (the value TRL's docstring
      cites, `trl/trainer/grpo_config.py:184-186`) above `eps_low=0.2`: rare tokens
      may rise further before their gradient is cut.
    * `"dual-clip"` (`dual_clip=3.0`, verl's `clip_ratio_c` default,
      `verl/workers/config/actor.py:163`): for A < 0 also w = 0 on r > c.
    * `"two-sided"` (`delta` required, > 1): w = r A on r < min(δ, 1 + ε_high) for
      A > 0 and on 1 − ε_low < r < max(δ, 1 + ε_high) for A < 0 (see
      `two_sided_clip_loss`); equal to `"dual-clip"` with c = δ when δ ≥ 1 + ε_high.
    * `"cispo-verl"` (`eps_low=0.2`, `eps_high=eps_low`): w = clip(r, 1 − ε_low,
      1 + ε_high) A, never 0 (see `cispo_loss`).
    * `"cispo-trl"` (`eps_max=5.0`): w = min(r, ε_max) A.
    * `"sapo"` (`tau_pos=1.0`, `tau_neg=1.05`): w = r sech²(τ (r − 1)/2) A with
      τ = τ₊ for A > 0, τ₋ for A ≤ 0 (see `sapo_loss`).

    As in the losses, the ratio is clamped to [e^−20, e^20] (`safe_ratio`): where
    |log r| > 20 the weight is 0 for the families whose gradient flows through r, and
    CISPO's weight is that of the clamped ratio. At a kink (r exactly at a bound) the
    weight is the one-sided value of the formulas above; autograd of the losses may
    split it there. `params` are the family's parameters listed above (an unknown one
    is a ValueError). Returns a tensor of the broadcast shape in the compute dtype
    (float64 if either input is, else float32). Plotted in chapter 9 ("The clip zoo").
    """
    if family not in _PARAMS:
        raise ValueError(f"unknown family {family!r}; choose one of {CLIP_FAMILIES}")
    allowed = _PARAMS[family]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"family {family!r} takes the parameters {sorted(allowed)}, got "
            f"unknown {unknown}"
        )
    p = {**allowed, **params}
    check_float(ratio, "ratio")
    check_float(advantage, "advantage")
    check_finite(ratio, "ratio")
    check_finite(advantage, "advantage")
    if bool((ratio <= 0).any()):
        raise ValueError("ratio must be positive (r = π_θ / π_old > 0)")
    dt = compute_dtype(ratio, advantage)
    r, A = torch.broadcast_tensors(ratio.detach().to(dt), advantage.detach().to(dt))
    inside = r.log().abs() <= LOG_RATIO_CLAMP
    r = r.clamp(math.exp(-LOG_RATIO_CLAMP), math.exp(LOG_RATIO_CLAMP))
    zero = torch.zeros_like(r)
    pos, neg = A > 0, A < 0

    if family in ("cispo-trl", "cispo-verl"):
        if family == "cispo-trl":
            lo, hi = _check_cispo("trl", None, None, p["eps_max"])
        else:
            lo, hi = _check_cispo("verl", p["eps_low"], p["eps_high"], None)
        return r.clamp(lo, hi) * A
    if family == "sapo":
        t_pos = _check_tau(p["tau_pos"], "tau_pos")
        t_neg = _check_tau(p["tau_neg"], "tau_neg")
        tau = torch.where(pos, r.new_tensor(t_pos), r.new_tensor(t_neg))
        s = torch.sigmoid(tau * (r - 1.0))
        return torch.where(inside, 4.0 * s * (1.0 - s) * r * A, zero)

    e_lo = p["eps_low"]
    if e_lo is None:
        raise ValueError("eps_low must be a number in [0, 1), got None")
    e_hi = _check_eps(e_lo, p["eps_high"], p.get("dual_clip"))
    top_pos, top_neg = 1.0 + e_hi, math.inf
    if family == "two-sided":
        if p["delta"] is None:
            raise ValueError("family 'two-sided' needs delta (a number > 1)")
        d = _check_delta(p["delta"])
        top_pos, top_neg = min(d, 1.0 + e_hi), max(d, 1.0 + e_hi)
    elif p["dual_clip"] is not None:
        top_neg = float(p["dual_clip"])
    live = (pos & (r < top_pos)) | (neg & (r > 1.0 - e_lo) & (r < top_neg))
    return torch.where(live & inside, r * A, zero)
