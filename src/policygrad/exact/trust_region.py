"""Trust regions: the KL-constrained step, the natural gradient and TRPO.

A gradient step θ + η g is measured in parameter space, but what matters is how far
the *distribution* moves: the same Δθ can barely change one softmax and collapse
another. Measuring the step by the KL divergence of the completion distributions
instead gives the problem

    max_Δ g^T Δ   s.t.   E_{x∼ρ} KL(p_θ ‖ p_{θ+Δ}) ≤ δ.

Near Δ = 0 the KL is ½ Δ^T F Δ + O(‖Δ‖^3) with F the Fisher information
(`policygrad.ExactProblem.fisher`): the KL has value 0 and gradient 0 at Δ = 0, and
its Hessian there is F. With that quadratic model the Lagrangian gives the step
Δ = √(2δ / (d^T F d)) d along the *natural gradient* d = F^-1 g (`natural_gradient`,
`kl_constrained_step`). The natural gradient does not depend on how the policy is
parametrised; for a tabular softmax bandit it is exactly the advantage, not the
advantage scaled by ρ(x) π(a | x) as the plain gradient is (Kakade).

TRPO makes this work for a network with millions of parameters, where F cannot be
formed:

1. F v is the Hessian-vector product of the KL at θ_old, two backward passes
   (`fisher_vector_product`);
2. d = F^-1 g is found with a few conjugate-gradient iterations that only use F v
   (`conjugate_gradient`);
3. because the quadratic model is only a model, a backtracking line search shrinks
   the step until the *actual* KL is within δ and the objective improves
   (`trpo_line_search`).

`trust_region_ascent` runs that loop on an enumerable problem with exact quantities
and records, per iteration, J, the exact KL of the step and the KL the quadratic
model predicted. `trpo_bound` checks the lower bound behind all of it (Kakade and
Langford; TRPO's Theorem 1) in its finite-horizon form.

PPO (in `policygrad.trajectory_side`) replaces all of this by clipping the
importance ratio. Derived in chapter 5 ("Trust regions and the natural gradient").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from .._checks import check_finite, check_positive_int, check_tensor
from .._tensor import flat_grad, flat_params
from .enumeration import ExactProblem
from .kl import _setup as _full_log_probs

__all__ = [
    "natural_gradient",
    "conjugate_gradient",
    "fisher_vector_product",
    "kl_constrained_step",
    "get_flat_params",
    "set_flat_params",
    "apply_flat_step",
    "moved",
    "trpo_line_search",
    "trust_region_ascent",
    "trpo_bound",
]


# -- validation ------------------------------------------------------------------------
def _check_number(value, name: str, *, positive: bool = False) -> float:
    """A finite real number that is >= 0 (or > 0 with `positive`)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _check_vector(v, name: str, size: int | None = None) -> torch.Tensor:
    check_tensor(v, name, 1)
    if v.dtype == torch.bool or v.is_complex():
        raise ValueError(f"{name} must be a real-valued vector, got dtype {v.dtype}")
    if size is not None and v.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},), got {tuple(v.shape)}")
    return check_finite(v, name)


def _check_fisher(fisher, name: str = "fisher") -> torch.Tensor:
    check_tensor(fisher, name, 2)
    if fisher.shape[0] != fisher.shape[1]:
        raise ValueError(f"{name} must be square (P, P), got {tuple(fisher.shape)}")
    if not fisher.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point matrix, got dtype {fisher.dtype}"
        )
    check_finite(fisher, name)
    scale = float(fisher.abs().max()) if fisher.numel() else 0.0
    tol = 1e3 * torch.finfo(fisher.dtype).eps * max(scale, 1e-300)
    if float((fisher - fisher.T).abs().max()) > tol:
        raise ValueError(
            f"{name} must be symmetric (a Fisher matrix is); "
            f"max |F - F^T| exceeds {tol:.3g}"
        )
    return fisher


def _check_problem(problem) -> ExactProblem:
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    return problem


def _num_params(policy: torch.nn.Module) -> int:
    if not isinstance(policy, torch.nn.Module):
        raise ValueError(
            f"policy must be a torch.nn.Module, got {type(policy).__name__}"
        )
    return sum(p.numel() for p in flat_params(policy))


