"""Monte Carlo gradient estimates against the exact gradient.

Bias, variance, cosine, relative error. Introduced in chapter 2 ("Unbiased").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch

from ._checks import (
    check_finite,
    check_float_dtype,
    check_positive_int,
    check_tensor,
)
from ._tensor import flat_grad, flat_params
from .exact.enumeration import ExactProblem
from .rollout import RolloutBatch, Samples
from .trajectory_side.logprobs import token_log_probs
from .trajectory_side.surrogates import score_function_gradient

__all__ = [
    "gradient_error_stats",
    "collect_estimates",
    "convergence",
    "sampled_estimator",
    "exact_bias_variance",
    "method_gradient_estimator",
    "REUSE_SURROGATES",
    "reuse_gradients",
    "reused_batch_bias",
    "windowed_comparison",
    "prompt_value_share",
    "exact_pass_at_k",
    "sampler_mismatch",
]


def gradient_error_stats(
    estimates: torch.Tensor, exact: torch.Tensor
) -> dict[str, float]:
    """Compare `M` independent estimates `(M, P)` with the exact gradient `(P,)`.

    Returns a dict with

    * `bias_norm` ‖ḡ - ∇J‖ (ḡ: mean estimate) and `bias_se`, its Monte Carlo
      noise level √(tr Cov / M) (an unbiased estimator has `bias_norm` of the
      order of `bias_se`);
    * `variance`: total variance tr Cov[g] (unbiased, divides by `M-1`);
    * `mse` E‖g - ∇J‖^2, `relative_error` √mse / ‖∇J‖;
    * `cosine`: mean cosine similarity between each estimate and ∇J.
    """
    check_tensor(estimates, "estimates", 2)
    check_tensor(exact, "exact", 1)
    for name, x in (("estimates", estimates), ("exact", exact)):
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
    if estimates.shape[1] != exact.shape[0]:
        raise ValueError(
            "estimates (M, P) and exact (P,) disagree: "
            f"{tuple(estimates.shape)} vs {tuple(exact.shape)}"
        )
    if estimates.shape[0] < 2:
        raise ValueError("need at least 2 estimates to measure a variance")
    check_finite(estimates, "estimates")
    check_finite(exact, "exact")
    est = estimates.double()
    ex = exact.double()
    M = est.shape[0]
    mean = est.mean(0)
    variance = float(((est - mean) ** 2).sum(1).sum() / (M - 1))
    mse = float(((est - ex) ** 2).sum(1).mean())
    norm = float(ex.norm())
    est_norms = est.norm(dim=1)
    if norm == 0:
        cosine = float("nan")
    else:
        cos = (est @ ex) / (est_norms.clamp_min(1e-300) * norm)
        cosine = float(torch.where(est_norms > 0, cos, torch.zeros_like(cos)).mean())
    return {
        "bias_norm": float((mean - ex).norm()),
        "bias_se": math.sqrt(variance / M),
        "variance": variance,
        "mse": mse,
        "relative_error": math.sqrt(mse) / norm if norm > 0 else float("inf"),
        "cosine": cosine,
    }


def collect_estimates(
    estimate_fn: Callable[[int, torch.Generator], torch.Tensor],
    n: int,
    trials: int,
    seed: int = 0,
) -> torch.Tensor:
    """Call `estimate_fn(n, generator)` `trials` times: the estimates, `(trials, P)`.

    Each call gets its own independently seeded generator.
    """
    if not callable(estimate_fn):
        raise ValueError(
            "estimate_fn must be a callable (n, generator) -> (P,), "
            f"got {type(estimate_fn).__name__}"
        )
    check_positive_int(n, "n")
    check_positive_int(trials, "trials")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = []
    for k in range(trials):
        g = torch.Generator().manual_seed(seed * 1_000_003 + k)
        est = estimate_fn(n, g)
        if not isinstance(est, torch.Tensor):
            raise ValueError(
                f"estimate_fn must return a tensor, got {type(est).__name__}"
            )
        est = est.detach().reshape(-1)
        if out and est.shape != out[0].shape:
            raise ValueError(
                f"estimate_fn returned {est.numel()} numbers in trial {k} "
                f"but {out[0].numel()} before"
            )
        out.append(est)
    return torch.stack(out)


def convergence(
    estimate_fn: Callable[[int, torch.Generator], torch.Tensor],
    exact: torch.Tensor,
    ns: Sequence[int],
    trials: int = 50,
    seed: int = 0,
) -> list[dict[str, float]]:
    """`gradient_error_stats` for each batch size in `ns`.

    One row per `n`, with key `"n"`.
    """
    if isinstance(ns, (str, bytes)) or not isinstance(ns, Sequence) or len(ns) == 0:
        raise ValueError(f"ns must list at least one batch size, got {ns!r}")
    for n in ns:
        check_positive_int(n, "every batch size in ns")
    rows = []
    for n in ns:
        stats = gradient_error_stats(
            collect_estimates(estimate_fn, n, trials, seed), exact
        )
        rows.append({"n": int(n), **stats})
    return rows


def sampled_estimator(
    problem: ExactProblem,
    policy: torch.nn.Module,
    weights_fn: Callable[[Samples, torch.Tensor], torch.Tensor],
) -> Callable[[int, torch.Generator], torch.Tensor]:
    """Turn a reward-side recipe into a Monte Carlo gradient estimator.

    The estimator is `estimate(n, generator) -> (P,)`. Each call draws `n` prompts from
    ρ, one completion each from `policy`, looks up their rewards (`(n,)` terminal or
    `(n, T)` per step), asks `weights_fn(samples, rewards)` for the `(n, T)` weights
    w_{i,t} and returns the gradient of the REINFORCE surrogate
    (`policygrad.trajectory_side.score_function_gradient`). The result plugs into
    `collect_estimates` and `convergence`. Introduced in chapter 2 ("Unbiased").
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    if not isinstance(policy, torch.nn.Module) or not callable(
        getattr(policy, "sample", None)
    ):
        raise ValueError(
            "policy must be a torch.nn.Module with a sample method, "
            f"got {type(policy).__name__}"
        )
    if not callable(weights_fn):
        raise ValueError(
            "weights_fn must be a callable (samples, rewards) -> weights (B, T)"
        )

    def estimate(n: int, generator: torch.Generator) -> torch.Tensor:
        prompts = problem.sample_prompts(n, generator)
        samples = policy.sample(prompts, generator=generator)
        rewards = problem.rewards_for(prompts, samples.completions)
        return score_function_gradient(policy, samples, weights_fn(samples, rewards))

    return estimate


