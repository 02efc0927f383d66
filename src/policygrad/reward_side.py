"""The reward side: what multiplies the score :math:`\\nabla_\\theta \\log \\pi_\\theta(y_t \\mid s_t)`.

Returns, reward-to-go, baselines, TD residuals and GAE. Every function works on padded batches
``(B, T)`` with an explicit completion mask (1 = real token); entries where the mask is 0 are returned as 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import check_finite, check_mask, check_positive_int, check_tensor, check_unit_interval

__all__ = [
    "returns_to_go",
    "total_return",
    "broadcast_to_tokens",
    "reinforce_weights",
    "td_residuals",
    "n_step_returns",
    "gae",
    "optimal_constant_baseline",
    "leave_one_out_baseline",
    "TabularValue",
    "terminal_to_steps",
    "kl_shaped_rewards",
    "whiten",
    "clipped_value_loss",
    "explained_variance",
    "group_advantages",
    "group_step_advantages",
]


def _check_rewards_mask(rewards: torch.Tensor, mask: torch.Tensor, name: str = "rewards") -> torch.Tensor:
    check_tensor(rewards, name, 2)
    check_finite(rewards, name)
    return check_mask(mask, "mask", rewards.shape).to(rewards.dtype)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go :math:`G_t = \\sum_{s \\ge t} \\gamma^{s-t} r_s` (eq. {eq}`eq-reward-to-go`).

    rewards, mask: ``(B, T)``. Returns ``(B, T)``, 0 where the mask is 0. Derived in {ref}`sec-reward-to-go`.
    """
    m = _check_rewards_mask(rewards, mask)
    gamma = check_unit_interval(gamma, "gamma")
    r = rewards * m
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * m


def total_return(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return of the whole trajectory :math:`R(\\tau) = G_0`: ``(B, T) -> (B,)``."""
    return returns_to_go(rewards, mask, gamma)[:, 0]


def broadcast_to_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every real token its sequence's value: ``(B,)`` and mask ``(B, T)`` -> ``(B, T)``."""
    check_tensor(values, "values", 1)
    check_finite(values, "values")
    m = check_mask(mask, "mask")
    if m.dim() != 2 or m.shape[0] != values.shape[0]:
        raise ValueError(f"mask must have shape ({values.shape[0]}, T), got {tuple(mask.shape)}")
    return values.unsqueeze(1) * m.to(values.dtype)


def reinforce_weights(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    *,
    reward_to_go: bool = False,
    baseline: float | torch.Tensor = 0.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    """The weight :math:`w_t` that multiplies :math:`\\nabla\\log\\pi_\\theta(y_t\\mid s_t)` in REINFORCE.

    rewards: ``(B,)`` terminal rewards or ``(B, T)`` per-step rewards; mask ``(B, T)``.

    * ``reward_to_go=False``: :math:`w_t = R(\\tau) - b` (eq. {eq}`eq-reinforce-baseline`);
    * ``reward_to_go=True``: :math:`w_t = G_t - b_t` (eq. {eq}`eq-reward-to-go`), which drops rewards
      earned before the action.

    baseline: a constant, ``(B,)`` (one per trajectory, e.g. :math:`b(x)`) or ``(B, T)`` (per state).
    Returns ``(B, T)``. Derived in {ref}`sec-reinforce-baselines`.
    """
    check_tensor(rewards, "rewards", (1, 2))
    check_finite(rewards, "rewards")
    m = check_mask(mask, "mask")
    if m.dim() != 2 or m.shape[0] != rewards.shape[0] or (rewards.dim() == 2 and rewards.shape != m.shape):
        raise ValueError(f"mask {tuple(mask.shape)} does not match rewards {tuple(rewards.shape)}")
    m = m.to(rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype())
    r = rewards.to(m.dtype)
    if r.dim() == 1:
        if reward_to_go:
            raise ValueError("reward_to_go needs per-step rewards of shape (B, T); got terminal rewards (B,)")
        w = broadcast_to_tokens(r, m)
    elif reward_to_go:
        w = returns_to_go(r, m, gamma)
    else:
        w = broadcast_to_tokens(total_return(r, m, gamma), m)
    if isinstance(baseline, torch.Tensor):
        check_finite(baseline, "baseline")
        if baseline.dim() == 1:
            if baseline.shape[0] != m.shape[0]:
                raise ValueError(f"baseline (B,) must have B={m.shape[0]}, got {tuple(baseline.shape)}")
            baseline = baseline.unsqueeze(1)
        elif baseline.dim() == 2:
            if baseline.shape != m.shape:
                raise ValueError(f"baseline (B, T) must have shape {tuple(m.shape)}, got {tuple(baseline.shape)}")
        elif baseline.dim() != 0:
            raise ValueError(f"baseline must be a scalar, (B,) or (B, T), got shape {tuple(baseline.shape)}")
    return (w - baseline) * m


def _next_values(values: torch.Tensor, m: torch.Tensor, last_value: torch.Tensor | None) -> torch.Tensor:
    """V(s_{t+1}) with 0 after the end of each sequence (or ``last_value`` to bootstrap a truncation)."""
    nxt = torch.cat([values[:, 1:] * m[:, 1:], torch.zeros_like(values[:, :1])], 1)
    if last_value is not None:
        check_tensor(last_value, "last_value", 1)
        check_finite(last_value, "last_value")
        if last_value.shape[0] != values.shape[0]:
            raise ValueError(f"last_value must have shape ({values.shape[0]},), got {tuple(last_value.shape)}")
        # the last real token of each row bootstraps from last_value
        is_last = (m > 0) & (torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], 1) == 0)
        nxt = torch.where(is_last, last_value.unsqueeze(1).to(values.dtype), nxt)
    return nxt