# -- the natural gradient --------------------------------------------------------------
def natural_gradient(
    fisher: torch.Tensor, grad: torch.Tensor, *, damping: float = 1e-3
) -> torch.Tensor:
    """The natural gradient d = (F + λI)^-1 g, `(P, P), (P,) -> (P,)`.

    With `damping` λ > 0 this solves the (then invertible) damped system. With
    `damping=0` it returns F^+ g with the pseudo-inverse: F of a softmax policy is
    always singular (shifting a row of logits by a constant changes nothing), and
    F^+ g is the solution of F d = g with no component along those null directions.
    Eigenvalues below `rtol = sqrt(eps) * max eigenvalue` count as zero (`eps` of the
    dtype: about `1.5e-8` in float64, `3.5e-4` in float32); rounding leaves the
    exact null directions near `P * eps * max eigenvalue`, far below that.
    """
    _check_fisher(fisher)
    _check_vector(grad, "grad", fisher.shape[0])
    damping = _check_number(damping, "damping")
    grad = grad.to(fisher.dtype)
    if damping > 0:
        eye = torch.eye(fisher.shape[0], dtype=fisher.dtype, device=fisher.device)
        return torch.linalg.solve(fisher + damping * eye, grad)
    rtol = torch.finfo(fisher.dtype).eps ** 0.5
    return torch.linalg.pinv(fisher, rtol=rtol, hermitian=True) @ grad


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    iters: int = 10,
    tol: float = 1e-10,
) -> torch.Tensor:
    """Solve A x = b for symmetric positive-definite A given only `matvec(v) = A v`.

    The textbook conjugate-gradient method: start at x = 0, and at each iteration
    move along a search direction that is A-conjugate to all previous ones. In exact
    arithmetic it solves a `P`-dim system in at most `P` iterations, and a few
    iterations already capture the large-curvature directions (TRPO uses 10). Stops
    after `iters` iterations or once the residual ‖b - A x‖ ≤ `tol` · ‖b‖.
    Raises ValueError if A shows non-positive curvature.
    """
    if not callable(matvec):
        raise ValueError(
            f"matvec must be callable (v -> A v), got {type(matvec).__name__}"
        )
    _check_vector(b, "b")
    check_positive_int(iters, "iters")
    tol = _check_number(tol, "tol")
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x
    p = r.clone()  # search direction
    rr = r @ r
    stop = (tol * b.norm()) ** 2
    for _ in range(iters):
        if rr <= stop:
            break
        Ap = matvec(p)
        if not isinstance(Ap, torch.Tensor) or Ap.shape != b.shape:
            raise ValueError(f"matvec must return a tensor of shape {tuple(b.shape)}")
        check_finite(Ap, "matvec(v)")
        pAp = p @ Ap
        if not pAp > 0:
            raise ValueError(
                "matvec is not positive definite: "
                f"p^T A p = {float(pAp):.3g} along a CG direction"
            )
        alpha = rr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(
    problem: ExactProblem,
    policy: torch.nn.Module,
    v: torch.Tensor,
    *,
    damping: float = 0.0,
) -> torch.Tensor:
    """(F + λI) v without forming F: TRPO's Hessian-vector product of the KL.
    `(P,) -> (P,)`.

    Let θ_old be the current parameters, held as a constant, and

        f(θ) = E_{x∼ρ} KL(p_θ_old ‖ p_θ)
             = E[Σ_y p_old (log p_old - log p_θ)]

    Its Hessian is -E Σ_y p_old ∇²log p_θ, and since
    ∇²log p = ∇²p / p - s s^T and Σ_y ∇²p_θ = ∇²1 = 0, at θ = θ_old it
    is E Σ_y p s s^T = F. So F v = ∇_θ(∇_θ f · v): one backward pass with
    `create_graph`, a dot product with the constant `v`, and a second backward
    pass. Memory stays O(P). `v` is in the order of `policygrad.exact.flat_params`;
    the policy is not changed.
    """
    _check_problem(problem)
    P = _num_params(policy)
    _check_vector(v, "v", P)
    damping = _check_number(damping, "damping")
    params = flat_params(policy)
    v = v.detach().to(dtype=params[0].dtype, device=params[0].device)
    logp = problem.log_probs(policy)  # (N, K), a function of theta
    logp_old = logp.detach()  # theta_old: the same numbers, held constant
    kl = (logp_old.exp() * (logp_old - logp)).sum(-1)
    f = (problem.prompt_probs.to(kl) * kl).sum()
    # = 0 at theta_old, but its graph is what we need
    grad = flat_grad(f, params, create_graph=True)
    Fv = flat_grad(grad @ v, params)
    return Fv.detach() + damping * v


