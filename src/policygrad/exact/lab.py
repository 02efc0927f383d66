"""The gradient lab: what each registered method's one-step update estimates, exactly.

For an `ExactProblem` whose enumeration covers every completion, a method's update of
one on-policy step (every ratio 1, before the optimiser) is averaged over *every*
group of `G` completions of every prompt, with its exact probability, by running the
method's own advantage and loss code on all groups at once. The lab then says how the
expected update relates to ∇J (unbiased, a scaled ∇J, or biased), how noisy it is at
an equal number of sampled completions, and which objective it ascends where one is
known (J, a constant times J, GRPO's arcsine-type Φ_G, pass@k). `lab_table` makes one
row per registered method; `bias_variance_plot` places them on a plane.

Conventions. A group is `x ∼ ρ`, then `y_1..y_G` i.i.d. from `p_θ(· | x)`; the
method's batch is that one group (as in `policygrad.exact.group.enumerated_update`),
so a batch-level baseline is computed within the group. The per-group update is

    u = −∇_θ loss(group)   at θ = θ_old,

and a batch of `M` groups (`N = M G` completions) averages `M` of them. Its variance
is `tr Cov[u] / M = G tr Cov[u] / N`, so the lab reports

    variance at equal samples  v = G · tr Cov[u],

the variance of the update estimated from `N` completions times `N`: methods with
different `G` compare at the same number of sampled completions. For REINFORCE
(`G = 1`) `v` is the one-sample variance `tr Cov[R ∇log p_θ(y | x)]`.
"""

from __future__ import annotations

import itertools
import math

import torch

from .._checks import already_validated, check_positive_int
from .._tensor import flat_grad, flat_params
from ..rollout import RolloutBatch
from ..trajectory_side.logprobs import token_entropy, token_log_probs
from .enumeration import ExactProblem, _check_policy
from .group import MAX_GROUPS, binary_objective

__all__ = [
    "method_update_moments",
    "greedy_completions",
    "compare_to_gradient",
    "passk_objective",
    "implied_objective",
    "lab_table",
    "bias_variance_plot",
    "format_lab_table",
    "CLASS_TOL",
]

#: Default tolerance of `compare_to_gradient` by dtype: a relative error below it
#: counts as equality (float64: rounding is ~1e-15; float32: ~1e-7 per operation).
CLASS_TOL = {torch.float64: 1e-8, torch.float32: 1e-4}


