"""What a group-relative estimator (GRPO and its variants) optimises, computed exactly.

A group method samples `G` completions of a prompt and gives completion i an advantage
that depends on all `G` rewards. Its expected update is therefore not ∇J in general.
Because the other `G - 1` completions are independent draws of the same prompt, the
expectation over a group reduces to one number per (prompt, reward value): the
conditional advantage

    c_x(r) = E[A_1 | R_1 = r],
    E[update] = Σ_x ρ(x) Σ_y ∇_θ p_θ(y | x) c_x(R(x, y)) / |y|^λ

(λ = 1 with GRPO's 1/|o_i|, 0 without), for one on-policy step with ratio 1. For 0/1
rewards it collapses further to a per-prompt weight w_G(p_x) = c_x(1) - c_x(0) on
∇p_x, the gradient of an objective Σ_x ρ(x) Φ_G(p_x) that this module gives in
closed form. `enumerated_update` is the brute-force check: it runs a registered
method's own advantage and loss on every possible group and averages exactly.
Derived in chapter 7 ("What GRPO's update estimates, exactly").
"""

from __future__ import annotations

import itertools
import math

import torch

from .._checks import check_finite, check_positive_int, check_tensor
from .._tensor import flat_grad, flat_params
from ..reward_side.normalise import _check_group_options as check_group_options
from ..reward_side.normalise import group_advantages
from ..rollout import RolloutBatch
from .enumeration import ExactProblem, _check_policy

__all__ = [
    "MAX_GROUPS",
    "conditional_advantages",
    "binary_advantage_table",
    "binary_weight",
    "binary_objective",
    "zero_variance_probability",
    "implied_weights",
    "implied_surrogate",
    "expected_group_gradient",
    "enumerated_update",
]

#: Largest number of groups `enumerated_update` enumerates (prompts x K^G) and
#: `conditional_advantages` enumerates (reward compositions).
MAX_GROUPS = 50_000


def _check_group_options(group_size, scale, unbiased, eps) -> int:
    return check_group_options(
        group_size, check_positive_int(group_size, "group_size"), scale, unbiased, eps
    )