def kl_constrained_step(
    fisher_or_matvec: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    grad: torch.Tensor,
    max_kl: float,
    *,
    damping: float = 1e-3,
    cg_iters: int = 10,
) -> tuple[torch.Tensor, dict]:
    """The step that maximises g^T Δ subject to the quadratic KL model
    ½ Δ^T F Δ = δ.

    `fisher_or_matvec` is the `(P, P)` Fisher matrix, or a callable `v -> F v` (for
    example `lambda v: fisher_vector_product(problem, policy, v)`), both *undamped*.
    The direction is d = (F + λI)^-1 g: by `natural_gradient` for a matrix, by
    `conjugate_gradient` with `cg_iters` iterations for a callable. The damping λ
    only regularises the direction; the length uses the undamped F:
    Δ = √(2δ / (d^T F d)) d, so the quadratic model of the KL is exactly `max_kl`.
    The true KL differs by O(δ^(3/2)).

    Returns `(step (P,), info)` with info keys `predicted_kl` (½ Δ^T F Δ),
    `step_size` (the factor √(2δ / d^T F d)), `direction_norm` (‖d‖) and
    `predicted_improvement` (g^T Δ, the linear model of the gain). If d^T F d ≤ 0
    (a zero gradient, or one in the null space of F) there is nowhere to go: the
    step is zero.
    """
    check_tensor(grad, "grad", 1)
    P = grad.shape[0]
    max_kl = _check_number(max_kl, "max_kl", positive=True)
    damping = _check_number(damping, "damping")
    check_positive_int(cg_iters, "cg_iters")
    if isinstance(fisher_or_matvec, torch.Tensor):
        fisher = _check_fisher(fisher_or_matvec, "fisher_or_matvec")
        if fisher.shape[0] != P:
            raise ValueError(
                f"fisher_or_matvec must have shape ({P}, {P}) to match grad, "
                f"got {tuple(fisher.shape)}"
            )

        def matvec(v):
            return fisher @ v

        _check_vector(grad, "grad", P)
        d = natural_gradient(fisher, grad, damping=damping)
    elif callable(fisher_or_matvec):
        matvec = fisher_or_matvec
        _check_vector(grad, "grad", P)
        d = conjugate_gradient(lambda v: matvec(v) + damping * v, grad, iters=cg_iters)
    else:
        raise ValueError(
            "fisher_or_matvec must be a (P, P) tensor or a callable v -> F v, "
            f"got {type(fisher_or_matvec).__name__}"
        )
    dFd = float(d @ matvec(d))
    if not math.isfinite(dFd):
        raise ValueError(
            f"d^T F d is not finite ({dFd}): "
            "fisher_or_matvec or grad holds NaN or infinite values"
        )
    scale = math.sqrt(2 * max_kl / dFd) if dFd > 0 else 0.0
    step = scale * d
    info = {
        "predicted_kl": 0.5 * scale**2 * dFd if dFd > 0 else 0.0,
        "step_size": scale,
        "direction_norm": float(d.norm()),
        "predicted_improvement": float(grad.to(step) @ step),
    }
    return step, info


# -- moving the parameters -------------------------------------------------------------
def get_flat_params(policy: torch.nn.Module) -> torch.Tensor:
    """A detached copy of the parameters as one flat vector `(P,)` in
    `policygrad.exact.flat_params` order."""
    _num_params(policy)
    return torch.cat([p.detach().reshape(-1) for p in flat_params(policy)]).clone()