def _check_values(values: torch.Tensor, rewards: torch.Tensor) -> None:
    check_tensor(values, "values", 2)
    if values.shape != rewards.shape:
        raise ValueError(f"values must have the shape of rewards {tuple(rewards.shape)}, got {tuple(values.shape)}")
    check_finite(values, "values")


def td_residuals(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """TD residuals :math:`\\delta_t = r_t + \\gamma V(s_{t+1}) - V(s_t)` (eq. {eq}`eq-td-residual`).

    rewards, values, mask: ``(B, T)``; ``values[:, t]`` is :math:`V(s_t)`. After the last real token the
    next state is terminal (value 0) unless ``last_value (B,)`` bootstraps a truncated sequence.
    Returns ``(B, T)``. Derived in {ref}`sec-gae-td`.
    """
    m = _check_rewards_mask(rewards, mask)
    _check_values(values, rewards)
    gamma = check_unit_interval(gamma, "gamma")
    return (rewards + gamma * _next_values(values, m, last_value) - values) * m


def n_step_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    gamma: float = 1.0,
) -> torch.Tensor:
    """n-step return :math:`G^{(n)}_t = \\sum_{k<n} \\gamma^k r_{t+k} + \\gamma^n V(s_{t+n})` (eq. {eq}`eq-n-step`).

    Shapes ``(B, T)``; steps past the end of a sequence contribute nothing (terminal value 0).
    Derived in {ref}`sec-gae-td`.
    """
    m = _check_rewards_mask(rewards, mask)
    _check_values(values, rewards)
    n = check_positive_int(n, "n")
    gamma = check_unit_interval(gamma, "gamma")
    B, T = rewards.shape
    r = rewards * m
    v = values * m
    out = torch.zeros_like(r)
    for t in range(T):
        acc = torch.zeros(B, dtype=r.dtype)
        for k in range(n):
            if t + k < T:
                acc = acc + gamma**k * r[:, t + k]
        if t + n < T:
            acc = acc + gamma**n * v[:, t + n]
        out[:, t] = acc
    return out * m


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalised advantage estimation :math:`\\hat A_t = \\sum_{k\\ge0} (\\gamma\\lambda)^k \\delta_{t+k}` (eq. {eq}`eq-gae`).

    ``lam=0`` gives the TD residual; ``lam=1`` gives :math:`G_t - V(s_t)`. Shapes ``(B, T)``; computed
    by the backward recursion :math:`\\hat A_t = \\delta_t + \\gamma\\lambda \\hat A_{t+1}`.
    Derived in {ref}`sec-gae-derivation`.
    """
    lam = check_unit_interval(lam, "lam")
    delta = td_residuals(rewards, values, mask, gamma, last_value)
    m = mask.to(delta.dtype)
    out = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in range(delta.shape[1] - 1, -1, -1):
        nxt_m = m[:, t + 1] if t + 1 < delta.shape[1] else torch.zeros_like(running)
        running = delta[:, t] + gamma * lam * nxt_m * running
        out[:, t] = running
    return out * m


def optimal_constant_baseline(
    returns: torch.Tensor, score_sq_norms: torch.Tensor, probs: torch.Tensor | None = None
) -> float:
    """The constant :math:`b^*` minimising the total variance of :math:`(R-b)\\nabla\\log p_\\theta(\\tau)`.

    :math:`b^* = \\mathbb E[\\lVert\\nabla\\log p\\rVert^2 R] / \\mathbb E[\\lVert\\nabla\\log p\\rVert^2]`
    (eq. {eq}`eq-optimal-baseline`). returns, score_sq_norms: ``(K,)``; probs ``(K,)`` makes the
    expectation exact (over an enumeration); without it, sample means are used. Derived in
    {ref}`sec-reinforce-baselines`.
    """
    check_tensor(returns, "returns", 1)
    check_tensor(score_sq_norms, "score_sq_norms", 1)
    returns, score_sq_norms = returns.detach(), score_sq_norms.detach()
    probs = None if probs is None else probs.detach()
    check_finite(returns, "returns")
    check_finite(score_sq_norms, "score_sq_norms")
    if returns.shape != score_sq_norms.shape:
        raise ValueError("returns and score_sq_norms must have the same shape")
    w = torch.ones_like(returns) / returns.numel() if probs is None else probs
    if w.shape != returns.shape:
        raise ValueError("probs must have the shape of returns")
    den = (w * score_sq_norms).sum()
    if float(den) <= 0:
        raise ValueError("all score norms are zero: the baseline is undefined (the gradient is zero anyway)")
    return float((w * score_sq_norms * returns).sum() / den)


def leave_one_out_baseline(values: torch.Tensor) -> torch.Tensor:
    """For each sample, the mean of the *other* samples: :math:`b_i = \\frac{1}{N-1}\\sum_{j\\ne i} v_j`.

    values: ``(N,)`` returns, or ``(N, T)`` per-token weights (averaged over the batch dimension only).
    Because :math:`b_i` does not depend on sample :math:`i`, subtracting it keeps REINFORCE unbiased
    (eq. {eq}`eq-loo-baseline`). Needs ``N >= 2``. Derived in {ref}`sec-reinforce-baselines`.
    """
    check_tensor(values, "values", (1, 2))
    check_finite(values, "values")
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples, got {n}")
    return (values.sum(0, keepdim=True) - values) / (n - 1)


class TabularValue(nn.Module):
    """A learned state-dependent baseline :math:`b_\\phi(s)`: one number per state, fitted by regression.

    ``fit`` takes SGD steps on the squared error to the observed returns. Used as a baseline it keeps
    REINFORCE unbiased as long as it is fitted on *earlier* samples than those it is applied to.
    Derived in {ref}`sec-reinforce-baselines`.
    """

    def __init__(self, num_states: int, init: float = 0.0) -> None:
        super().__init__()
        check_positive_int(num_states, "num_states")
        self.table = nn.Parameter(torch.full((num_states,), float(init)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Values of integer ``states`` (any shape)."""
        if states.numel() and (int(states.min()) < 0 or int(states.max()) >= self.table.shape[0]):
            raise ValueError(f"states must lie in [0, {self.table.shape[0] - 1}]")
        return self.table[states.long()]

    @torch.no_grad()
    def fit(self, states: torch.Tensor, targets: torch.Tensor, lr: float = 0.1, mask=None) -> float:
        """One step of :math:`b(s) \\leftarrow b(s) + \\text{lr}\\cdot\\text{mean}(G - b(s))` per visited state.

        Returns the mean squared error before the step.
        """
        if states.shape != targets.shape:
            raise ValueError(f"states and targets must have the same shape, got {tuple(states.shape)} and {tuple(targets.shape)}")
        check_finite(targets, "targets")
        m = torch.ones_like(targets) if mask is None else check_mask(mask, "mask", targets.shape).to(targets.dtype)
        err = (targets - self(states)) * m
        s = states.reshape(-1).long()
        num = torch.zeros_like(self.table).index_add_(0, s, err.reshape(-1))
        cnt = torch.zeros_like(self.table).index_add_(0, s, m.reshape(-1))
        self.table += lr * num / cnt.clamp_min(1.0)
        return float((err**2).sum() / m.sum())