def exact_bias_variance(
    problem: ExactProblem, policy: torch.nn.Module, weights: torch.Tensor
) -> tuple[float, float]:
    """Exact bias norm ‖E[g] - ∇J‖ and total variance of a one-sample estimator.

    `weights`: `(N, K)` or `(N, K, L)` over the enumeration, as in
    `policygrad.exact.ExactProblem.estimator_moments`. No sampling is involved.
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    mean, variance = problem.estimator_moments(policy, weights)
    return float((mean - problem.gradient(policy).to(mean.device)).norm()), variance


def method_gradient_estimator(
    policy: torch.nn.Module,
    task,
    problems: Sequence,
    method,
    *,
    max_new_tokens: int | None = None,
    group_size: int = 1,
) -> Callable[[int, torch.Generator], torch.Tensor]:
    """A registered method's gradient estimate on a language-model task.

    Returned as `estimate(n, generator) -> (P,)`. Each call draws `n` prompts uniformly
    from `problems` (the uniform ρ of `policygrad.lm.tasks.exact_problem`), samples
    `group_size` completions of at most `max_new_tokens` (default the task's) for each,
    scores them with the task's reward, builds the `policygrad.rollout.RolloutBatch` and
    returns -∇ of the method's loss — the exact computation one step of
    `policygrad.train.train` makes, without the optimiser (a method with a reference KL
    term gets the policy itself as the reference: the term is 0 with a zero gradient).
    Compare it with `policygrad.exact.ExactProblem.gradient` of
    `exact_problem(task, problems, max_new_tokens)`. Introduced in chapter 4 (the
    section on exact J and ∇_θ J on a transformer).
    """
    # local import: lm_tasks imports this module's dependencies
    from .lm.tasks import Task
    from .methods.base import get_method

    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    if (
        not isinstance(policy, torch.nn.Module)
        or next(policy.parameters(), None) is None
    ):
        raise ValueError(
            "policy must be a torch.nn.Module with parameters, "
            f"got {type(policy).__name__}"
        )
    problems = task._check_problems(problems)
    method = get_method(method)
    T = (
        task.max_new_tokens
        if max_new_tokens is None
        else check_positive_int(max_new_tokens, "max_new_tokens")
    )
    G = check_positive_int(group_size, "group_size")
    device = next(policy.parameters()).device
    all_prompts = task.encode_prompts(problems).to(device)

    def estimate(n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(problems), (n,), generator=generator)
        samples = policy.sample(
            all_prompts[idx.to(device)],
            max_new_tokens=T,
            eos=task.tokenizer.eos_id,
            generator=generator,
            group_size=G,
        )
        reps = [problems[i] for i in idx.tolist() for _ in range(G)]
        rewards = task.rewards(reps, samples.completions, samples.mask)
        # the policy is its own reference
        ref = samples.log_probs if method.needs_reference else None
        batch = RolloutBatch.from_samples(
            samples, rewards, group_size=G, ref_log_probs=ref
        )
        logp = (
            token_log_probs(policy(batch.prompts, batch.completions), batch.completions)
            * batch.mask
        )
        loss, _ = method.loss(logp, batch, method.advantages(batch))
        return -flat_grad(loss, flat_params(policy)).detach()

    return estimate


#: The surrogates `reuse_gradients` compares.
REUSE_SURROGATES = ("naive", "sequence_is", "token_is")


def reuse_gradients(
    problem: ExactProblem, policy: torch.nn.Module, sampler: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """What reusing a batch sampled by `sampler` estimates once `policy` has moved away.

    Exact expected gradients `(P,)` of three surrogates (the sampler's completions held
    fixed) next to ∇J(θ). With x ~ ρ, y ~ p_old (the sampler) and the sampler's
    advantage A = R(x, y) - J(θ_old):

    * `"naive"`: E_old[A log p_θ(y | x)] — the REINFORCE surrogate, no correction;
    * `"sequence_is"`: E_old[(p_θ(y | x) / p_old(y | x)) A] — sequence-level
      importance sampling, whose gradient is ∇J(θ) exactly;
    * `"token_is"`: E_old[Σ_t m_t (π_θ(y_t | s_t) / π_old(y_t | s_t)) A] — PPO's
      unclipped surrogate with token ratios summed over the completion;
    * `"exact"`: ∇J(θ).

    At `policy == sampler` all four are equal. Derived in chapter 5 ("What a reused
    batch estimates").
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    for name, m in (("policy", policy), ("sampler", sampler)):
        if not isinstance(m, torch.nn.Module):
            raise ValueError(
                f"{name} must be a torch.nn.Module policy, got {type(m).__name__}"
            )
    params = flat_params(policy)
    with torch.no_grad():
        old_tok = problem.token_log_probs(sampler)  # (N, K, L)
        A = problem.returns().to(old_tok.dtype) - problem.objective(sampler)  # (N, K)
        # rho(x) p_old(y|x)
        weight = (
            problem.prompt_probs.to(old_tok.dtype).unsqueeze(1) * old_tok.sum(-1).exp()
        )
    m = problem.mask.to(old_tok.dtype)
    surrogates = {
        "naive": lambda tok: tok.sum(-1) * A,
        "sequence_is": lambda tok: (tok.sum(-1) - old_tok.sum(-1)).exp() * A,
        "token_is": lambda tok: ((tok - old_tok).exp() * m).sum(-1) * A,
    }
    out = {}
    # one forward each: every gradient needs its own graph
    for name in REUSE_SURROGATES:
        value = (weight * surrogates[name](problem.token_log_probs(policy))).sum()
        out[name] = flat_grad(value, params).detach()
    out["exact"] = problem.gradient(policy)
    return out


def prompt_value_share(rewards: torch.Tensor) -> dict[str, float]:
    """How much of the return's variance a critic that knows only the prompt explains.

    `rewards (M, G)` holds 0/1 rewards of `G ≥ 2` completions for each of `M ≥ 2`
    prompts, sampled from one policy. With `p_x` the success probability of prompt
    `x`, the return's variance splits as `Var[R] = E_x[p_x(1 - p_x)] + Var_x[p_x]`;
    the best prompt-level value `V(x) = p_x` removes the second term, so its explained
    variance is `Var_x[p_x] / Var[R]` (chapter 7, "GRPO against REINFORCE and PPO with
    a critic on TinyGPT"). Squaring the sample mean would overstate `p_x²` by
    `p_x(1 - p_x)/G`; the unbiased `k(k-1) / (G(G-1))` (k successes) is used instead.

    The `M` prompts are the population (weights `1/M`). Returns `mean_reward` p̄,
    `var_reward` and `var_value`, unbiased estimates of p̄(1 - p̄) and of
    `Var_x[p_x]`, and `share` = var_value / var_reward (NaN when every reward is
    equal; noisy when `G` is small).
    """
    r = check_tensor(rewards, "rewards", 2)
    if r.shape[0] < 2 or r.shape[1] < 2:
        raise ValueError(
            "rewards must be (M, G) with M >= 2 prompts and G >= 2, got "
            f"{tuple(r.shape)}"
        )
    r = r.detach().double()
    if not bool(((r == 0) | (r == 1)).all()):
        raise ValueError("rewards must be 0/1 (the decomposition assumes p_x(1 - p_x))")
    m, g = r.shape
    k = r.sum(1)
    p = k / g
    p_sq = k * (k - 1) / (g * (g - 1))  # unbiased for p_x²
    # unbiased for p̄² = (mean_x p_x)²: the squared mean less its sampling variance
    # Σ_x p_x(1 - p_x) / (G M²), itself estimated without bias by (p - p_sq)
    p_bar_sq = float(p.mean() ** 2 - (p - p_sq).sum() / (g * m * m))
    p_bar = float(p.mean())
    var_value = float(p_sq.mean()) - p_bar_sq
    var_reward = p_bar - p_bar_sq
    share = var_value / var_reward if var_reward > 0 else float("nan")
    return {
        "mean_reward": p_bar,
        "var_reward": var_reward,
        "var_value": var_value,
        "share": share,
    }


def exact_pass_at_k(
    policy: torch.nn.Module, task, problems, ks: Sequence[int] = (1, 8)
) -> dict[int, float]:
    """Held-out pass@k of a language-model policy, exactly, for each `k` in `ks`.

    With `p_x` the probability that one sampled completion of problem `x` is correct
    (`policygrad.lm.tasks.success_probabilities`: one teacher-forced pass over the
    answers, no sampling), pass@k = mean_x (1 − (1 − p_x)^k)
    (`policygrad.reward_side.pass_at_k`), the chance that at least one of `k`
    independent samples is right; k = 1 is the held-out J. No evaluation noise: two
    runs differ only through their parameters. Returns `{k: value}`. Used in chapter
    8 ("The variants on TinyGPT at equal samples").
    """
    from .lm.tasks import success_probabilities
    from .reward_side.variants import pass_at_k

    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise ValueError(f"ks must be a sequence of positive integers, got {ks!r}")
    ks = [check_positive_int(k, "k") for k in ks]
    if not ks:
        raise ValueError("ks is empty: give at least one k")
    with torch.no_grad():
        p = success_probabilities(policy, task, problems).double()
    return {k: float(pass_at_k(p, k).mean()) for k in ks}


def reused_batch_bias(
    problem: ExactProblem, policy: torch.nn.Module, *, steps: int, lr: float
) -> list[dict[str, float]]:
    """The bias of each gradient step taken on one reused batch, computed exactly.

    A batch is drawn once from `policy` (θ_old): x ∼ ρ, y ∼ p_old(· | x). Its REINFORCE
    surrogate, with no baseline, is Σ_i R(x_i, y_i) log p_θ(y_i | x_i) / N; as N grows
    its gradient at any θ tends to the *reused-batch gradient*

        h(θ) = E_old[R ∇_θ log p_θ(y | x)] = Σ_x ρ(x) Σ_y p_old(y | x) R ∇_θ log p_θ,

    which is also its expectation over batches at a θ fixed in advance. Plain gradient
    ascent on that batch, θ_1 = θ_old and θ_{j+1} = θ_j + `lr` h(θ_j), is what `steps`
    steps on one very large batch do. At step 1, h(θ_1) = ∇J(θ_old): unbiased. From
    step 2 on, h(θ_j) - ∇J(θ_j) = Σ ρ (p_old - p_θ) R ∇ log p_θ ≠ 0: the batch no
    longer comes from the policy whose gradient it estimates. The importance-weighted
    surrogate E_old[(p_θ / p_old) R] has gradient ∇J(θ_j) exactly at every step (chapter
    5, "What a reused batch estimates").

    Only pairs with R ≠ 0 enter these sums, so a restricted enumeration such as
    `policygrad.lm.tasks.exact_problem(..., rewarded_only=True)` gives them exactly
    (with a baseline b a second term, −b E_old[∇ log p_θ], needs every completion).
    `problem` must have terminal rewards `(N, K)`. `policy` is not modified.

    Returns one row per step j = 1..`steps`, with `step`, `objective` J(θ_j),
    `max_abs_log_ratio` max |log p_θj(y | x) − log p_old(y | x)| over the pairs with
    R ≠ 0, `relative_bias` ‖h(θ_j) − ∇J(θ_j)‖ / ‖∇J(θ_j)‖, `cosine` between h(θ_j)
    and ∇J(θ_j), and `is_relative_error`, the same for the importance-weighted
    gradient (0 up to rounding).
    """
    if not isinstance(problem, ExactProblem):
        raise ValueError(
            f"problem must be an ExactProblem, got {type(problem).__name__}"
        )
    if problem.per_step:
        raise ValueError(
            "reused_batch_bias needs terminal rewards (N, K), got per-step rewards "
            f"of shape {tuple(problem.rewards.shape)}"
        )
    if not isinstance(policy, torch.nn.Module) or not flat_params(policy):
        raise ValueError(
            "policy must be a torch.nn.Module with trainable parameters, "
            f"got {type(policy).__name__}"
        )
    check_positive_int(steps, "steps")
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not math.isfinite(lr)
        or lr <= 0
    ):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    new = copy.deepcopy(policy)
    params = flat_params(new)
    with torch.no_grad():
        old_lp = problem.log_probs(policy)  # (N, K)
        rho_r = problem.prompt_probs.to(old_lp).unsqueeze(1) * problem.returns().to(
            old_lp
        )
        w_old = rho_r * old_lp.exp()  # ρ(x) p_old(y|x) R(x, y)
        rewarded = rho_r != 0

    def grad(value: torch.Tensor, retain: bool) -> torch.Tensor:
        gs = torch.autograd.grad(value, params, retain_graph=retain, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1)
                for g, p in zip(gs, params, strict=True)
            ]
        )

    rows = []
    for j in range(1, steps + 1):
        lp = problem.log_probs(new)
        objective = (rho_r * lp.exp()).sum()
        exact = grad(objective, True)
        reused = grad((w_old * lp).sum(), True)
        weighted = grad((w_old * (lp - old_lp).exp()).sum(), False)
        norm = exact.norm()
        if not norm > 0:
            raise ValueError(
                f"∇J(θ_{j}) is zero: the relative bias is undefined "
                "(are all rewards 0?)"
            )
        with torch.no_grad():
            log_ratio = (lp - old_lp)[rewarded].abs()
            rows.append(
                {
                    "step": j,
                    "objective": float(objective),
                    "max_abs_log_ratio": float(log_ratio.max()),
                    "relative_bias": float((reused - exact).norm() / norm),
                    "cosine": float(reused @ exact / (reused.norm() * norm)),
                    "is_relative_error": float((weighted - exact).norm() / norm),
                }
            )
            offset = 0
            for p in params:
                n = p.numel()
                p.add_(lr * reused[offset : offset + n].view_as(p))
                offset += n
    return rows