def set_flat_params(policy: torch.nn.Module, flat: torch.Tensor) -> None:
    """Overwrite the parameters with a flat vector `(P,)` (the inverse of
    `get_flat_params`), in place."""
    P = _num_params(policy)
    _check_vector(flat, "flat", P)
    with torch.no_grad():
        i = 0
        for p in flat_params(policy):
            p.copy_(flat[i : i + p.numel()].reshape(p.shape))
            i += p.numel()


def apply_flat_step(policy: torch.nn.Module, step: torch.Tensor) -> None:
    """Add a flat vector `(P,)` to the parameters in place: θ ← θ + Δ.

    Undo it with `set_flat_params(policy, saved)` where
    `saved = get_flat_params(policy)` was taken before.
    """
    P = _num_params(policy)
    _check_vector(step, "step", P)
    set_flat_params(policy, get_flat_params(policy) + step.to(flat_params(policy)[0]))


def trpo_line_search(
    problem: ExactProblem,
    policy: torch.nn.Module,
    step: torch.Tensor,
    max_kl: float,
    *,
    backtrack: float = 0.5,
    max_backtracks: int = 10,
) -> float:
    """TRPO's backtracking line search along `step`, with the exact KL and objective.

    Tries θ_old + f Δ for f = 1, β, β^2, ..., β^(n-1) (`backtrack` β,
    `max_backtracks` n tries) and accepts the first point where the exact
    E_{x∼ρ} KL(p_θ_old ‖ p_θ) ≤ `max_kl` *and* J(θ) > J(θ_old). The policy is
    left at the accepted point and `f` is returned; if no try is accepted the
    policy is restored to θ_old and 0.0 is returned.
    """
    _check_problem(problem)
    P = _num_params(policy)
    _check_vector(step, "step", P)
    max_kl = _check_number(max_kl, "max_kl", positive=True)
    if (
        isinstance(backtrack, bool)
        or not isinstance(backtrack, (int, float))
        or not 0 < backtrack < 1
    ):
        raise ValueError(f"backtrack must be a number in (0, 1), got {backtrack!r}")
    check_positive_int(max_backtracks, "max_backtracks")
    old = copy.deepcopy(policy)
    start = get_flat_params(policy)
    with torch.no_grad():
        J_old = float(problem.objective(old))
        for j in range(max_backtracks):
            fraction = backtrack**j
            set_flat_params(policy, start + fraction * step.to(start))
            kl = float(problem.expected_kl(old, policy))  # KL(p_old || p_new)
            if kl <= max_kl and float(problem.objective(policy)) > J_old:
                return fraction
    set_flat_params(policy, start)
    return 0.0


