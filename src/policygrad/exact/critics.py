"""Critics on an enumerable problem, and what they do to the advantage estimators.

Per-state tables of exact conditional expectations (the value V(s) among them),
imperfect critics built from them, the n-step and GAE weights over the whole
enumeration, and the exact bias and total variance of the estimators those weights
give. Derived in chapter 3 ("Bias and variance"), as functions of λ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._checks import check_finite, check_float, check_positive_int, check_tensor
from .._tensor import flat_grad, flat_params, select
from ..reward_side.baselines import TabularValue
from ..reward_side.td import gae, n_step_returns
from ..trajectory_side.logprobs import token_log_probs
from .enumeration import ExactProblem

__all__ = [
    "enumeration_states",
    "state_expectations",
    "prompt_blind_table",
    "tabular_critic",
    "critic_rms_error",
    "gae_on_enumeration",
    "n_step_on_enumeration",
    "credit_weightings",
    "EstimatorMoments",
    "credit_weighting_moments",
    "sampled_gae_weights",
]

#: Largest `M·K·T·d` (pairs × positions × parameters) `EstimatorMoments` stores.
MAX_SCORE_ENTRIES = 50_000_000


def _check_problem(problem) -> ExactProblem:
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    return problem


def _shape(problem: ExactProblem) -> tuple[int, int, int]:
    return problem.num_prompts, problem.num_completions, problem.completions.shape[1]


def _check_table(x, name: str, problem: ExactProblem) -> torch.Tensor:
    """A finite float tensor of shape `(M, K, T)` (one number per pair and position)."""
    check_float(x, name, 3)
    if x.shape != _shape(problem):
        raise ValueError(
            f"{name} must have shape {_shape(problem)} (prompts, completions, "
            f"positions), got {tuple(x.shape)}"
        )
    check_finite(x, name)
    return x


def enumeration_states(problem: ExactProblem, policy) -> tuple[torch.Tensor, int]:
    """The id of the state s_t = (x, y_<t) at every pair and position.

    Returns `(states, num_states)`: `states (M, K, T)` long, for the M prompts, K
    enumerated completions and T positions of `problem`, numbered as
    `policy.state_index(prompts, completions)` numbers them (e.g. `TabularPolicy`:
    x · S + prefix, with S prefixes per prompt), and the number of ids,
    `policy.num_prompts * policy.num_prefixes` when the policy has both, else one more
    than the largest id. A table indexed by these ids is a critic the sampled batches
    of `policy` can look up.
    """
    _check_problem(problem)
    if not callable(getattr(policy, "state_index", None)):
        raise ValueError(
            "policy must number its states with state_index(prompts, completions), "
            f"as TabularPolicy does; got {type(policy).__name__}"
        )
    M, K, T = _shape(problem)
    prompts = problem.prompts.repeat_interleave(K, dim=0)
    completions = problem.completions.repeat(M, 1)
    states = policy.state_index(prompts, completions).reshape(M, K, T).cpu().long()
    if hasattr(policy, "num_prompts") and hasattr(policy, "num_prefixes"):
        num_states = int(policy.num_prompts * policy.num_prefixes)
    else:
        num_states = int(states.max()) + 1
    return states, num_states


def state_expectations(
    problem: ExactProblem,
    policy: torch.nn.Module,
    x: torch.Tensor,
    states: torch.Tensor,
    num_states: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """E_{π_θ}[x_t | s_t] for every state, by grouping the pairs that share a prefix.

    The pairs whose position t lies in state s_t = (x, y_<t) carry the weights
    p_θ(y_≥t | s_t) = Π_{u≥t} π_θ(y_u | s_u): the probability of the rest of the
    completion given the state. Within a state they add up to 1, and the weighted sum
    of `x_t` is the conditional expectation. x: `(M, K, T)` per pair and position
    (the reward-to-go R_t gives the value V(s_t); the advantage A(s_t, a_t) gives 0);
    `states`, `num_states` from `enumeration_states`. Only positions inside the mask
    count. Returns `(weight_sum, expectation)`, both `(num_states,)`, float64; both
    are 0 at states no pair reaches. Used in chapter 3 ("Values, action values and
    advantages").
    """
    _check_problem(problem)
    x = _check_table(x, "x", problem)
    check_tensor(states, "states", 3)
    if states.shape != x.shape:
        raise ValueError(
            f"states must have the shape of x {tuple(x.shape)}, got "
            f"{tuple(states.shape)}"
        )
    num_states = check_positive_int(num_states, "num_states")
    states = states.cpu().long()
    if int(states.min()) < 0 or int(states.max()) >= num_states:
        raise ValueError(f"states must lie in [0, {num_states - 1}]")
    with torch.no_grad():
        logp = problem.token_log_probs(policy).cpu().double()
    # p(y_{>=t} | s_t) = exp(sum_{u >= t} log pi_u)
    tail = logp.flip(-1).cumsum(-1).flip(-1).exp()
    sel = (problem.mask != 0).expand_as(tail)
    ids = states[sel]
    w = tail[sel]
    weight_sum = torch.zeros(num_states, dtype=torch.float64).index_add_(0, ids, w)
    total = torch.zeros(num_states, dtype=torch.float64).index_add_(
        0, ids, w * x.detach().cpu().double()[sel]
    )
    return weight_sum, total


def prompt_blind_table(table: torch.Tensor, prompt_probs: torch.Tensor) -> torch.Tensor:
    """A critic that cannot see the prompt: V̂(x, y_<t) = Σ_x' ρ(x') V(x', y_<t).

    table: `(M · S,)` one value per state, prompt-major (the state of prefix j of
    prompt x is x · S + j, as `TabularPolicy.state_index` numbers them); prompt_probs:
    `(M,)` the prompt distribution ρ. Returns the table of the same shape in which
    every prompt's prefix j holds the ρ-average over prompts of the values of prefix
    j. Its error is systematic, as when a value head has not learned to read the
    prompt. Used in chapter 3 ("Bias and variance"), as functions of λ.
    """
    check_float(table, "table", 1)
    check_float(prompt_probs, "prompt_probs", 1)
    M = prompt_probs.shape[0]
    if M < 1 or table.shape[0] % M:
        raise ValueError(
            f"table has {table.shape[0]} entries, not a multiple of the "
            f"{M} prompts of prompt_probs"
        )
    rho = prompt_probs.to(table.dtype)
    per_prefix = (rho[:, None] * table.reshape(M, -1)).sum(0)  # (S,)
    return per_prefix.repeat(M)


def tabular_critic(table: torch.Tensor) -> TabularValue:
    """A `TabularValue` critic whose per-state values are `table (num_states,)`.

    The same object serves exact computations (look it up at `enumeration_states`)
    and sampled batches (look it up at `policy.state_index`).
    """
    check_float(table, "table", 1)
    check_finite(table, "table")
    critic = TabularValue(table.shape[0])
    with torch.no_grad():
        critic.table.copy_(table.to(critic.table.dtype))
    return critic


def critic_rms_error(
    problem: ExactProblem,
    policy: torch.nn.Module,
    values_hat: torch.Tensor,
    values: torch.Tensor,
) -> float:
    """Root-mean-square error of a critic over the states trajectories visit.

    `sqrt(E_τ[mean_t (V̂(s_t) − V(s_t))²])` with τ ∼ ρ · p_θ and the mean over the
    positions in the mask; values_hat and values: `(M, K, T)`.
    """
    _check_problem(problem)
    values_hat = _check_table(values_hat, "values_hat", problem)
    values = _check_table(values, "values", problem)
    m = problem.mask.to(torch.float64)
    err2 = (select(values_hat - values, problem.mask).double() ** 2).sum(-1) / m.sum(-1)
    with torch.no_grad():
        p = (
            problem.prompt_probs[:, None].double()
            * problem.probs(policy).cpu().double()
        )
    return float((p * err2).sum().sqrt())


def _flat(problem: ExactProblem, values: torch.Tensor):
    M, K, T = _shape(problem)
    r = problem.step_rewards().reshape(M * K, T)
    m = problem.mask.expand(M, K, T).reshape(M * K, T)
    return r, values.reshape(M * K, T).to(r.dtype), m


def gae_on_enumeration(
    problem: ExactProblem,
    values: torch.Tensor,
    *,
    lam: float,
    gamma: float | None = None,
) -> torch.Tensor:
    """GAE(γ, λ) advantages (equation (eq-gae) of chapter 3) on every pair: `(M, K, T)`.

    values: `(M, K, T)` the critic's V̂(s_t) along every completion; the rewards are
    the problem's per-step rewards (a terminal reward on the last token); `gamma`
    defaults to the problem's. `policygrad.reward_side.gae` on the flattened pairs.
    """
    _check_problem(problem)
    values = _check_table(values, "values", problem)
    r, v, m = _flat(problem, values)
    gamma = problem.gamma if gamma is None else gamma
    return gae(r, v, m, gamma=gamma, lam=lam).reshape(values.shape)


def n_step_on_enumeration(
    problem: ExactProblem,
    values: torch.Tensor,
    *,
    n: int,
    gamma: float | None = None,
) -> torch.Tensor:
    """n-step advantages Â^(n)_t = R^(n)_t − V̂(s_t) (equation (eq-n-step-advantage) of
    chapter 3) on every pair: `(M, K, T)`.

    Arguments as in `gae_on_enumeration`.
    """
    _check_problem(problem)
    values = _check_table(values, "values", problem)
    r, v, m = _flat(problem, values)
    gamma = problem.gamma if gamma is None else gamma
    out = n_step_returns(r, v, m, n=n, gamma=gamma) - select(v, m)
    return out.reshape(values.shape)


def credit_weightings(
    problem: ExactProblem, policy: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """The four per-token weights compared in chapter 3 ("The token-level MDP of a
    language model: one reward at the end"), each `(M, K)` or `(M, K, T)`:

    * `"R"`: the whole return R(τ), no baseline;
    * `"R-V(s_0)"`: R(τ) − V(s_0) on every token, a perfect critic-free baseline;
    * `"R_t-V(s_t)"`: the reward-to-go minus the exact value (GAE with λ = 1);
    * `"exact A"`: the exact advantage A(s_t, a_t) (GAE with λ = 0 and the exact V).

    All four are unbiased; `EstimatorMoments` gives their variances.
    """
    _check_problem(problem)
    V, A = problem.values(policy), problem.advantages(policy)
    R = problem.returns()
    m = problem.mask.to(V.dtype)
    return {
        "R": R,
        "R-V(s_0)": (R[..., None] - V[..., :1]) * m,
        "R_t-V(s_t)": (problem.returns_to_go() - V) * m,
        "exact A": A,
    }


class EstimatorMoments:
    """Exact bias and total variance of one-trajectory estimators on one policy.

    For weights w_t, the estimator ĝ = Σ_t w_t ∇_θ log π_θ(y_t | s_t) is linear in the
    weights, so the per-token scores of every pair, `(M, K, T, d)`, and the exact
    gradient ∇_θ J are computed once (at construction: the moments describe the
    parameters the policy had then) and each call is a weighted sum. `moments(w)`
    returns `(‖E[ĝ] − ∇_θ J‖, tr Cov[ĝ])`, the numbers that
    `ExactProblem.estimator_moments` and `policygrad.diagnostics.exact_bias_variance`
    give, accumulated in float64. weights: `(M, K)` (one per sequence) or `(M, K, T)`,
    treated as constants. Used in chapter 3 ("Bias and variance"), as functions
    of λ.

    `sampler`: another policy over the same completions (a behaviour policy μ, e.g. a
    lower-precision or stale copy). The trajectories are then drawn as x ∼ ρ,
    y ∼ μ(· | x) while the scores and ∇_θ J stay the policy's, so the moments are
    those of an off-policy estimator whose weights include any importance weight;
    `log_ratios` `(M, K, T)` holds log π_θ(y_t | s_t) − log μ(y_t | s_t) of every
    pair (0 where masked) for forming them (chapter 10, "Off-policy training").
    Without a sampler `log_ratios` is all 0.
    """

    def __init__(
        self,
        problem: ExactProblem,
        policy: torch.nn.Module,
        sampler: torch.nn.Module | None = None,
    ) -> None:
        _check_problem(problem)
        if sampler is not None and not isinstance(sampler, torch.nn.Module):
            raise ValueError(
                "sampler must be a torch.nn.Module or None, "
                f"got {type(sampler).__name__}"
            )
        if not isinstance(policy, torch.nn.Module):
            raise ValueError(
                f"policy must be a torch.nn.Module, got {type(policy).__name__}"
            )
        params = flat_params(policy)
        if not params:
            raise ValueError("the policy has no trainable parameters")
        M, K, T = _shape(problem)
        d = sum(p.numel() for p in params)
        if M * K * T * d > MAX_SCORE_ENTRIES:
            raise ValueError(
                f"{M} prompts x {K} completions x {T} positions x {d} parameters "
                f"exceeds the limit of {MAX_SCORE_ENTRIES} score entries"
            )
        self.problem = problem
        names = [n for n, p in policy.named_parameters() if p.requires_grad]
        detached = {n: p.detach() for n, p in policy.named_parameters()}
        device = params[0].device
        prompts = problem.prompts.repeat_interleave(K, dim=0).to(device)
        completions = problem.completions.repeat(M, 1).to(device)

        def logp(p):
            logits = torch.func.functional_call(policy, p, (prompts, completions))
            return token_log_probs(logits, completions).reshape(-1)

        # forward mode pushes d tangents, reverse mode pulls M·K·T cotangents
        jacobian = torch.func.jacfwd if d < M * K * T else torch.func.jacrev
        with torch.enable_grad():
            jac = jacobian(logp)(detached)
            grad = flat_grad(problem.objective(policy), params)
        scores = torch.cat([jac[n].reshape(M * K * T, -1) for n in names], 1)
        mask = problem.mask.to(device).expand(M, K, T).reshape(M, K, T, 1)
        self.scores = scores.reshape(M, K, T, d).double().cpu() * mask.double().cpu()
        self.gradient = grad.detach().double().cpu()
        behaviour = policy if sampler is None else sampler
        with torch.no_grad():
            probs = problem.probs(behaviour).detach().double().cpu()
            m = problem.mask.double().cpu().expand(M, K, T)
            if sampler is None:
                self.log_ratios = torch.zeros(M, K, T, dtype=torch.float64)
            else:
                lp = problem.token_log_probs(policy).detach().double().cpu()
                lq = problem.token_log_probs(sampler).detach().double().cpu()
                self.log_ratios = torch.where(m > 0, lp - lq, 0.0)
        self.weights = problem.prompt_probs.double()[:, None] * probs  # (M, K)

    def _per_sample(self, weights: torch.Tensor) -> torch.Tensor:
        M, K, T, _ = self.scores.shape
        check_float(weights, "weights", (2, 3))
        if weights.shape[:2] != (M, K) or (
            weights.dim() == 3 and weights.shape[2] != T
        ):
            raise ValueError(
                f"weights must have shape {(M, K)} or {(M, K, T)}, "
                f"got {tuple(weights.shape)}"
            )
        check_finite(weights, "weights")
        w = weights.detach().cpu().double()
        if w.dim() == 2:
            w = w[..., None].expand(M, K, T)
        return torch.einsum("mkt,mktd->mkd", w, self.scores)  # (M, K, d)

    def mean(self, weights: torch.Tensor) -> torch.Tensor:
        """E[ĝ], `(d,)` float64."""
        g = self._per_sample(weights)
        return torch.einsum("mk,mkd->d", self.weights, g)

    def __call__(self, weights: torch.Tensor) -> tuple[float, float]:
        """`(bias norm ‖E[ĝ] − ∇_θ J‖, total variance tr Cov[ĝ])` of one trajectory."""
        g = self._per_sample(weights)
        mean = torch.einsum("mk,mkd->d", self.weights, g)
        second = (self.weights * (g**2).sum(-1)).sum()
        return float((mean - self.gradient).norm()), float(second - (mean**2).sum())


def credit_weighting_moments(
    problem: ExactProblem, policy: torch.nn.Module
) -> dict[str, tuple[float, float]]:
    """`(bias norm, total variance)` of each of the four `credit_weightings`.

    Exact, as `EstimatorMoments` computes them for the policy's current parameters;
    keys as in `credit_weightings`. Safe to call under `torch.no_grad()` (e.g. from
    the `record` callback of `policygrad.exact.ascend`).
    """
    moments = EstimatorMoments(problem, policy)
    return {name: moments(w) for name, w in credit_weightings(problem, policy).items()}


def sampled_gae_weights(
    critic: Callable[[torch.Tensor], torch.Tensor],
    policy,
    *,
    lam: float,
    gamma: float = 1.0,
) -> Callable:
    """GAE weights of a sampled batch, as a training loop computes them.

    Returns `weights_fn(samples, rewards) -> (B, T)` for
    `policygrad.diagnostics.sampled_estimator`: the critic is looked up at the sampled
    states `policy.state_index(samples.prompts, samples.completions)` (without
    gradient) and `policygrad.reward_side.gae` runs on the padded batch with the
    per-step rewards `(B, T)`.
    """
    if not callable(critic):
        raise ValueError("critic must be callable: state ids -> values")
    if not callable(getattr(policy, "state_index", None)):
        raise ValueError(
            "policy must number its states with state_index(prompts, completions)"
        )

    def weights_fn(samples, rewards: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            values = critic(policy.state_index(samples.prompts, samples.completions))
        return gae(rewards, values.to(rewards.dtype), samples.mask, gamma, lam)

    return weights_fn
