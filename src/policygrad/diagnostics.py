"""Monte Carlo gradient estimates against the exact gradient.

Bias, variance, cosine, relative error. Introduced in chapter 2 ("Unbiased").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._checks import check_finite, check_positive_int, check_tensor
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