# -- the bound behind the trust region -------------------------------------------------
def trpo_bound(
    problem: ExactProblem, policy: torch.nn.Module, new_policy: torch.nn.Module
) -> dict:
    """The lower bound of Kakade and Langford / TRPO, finite horizon, exact.

    With θ = `policy` (the sampler), θ' = `new_policy`, A_θ the exact advantages and
    T the largest completion length, the first-order surrogate is

        L_θ(θ') = J(θ) + Σ_t E_{s_t ∼ p_θ} Σ_a π_θ'(a | s_t) A_θ(s_t, a)
                = J(θ) + E_{y ∼ p_θ}[Σ_t m_t (r_t − 1) A_θ(s_t, y_t)]

    with r_t = π_θ'(y_t | s_t) / π_θ(y_t | s_t): the token-ratio surrogate, with the
    state distribution of the sampler. For γ = 1 and deterministic transitions,

        |J(θ') − L_θ(θ')| ≤ 2 ε T(T − 1) α²  ≤  C_T · max_s KL(π_θ ‖ π_θ')(s)

    with ε = max_{s,a} |A_θ(s, a)|, α = max_s TV(π_θ(· | s), π_θ'(· | s)) and
    C_T = 2 ε T(T − 1) (using α² ≤ KL as TRPO does; Pinsker's α² ≤ KL / 2 would halve
    it). It is TRPO's Theorem 1 with its Σ_t γ^t t = γ / (1 − γ)² replaced by
    Σ_{t<T} t = T(T − 1) / 2: the state distributions at step t differ in total
    variation by at most 1 − (1 − α)^t ≤ t α, and |Σ_a π_θ'(a | s) A_θ(s, a)| ≤ 2 α ε.
    For T = 1 (a bandit) the surrogate is exact. Derived in chapter 5 ("The bound
    behind the trust region").

    The maxima run over every state s_t = (x, y_<t) of the enumeration. Returns a dict
    of floats: `J_old`, `J_new`, `surrogate` (L_θ(θ')), `gap` (J_new − surrogate),
    `eps`, `max_tv`, `max_kl` (max_s KL(π_θ(· | s) ‖ π_θ'(· | s))), `horizon` (T),
    `C` (C_T), `lower_bound_tv` (L − 2 ε T(T − 1) α²) and `lower_bound`
    (L − C_T max_kl). Raises ValueError if the problem is discounted (γ ≠ 1).
    """
    _check_problem(problem)
    if problem.gamma != 1.0:
        raise ValueError(
            f"trpo_bound is the undiscounted finite-horizon bound (gamma = 1), "
            f"got gamma = {problem.gamma}"
        )
    _num_params(policy)
    _num_params(new_policy)
    with torch.no_grad():
        # full next-token log-probs at every state: (N, K, L, V)
        lq, lp, tok_new, tok_old, m, rho = _full_log_probs(
            problem, new_policy, policy, grad=False
        )
        adv = problem.advantages(policy).to(lq)  # (N, K, L), 0 where masked
        p_old = tok_old.sum(-1).exp()  # (N, K)
        ratio_m1 = (tok_new - tok_old).exp() - 1.0  # (N, K, L)
        gain = (rho * (p_old * (m * ratio_m1 * adv).sum(-1)).sum(-1)).sum()
        J_old = float(problem.objective(policy))
        J_new = float(problem.objective(new_policy))
        on = m.bool().unsqueeze(0).expand_as(adv)  # every state that exists
        tv = 0.5 * (lq.exp() - lp.exp()).abs().sum(-1)  # (N, K, L)
        kl = (lp.exp() * (lp - lq)).sum(-1)  # KL(pi_theta || pi_theta')
        eps = float(adv[on].abs().max())
        max_tv = float(tv[on].max())
        max_kl = float(kl[on].max())
    T = problem.completions.shape[1]
    C = 2.0 * eps * T * (T - 1)
    surrogate = J_old + float(gain)
    return {
        "J_old": J_old,
        "J_new": J_new,
        "surrogate": surrogate,
        "gap": J_new - surrogate,
        "eps": eps,
        "max_tv": max_tv,
        "max_kl": max_kl,
        "horizon": T,
        "C": C,
        "lower_bound_tv": surrogate - C * max_tv**2,
        "lower_bound": surrogate - C * max_kl,
    }


_DIRECTIONS = ("natural", "steepest")


