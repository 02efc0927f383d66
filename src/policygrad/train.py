"""Training loops. Part I: REINFORCE on an enumerable toy, with the exact objective logged every step.

Introduced in {ref}`sec-reinforce-training`.
"""

from __future__ import annotations

import torch

from ._checks import check_positive_int
from .exact import ExactProblem
from .policies import TabularPolicy, token_log_probs
from .reward_side import TabularValue, leave_one_out_baseline, reinforce_weights
from .trajectory_side import pg_surrogate

__all__ = ["BASELINES", "train_toy_reinforce", "exact_gradient_ascent"]

#: Baselines accepted by :func:`train_toy_reinforce`.
BASELINES = ("none", "leave_one_out", "learned")


def train_toy_reinforce(
    policy: TabularPolicy,
    problem: ExactProblem,
    *,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 0.5,
    baseline: str = "none",
    reward_to_go: bool = False,
    value_lr: float = 0.2,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Train ``policy`` with REINFORCE by plain SGD and log the *exact* objective after every step.

    Each step samples ``batch_size`` prompts from :math:`\\rho` and one completion each, weights the
    score with :func:`policygrad.reward_side.reinforce_weights` and ascends the surrogate.

    baseline: ``"none"``; ``"leave_one_out"`` — the mean return of the *other* samples of the batch
    (independent of the sample it is subtracted from, so unbiased); ``"learned"`` — a
    :class:`policygrad.reward_side.TabularValue` per state :math:`s_t`, fitted after each step on that
    step's returns (so it is applied only to later samples).

    Returns a history dict with lists ``step``, ``objective`` (exact :math:`J`) and ``mean_reward``.
    """
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline == "leave_one_out" and batch_size < 2:
        raise ValueError("a leave-one-out baseline needs batch_size >= 2")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    device = policy.logits_table.device
    value = TabularValue(policy.num_prompts * policy.num_prefixes).to(device) if baseline == "learned" else None
    with torch.no_grad():
        history = {"step": [0], "objective": [float(problem.objective(policy))], "mean_reward": [float("nan")]}
    for step in range(1, steps + 1):
        prompts = problem.sample_prompts(batch_size, g)
        samples = policy.sample(prompts, generator=g)
        rewards = problem.rewards_for(prompts, samples.completions)
        per_token = reinforce_weights(rewards, samples.mask, reward_to_go=reward_to_go, gamma=problem.gamma)
        if baseline == "leave_one_out":
            b = leave_one_out_baseline(per_token)
        elif baseline == "learned":
            states = policy.state_index(samples.prompts, samples.completions)
            b = value(states).detach()
        else:
            b = torch.zeros_like(per_token)
        weights = (per_token - b) * samples.mask
        logp = token_log_probs(policy(samples.prompts, samples.completions), samples.completions)
        loss = -pg_surrogate(logp, weights, samples.mask)  # loss = -surrogate
        opt.zero_grad()
        loss.backward()
        opt.step()
        if value is not None:
            value.fit(states, per_token, lr=value_lr, mask=samples.mask)
        with torch.no_grad():
            history["step"].append(step)
            history["objective"].append(float(problem.objective(policy)))
            R = rewards if rewards.dim() == 1 else rewards.sum(-1)
            history["mean_reward"].append(float(R.mean()))
    return history


def exact_gradient_ascent(
    policy: torch.nn.Module,
    problem: ExactProblem,
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
) -> list[float]:
    """Maximise the *exact* :math:`J(\\theta)` (no sampling) for ``steps`` steps; minimises loss = −J.

    optimizer: ``"sgd"`` or ``"adam"``. Returns the exact :math:`J` before each step and after the last
    (``steps + 1`` values). Used to move a toy policy to a chosen point (a warm start) and to show the
    noise-free path that sampled estimators try to follow. Introduced in {ref}`sec-objective-exact`.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    opt_cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_cls(policy.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = -problem.objective(policy)  # loss = -J
        history.append(-loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        history.append(problem.objective(policy).item())
    return history
