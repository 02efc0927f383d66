"""Exact behaviour of the KL-to-reference estimators and of the two ways of putting
β KL into training.

Everything here is computed by enumerating every completion of a
`policygrad.exact.ExactProblem` (no sampling), so the numbers are exact up to float
round-off. Two questions are answered:

1. **Values.** For a completion y ∼ p_θ(· | x), x ∼ ρ, the per-sequence estimate

       K(y) = Σ_t m_t k(ℓ_t),  ℓ_t = log π_θ(y_t | s_t) - log π_ref(y_t | s_t)

   estimates the sequence KL KL(p_θ(· | x) ‖ p_ref(· | x)). How biased is it, how
   large is its variance, how often is it negative (`kl_estimator_stats`)?
2. **Gradients.** KL as a *loss term* (autograd through k on sampled tokens) and KL
   as *reward shaping* (-β k_t added to the reward and passed through REINFORCE)
   have different expected gradients. `kl_penalty_gradients` computes each next to
   the true ∇_θ E_x KL, `kl_penalty_weights` writes each as a score-function
   estimator (so `policygrad.exact.ExactProblem.estimator_moments` gives its exact
   variance), and `gradient_table` compares them.

The identities (proved in the docstrings below and checked in
`tests/test_kl_exact.py`), with all expectations under x ∼ ρ, y ∼ p_θ and
r_t = π_ref(y_t | s_t) / π_θ(y_t | s_t) = e^(-ℓ_t):

* values: E[K_k1] = E[K_k3] = KL exactly (per state E_{π_θ}[r - 1] = 0); k2 is
  biased; K_k3 ≥ 0 always; K_k1 < 0 with positive probability whenever the
  policies differ;
* chain rule: KL(p_θ ‖ p_ref) = E[Σ_t m_t KL(π_θ(· | s_t) ‖ π_ref(· | s_t))];
* `reward_k1` = `reward_k1_rtg` = `exact`; `loss_k1` = 0;
* `loss_k2` = ∇_θ of the per-state *reverse* KLs with the state distribution held
  fixed (= `exact` only for one-token completions);
* `loss_k3` = ∇_θ of the per-state *forward* KLs
  KL(π_ref(· | s_t) ‖ π_θ(· | s_t)) with the state distribution held fixed;
* `reward_k3` = `exact` − `loss_k3`.

Derived in chapter 6 ("Three estimators of the KL from one completion") and
chapter 6 ("KL in the reward or KL in the loss: which gradient do you get?").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .._checks import check_finite, check_tensor
from .._tensor import flat_grad, flat_params
from ..trajectory_side.kl import KL_ESTIMATORS, kl_estimate
from .enumeration import ExactProblem

__all__ = [
    "PENALTY_FORMS",
    "state_kl",
    "kl_estimator_stats",
    "kl_penalty_weights",
    "kl_penalty_gradients",
    "gradient_table",
    "regularised_optimum",
]

#: The ways of adding β KL (β = 1) to training that `kl_penalty_weights` and
#: `kl_penalty_gradients` know (`kl_penalty_gradients` adds `"exact"`).
PENALTY_FORMS = (
    "loss_k1",
    "loss_k2",
    "loss_k3",
    "reward_k1",
    "reward_k3",
    "reward_k1_rtg",
)

#: A probability table whose rows miss 1 by more than this does not enumerate the
#: whole distribution.
_COVERAGE_TOL = 1e-6


# --------------------------------------------------------------------------------------
# shared plumbing: one forward of each policy over every (prompt, completion) pair
# --------------------------------------------------------------------------------------
def _check_module(module, name: str) -> torch.device:
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"{name} must be a torch.nn.Module, got {type(module).__name__}"
        )
    params = list(module.parameters())
    if not params:
        raise ValueError(f"{name} has no parameters")
    return params[0].device


def _all_log_probs(
    problem: ExactProblem, module: torch.nn.Module, name: str
) -> torch.Tensor:
    """Next-token log-probabilities at every state of every pair: `(N, K, L, V)`
    (on `module`'s device)."""
    device = _check_module(module, name)
    N, K = problem.num_prompts, problem.num_completions
    L = problem.completions.shape[1]
    prompts = problem.prompts.repeat_interleave(K, dim=0).to(device)
    completions = problem.completions.repeat(N, 1).to(device)
    try:
        logits = module(prompts, completions)
    # a policy built for another problem
    except (IndexError, RuntimeError, TypeError) as err:
        raise ValueError(
            f"{name} cannot evaluate this problem's (prompt, completion) pairs: {err}"
        ) from err
    check_tensor(logits, f"{name}(prompts, completions)", 3)
    if logits.shape[:2] != (N * K, L):
        raise ValueError(
            f"{name} returned logits of shape {tuple(logits.shape)}, "
            f"expected ({N * K}, {L}, V)"
        )
    if int(problem.completions.max()) >= logits.shape[-1]:
        raise ValueError(
            "the problem's completions use token "
            f"{int(problem.completions.max())} but {name} has only "
            f"{logits.shape[-1]} tokens"
        )
    return torch.log_softmax(logits, dim=-1).reshape(N, K, L, -1)


def _setup(
    problem: ExactProblem,
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    *,
    grad: bool,
):
    """Full log-probs of the policy (with gradient if `grad`) and of the reference
    (without), mask, rho.

    Checks that both policies share one vocabulary and that the enumeration covers
    the whole distribution of each (otherwise no KL is exact).
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    with torch.set_grad_enabled(grad):
        lq = _all_log_probs(problem, policy, "policy")
    with torch.no_grad():
        lr = _all_log_probs(problem, reference, "reference").to(
            device=lq.device, dtype=lq.dtype
        )
    if lr.shape[-1] != lq.shape[-1]:
        raise ValueError(
            "policy and reference must share a vocabulary, "
            f"got {lq.shape[-1]} and {lr.shape[-1]} tokens"
        )
    m = problem.mask.to(device=lq.device, dtype=lq.dtype)  # (K, L)
    idx = (
        problem.completions.to(lq.device)
        .long()
        .unsqueeze(0)
        .unsqueeze(-1)
        .expand(lq.shape[0], -1, -1, 1)
    )
    # (N, K, L) log pi_theta(y_t | s_t), 0 where masked
    tok_q = lq.gather(-1, idx).squeeze(-1) * m
    tok_r = lr.gather(-1, idx).squeeze(-1) * m
    for name, tok in (("policy", tok_q), ("reference", tok_r)):
        total = tok.detach().sum(-1).exp().sum(-1)  # (N,) should be 1
        if bool(((total - 1).abs() > _COVERAGE_TOL).any()):
            raise ValueError(
                "the enumeration does not cover the whole distribution of the "
                f"{name} (probabilities sum to "
                f"{total.min().item():.6g}..{total.max().item():.6g}, not 1): "
                "a KL needs every completion, e.g. "
                "no restricted alphabet, and the policy and problem must agree on "
                "max_len and eos"
            )
    rho = problem.prompt_probs.to(device=lq.device, dtype=lq.dtype)
    return lq, lr, tok_q, tok_r, m, rho


def state_kl(
    problem: ExactProblem,
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    direction: str = "reverse",
) -> torch.Tensor:
    """The exact KL of the next-token distributions at every state s_t = (x, y_<t):
    `(N, K, L)`.

    `"reverse"`: KL(π_θ(· | s_t) ‖ π_ref(· | s_t)); `"forward"`:
    KL(π_ref(· | s_t) ‖ π_θ(· | s_t)); 0 where the mask is 0. Differentiable in
    `policy` (the reference is a constant). By the chain rule of KL,

        Σ_y p_θ(y | x) Σ_t m_t KL^rev_t = KL(p_θ(· | x) ‖ p_ref(· | x))

    With the weights p_θ(y | x) held fixed (detached), the gradient of that sum is
    the gradient of the per-state KLs *with the state distribution frozen* (see
    `kl_penalty_gradients`).
    """
    if direction not in ("reverse", "forward"):
        raise ValueError(f"direction must be 'reverse' or 'forward', got {direction!r}")
    lq, lr, _, _, m, _ = _setup(problem, policy, reference, grad=True)
    if direction == "reverse":
        kl = (lq.exp() * (lq - lr)).sum(-1)
    else:
        kl = (lr.exp() * (lr - lq)).sum(-1)
    return kl * m


# --------------------------------------------------------------------------------------
# 1. the value of the estimators
# --------------------------------------------------------------------------------------
def _check_kinds(kinds) -> tuple[str, ...]:
    if (
        isinstance(kinds, str)
        or not isinstance(kinds, (list, tuple))
        or len(kinds) == 0
    ):
        raise ValueError(
            f"kinds must be a non-empty list or tuple of estimator names, got {kinds!r}"
        )
    for kind in kinds:
        if kind not in KL_ESTIMATORS:
            raise ValueError(
                f"unknown KL estimator {kind!r}; choose from {KL_ESTIMATORS}"
            )
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds contains duplicates: {kinds!r}")
    return tuple(kinds)


def kl_estimator_stats(
    problem: ExactProblem,
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    kinds: Sequence[str] = ("k1", "k2", "k3"),
) -> dict[str, dict]:
    """Exact bias, variance and sign of the per-sequence KL estimates, for each
    estimator in `kinds`.

    For x ∼ ρ and y ∼ p_θ(· | x) the estimate is

        K(x, y) = Σ_t m_t k(ℓ_t)

    with ℓ_t = log π_θ(y_t | s_t) - log π_ref(y_t | s_t) and k from
    `policygrad.trajectory_side.kl_estimate` (`"k1+"`/`"k3+"` have the values of
    k1/k3). Its target is KL_x = KL(p_θ(· | x) ‖ p_ref(· | x)), computed separately
    by `policygrad.exact.ExactProblem.kl`. Returns, per kind, a dict with

    * `mean` E_{x,y}[K], `exact` E_x KL_x, `bias` = mean − exact (floats);
    * `variance`: the *total* variance Var_{x∼ρ, y∼p_θ}[K], the variance of a
      one-sample estimate of E_x KL_x (a mean of `n` independent samples has
      `variance / n`); `variance_within` E_x Var_y[K | x], the part that remains
      with the prompt fixed (`variance` − `variance_within` is the variance across
      prompts of E[K | x]); `mse` E[(K - E_x KL_x)^2] = variance + bias²;
    * `frac_negative`: P(K < 0) (a KL is never negative; k3's estimate never is
      either);
    * per prompt, `(N,)` tensors: `mean_per_prompt` E[K | x], `exact_per_prompt`
      KL_x, `variance_per_prompt` Var[K | x], `frac_negative_per_prompt`;
    * per token, `(N, K, L)` tensors over the enumeration, 0 where masked:
      `token_mean` E_{y_t∼π_θ(·|s_t)}[k(ℓ_t)] at the state s_t of each (prompt,
      completion, position), and `token_exact`, the state's KL (`state_kl`). For
      k1 and k3 they are equal at every state (per state
      E_{π_θ}[e^(-ℓ) - 1] = Σ_v π_ref(v) - 1 = 0); for k2 they are not.

    The per-token and per-sequence numbers are tied by two sums over the
    enumeration: Σ_y p_θ(y | x) Σ_t m_t `token_mean` = `mean_per_prompt` (the tower
    property) and Σ_y p_θ(y | x) Σ_t m_t `token_exact` = `exact_per_prompt` (the
    chain rule of KL), so an estimator is unbiased for the sequence KL exactly when
    it is unbiased for the KL of every visited state.

    Raises ValueError for an unknown kind, policies with different vocabularies, or
    a problem whose enumeration does not cover the whole distribution (a restricted
    alphabet: no KL is exact then).
    """
    kinds = _check_kinds(kinds)
    with torch.no_grad():
        lq, lr, tok_q, tok_r, m, rho = _setup(problem, policy, reference, grad=False)
        p = tok_q.sum(-1).exp()  # (N, K)
        # (N,) an independent route
        exact_x = problem.kl(policy, reference).to(device=p.device, dtype=p.dtype)
        exact = float((rho * exact_x).sum())
        q = lq.exp()
        token_exact = (q * (lq - lr)).sum(-1) * m  # (N, K, L)
        out: dict[str, dict] = {}
        for kind in kinds:
            est = (kl_estimate(tok_q, tok_r, kind) * m).sum(-1)  # (N, K)
            mean_x = (p * est).sum(-1)
            var_x = (p * (est - mean_x.unsqueeze(-1)) ** 2).sum(-1)
            mean = float((rho * mean_x).sum())
            joint = rho.unsqueeze(-1) * p
            variance = float((joint * (est - mean) ** 2).sum())
            neg_x = (p * (est < 0).to(p.dtype)).sum(-1)
            token_mean = (q * kl_estimate(lq, lr, kind)).sum(-1) * m
            out[kind] = {
                "mean": mean,
                "exact": exact,
                "bias": mean - exact,
                "variance": variance,
                "variance_within": float((rho * var_x).sum()),
                "mse": float((joint * (est - exact) ** 2).sum()),
                "frac_negative": float((rho * neg_x).sum()),
                "mean_per_prompt": mean_x.cpu(),
                "exact_per_prompt": exact_x.cpu(),
                "variance_per_prompt": var_x.cpu(),
                "frac_negative_per_prompt": neg_x.cpu(),
                "token_mean": token_mean.cpu(),
                "token_exact": token_exact.cpu(),
            }
    return out


# --------------------------------------------------------------------------------------
# 2. the gradient of the penalty: KL as a loss term vs KL as reward shaping
# --------------------------------------------------------------------------------------
def _weights(
    tok_q: torch.Tensor, tok_r: torch.Tensor, m: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-token score weights `(N, K, L)` of every penalty form (all constants)."""
    x = (tok_q - tok_r).detach()  # log-ratios, 0 where masked
    out = {}
    for kind in ("k1", "k2", "k3"):
        # d k / d logp at the sampled token: autograd of the per-token loss, exactly as
        # on a sampled batch
        with torch.enable_grad():
            leaf = tok_q.detach().clone().requires_grad_(True)
            per_token = kl_estimate(leaf, tok_r.detach(), kind) * m
            (dk,) = torch.autograd.grad(per_token.sum(), leaf)
        out[f"loss_{kind}"] = dk * m
    k1 = kl_estimate(x, torch.zeros_like(x), "k1") * m
    k3 = kl_estimate(x, torch.zeros_like(x), "k3") * m
    out["reward_k1"] = k1.sum(-1, keepdim=True).expand_as(x) * m
    out["reward_k3"] = k3.sum(-1, keepdim=True).expand_as(x) * m
    # sum_{s >= t} k1_s
    out["reward_k1_rtg"] = torch.flip(torch.cumsum(torch.flip(k1, [-1]), -1), [-1]) * m
    return {name: out[name] for name in PENALTY_FORMS}


def kl_penalty_weights(
    problem: ExactProblem, policy: torch.nn.Module, reference: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Every penalty form of `PENALTY_FORMS` as a score-function estimator:
    per-token weights `(N, K, L)`.

    One sampled completion contributes

        g(x, y) = Σ_t w_t ∇_θ log π_θ(y_t | s_t)

    to the gradient of the penalty (the descent direction, β = 1), with ℓ_t the
    log-ratio, r_t = e^(-ℓ_t) and the weights held constant:

    * `loss_k*`: the loss term Σ_t k(ℓ_t) differentiated by autograd through ℓ_t
      (the tokens are fixed samples): ∇k(ℓ_t) = k'(ℓ_t) ∇log π_θ(y_t | s_t),
      so w_t = k'(ℓ_t): 1 for k1, ℓ_t for k2, 1 - r_t for k3;
    * `reward_k1` / `reward_k3`: KL as reward shaping, r_t ← r_t - k_t
      (`policygrad.reward_side.kl_shaped_rewards`) with REINFORCE and no baseline:
      the penalty's share of the return multiplies every token's score,
      w_t = Σ_s m_s k_s (the sign flipped so that it is a gradient of the penalty,
      comparable with the KL's own gradient);
    * `reward_k1_rtg`: the same with reward-to-go, w_t = Σ_{s≥t} m_s ℓ_s.

    0 where the mask is 0. Pass a weight table to
    `policygrad.exact.ExactProblem.estimator_moments` for the exact mean
    (= `kl_penalty_gradients`) and total variance of the one-sample estimator.
    """
    _, _, tok_q, tok_r, m, _ = _setup(problem, policy, reference, grad=False)
    return {name: w.cpu() for name, w in _weights(tok_q, tok_r, m).items()}


def kl_penalty_gradients(
    problem: ExactProblem, policy: torch.nn.Module, reference: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Exact expected gradients `(P,)` of each way of penalising KL(p_θ ‖ p_ref)
    (β = 1).

    All are descent directions of the penalty (the gradient of what is minimised),
    over `policygrad.exact.flat_params`. `"exact"` is

        ∇_θ E_{x∼ρ} KL(p_θ(· | x) ‖ p_ref(· | x))

    by autograd through `policygrad.exact.ExactProblem.expected_kl`; every other
    entry is E_{x∼ρ, y∼p_θ}[g(x, y)] with g the one-sample gradient of
    `kl_penalty_weights`, computed as autograd of the enumerated loss with the
    sampling probabilities held fixed (what autograd on a sampled batch does). What
    each one equals, with d_θ(s) the probability of reaching state s:

    * `reward_k1` = `exact`:
      ∇KL = Σ_y ∇p_θ log(p_θ / p_ref) + Σ_y p_θ ∇log p_θ
      and the second sum is ∇Σ_y p_θ = 0, so
      ∇KL = E[∇log p_θ(y | x) Σ_t ℓ_t].
    * `reward_k1_rtg` = `exact`: the terms ℓ_s ∇log π_θ(y_t | s_t) with s < t have
      expectation 0 (ℓ_s is fixed by the state s_t and E[∇log π_θ | s_t] = 0).
    * `loss_k1` = 0: E Σ_t ∇log π_θ(y_t | s_t) = 0.
    * `loss_k2` = ∇_θ Σ_s d(s) KL(π_θ(· | s) ‖ π_ref(· | s)) with d frozen:
      per state E_{π_θ}[ℓ ∇log π_θ] = Σ_v ∇π_θ(v) ℓ(v) = ∇KL_s (the
      missing Σ_v π_θ ∇log π_θ is 0). It misses Σ_s ∇d(s) KL_s, how an early
      token changes which later states are visited, so it equals `exact` only for
      one-token completions.
    * `loss_k3` = ∇_θ Σ_s d(s) KL(π_ref(· | s) ‖ π_θ(· | s)) with d frozen:
      per state
      E_{π_θ}[(1 - π_ref / π_θ) ∇log π_θ] = -Σ_v π_ref(v) ∇log π_θ(v),
      the gradient of the *forward* per-token KL, not of the reverse KL that k3's
      value estimates.
    * `reward_k3` = `exact` − `loss_k3`: Σ_t k3_t = Σ_t ℓ_t + Σ_t (r_t - 1); the
      first part gives `exact`; in E[∇log π_θ(y_t | s_t) (r_s - 1)] the terms
      s < t vanish as above, the terms s > t vanish because E[r_s - 1 | s_s] = 0,
      and the terms s = t sum to −`loss_k3`.

    Raises ValueError as `kl_estimator_stats` does.
    """
    lq, lr, tok_q, tok_r, m, rho = _setup(problem, policy, reference, grad=True)
    del lq, lr
    params = flat_params(policy)
    p = tok_q.detach().sum(-1).exp()  # (N, K): the sampling weights, constants
    joint = (rho.unsqueeze(-1) * p).unsqueeze(-1)  # (N, K, 1)
    out = {"exact": flat_grad(problem.expected_kl(policy, reference), params).detach()}
    weights = _weights(tok_q, tok_r, m)
    for name in PENALTY_FORMS:
        if name.startswith("loss_"):
            # autograd through the estimator itself, as on a sampled batch (tokens and
            # p fixed)
            kind = name.removeprefix("loss_")
            surrogate = (
                joint.squeeze(-1) * (kl_estimate(tok_q, tok_r, kind) * m).sum(-1)
            ).sum()
        else:
            # REINFORCE with the shaped return
            surrogate = (joint * weights[name] * tok_q).sum()
        grads = torch.autograd.grad(
            surrogate, params, retain_graph=True, allow_unused=True
        )
        out[name] = torch.cat(
            [
                (torch.zeros_like(q) if g is None else g).reshape(-1)
                for q, g in zip(params, grads, strict=True)
            ]
        ).detach()
    return out


def gradient_table(
    grads: Mapping[str, torch.Tensor], reference: str = "exact"
) -> list[dict]:
    """Compare every gradient in `grads` with `grads[reference]`: one row per other
    entry, in order.

    Each row: `name`, `cosine` (cosine similarity with the reference; NaN when the
    gradient is numerically zero, ‖g‖ ≤ 10^-12 ‖g_ref‖, as `loss_k1`'s is),
    `relative_error` ‖g - g_ref‖ / ‖g_ref‖ and `norm_ratio`
    ‖g‖ / ‖g_ref‖.

    Raises ValueError if `reference` is missing, has norm 0, or the shapes disagree.
    """
    if not isinstance(reference, str):
        raise ValueError(
            f"reference must be the name of an entry of grads, got {reference!r}"
        )
    if not isinstance(grads, Mapping) or reference not in grads:
        raise ValueError(f"grads must be a mapping that contains {reference!r}")
    for name, g in grads.items():
        check_tensor(g, str(name), 1)
        if not g.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point gradient, got dtype {g.dtype}"
            )
        check_finite(g, str(name))
    ref = check_tensor(grads[reference], reference, 1).detach().double()
    ref_norm = float(ref.norm())
    if not ref_norm > 0 or not math.isfinite(ref_norm):
        raise ValueError(
            f"the reference gradient {reference!r} must have a finite, non-zero norm"
        )
    rows = []
    for name, g in grads.items():
        if name == reference:
            continue
        g = check_tensor(g, name, 1).detach().double().to(ref.device)
        if g.shape != ref.shape:
            raise ValueError(
                f"{name} has shape {tuple(g.shape)}, the reference {tuple(ref.shape)}"
            )
        norm = float(g.norm())
        cosine = (
            float(g @ ref) / (norm * ref_norm)
            if norm > 1e-12 * ref_norm
            else float("nan")
        )
        rows.append(
            {
                "name": name,
                "cosine": cosine,
                "relative_error": float((g - ref).norm()) / ref_norm,
                "norm_ratio": norm / ref_norm,
            }
        )
    return rows


def regularised_optimum(
    problem: ExactProblem, reference: torch.nn.Module, beta: float
) -> torch.Tensor:
    """The maximiser of E_{y∼p}[R(x, y)] - β KL(p ‖ p_ref(· | x)) over *all*
    distributions p of completions, for each prompt:

        p*(y | x) ∝ p_ref(y | x) e^(R(x, y) / β)

    Returns `(N, K)` probabilities (rows sum to 1). `beta > 0`; R is the problem's
    return (per-step rewards are summed). The reference is tilted towards high
    reward, more sharply as β shrinks; completions the reference never produces keep
    probability 0. Its value of the regularised objective is
    β log E_{p_ref}[e^(R/β)] per prompt. Derived in chapter 6 ("The regularised
    objective and what maximises it").
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not 0 < beta < math.inf
    ):
        raise ValueError(f"beta must be a finite positive number, got {beta!r}")
    _check_module(reference, "reference")
    with torch.no_grad():
        logq = problem.log_probs(reference)
        if bool(((logq.exp().sum(-1) - 1).abs() > _COVERAGE_TOL).any()):
            raise ValueError(
                "the reference's completion probabilities do not sum to 1: "
                "the problem must enumerate "
                "every completion"
            )
        return torch.softmax(logq + problem.returns().to(logq) / beta, dim=-1)