def trust_region_ascent(
    problem: ExactProblem,
    policy: torch.nn.Module,
    iters: int,
    max_kl: float,
    *,
    direction: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "natural",
    damping: float = 1e-6,
    backtrack: float = 0.5,
    max_backtracks: int = 10,
    record: Callable[[torch.nn.Module], dict] | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Exact TRPO: `iters` KL-constrained steps with a line search, recorded.

    Each iteration at θ_k: the exact Fisher F and gradient g; a direction d
    (`"natural"`: (F + λI)^-1 g with `damping` λ; `"steepest"`: g; or a callable
    `direction(F, g) -> d`); the full step Δ = √(2δ / d^T F d) d, whose quadratic KL
    model ½ Δ^T F Δ is `max_kl` δ; then `trpo_line_search` (`backtrack`,
    `max_backtracks`) shrinks it to f Δ until the exact KL is ≤ δ and the exact J
    improves. A zero direction (d^T F d = 0) gives no step.

    Works on a copy: returns `(final_policy, rows)` with one dict per point θ_0 (the
    start), θ_1, ..., θ_iters. Each row has `iteration` k, `J` (J(θ_k)), `grad_norm`
    (‖∇J(θ_k)‖), and for the step that led to θ_k (NaN in row 0): `model_kl` (δ, the
    quadratic model of the full step), `full_step_kl` (the exact KL of the full
    step), `fraction` f (0.0: nothing accepted), `predicted_kl` (½ (fΔ)^T F (fΔ)),
    `exact_kl` (E_{x∼ρ} KL(p_θ_{k−1} ‖ p_θ_k)), and from `trpo_bound` of the step:
    `surrogate` and `lower_bound`. `record(policy)`, if given, returns a dict of
    further entries for each row (called at every θ_k under `torch.no_grad()`).
    Derived in chapter 5 ("Trust regions and the natural gradient").
    """
    _check_problem(problem)
    _num_params(policy)
    check_positive_int(iters, "iters")
    max_kl = _check_number(max_kl, "max_kl", positive=True)
    damping = _check_number(damping, "damping")
    if isinstance(direction, str):
        if direction not in _DIRECTIONS:
            raise ValueError(
                f"direction must be one of {_DIRECTIONS} or a callable (F, g) -> d, "
                f"got {direction!r}"
            )
    elif not callable(direction):
        raise ValueError(
            "direction must be 'natural', 'steepest' or a callable (F, g) -> d, "
            f"got {type(direction).__name__}"
        )
    if record is not None and not callable(record):
        raise ValueError("record must be callable (policy -> dict) or None")
    policy = copy.deepcopy(policy)
    nan = float("nan")

    def point(k: int) -> dict:
        row = {
            "iteration": k,
            "J": float(problem.objective(policy).detach()),
            "grad_norm": float(problem.gradient(policy).norm()),
        }
        if record is not None:
            with torch.no_grad():
                extra = record(policy)
            if not isinstance(extra, dict):
                raise ValueError(
                    f"record(policy) must return a dict, got {type(extra).__name__}"
                )
            row.update(extra)
        return row

    rows = [
        {
            **point(0),
            **dict.fromkeys(
                (
                    "model_kl",
                    "full_step_kl",
                    "fraction",
                    "predicted_kl",
                    "exact_kl",
                    "surrogate",
                    "lower_bound",
                ),
                nan,
            ),
        }
    ]
    for k in range(1, iters + 1):
        F, g = problem.fisher(policy), problem.gradient(policy)
        if direction == "natural":
            d = natural_gradient(F, g, damping=damping)
        elif direction == "steepest":
            d = g
        else:
            d = direction(F, g)
            _check_vector(d, "direction(F, g)", g.shape[0])
        dFd = float(d @ F @ d)
        scale = math.sqrt(2 * max_kl / dFd) if dFd > 0 else 0.0
        step = scale * d
        model_kl = 0.5 * scale**2 * dFd
        old = copy.deepcopy(policy)
        with torch.no_grad():
            trial = copy.deepcopy(policy)
            apply_flat_step(trial, step)
            full_kl = float(problem.expected_kl(old, trial))
        fraction = trpo_line_search(
            problem,
            policy,
            step,
            max_kl,
            backtrack=backtrack,
            max_backtracks=max_backtracks,
        )
        with torch.no_grad():
            exact_kl = float(problem.expected_kl(old, policy))
        bound = trpo_bound(problem, old, policy)
        rows.append(
            {
                **point(k),
                "model_kl": model_kl,
                "full_step_kl": full_kl,
                "fraction": fraction,
                "predicted_kl": fraction**2 * model_kl,
                "exact_kl": exact_kl,
                "surrogate": bound["surrogate"],
                "lower_bound": bound["lower_bound"],
            }
        )
    return policy, rows


def moved(policy: torch.nn.Module, step: torch.Tensor) -> torch.nn.Module:
    """A copy of `policy` with the flat vector `step (d,)` added to its parameters,
    θ + Δ; `policy` itself is unchanged (see `apply_flat_step` for the in-place
    version)."""
    _num_params(policy)
    new = copy.deepcopy(policy)
    apply_flat_step(new, step)
    return new