def windowed_comparison(
    runs, column: str, *, last: int, reference: str | None = None
) -> list[dict]:
    """Compare methods over paired seeds by the mean of the last `last` values of a
    metric.

    `runs` maps `(method, seed)` to a `policygrad.train.History` (or anything whose
    `run[column]` is the list of that metric's values); every method must have been
    run with the same seeds (paired). For each run the windowed mean is the mean of
    its last `last` recorded values of `column` (e.g. the last K steps' mean reward).
    Returns one row per method, in order of first appearance, then one row per other
    method for its paired difference to `reference` (default: the first method),
    named `"B - A"`. Each row has `method`, `per_seed` (`{seed: value}`), `mean`,
    `min`, `max` (over seeds) and `se`, the standard error of the mean over seeds
    (unbiased std / √S; NaN with one seed). Used in chapter 4 ("REINFORCE on the
    addition warm start").
    """
    if not hasattr(runs, "items") or not runs:
        raise ValueError("runs must be a non-empty mapping (method, seed) -> history")
    check_positive_int(last, "last")
    by_method: dict[str, dict[int, float]] = {}
    for key, run in runs.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"runs must be keyed by (method, seed), got key {key!r}")
        name, seed = key
        try:
            values = list(run[column])
        except KeyError as err:
            raise ValueError(f"run {key!r} has no metric {column!r}") from err
        if len(values) < last:
            raise ValueError(
                f"run {key!r} has {len(values)} values of {column!r}, fewer than "
                f"last={last}"
            )
        window = [float(v) for v in values[-last:]]
        if not all(math.isfinite(v) for v in window):
            raise ValueError(f"run {key!r} has non-finite {column!r} in its window")
        by_method.setdefault(name, {})[seed] = sum(window) / last
    names = list(by_method)
    seeds = sorted(by_method[names[0]])
    for name in names[1:]:
        if sorted(by_method[name]) != seeds:
            raise ValueError(
                f"seeds are not paired: {names[0]!r} has {seeds}, "
                f"{name!r} has {sorted(by_method[name])}"
            )
    ref = names[0] if reference is None else reference
    if ref not in by_method:
        raise ValueError(f"reference {ref!r} is not one of the methods {names}")

    def row(method: str, per_seed: dict[int, float]) -> dict:
        v = torch.tensor([per_seed[s] for s in seeds], dtype=torch.float64)
        se = float(v.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return {
            "method": method,
            "per_seed": {s: per_seed[s] for s in seeds},
            "mean": float(v.mean()),
            "min": float(v.min()),
            "max": float(v.max()),
            "se": se,
        }

    out = [row(name, by_method[name]) for name in names]
    for name in names:
        if name != ref:
            diff = {s: by_method[name][s] - by_method[ref][s] for s in seeds}
            out.append(row(f"{name} - {ref}", diff))
    return out


def sampler_mismatch(
    policy: torch.nn.Module,
    task,
    *,
    sampler: torch.nn.Module | None = None,
    sampler_dtype: torch.dtype | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    prompts: int = 32,
    group_size: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """How far a sampler is from the trainer on one batch of `task`'s problems.

    The sampler (`sampler`, default `policy` itself; cast to `sampler_dtype` when
    given, on a copy) draws `group_size` completions for each of `prompts` training
    problems at `temperature` and `top_k`, from a CPU generator seeded with `seed`;
    its log-probs of the drawn tokens are those of the distribution it drew from. The
    trainer is `policy` as it is (teacher-forced, no gradient). With
    log ρ_t = log π_trainer(y_t) − log π_sampler(y_t) on the trained tokens:

    * `token_kl_k1`, `token_kl_k3`: mean of −log ρ and of ρ − 1 − log ρ, the k1 and
      k3 estimates of KL(π_sampler ‖ π_trainer) per token;
    * `log_ratio_std`, `log_ratio_max_abs`: the spread and the largest |log ρ_t|;
    * `seq_log_ratio_std`: the standard deviation of Σ_t log ρ_t over completions (the
      log of the sequence importance weight);
    * `seq_weight_outside_2`: the fraction of completions whose sequence weight Π_t ρ_t
      lies outside [1/2, 2];
    * `length`: the mean completion length.

    Chapter 10 ("The mismatch, measured").
    """
    from .lm.tasks import Task

    if not isinstance(policy, torch.nn.Module):
        raise ValueError(
            f"policy must be a torch.nn.Module, got {type(policy).__name__}"
        )
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    if sampler is not None and not isinstance(sampler, torch.nn.Module):
        raise ValueError(
            f"sampler must be a torch.nn.Module or None, got {type(sampler).__name__}"
        )
    check_float_dtype(sampler_dtype, "sampler_dtype")
    check_positive_int(prompts, "prompts")
    G = check_positive_int(group_size, "group_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    draw = policy if sampler is None else sampler
    if sampler_dtype is not None:
        draw = copy.deepcopy(draw).to(sampler_dtype)
    g = torch.Generator().manual_seed(seed)
    problems = task.sample_problems(prompts, g)
    device = next(policy.parameters()).device
    x = task.encode_prompts(problems).to(device)
    was = policy.training, draw.training
    policy.eval()
    draw.eval()
    try:
        with torch.no_grad():
            s = draw.sample(
                x,
                max_new_tokens=task.max_new_tokens,
                eos=task.tokenizer.eos_id,
                temperature=temperature,
                top_k=top_k,
                generator=g,
                group_size=G,
            )
            lq = s.log_probs if s.sampler_log_probs is None else s.sampler_log_probs
            logits = policy(s.prompts, s.completions, group_size=G)
            lp = token_log_probs(logits, s.completions)
    finally:
        policy.train(was[0])
        draw.train(was[1])
    on = s.mask != 0
    lr = torch.where(on, lp.double() - lq.double(), 0.0)
    tok = lr[on]
    seq = lr.sum(-1)
    return {
        "token_kl_k1": float((-tok).mean()),
        "token_kl_k3": float((torch.expm1(tok) - tok).mean()),
        "log_ratio_std": float(tok.std()) if tok.numel() > 1 else 0.0,
        "log_ratio_max_abs": float(tok.abs().max()),
        "seq_log_ratio_std": float(seq.std()) if seq.numel() > 1 else 0.0,
        "seq_weight_outside_2": float((seq.abs() > math.log(2.0)).double().mean()),
        "length": float(on.sum(-1).double().mean()),
    }