# -- enumerating groups ------------------------------------------------------------
def _groups(K: int, G: int, ordered: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every group as indices `(n_g, G)` and the number of orderings of each `(n_g,)`.

    Ordered: all K^G tuples (count 1). Unordered: every multiset (sorted tuple) with
    its multinomial count G! / Π_k n_k!.
    """
    if ordered:
        idx = torch.cartesian_prod(*[torch.arange(K)] * G).reshape(-1, G)
        return idx, torch.ones(idx.shape[0], dtype=torch.float64)
    idx = torch.tensor(
        list(itertools.combinations_with_replacement(range(K), G)), dtype=torch.long
    ).reshape(-1, G)
    counts = torch.zeros(idx.shape[0], K, dtype=torch.float64)
    counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64))
    log_count = math.lgamma(G + 1) - torch.lgamma(counts + 1).sum(1)
    return idx, log_count.exp().round()


def _num_groups(K: int, G: int, ordered: bool) -> int:
    return K**G if ordered else math.comb(K + G - 1, G)


def _token_scores(problem: ExactProblem, policy: torch.nn.Module) -> torch.Tensor:
    """∇_θ log π_θ(y_t | x, y_<t) for every (prompt, completion, position):
    `(N, K, L, d)` in the order of `flat_params`, 0 where masked."""
    N, K, L = problem.num_prompts, problem.num_completions, problem.completions.shape[1]
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
    prompts, completions = problem._pairs()
    device = next(policy.parameters()).device
    prompts, completions = prompts.to(device), completions.to(device)
    m = problem.mask.to(device)

    def logp(p):
        logits = torch.func.functional_call(policy, p, (prompts, completions))
        return (token_log_probs(logits, completions).reshape(N, K, L) * m).reshape(-1)

    jac = torch.func.jacrev(logp)(params)
    return torch.cat([jac[n].reshape(N * K * L, -1) for n in names], 1).reshape(
        N, K, L, -1
    )


# -- what a method reads beyond the rewards ----------------------------------------
def greedy_completions(problem: ExactProblem, policy: torch.nn.Module) -> torch.Tensor:
    """The index of each prompt's greedy completion in the enumeration: `(N,)` long.

    The greedy (argmax) completion takes, at every step, the most probable next token
    given the prefix chosen so far, up to EOS or the last position. It is found from
    the enumeration by walking it: at step t, among the completions that share the
    greedy prefix and have a token at t, keep those whose token at t has the largest
    log π_θ(y_t | x, y_<t) (exact ties: the first in enumeration order). The
    enumeration must cover every continuation of the prefixes it visits (ValueError
    if the walk does not end at exactly one completion). ReMax's baseline is the
    reward of this completion (`method_update_moments` puts it in
    `batch.greedy_rewards`).
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    _check_policy(policy, "policy")
    with torch.no_grad():
        old = problem.token_log_probs(policy)
    return _greedy_index(problem, old)


def _greedy_index(problem: ExactProblem, old: torch.Tensor) -> torch.Tensor:
    device = old.device
    comps = problem.completions.to(device)  # (K, L)
    on = problem.mask.to(device) != 0  # (K, L)
    N, K, L = old.shape
    alive = torch.ones(N, K, dtype=torch.bool, device=device)
    for t in range(L):
        active = alive & on[:, t].unsqueeze(0)  # (N, K)
        going = active.any(1)  # prompts whose greedy prefix has not ended
        if not bool(going.any()):
            break
        score = old[:, :, t].masked_fill(~active, float("-inf"))
        best = score.argmax(1)  # first maximiser
        token = comps[best, t]  # (N,)
        keep = active & (comps[:, t].unsqueeze(0) == token.unsqueeze(1))
        alive = torch.where(going.unsqueeze(1), keep, alive)
    count = alive.sum(1)
    if bool((count != 1).any()):
        raise ValueError(
            "the greedy walk does not end at one completion for every prompt "
            f"({count.tolist()} candidates): the enumeration must hold every "
            "continuation of the greedy prefix"
        )
    return alive.to(torch.long).argmax(1)


def _position_stat(problem: ExactProblem, policy: torch.nn.Module, dtype, stat: str):
    """A statistic of π_θ(· | x, y_<t) for every pair and position: `(N, K, L)`, 0
    where masked. `stat`: `"sum_pi_squared"` (Σ_v π_v²) or `"entropy"`."""
    device = _check_policy(policy, "policy")
    prompts, completions = problem._pairs()
    with torch.no_grad():
        logits = policy(prompts.to(device), completions.to(device))
        if stat == "entropy":
            values = token_entropy(logits)
        else:
            values = torch.softmax(logits, dim=-1).square().sum(-1)
    N, K, L = problem.num_prompts, problem.num_completions, problem.completions.shape[1]
    return (values.reshape(N, K, L) * problem.mask.to(device)).to(dtype)


# -- the loss coefficients of every group ------------------------------------------
def _rows(
    problem, x_idx, comp_idx, old, ref, device, dtype, greedy=None, spsq=None, ent=None
) -> tuple:
    """The fields of the batch of rows (prompt `x_idx[r]`, completion `comp_idx[r]`):
    prompts, completions, mask, old and reference log-probs, rewards, the reward
    components (one column: the reward), and where given the greedy completion's
    reward `greedy (N,)`, Σπ² `spsq (N, K, L)` and the entropies `ent (N, K, L)`."""
    prompts = problem.prompts.to(device)
    prompts = prompts.reshape(prompts.shape[0], -1)[x_idx]
    mask = problem.mask.to(device=device, dtype=dtype)[comp_idx]
    rewards = problem.rewards.to(device=device, dtype=dtype)[x_idx, comp_idx]
    return (
        prompts,
        problem.completions.to(device)[comp_idx],
        mask,
        old[x_idx, comp_idx],
        ref[x_idx, comp_idx],
        rewards,
        rewards.unsqueeze(1),
        None if greedy is None else greedy[x_idx],
        None if spsq is None else spsq[x_idx, comp_idx],
        None if ent is None else ent[x_idx, comp_idx],
    )


def _take(parts, rows: torch.Tensor) -> list:
    return [None if p is None else p[rows] for p in parts]


def _batch(parts, G: int, *, check: bool = True) -> RolloutBatch:
    """The batch of rows `parts`. `check=False` skips `RolloutBatch`'s validation, for
    the slices of one already validated batch (the per-group path runs thousands)."""
    prompts, completions, mask, old, ref, rewards, comps, greedy, spsq, ent = parts
    B = completions.shape[0]
    device = completions.device
    make = RolloutBatch if check else _unchecked_batch
    return make(
        prompts=prompts,
        completions=completions,
        mask=mask,
        loss_mask=mask,
        old_log_probs=old,
        ref_log_probs=ref,
        rewards=rewards,
        group_ids=torch.arange(B // G, device=device).repeat_interleave(G),
        truncated=torch.zeros(B, dtype=torch.bool, device=device),
        reward_components=comps,
        greedy_rewards=greedy,
        sum_pi_squared=spsq,
        entropies=ent,
    )


def _unchecked_batch(**fields) -> RolloutBatch:
    batch = object.__new__(RolloutBatch)
    for name in RolloutBatch.__dataclass_fields__:
        object.__setattr__(batch, name, fields.get(name))
    return batch


def _coefficients(method, batch: RolloutBatch) -> torch.Tensor:
    """c = −∂ loss / ∂ log π at ratio 1: `(B, L)`, the weight of each token's score in
    the update of this batch."""
    logp = batch.old_log_probs.detach().clone().requires_grad_(True)
    loss, _ = method.loss(logp, batch, method.advantages(batch))
    (grad,) = torch.autograd.grad(loss, logp, allow_unused=True)
    return torch.zeros_like(logp) if grad is None else -grad.detach()


def _per_group_scale(big: RolloutBatch, n_groups: int, G: int, rule: str):
    """λ_g with c(group g alone) = λ_g c(group g in the big batch), for the way the
    loss normalises a batch."""
    if rule == "per-group mean":  # every seq-mean aggregation: loss = mean_g loss_g
        return torch.full((n_groups,), float(n_groups), dtype=big.mask.dtype)
    if rule == "per-token mean":  # token-mean: divided by the batch's token count
        tok = big.loss_mask.sum(-1).reshape(n_groups, G).sum(-1)
        return big.loss_mask.sum() / tok.clamp_min(1.0)
    return torch.ones(n_groups, dtype=big.mask.dtype)  # "sum": loss = Σ_g loss_g


def _all_coefficients(method, parts, n_groups: int, G: int):
    """Coefficients `(n_groups, G, L)` of every group, each computed as if the group
    were the method's whole batch. Returns `(c, path)`.

    Batched when it can be: one call of the method's advantages and loss on one big
    batch of all groups, valid when the advantages are computed within each group and
    the loss normalises the batch in one of three ways (mean over groups, mean over
    tokens, sum). Both are checked on up to 24 groups (12 spread over the enumeration,
    12 among the groups whose rewards differ), each also run alone; if any disagrees,
    or every probe's coefficients are zero while the batch's are not, every group is
    run alone (slow path).
    """
    big = _batch(parts, G)
    L = big.mask.shape[1]
    # probes: groups spread over the enumeration, and as many again among the groups
    # whose rewards differ, so that a rule is never "confirmed" on all-zero
    # coefficients only (groups of equal rewards give zero for most methods)
    spread = big.sequence_rewards.reshape(n_groups, G)
    informative = (spread.amax(1) != spread.amin(1)).nonzero().flatten().cpu()
    probe = torch.linspace(0, n_groups - 1, min(n_groups, 12)).long()
    if informative.numel():
        pick = torch.linspace(0, informative.numel() - 1, min(informative.numel(), 12))
        probe = torch.cat([probe, informative[pick.long()]])
    probe = torch.unique(probe)
    alone = []
    for g in probe.tolist():
        rows = torch.arange(g * G, (g + 1) * G, device=big.mask.device)
        alone.append(_coefficients(method, _batch(_take(parts, rows), G)))
    alone = torch.stack(alone)  # (n_probe, G, L)
    try:
        c_big = _coefficients(method, big).reshape(n_groups, G, L)
    except ValueError:
        c_big = None
    # all-zero probes cannot tell the rules apart: then only the slow path is safe
    if c_big is not None and float(alone.abs().amax()) == 0 and bool(c_big.any()):
        c_big = None
    if c_big is not None:
        tol = (1e-9 if alone.dtype == torch.float64 else 1e-4) * (
            1.0 + float(alone.abs().amax())
        )
        for rule in ("per-group mean", "per-token mean", "sum"):
            lam = _per_group_scale(big, n_groups, G, rule).to(c_big)
            c = c_big * lam.reshape(-1, 1, 1)
            if float((c[probe] - alone).abs().max()) <= tol:
                return c, f"batched ({rule})"
    out = torch.empty(n_groups, G, L, dtype=big.mask.dtype, device=big.mask.device)
    # every slice is part of `big`, validated above (its probes ran with full checks)
    with already_validated():
        for g in range(n_groups):
            rows = torch.arange(g * G, (g + 1) * G, device=big.mask.device)
            out[g] = _coefficients(method, _batch(_take(parts, rows), G, check=False))
    return out, "per group (the method's batch is not separable by groups)"


# -- 1. the exact moments of a method's update -------------------------------------
def method_update_moments(
    problem: ExactProblem,
    policy: torch.nn.Module,
    method,
    *,
    group_size: int | None = None,
    reference: torch.nn.Module | None = None,
    ordered: bool = False,
) -> dict:
    """The exact mean and variance of a method's one-step update over every group.

    `method`: a registered name or a `policygrad.methods.Method` without a critic;
    `group_size` (default the method's own `G`). Each prompt `x ∼ ρ` gets `G`
    completions i.i.d. from `p_θ(· | x)`; the group is the method's whole batch (old
    log-probs = the policy's, so every ratio is 1; reference log-probs from
    `reference`, default the policy, so a KL-to-reference term has zero gradient;
    `reward_components` the reward's one column; for a method with `greedy_baseline`,
    `greedy_rewards` the reward of the prompt's greedy completion
    (`greedy_completions`), which depends on the prompt only; for one with
    `needs_sum_pi_squared`, `sum_pi_squared`, and for one with `needs_entropy`,
    `entropies`, from the policy's distribution at every position). A method with an
    entropy bonus is refused (ValueError): its extra term c ∇H is not a weight on the
    sampled scores. The per-group update

        u = −∇_θ loss(group) = Σ_{i,t} c_{i,t} ∇_θ log π_θ(y_{i,t} | s_{i,t}),
        c_{i,t} = −∂ loss / ∂ log π_{i,t}

    is assembled from the coefficients `c` of every group (the method's own advantages
    and loss, on one batch of all groups when the batch separates into groups, else
    group by group) and the score vectors of every completion, computed once
    (`(N, K, d)`, or per token `(N, K, L, d)` when `c` varies along a completion).

    Groups are enumerated as multisets with their multinomial counts (the method
    must treat the `G` completions symmetrically, as every registered one does) or,
    with `ordered=True`, as all K^G ordered tuples. At most `MAX_GROUPS` groups over
    all prompts (ValueError otherwise). Terminal rewards; the enumeration must cover
    every completion (each prompt's probabilities sum to 1).

    Returns a dict: `mean` (the exact E[u], `(d,)`), `second_moment` E‖u‖²,
    `variance` tr Cov[u] (one group), `variance_equal_samples` `G · tr Cov[u]` (the
    variance of the update from `N = M G` completions is this over `N`),
    `group_size`, `num_groups`, `path` (how the coefficients were computed) and
    `coefficients` `(N, K, L)` with E[u] = Σ_{x,k,t} C_{x,k,t} ∇log π(y_{k,t}) (the
    expected weight of each token's score). Validated against `enumerated_update` in
    `tests/test_lab.py`. Derived in chapter 7 ("What GRPO's update estimates,
    exactly").
    """
    from ..methods.base import get_method

    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    if problem.per_step:
        raise ValueError(
            "method_update_moments needs terminal rewards (N, K), not per-step rewards"
        )
    method = get_method(method)
    if method.needs_critic:
        raise ValueError(
            f"method {method.name!r} needs a critic (a learned value model), whose "
            "values depend on training; the lab covers critic-free methods"
        )
    _check_policy(policy, "policy")
    if reference is not None:
        _check_policy(reference, "reference")
    if not isinstance(ordered, bool):
        raise ValueError(f"ordered must be True or False, got {ordered!r}")
    G = (
        method.group_size
        if group_size is None
        else check_positive_int(group_size, "group_size")
    )
    N, K = problem.num_prompts, problem.num_completions
    L = problem.completions.shape[1]
    n_g = _num_groups(K, G, ordered)
    if N * n_g > MAX_GROUPS:
        kind = f"{K}^{G}" if ordered else f"C({K}+{G}-1, {G})"
        raise ValueError(
            f"group_size G={G} is too large for this problem: {N} prompts x {kind} = "
            f"{N * n_g} groups exceed MAX_GROUPS={MAX_GROUPS}; use a smaller G or "
            "fewer completions"
        )
    with torch.no_grad():
        old = problem.token_log_probs(policy)
        device, dtype = old.device, old.dtype
        ref = (
            old
            if reference is None
            else problem.token_log_probs(reference).to(device=device, dtype=dtype)
        )
        seq = old.sum(-1).double()
    total = seq.exp().sum(-1)
    if bool(((total - 1).abs() > 1e-6).any()):
        raise ValueError(
            "the enumeration must cover every completion: each prompt's "
            f"probabilities sum to {float(total.min()):.6g}..{float(total.max()):.6g}, "
            "not 1 (a restricted enumeration leaves out groups)"
        )
    idx, count = _groups(K, G, ordered)
    idx, count = idx.to(device), count.to(device)
    # rows: prompt-major, then group, then member
    x_idx = torch.arange(N, device=device).repeat_interleave(n_g * G)
    comp_idx = idx.reshape(-1).repeat(N)
    if getattr(method, "has_entropy_bonus", False):
        raise ValueError(
            "its entropy bonus adds c ∇H, the gradient of the policy's entropy at the "
            "sampled states, which is not a weight on the sampled tokens' scores (the "
            "lab's estimator family)"
        )
    greedy = spsq = ent = None
    if getattr(method, "greedy_baseline", False):
        R = problem.rewards.to(device=device, dtype=dtype)
        greedy = R[torch.arange(N, device=device), _greedy_index(problem, old)]
    if getattr(method, "needs_sum_pi_squared", False):
        spsq = _position_stat(problem, policy, dtype, "sum_pi_squared")
    if getattr(method, "needs_entropy", False):
        ent = _position_stat(problem, policy, dtype, "entropy")
    parts = _rows(problem, x_idx, comp_idx, old, ref, device, dtype, greedy, spsq, ent)
    try:
        c, path = _all_coefficients(method, parts, N * n_g, G)
    except ValueError as err:
        raise ValueError(
            f"method {method.name!r} cannot be run on groups of {G}: {err}"
        ) from err
    c = c.reshape(N, n_g, G, L).double()
    # probability of each group: ρ(x) · count · Π_i p(y_i | x)
    rho = problem.prompt_probs.to(device).double()
    prob = rho.unsqueeze(1) * count * seq[:, idx].sum(-1).exp()  # (N, n_g)
    onehot = torch.nn.functional.one_hot(idx, K).double()  # (n_g, G, K)
    # V[x, g, k, t]: weight of completion k's token t in group g's update
    V = torch.einsum("xgit,gik->xgkt", c, onehot)
    C = torch.einsum("xg,xgkt->xkt", prob, V)
    mask = problem.mask.to(device).double()
    per_completion = bool(
        (
            (V - (V.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True)) * mask).abs()
            <= 1e-12 * (1.0 + V.abs().amax())
        ).all()
    )
    if per_completion:
        ones = torch.ones(N, K, dtype=dtype, device=device)
        S = problem.per_sample_gradients(policy, ones).double()  # (N, K, d)
        a = V.sum(-1) / mask.sum(-1)  # (N, n_g, K)
        mean = torch.einsum("xkd,xgk,xg->d", S, a, prob)
        gram = torch.einsum("xkd,xjd->xkj", S, S)
        second = torch.einsum("xg,xgk,xkj,xgj->", prob, a, gram, a)
    else:
        S = _token_scores(problem, policy).double().reshape(N, K * L, -1)
        a = V.reshape(N, n_g, K * L)
        mean = torch.einsum("xkd,xgk,xg->d", S, a, prob)
        gram = torch.einsum("xkd,xjd->xkj", S, S)
        second = torch.einsum("xg,xgk,xkj,xgj->", prob, a, gram, a)
    var = max(float(second - (mean**2).sum()), 0.0)
    return {
        "mean": mean.to(dtype),
        "second_moment": float(second),
        "variance": var,
        "variance_equal_samples": G * var,
        "group_size": G,
        "num_groups": N * n_g,
        "path": path,
        "coefficients": C.to(dtype),
    }


# -- 2. the update against ∇J ------------------------------------------------------
def compare_to_gradient(
    update: torch.Tensor, grad_J: torch.Tensor, *, tol: float | None = None
) -> dict:
    """How an expected update relates to ∇J.

    `scale` = u·∇J / ‖∇J‖² (the best multiple), `cosine`, `rel_bias` =
    ‖u − scale·∇J‖ / ‖∇J‖ (what no rescaling removes: the direction error) and
    `rel_error` = ‖u − ∇J‖ / ‖∇J‖. `classification`: `"unbiased"` when
    `rel_error <= tol` (u = ∇J), `"scaled"` when `rel_bias <= tol` but not unbiased
    (u = c ∇J with |c − 1| > tol), `"biased"` otherwise. `tol` defaults to
    `CLASS_TOL` for the dtype (1e-8 in float64, 1e-4 in float32): exact arithmetic
    differs from equality only by rounding. ValueError for mismatched shapes or
    ∇J = 0.
    """
    for name, v in (("update", update), ("grad_J", grad_J)):
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
            raise ValueError(f"{name} must be a 1-D floating-point tensor")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} must be finite")
    if update.shape != grad_J.shape:
        raise ValueError(
            f"update and grad_J must have one shape, got {tuple(update.shape)} and "
            f"{tuple(grad_J.shape)}"
        )
    if tol is None:
        tol = CLASS_TOL.get(torch.promote_types(update.dtype, grad_J.dtype), 1e-4)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    u, g = update.detach().double(), grad_J.detach().to(update.device).double()
    gg = float(g @ g)
    if gg == 0:
        raise ValueError("grad_J is zero: there is no gradient to compare with")
    scale = float(u @ g) / gg
    un = float(u.norm())
    cosine = float(u @ g) / (un * math.sqrt(gg)) if un > 0 else 0.0
    rel_bias = float((u - scale * g).norm()) / math.sqrt(gg)
    rel_error = float((u - g).norm()) / math.sqrt(gg)
    if rel_error <= tol:
        kind = "unbiased"
    elif rel_bias <= tol:
        kind = "scaled"
    else:
        kind = "biased"
    return {
        "scale": scale,
        "cosine": cosine,
        "rel_bias": rel_bias,
        "rel_error": rel_error,
        "classification": kind,
        "tol": float(tol),
    }