def conditional_advantages(
    values: torch.Tensor,
    probs: torch.Tensor,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """c(v_j) = E[A_1 | R_1 = v_j] for every reward value, exactly.

    values `(m,)`: the distinct rewards a prompt's completions can get; probs `(m,)`:
    their probabilities under the policy (sum to 1). The other `G - 1` rewards of the
    group are drawn i.i.d. from `probs`; every composition of them is enumerated with
    its multinomial probability and the advantage is
    `policygrad.reward_side.group_advantages` with `scale`, `unbiased`, `eps`.
    Returns `(m,)` float64 (no gradient). Derived in chapter 7 ("What GRPO's update
    estimates, exactly").
    """
    G = _check_group_options(group_size, scale, unbiased, eps)
    check_tensor(values, "values", 1)
    check_tensor(probs, "probs", 1)
    if values.shape != probs.shape or values.numel() == 0:
        raise ValueError(
            "values and probs must be non-empty and of one shape, "
            f"got {tuple(values.shape)} and {tuple(probs.shape)}"
        )
    v = values.detach().double().cpu()
    q = probs.detach().double().cpu()
    if not bool(torch.isfinite(v).all()) or not bool(torch.isfinite(q).all()):
        raise ValueError("values and probs must be finite")
    if bool((q < 0).any()) or abs(float(q.sum()) - 1.0) > 1e-6:
        raise ValueError(
            f"probs must be non-negative and sum to 1, got sum {float(q.sum()):.6g}"
        )
    m = v.numel()
    n_comp = math.comb(G - 1 + m - 1, m - 1)
    if n_comp * m > MAX_GROUPS:
        raise ValueError(
            f"{n_comp} compositions of {G - 1} rewards over {m} values "
            f"exceed MAX_GROUPS={MAX_GROUPS}"
        )
    combos = torch.tensor(
        list(itertools.combinations_with_replacement(range(m), G - 1)), dtype=torch.long
    )
    combos = combos.reshape(n_comp, G - 1)
    counts = torch.zeros(n_comp, m, dtype=torch.float64).scatter_add_(
        1, combos, torch.ones_like(combos, dtype=torch.float64)
    )
    log_multi = (
        math.lgamma(G)
        - torch.lgamma(counts + 1).sum(1)
        + torch.xlogy(counts, q.expand(n_comp, m)).sum(1)
    )
    # (n_comp,) probability of each composition of the other G - 1 rewards
    weight = log_multi.exp()
    # (m * n_comp,): the value of completion 1
    first = torch.arange(m).repeat_interleave(n_comp)
    # (m * n_comp, G)
    groups = torch.cat([v[first].unsqueeze(1), v[combos].repeat(m, 1)], 1)
    adv = group_advantages(
        groups.reshape(-1), G, scale=scale, unbiased=unbiased, eps=eps
    ).reshape(m, n_comp, G)
    return (adv[:, :, 0] * weight).sum(1)


def binary_advantage_table(
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For 0/1 rewards: the advantage of a success `a1[k]` and of a failure `a0[k]`
    when `k` of the other `G - 1` completions succeeded, `k = 0 .. G-1`. Two `(G,)`
    float64 tensors."""
    G = _check_group_options(group_size, scale, unbiased, eps)
    k = torch.arange(G)
    # row k: k ones among G - 1
    others = (torch.arange(G - 1).unsqueeze(0) < k.unsqueeze(1)).double()
    opts = {"scale": scale, "unbiased": unbiased, "eps": eps}
    a1 = group_advantages(
        torch.cat([torch.ones(G, 1, dtype=torch.float64), others], 1).reshape(-1),
        G,
        **opts,
    )
    a0 = group_advantages(
        torch.cat([torch.zeros(G, 1, dtype=torch.float64), others], 1).reshape(-1),
        G,
        **opts,
    )
    return a1.reshape(G, G)[:, 0], a0.reshape(G, G)[:, 0]


def _check_p(p) -> torch.Tensor:
    p = (
        torch.as_tensor(p, dtype=torch.float64)
        if not isinstance(p, torch.Tensor)
        else p
    )
    if (
        not p.is_floating_point()
        or not bool(torch.isfinite(p).all())
        or bool(((p < 0) | (p > 1)).any())
    ):
        raise ValueError("p must hold success probabilities in [0, 1]")
    return p


def binary_weight(
    p,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The weight a group method puts on ∇p_x for a prompt of success probability `p`
    (0/1 rewards).

        w_G(p) = c(1) - c(0)
               = Σ_{k=0}^{G-1} binom(G-1, k) p^k (1-p)^(G-1-k) (a_1[k] - a_0[k])

    with the table of `binary_advantage_table`: the expected update for that prompt
    is w_G(p) ∇p. Without `scale` it is (G-1) / G for every `p`; with `scale="std"`
    it tends to 1 / √(p(1-p)) as `G` grows. `p`: any shape. Derived in chapter 7
    ("Dividing by the group's standard deviation").
    """
    p = _check_p(p)
    a1, a0 = binary_advantage_table(group_size, scale=scale, unbiased=unbiased, eps=eps)
    G = a1.numel()
    k = torch.arange(G, dtype=p.dtype)
    binom = torch.exp(
        torch.lgamma(torch.tensor(G, dtype=p.dtype))
        - torch.lgamma(k + 1)
        - torch.lgamma(G - k)
    )
    pk = torch.xlogy(k, p.unsqueeze(-1)) + torch.xlogy(G - 1 - k, 1 - p.unsqueeze(-1))
    return (binom * pk.exp() * (a1 - a0).to(p.dtype)).sum(-1)


def binary_objective(
    p,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Φ_G(p) = ∫_0^p w_G(u) du, the per-prompt objective whose gradient a group
    method follows.

    Closed form:

        Φ_G(p) = (1/G) Σ_{k=0}^{G-1} (a_1[k] - a_0[k]) P(Bin(G, p) ≥ k+1)

    because

        ∫_0^p binom(G-1, k) u^k (1-u)^(G-1-k) du = (1/G) P(Bin(G, p) ≥ k+1)

    Differentiable in `p` (any shape), so Σ_x ρ(x) Φ_G(p_θ(x)) can be differentiated
    through a policy. Without `scale`: (G-1)/G · p; with `scale="std"`, as `G`
    grows: 2 arcsin √p. Derived in chapter 7 ("What GRPO's update estimates,
    exactly").
    """
    p = _check_p(p)
    a1, a0 = binary_advantage_table(group_size, scale=scale, unbiased=unbiased, eps=eps)
    G = a1.numel()
    j = torch.arange(G + 1, dtype=p.dtype)
    log_binom = (
        torch.lgamma(torch.tensor(G + 1.0, dtype=p.dtype))
        - torch.lgamma(j + 1)
        - torch.lgamma(G - j + 1)
    )
    pmf = torch.exp(
        log_binom
        + torch.xlogy(j, p.unsqueeze(-1))
        + torch.xlogy(G - j, 1 - p.unsqueeze(-1))
    )  # (..., G+1)
    # P(Bin >= k+1), k = 0..G-1
    tail = pmf.flip(-1).cumsum(-1).flip(-1)[..., 1:]
    return (tail * (a1 - a0).to(p.dtype)).sum(-1) / G


def zero_variance_probability(p, group_size: int) -> torch.Tensor:
    """P(all G rewards equal) = p^G + (1-p)^G for 0/1 rewards with success probability
    `p` (any shape): the chance that a group carries no learning signal. Derived in
    chapter 7 ("Groups with nothing to say")."""
    G = check_positive_int(group_size, "group_size")
    p = _check_p(p)
    return p**G + (1 - p) ** G


def implied_weights(
    problem: ExactProblem,
    policy: torch.nn.Module,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
    length_norm: bool = True,
) -> torch.Tensor:
    """Per-completion weights `W (N, K)` with

        E[update] = Σ_x ρ(x) Σ_y W_{x,y} ∇p_θ(y | x)

    W_{x,y} = c_x(R(x, y)) / |y| (`length_norm`: GRPO's per-sequence 1/|o_i|) or
    c_x(R(x, y)), with `conditional_advantages` under the policy's exact reward
    distribution for each prompt. This is the update of one on-policy step (every
    ratio 1, no KL term), for terminal rewards. ∇J has W = R. Needs the full
    enumeration (each prompt's probabilities sum to 1). Derived in chapter 7 ("What
    GRPO's update estimates, exactly").
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    if problem.per_step:
        raise ValueError(
            "implied_weights needs terminal rewards (N, K), not per-step rewards"
        )
    if not isinstance(length_norm, bool):
        raise ValueError(f"length_norm must be True or False, got {length_norm!r}")
    G = _check_group_options(group_size, scale, unbiased, eps)
    with torch.no_grad():
        probs = problem.probs(policy).detach().double().cpu()
    total = probs.sum(-1)
    if bool(((total - 1).abs() > 1e-6).any()):
        raise ValueError(
            "the enumeration must cover every completion "
            "(probabilities per prompt sum to "
            f"{total.min():.6g}..{total.max():.6g})"
        )
    R = problem.rewards.double().cpu()
    W = torch.zeros_like(R)
    for x in range(problem.num_prompts):
        vals, inv = torch.unique(R[x], return_inverse=True)
        q = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inv, probs[x])
        c = conditional_advantages(
            vals, q / q.sum(), G, scale=scale, unbiased=unbiased, eps=eps
        )
        W[x] = c[inv]
    if length_norm:
        W = W / problem.mask.double().sum(-1)
    return W


def implied_surrogate(
    problem: ExactProblem, policy: torch.nn.Module, weights: torch.Tensor
) -> torch.Tensor:
    """Σ_x ρ(x) Σ_y p_θ(y | x) W_{x,y} with `weights` held fixed: a differentiable
    scalar whose gradient at the current θ is the method's expected update (`weights`
    from `implied_weights` at this θ). With `weights = problem.rewards` it is J."""
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    check_tensor(weights, "weights", 2)
    if tuple(weights.shape) != (problem.num_prompts, problem.num_completions):
        raise ValueError(
            "weights must have shape "
            f"{(problem.num_prompts, problem.num_completions)}, "
            f"got {tuple(weights.shape)}"
        )
    if not weights.is_floating_point():
        raise ValueError(
            "weights must be a floating-point tensor, "
            f"got dtype {weights.dtype}: pass floats"
        )
    check_finite(weights, "weights")
    p = problem.probs(policy)
    w = weights.detach().to(device=p.device, dtype=p.dtype)
    return (
        problem.prompt_probs.to(device=p.device, dtype=p.dtype) * (p * w).sum(-1)
    ).sum()


def expected_group_gradient(
    problem: ExactProblem,
    policy: torch.nn.Module,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
    length_norm: bool = True,
) -> torch.Tensor:
    """The exact expected update `(P,)` of a group method's on-policy step (ratio 1,
    no KL term): the gradient of `implied_surrogate` with `implied_weights`. Compare
    with `problem.gradient(policy)`."""
    W = implied_weights(
        problem,
        policy,
        group_size,
        scale=scale,
        unbiased=unbiased,
        eps=eps,
        length_norm=length_norm,
    )
    return flat_grad(
        implied_surrogate(problem, policy, W), flat_params(policy)
    ).detach()


def enumerated_update(
    problem: ExactProblem,
    policy: torch.nn.Module,
    method,
    group_size: int | None = None,
    *,
    reference: torch.nn.Module | None = None,
) -> dict:
    """Brute force: a method's own advantages and loss on *every* group of `G`
    completions, averaged exactly.

    For each prompt `x` and each of the K^G ordered groups (y_1..y_G) (probability
    Π_i p_θ(y_i | x)), build the one-group `policygrad.rollout.RolloutBatch` a
    sampler would have produced (old log-probs = the policy's, so every ratio is 1;
    reference log-probs from `reference`, default the policy itself), run
    `method.advantages` and `method.loss`, and average with weights
    ρ(x) Π_i p(y_i | x). Returns `{"loss": E[loss], "update": -∇E[loss] (P,)}` —
    the update is what one step moves along, comparable with ∇J. Terminal rewards;
    at most `MAX_GROUPS` groups. Derived in chapter 7 ("What GRPO's update
    estimates, exactly").
    """
    from ..methods.base import get_method

    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    if problem.per_step:
        raise ValueError(
            "enumerated_update needs terminal rewards (N, K), not per-step rewards"
        )
    method = get_method(method)
    if method.needs_critic:
        raise ValueError(
            f"method {method.name!r} needs a critic; "
            "enumerated_update covers critic-free methods"
        )
    _check_policy(policy, "policy")
    if reference is not None:
        _check_policy(reference, "reference")
    G = (
        method.group_size
        if group_size is None
        else check_positive_int(group_size, "group_size")
    )
    N, K = problem.num_prompts, problem.num_completions
    n_groups = N * K**G
    if n_groups > MAX_GROUPS:
        raise ValueError(
            f"{N} prompts x {K}^{G} groups = {n_groups} exceeds MAX_GROUPS={MAX_GROUPS}"
        )
    logp = problem.token_log_probs(policy)  # (N, K, L) with gradient
    device = logp.device
    with torch.no_grad():
        ref = problem.token_log_probs(
            reference if reference is not None else policy
        ).to(device)
        seq = logp.detach().sum(-1)  # (N, K)
    mask = problem.mask.to(device=device, dtype=logp.dtype)
    rewards = problem.rewards.to(device=device, dtype=logp.dtype)
    prompts = problem.prompts.to(device)
    rho = problem.prompt_probs.to(device=device, dtype=logp.dtype)
    tuples = torch.tensor(
        list(itertools.product(range(K), repeat=G)), dtype=torch.long, device=device
    )  # (K^G, G)
    total = logp.new_zeros(())
    for x in range(N):
        if float(rho[x]) == 0:
            continue
        # (K^G,) probability of each group
        weight = rho[x] * seq[x][tuples].sum(1).exp()
        for idx, w in zip(tuples, weight, strict=True):
            batch = RolloutBatch(
                prompts=prompts[x].reshape(1, -1).expand(G, -1),
                completions=problem.completions.to(device)[idx],
                mask=mask[idx],
                loss_mask=mask[idx],
                old_log_probs=logp[x, idx].detach(),
                ref_log_probs=ref[x, idx],
                rewards=rewards[x, idx],
                group_ids=torch.zeros(G, dtype=torch.long, device=device),
                truncated=torch.zeros(G, dtype=torch.bool, device=device),
            )
            loss, _ = method.loss(logp[x, idx], batch, method.advantages(batch))
            total = total + w * loss
    update = -flat_grad(total, flat_params(policy)).detach()
    return {"loss": float(total.detach()), "update": update}