# ------------------------------------------------------------------------------------------------------
# Part II: the reward side of RLHF-style PPO (reward at the end, KL in the reward, whitening, the critic)
# ------------------------------------------------------------------------------------------------------
def _check_seq_mask(mask: torch.Tensor, B: int) -> torch.Tensor:
    check_tensor(mask, "mask", 2)
    if mask.shape[0] != B:
        raise ValueError(f"mask must have {B} rows, got shape {tuple(mask.shape)}")
    return check_mask(mask, "mask", allow_empty=True)


def terminal_to_steps(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's outcome reward on its last real token: ``(B,)`` and mask ``(B, T)`` -> ``(B, T)``.

    The language-model MDP of {ref}`sec-gae-lm-mdp`: every step earns 0 except the last. A row with an
    empty mask gets no reward anywhere.
    """
    check_tensor(rewards, "rewards", 1)
    check_finite(rewards, "rewards")
    m = _check_seq_mask(mask, rewards.shape[0]).to(rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype())
    last = (m.cumsum(-1) == m.sum(-1, keepdim=True)) & (m > 0)  # (B, T) True on the last real token
    return rewards.to(m.dtype).unsqueeze(1) * last.to(m.dtype)


def kl_shaped_rewards(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
    kind: str = "k1",
) -> torch.Tensor:
    """KL to a reference as *reward shaping* (reward side): :math:`r_t \\leftarrow r_t - \\beta\\,k_t` per token.

    rewards ``(B,)`` outcome rewards (put on the last token by :func:`terminal_to_steps`) or ``(B, T)``
    per-step rewards; logp ``(B, T)`` of the sampling policy and ref_logp ``(B, T)``; the per-token
    estimate :math:`k_t` is :func:`policygrad.trajectory_side.kl_estimate` of ``kind`` (k1 in Ziegler et al.
    2019 and InstructGPT). Everything is treated as a constant (no gradient flows through a reward).
    Returns ``(B, T)``, 0 on padding. Derived in {ref}`sec-rlhf-kl-gradients` and {ref}`sec-rlhf-ppo`.
    """
    from .trajectory_side import kl_estimate  # the estimator is shared with the loss-term form

    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < float("inf"):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    check_tensor(logp, "logp", 2)
    m = _check_seq_mask(mask, logp.shape[0])
    if m.shape != logp.shape:
        raise ValueError(f"mask must have the shape of logp {tuple(logp.shape)}, got {tuple(m.shape)}")
    check_tensor(rewards, "rewards", (1, 2))
    steps = terminal_to_steps(rewards, m) if rewards.dim() == 1 else rewards
    if steps.shape != logp.shape:
        raise ValueError(f"per-step rewards must have shape {tuple(logp.shape)}, got {tuple(steps.shape)}")
    check_finite(steps, "rewards")
    m = m.to(logp.dtype)
    k = kl_estimate(logp.detach() * m, ref_logp.detach() * m, kind).detach()
    return (steps.detach().to(logp.dtype) - beta * k) * m


def whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``values (B, T)`` to mean 0 and standard deviation 1 over the tokens where ``mask`` is 1.

    The advantage whitening of RLHF-PPO. ``shift_mean=False`` only rescales (keeps the sign of every
    advantage). Uses the population standard deviation. Never NaN: if the masked values are all equal
    (std at most ``eps``) the result is zeros with ``shift_mean`` and the masked input unchanged without it;
    an empty mask returns zeros. Used in {ref}`sec-rlhf-ppo`.
    """
    check_tensor(values, "values", 2)
    check_finite(values, "values")
    m = _check_seq_mask(mask, values.shape[0])
    if m.shape != values.shape:
        raise ValueError(f"mask must have the shape of values {tuple(values.shape)}, got {tuple(m.shape)}")
    m = m.to(values.dtype)
    n = m.sum()
    if n == 0:
        return torch.zeros_like(values)
    mean = (values * m).sum() / n
    var = (((values - mean) * m) ** 2).sum() / n
    std = var.sqrt()
    if std <= eps:
        return (values - mean) * 0.0 * m if shift_mean else values * m
    centred = values - mean if shift_mean else values
    return centred / std * m


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """PPO's clipped value loss, mean over masked tokens:
    :math:`\\tfrac12\\max\\big((V-G)^2,\\ (V_\\text{old} + \\mathrm{clip}(V - V_\\text{old}, -c, c) - G)^2\\big)`.

    values ``(B, T)`` from the critic (with gradient); old_values ``(B, T)`` the critic's values when the
    batch was sampled; returns ``(B, T)`` the regression targets (e.g. GAE advantages + old values); all
    but ``values`` are constants. ``clip=None`` gives the plain squared error. An empty mask gives 0.
    Derived in {ref}`sec-rlhf-ppo`.
    """
    check_tensor(values, "values", 2)
    for name, x in (("old_values", old_values), ("returns", returns)):
        check_tensor(x, name, 2)
        if x.shape != values.shape:
            raise ValueError(f"{name} must have the shape of values {tuple(values.shape)}, got {tuple(x.shape)}")
        check_finite(x, name)
    m = _check_seq_mask(mask, values.shape[0])
    if m.shape != values.shape:
        raise ValueError(f"mask must have the shape of values {tuple(values.shape)}, got {tuple(m.shape)}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    m = m.to(values.dtype)
    G = returns.detach().to(values.dtype)
    loss = (values - G) ** 2
    if clip is not None:
        old = old_values.detach().to(values.dtype)
        clipped = old + torch.clamp(values - old, -clip, clip)
        loss = torch.maximum(loss, (clipped - G) ** 2)
    n = m.sum()
    return 0.5 * (loss * m).sum() / n.clamp_min(1.0)


def explained_variance(values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """How much of the variance of the critic's regression targets its values explain, over masked tokens:
    :math:`1 - \\mathrm{Var}[G - V] / \\mathrm{Var}[G]`.

    1 means the critic predicts every target; 0 means it does no better than a constant; negative means
    worse than a constant. values, targets, mask: ``(B, T)``. Defined as 0 when the targets have no variance
    (or the mask selects fewer than two tokens), so the metric is never NaN. Explained in
    {ref}`sec-rlhf-ppo`.
    """
    check_tensor(values, "values", 2)
    check_tensor(targets, "targets", 2)
    if targets.shape != values.shape:
        raise ValueError(f"targets must have the shape of values {tuple(values.shape)}, got {tuple(targets.shape)}")
    check_finite(values, "values")
    check_finite(targets, "targets")
    m = _check_seq_mask(mask, values.shape[0])
    if m.shape != values.shape:
        raise ValueError(f"mask must have the shape of values {tuple(values.shape)}, got {tuple(m.shape)}")
    sel = m.detach().bool()
    if int(sel.sum()) < 2:
        return 0.0
    g = targets.detach()[sel].double()
    v = values.detach()[sel].double()
    var_g = g.var(unbiased=False)
    if float(var_g) <= 1e-12:
        return 0.0
    return float(1.0 - (g - v).var(unbiased=False) / var_g)


def _check_group_options(group_size, rows: int, scale, unbiased, eps) -> int:
    """Validate the options every group advantage shares; returns ``G``."""
    G = check_positive_int(group_size, "group_size")
    if G < 2:
        raise ValueError("group advantages need group_size >= 2: a group of one has no one to compare with")
    if rows == 0 or rows % G:
        raise ValueError(f"group_size={G} does not divide the batch of {rows} rows")
    if scale not in ("std", None):
        raise ValueError(f"scale must be 'std' or None, got {scale!r}")
    if not isinstance(unbiased, bool):
        raise ValueError(f"unbiased must be True or False, got {unbiased!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite non-negative number, got {eps!r}")
    return G


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages: each reward minus the mean of its group, optionally divided by the group's std.

    rewards ``(B,)``: ``B = n_groups * G`` sequence rewards, the ``G`` completions of a prompt contiguous (the
    layout of ``sample(group_size=G)``). ``scale="std"``: :math:`A_i = (R_i - \\bar R_g)/(\\sigma_g + \\varepsilon)`
    (GRPO); ``scale=None``: :math:`A_i = R_i - \\bar R_g` (Dr.GRPO). ``unbiased`` picks the standard deviation
    with :math:`1/(G-1)` (TRL and verl call ``torch.std``, which is unbiased) instead of :math:`1/G`.

    A group whose rewards are all equal carries no signal and gets advantage exactly 0 (never NaN, and never
    the round-off of the mean divided by :math:`\\varepsilon`). Advantages sum to 0 within every group. Needs
    ``G >= 2``. Returns ``(B,)``. Derived in {ref}`sec-grpo-baseline` and {ref}`sec-grpo-std`.
    """
    check_tensor(rewards, "rewards", 1)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    check_finite(rewards, "rewards")
    G = _check_group_options(group_size, rewards.shape[0], scale, unbiased, eps)
    g = rewards.reshape(-1, G)
    constant = (g == g[:, :1]).all(1, keepdim=True)  # (n_groups, 1): no signal in this group
    adv = g - g.mean(1, keepdim=True)
    if scale == "std":
        std = g.std(1, keepdim=True, correction=1 if unbiased else 0)
        adv = adv / torch.where(constant, torch.ones_like(std), std + eps)
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(-1)


def group_step_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    step_mask: torch.Tensor | None = None,
    scale: str | None = "std",
    unbiased: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO's process-supervision advantages: group-normalised step rewards, summed from each token on.

    rewards ``(B, T)``: the reward of each step, on the step's last token (0 elsewhere); mask ``(B, T)``: the
    tokens that get an advantage (the loss mask); step_mask ``(B, T)``: where a step ends (default ``mask``:
    every trained token is a step). Every step reward of a group (all its completions, all their steps) is
    normalised with the mean and (``scale="std"``) standard deviation of that group's step rewards,
    :math:`\\tilde r = (r - \\mu_g)/(\\sigma_g + \\varepsilon)`; a token's advantage is the sum of the normalised
    rewards of the steps that end at or after it, :math:`A_{i,t} = \\sum_{j:\\ t_j \\ge t} \\tilde r_{i,j}`
    (Shao et al., 2024). A group whose step rewards are all equal (or that has fewer than two steps) gets 0
    everywhere, as in :func:`group_advantages`. Returns ``(B, T)``, 0 where ``mask`` is 0. Derived in
    {ref}`sec-grpo-objective`.
    """
    check_tensor(rewards, "rewards", 2)
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    check_finite(rewards, "rewards")
    m = check_mask(mask, "mask", rewards.shape, allow_empty=True).to(rewards.dtype)
    s = m if step_mask is None else check_mask(step_mask, "step_mask", rewards.shape, allow_empty=True).to(rewards.dtype)
    if bool(((s != 0) & (m == 0)).any()):
        raise ValueError("step_mask must be 0 wherever mask is 0 (a step ends on a trained token)")
    if bool((rewards * (1 - s) != 0).any()):
        raise ValueError("rewards must be 0 where step_mask is 0 (a step reward sits on the step's last token)")
    B, T = rewards.shape
    G = _check_group_options(group_size, B, scale, unbiased, eps)
    r = rewards.reshape(-1, G * T)  # one row per group: all its step rewards
    w = s.reshape(-1, G * T)
    n = w.sum(1, keepdim=True)
    mean = (r * w).sum(1, keepdim=True) / n.clamp_min(1.0)
    dev = (r - mean) * w
    big = torch.finfo(r.dtype).max
    lo = torch.where(w > 0, r, torch.full_like(r, big)).amin(1, keepdim=True)
    hi = torch.where(w > 0, r, torch.full_like(r, -big)).amax(1, keepdim=True)
    constant = (n < 2) | (lo == hi)  # (n_groups, 1): no signal in this group
    if scale == "std":
        var = (dev * dev).sum(1, keepdim=True) / (n - (1.0 if unbiased else 0.0)).clamp_min(1.0)
        dev = dev / torch.where(constant, torch.ones_like(var), var.sqrt() + eps)
    normed = torch.where(constant, torch.zeros_like(dev), dev).reshape(B, T)
    to_go = normed.flip(-1).cumsum(-1).flip(-1)  # sum over steps ending at or after t
    return to_go * m