# -- 3. implied objectives ---------------------------------------------------------
def _success_probs(problem: ExactProblem, policy: torch.nn.Module) -> torch.Tensor:
    """p_x = Σ_y p_θ(y | x) R(x, y) for 0/1 rewards: `(N,)`, differentiable."""
    R = problem.returns()
    if problem.per_step or not bool(((R == 0) | (R == 1)).all()):
        raise ValueError("this objective needs terminal 0/1 rewards")
    p = problem.probs(policy)
    return (p * R.to(device=p.device, dtype=p.dtype)).sum(-1)


def passk_objective(
    problem: ExactProblem, policy: torch.nn.Module, k: int
) -> torch.Tensor:
    """pass@k = Σ_x ρ(x) (1 − (1 − p_x)^k), a differentiable scalar.

    p_x = Σ_y p_θ(y | x) R(x, y) is prompt x's success probability (terminal 0/1
    rewards; ValueError otherwise): the chance that at least one of `k` independent
    completions succeeds. Its gradient weighs each prompt's ∇p_x by
    k (1 − p_x)^(k−1): prompts the policy already solves count less. `k = 1` is J.
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    k = check_positive_int(k, "k")
    p = _success_probs(problem, policy)
    rho = problem.prompt_probs.to(device=p.device, dtype=p.dtype)
    return (rho * (1 - (1 - p) ** k)).sum()


def _group_norm_constant(method, problem: ExactProblem, G: int) -> float | None:
    """G times the per-token weight of the method's aggregation when every completion
    has the same length (the constant between the per-sequence sum and the loss);
    None when lengths differ and the aggregation depends on them."""
    from ..trajectory_side.aggregation import aggregation_weights

    agg = method.extra.get("aggregation", "seq-mean-token-sum")
    lengths = problem.mask.sum(-1)
    # the constant normaliser (Dr.GRPO's) does not read the lengths either
    if agg in ("seq-mean-token-sum", "token-sum", "seq-mean-token-sum-norm"):
        L = 1
    elif bool((lengths == lengths[0]).all()):
        L = int(lengths[0])
    else:
        return None
    mask = torch.zeros(G, problem.completions.shape[1], dtype=torch.float64)
    mask[:, :L] = 1
    return G * float(aggregation_weights(mask, agg, dtype=torch.float64)[0, 0])


#: Losses that drop tokens from GRPO's update (chapter 9): GRPO's implied objective
#: does not apply to them.
_TOKEN_FILTERS = ("clip_cov_method_loss", "high_entropy_method_loss")


def _implied(method, problem: ExactProblem, policy, G: int):
    """`(name, objective or None)` for the methods whose implied objective the book
    knows; `(reason, None)` otherwise."""
    name = method.name
    advantages = getattr(method.advantages, "func", method.advantages)
    adv_name = getattr(advantages, "__name__", "")
    lengths = problem.mask.sum(-1)
    equal = bool((lengths == lengths[0]).all())
    binary = bool(((problem.rewards == 0) | (problem.rewards == 1)).all())
    if name in ("reinforce", "remax") or (
        name in ("reinforce_baseline", "rloo") and G >= 2
    ):
        # no baseline, or one that does not depend on the sample
        return "J", problem.objective(policy)
    if adv_name == "opo_method_advantages" and equal and G >= 2:
        # equal lengths: the length-weighted mean is the group mean
        return f"{(G - 1) / G:.4g} J", (G - 1) / G * problem.objective(policy)
    if name in ("ppo_clip", "ppo_kl") and G >= 2:
        if not equal:
            return "— (token-mean weighs by length)", None
        return f"J / {int(lengths[0])}", problem.objective(policy) / int(lengths[0])
    loss_name = getattr(getattr(method.loss, "func", method.loss), "__name__", "")
    if adv_name == "grpo_advantages" and loss_name in _TOKEN_FILTERS:
        return "— (the loss drops tokens)", None
    if adv_name == "grpo_advantages":
        const = _group_norm_constant(method, problem, G)
        if const is None:
            return "— (1/|o_i| with unequal lengths)", None
        extra = method.extra
        if extra.get("scale") is None:
            obj = const * (G - 1) / G * problem.objective(policy)
            return f"{const * (G - 1) / G:.4g} J", obj
        if not binary:
            return "— (std scaling, non-0/1 rewards)", None
        p = _success_probs(problem, policy)
        rho = problem.prompt_probs.to(device=p.device, dtype=p.dtype)
        phi = binary_objective(
            p,
            G,
            scale="std",
            unbiased=extra.get("unbiased", True),
            eps=extra.get("adv_eps", 1e-6),
        )
        return f"{const:.4g} Σ ρ Φ_G(p)", const * (rho * phi).sum()
    if adv_name == "passk_method_advantages":
        if not binary:
            return "— (pass@k advantage, non-0/1 rewards)", None
        # only a group with exactly one success trains, its success by
        # a = 1 / (std of one 1 among G zeros-and-one + ε): E[u] = (a/G) ∇ pass@G
        one = torch.zeros(G, dtype=torch.float64)
        one[0] = 1.0
        a = 1.0 / (float(one.std()) + 1e-6)
        obj = (a / G) * passk_objective(problem, policy, G)
        return f"{a / G:.4g} pass@{G}", obj
    k = method.extra.get("pass_k")
    if k is not None and binary:
        return f"pass@{k}", passk_objective(problem, policy, k)
    return "—", None


def implied_objective(
    method, problem: ExactProblem, policy: torch.nn.Module, *, group_size=None
) -> torch.Tensor | None:
    """The objective a method's expected one-step update is the gradient of, as a
    differentiable scalar, or None where the book knows none.

    Known (on-policy step, reference = policy, the lab's conventions):

    * `reinforce`, `remax` (the greedy completion's reward does not depend on the
      sample); `reinforce_baseline` and `rloo` with `G >= 2` (a leave-one-out
      baseline within the group): J itself;
    * `opo` with equal lengths (its length-weighted mean is then the group mean):
      (G−1)/G · J;
    * `ppo_clip`, `ppo_kl` with `G >= 2`: J / L when every completion has `L` tokens
      (token-mean aggregation; their penalty has zero gradient at ratio 1); None
      with unequal lengths;
    * GRPO-type methods (`grpo_advantages`): without the std, c (G−1)/G · J (the
      group mean includes the sample); with the std and 0/1 rewards,
      c Σ_x ρ(x) Φ_G(p_x) with Φ_G = `policygrad.exact.group.binary_objective`
      (2 arcsin √p as G grows); c = 1/L for the mean aggregations with equal lengths
      L, 1 for `"seq-mean-token-sum"` and 1/T for Dr.GRPO's constant normaliser
      (`"seq-mean-token-sum-norm"`, T the padded width, whatever the lengths); None
      when `1/|o_i|` meets unequal lengths;
    * `grpo_passk` (the best-of-group advantage) with 0/1 rewards: only a group with
      exactly one success trains, by a = 1/(σ₁ + 10⁻⁶) with σ₁ = 1/√G the std of
      one success among G, so E[u] = (a/G) ∇ pass@G (`passk_objective` with k = G);
    * a method with `extra["pass_k"] = k`: `passk_objective`.

    Checked against `method_update_moments` by autograd in `tests/test_lab.py` and in
    every `lab_table` row. Derived in chapter 7 ("What GRPO's update estimates,
    exactly") and chapter 8 ("When exploration matters: the pass@k objective").
    """
    from ..methods.base import get_method

    method = get_method(method)
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    G = (
        method.group_size
        if group_size is None
        else check_positive_int(group_size, "group_size")
    )
    return _implied(method, problem, policy, G)[1]


# -- 4. the table and the plane ----------------------------------------------------
def lab_table(
    problem: ExactProblem,
    policy: torch.nn.Module,
    methods=None,
    group_size: int = 4,
    *,
    tol: float | None = None,
) -> list[dict]:
    """One row per method (default: every registered one) at group size `group_size`.

    Row keys: `method`, `G`, `scale`, `cosine`, `rel_bias`, `rel_error`,
    `classification` (see `compare_to_gradient`, tolerance `tol`), `variance`
    (the variance at equal samples, `G · tr Cov[u]`, see `method_update_moments`),
    `objective` (the implied objective's name, or "—"), `confirmed` (True when
    autograd of that objective equals the lab's expected update to `tol`, None
    without an objective) and `skipped` (None, or why the lab cannot evaluate the
    method: a critic, or a batch the method refuses). A skipped row has None in the
    numeric fields. Two more keys: `rel_variance` = `variance / (scale² ‖∇J‖²)`, the
    variance once the update's step size is matched to ∇J (the noise-to-signal ratio
    at equal samples; None when the scale is 0), and `batch_coupled`, True when the
    method's advantages or loss read a statistic of the whole batch (a batch
    standard deviation, whitening, a count), detected by the lab itself (its batched
    path disagreed with running a group alone): the lab's batch is one group, so for
    these the row is the update of a batch of one group, not of a training batch of
    many prompts.
    """
    from ..methods.base import METHODS, get_method

    G = check_positive_int(group_size, "group_size")
    names = list(METHODS) if methods is None else list(methods)
    grad_J = problem.gradient(policy)
    rows = []
    for m in names:
        method = get_method(m)
        row = {
            "method": method.name,
            "G": G,
            "scale": None,
            "cosine": None,
            "rel_bias": None,
            "rel_error": None,
            "classification": None,
            "variance": None,
            "objective": "—",
            "confirmed": None,
            "skipped": None,
            "rel_variance": None,
            "batch_coupled": None,
        }
        if method.needs_critic:
            row["skipped"] = "needs a critic (a learned value model)"
            rows.append(row)
            continue
        try:
            mom = method_update_moments(problem, policy, method, group_size=G)
        except ValueError as err:
            row["skipped"] = str(err)
            rows.append(row)
            continue
        cmp = compare_to_gradient(mom["mean"], grad_J, tol=tol)
        row.update(
            {k: cmp[k] for k in ("scale", "cosine", "rel_bias", "rel_error")},
            classification=cmp["classification"],
            variance=mom["variance_equal_samples"],
            batch_coupled=mom["path"].startswith("per group"),
        )
        signal = cmp["scale"] ** 2 * float(grad_J.double() @ grad_J.double())
        if signal > 0:
            row["rel_variance"] = mom["variance_equal_samples"] / signal
        name, obj = _implied(method, problem, policy, G)
        row["objective"] = name
        if obj is not None:
            g = flat_grad(obj, flat_params(policy)).detach()
            err = float((g - mom["mean"]).norm() / mom["mean"].norm().clamp_min(1e-300))
            row["confirmed"] = err <= cmp["tol"]
        rows.append(row)
    return rows


def bias_variance_plot(ax, rows: list[dict], *, colors=None) -> None:
    """Place each evaluated `lab_table` row on the bias–variance plane: x = relative
    bias ‖u − scale·∇J‖ / ‖∇J‖ (what no step size removes), y = `rel_variance`, the
    variance at equal samples relative to the method's own signal scale² ‖∇J‖² (log
    scale), one marker per method; rows marked `batch_coupled` get a † after the
    name. Methods whose points nearly coincide (within 8 % of the x range and 5 % of the
    log-y range) share one colour and one label listing their names, so no label is
    drawn over another's point. Skipped rows and rows without a relative variance are
    left out. `colors` defaults to the axes' colour cycle (`policygrad.plotting.COLORS`
    once `policygrad.plotting.set_style` has run).
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib import ticker

    shown = [r for r in rows if r.get("skipped") is None and r.get("rel_variance")]
    if not shown:
        raise ValueError("no evaluated row with a positive variance to plot")
    if colors is None:
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs = [float(r["rel_bias"]) for r in shown]
    ys = [math.log10(float(r["rel_variance"])) for r in shown]
    xtol = 0.08 * ((max(xs) - min(xs)) or 1.0)
    ytol = 0.05 * ((max(ys) - min(ys)) or 1.0)
    clusters: list[list[int]] = []
    for i in range(len(shown)):
        for c in clusters:
            if abs(xs[c[0]] - xs[i]) <= xtol and abs(ys[c[0]] - ys[i]) <= ytol:
                c.append(i)
                break
        else:
            clusters.append([i])
    for k, c in enumerate(clusters):
        color = colors[k % len(colors)]
        names = [
            # a no-break space keeps the dagger with its name when the label wraps
            shown[i]["method"] + ("\u00a0†" if shown[i].get("batch_coupled") else "")
            for i in c
        ]
        ax.scatter(
            [xs[i] for i in c],
            [10 ** ys[i] for i in c],
            color=color,
            zorder=3,
        )
        ax.annotate(
            "\n".join(textwrap.wrap(", ".join(names), 34)),
            (xs[c[0]], 10 ** ys[c[0]]),
            textcoords="offset points",
            xytext=(5, 3),
            fontsize="small",
            color=color,
            va="bottom",
        )
    ax.set_yscale("log")
    plain = ticker.FormatStrFormatter("%g")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel("relative bias |E[u] − c ∇J| / |∇J|")
    ax.set_ylabel("G tr Cov[u] / (c |∇J|)²")


def format_lab_table(rows: list[dict]) -> str:
    """`lab_table` rows as a text table of at most 80 characters a line.

    Columns: method († when `batch_coupled`), classification, scale c, cosine,
    relative bias, `rel_variance` and the implied objective (✓ when autograd
    confirmed it; "—" when none is known). A skipped row says why, shortened.
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be the list of dicts that lab_table returns")
    lines = [
        f"{'method':24s}{'class':9s}{'scale':>6s}{'cosine':>7s}{'bias':>8s}"
        f"{'v_rel':>6s}  objective"
    ]
    for r in rows:
        try:
            name = r["method"] + (" †" if r.get("batch_coupled") else "")
            if r.get("skipped") is not None:
                lines.append(f"{name:24s}skipped: {r['skipped']}"[:80])
                continue
            obj = r["objective"] if not r["objective"].startswith("—") else "—"
            if r["confirmed"]:
                obj += " ✓"
            v = r["rel_variance"]
            lines.append(
                f"{name:24s}{r['classification']:9s}{r['scale']:6.3f}"
                f"{r['cosine']:7.4f}{r['rel_bias']:8.1e}"
                + (f"{v:6.3g}" if v is not None else f"{'—':>6s}")
                + f"  {obj}"
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a lab_table row: {r!r}") from err
    return "\n".join(line[:80] for line in lines)
