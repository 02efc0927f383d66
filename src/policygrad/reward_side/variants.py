"""Reward-side variants after GRPO: what each one puts in front of the score.

Each function is a pure tensor function of the sequence rewards `R (N,)` (N = M G
completions, the G completions of a prompt contiguous, the layout of
`sample(group_size=G)`) and whatever else the variant reads (the loss mask, the
completion lengths, the greedy completion's reward, several reward components). The
group-relative ones need `G >= 2` and raise ValueError otherwise; a group whose rewards
are all equal up to round-off (the rule of `policygrad.reward_side.group_advantages`)
gets advantage exactly 0, never NaN.

* `rloo_advantages`: R_i − mean of the other G − 1 rewards of the group (RLOO);
* `dr_grpo_advantages`: R_i − R̄_g, no division (Dr.GRPO);
* `batch_std_advantages`: (R_i − R̄_g) / (σ_batch + ε) (group mean, batch std);
* `reinforce_pp_advantages`: the discounted returns whitened over every trained token
  of the batch (REINFORCE++);
* `reinforce_pp_baseline_advantages`: R_i − R̄_g, then whitened over every trained
  token of the batch (REINFORCE++-baseline);
* `remax_advantages`: R_i − R(greedy completion of the same prompt) (ReMax);
* `opo_advantages`: R_i − Σ_j |o_j| R_j / Σ_j |o_j| (OPO's length-weighted baseline);
* `gpg_advantages`: α (R_i − R̄_g) with α = N / (number of counted samples) (GPG);
* `passk_advantages`: only the best completion of a group gets (r_max − r_2nd) / (σ_g
  + ε) (verl's `grpo_passk`);
* `pass_at_k`, `pass_at_k_weight`: the closed-form pass@k objective 1 − (1 − p)^k of a
  prompt solved with probability p, and dpass@k/dp = k (1 − p)^(k−1);
* `gdpo_advantages`: every reward component normalised within its group, weighted
  sum, then normalised over the batch (GDPO);
* `overlong_penalty`: DAPO's soft penalty of completions in the last L_cache tokens
  before L_max;
* `optimal_token_baseline_advantages`: the per-step baseline Σ_i R_{i,t} W_{i,t} /
  Σ_i W_{i,t} of the group, W the cumulative logit-gradient proxy 1 − 2π + Σπ² (verl's
  optimal token baseline).

The KL penalty in the reward is `policygrad.reward_side.kl_shaped_rewards`. Each
function's docstring names the framework function it reproduces (TRL 1.16, verl 0.9)
and how it differs; `tests/parity/test_reward_variants_parity.py` runs those. Chapter 8
("After GRPO: the reward-side variants") derives them.
"""

from __future__ import annotations

import torch

from .._checks import (
    check_finite,
    check_float,
    check_mask,
    check_positive_int,
    check_tensor,
)
from .._tensor import select
from .baselines import group_leave_one_out_advantages
from .masks import _check_flag, _check_number
from .normalise import (
    _check_group_options,
    _spread_is_round_off,
    group_advantages,
    whiten,
)

__all__ = [
    "rloo_advantages",
    "dr_grpo_advantages",
    "batch_std_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "remax_advantages",
    "opo_advantages",
    "gpg_advantages",
    "GPG_COUNTS",
    "passk_advantages",
    "pass_at_k",
    "pass_at_k_weight",
    "gdpo_advantages",
    "overlong_penalty",
    "optimal_token_baseline_advantages",
]


def _rewards(rewards: torch.Tensor, name: str = "rewards") -> torch.Tensor:
    check_float(rewards, name, 1)
    check_finite(rewards, name)
    return rewards


def _groups(rewards: torch.Tensor, group_size) -> int:
    """Validate `rewards (N,)` and `G` (>= 2, dividing N); returns `G`."""
    _rewards(rewards)
    return _check_group_options(group_size, rewards.shape[0], None, True, 0.0)


def _constant(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`(M, 1)`: which rows of the grouped rewards `g (M, G)` are constant."""
    every = torch.ones_like(g, dtype=torch.bool)
    return _spread_is_round_off(g.detach(), every, dtype, dim=1)


def _seq_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    m = check_mask(mask, "mask", allow_empty=True)
    if m.dim() != 2 or m.shape[0] != n:
        raise ValueError(f"mask must have shape ({n}, T), got {tuple(mask.shape)}")
    return m


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: each reward minus the mean of the *other* rewards of its group.

        A_i = R_i − 1/(G−1) Σ_{j≠i} R_j = G/(G−1) · (R_i − R̄_g)

    `rewards (N,)`, contiguous groups of `group_size` (G >= 2). The baseline does not
    depend on R_i, so the estimate stays unbiased (Kool et al., 2019; Ahmadian et al.,
    2024). `policygrad.reward_side.group_leave_one_out_advantages` on group ids
    `arange(N) // G`; the same numbers as TRL's `RLOOTrainer`
    (`trl/trainer/rloo_trainer.py:1682-1690`, with `beta=0`,
    `normalize_advantages=False`) and verl's `compute_rloo_outcome_advantage`
    (`verl/trainer/ppo/core_algos.py:588`). A constant group gets 0. Returns `(N,)`.
    """
    G = _groups(rewards, group_size)
    ids = torch.arange(rewards.shape[0], device=rewards.device) // G
    return group_leave_one_out_advantages(rewards, ids)


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr.GRPO: each reward minus its group's mean, not divided by the group's std.

        A_i = R_i − R̄_g

    (Liu et al., 2025). Dropping the std removes GRPO's reweighting of prompts by their
    difficulty; the expected update is (G−1)/G times RLOO's. TRL `scale_rewards="none"`
    (`trl/trainer/grpo_trainer.py:2786`), verl `norm_adv_by_std_in_grpo=False`
    (`core_algos.py:268`). `group_advantages(rewards, G, scale=None)`; G >= 2; a
    constant group gets 0. Returns `(N,)`.
    """
    G = _groups(rewards, group_size)
    return group_advantages(rewards, G, scale=None)


def batch_std_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    unbiased: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group mean, batch standard deviation ("Lite PPO", Liu et al., 2025b):

        A_i = (R_i − R̄_g) / (σ_batch + ε),  σ_batch = std(R_1, …, R_N)

    σ_batch is the standard deviation of the *raw rewards* of the whole batch (not of
    the centred ones, and not per group): one common scale, so prompts are not
    reweighted by their own spread. `unbiased` (default, as TRL's `nanstd`) divides the
    variance by N − 1; `eps` is TRL's 1e-4. This is TRL's `scale_rewards="batch"`
    (`trl/trainer/grpo_trainer.py:2774-2787`); verl has no such estimator. G >= 2; a
    constant group gets 0 (and so does every group of a constant batch). Returns
    `(N,)`.
    """
    G = _groups(rewards, group_size)
    _check_flag(unbiased, "unbiased")
    eps = _check_number(eps, "eps")
    N = rewards.shape[0]
    r = rewards.to(torch.float64)
    centred = group_advantages(rewards, G, scale=None).to(torch.float64)
    if N < 2 or bool(_constant(r.reshape(1, -1), rewards.dtype).all()):
        return torch.zeros_like(rewards)
    dev = r - r.mean()
    std = ((dev * dev).sum() / (N - 1 if unbiased else N)).sqrt()
    return (centred / (std + eps)).to(rewards.dtype)


def _discounted_returns(
    rewards: torch.Tensor, m: torch.Tensor, gamma: float
) -> torch.Tensor:
    """The outcome reward R_i on the last trained token, discounted back:
    R_{i,t} = γ^k R_i with k the number of trained tokens after t; 0 off the mask."""
    after = m.flip(-1).cumsum(-1).flip(-1) - m  # trained tokens strictly after t
    r = rewards.to(torch.float64).unsqueeze(1)
    sel = m != 0
    r = torch.where(sel.any(1, keepdim=True), r, torch.zeros_like(r))
    return select(r * torch.as_tensor(gamma, dtype=torch.float64) ** after, sel)


def reinforce_pp_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++ (Hu, 2025): the returns, whitened over the whole batch's tokens.

        R_{i,t} = γ^(number of trained tokens after t) · R_i,
        A_{i,t} = (R_{i,t} − μ) / σ

    with μ and σ (Bessel-corrected) the mean and standard deviation of R_{i,t} over
    *every trained token of the batch* (so a long completion counts once per token),
    with no group and no per-prompt baseline. `rewards (N,)` outcome rewards, `mask (N,
    T)` the loss mask; γ = 1 (verl's default `algorithm.gamma`) gives every token R_i.
    verl's `compute_reinforce_plus_plus_outcome_advantage` (`core_algos.py:694`) does
    the same with `masked_whiten`, which multiplies by (σ² + 10⁻⁸)^(−1/2) instead of
    dividing by σ (a relative 10⁻⁸/σ² difference). Never NaN: a batch whose returns are
    all equal (or with one trained token) gets zeros, an empty mask zeros. Returns
    `(N, T)`, 0 off the mask.
    """
    _rewards(rewards)
    m = _seq_mask(mask, rewards.shape[0])
    gamma = _check_number(gamma, "gamma")
    if gamma > 1:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    returns = _discounted_returns(rewards, m, gamma)
    return whiten(returns, m).to(rewards.dtype)


def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor, group_size: int, mask: torch.Tensor
) -> torch.Tensor:
    """REINFORCE++-baseline (Hu, 2025): subtract the group mean, then whiten over the
    batch's tokens.

        Ã_i = R_i − R̄_g,   A_{i,t} = (Ã_i − μ) / σ

    with μ, σ (Bessel-corrected) the mean and standard deviation of Ã over every
    trained token of the batch (each completion weighted by its number of trained
    tokens, so μ is not 0 when lengths differ). verl's
    `compute_reinforce_plus_plus_baseline_outcome_advantage` (`core_algos.py:536`),
    whose `masked_whiten` multiplies by (σ² + 10⁻⁸)^(−1/2) instead of dividing by σ.
    G >= 2 (verl lets a group of one keep its raw reward); a batch in which every group
    is constant gets zeros. Returns `(N, T)`, 0 off the mask.
    """
    G = _groups(rewards, group_size)
    m = _seq_mask(mask, rewards.shape[0])
    centred = group_advantages(rewards, G, scale=None).to(torch.float64)
    tokens = select(centred.unsqueeze(1).expand(m.shape), m != 0)
    return whiten(tokens, m).to(rewards.dtype)


def remax_advantages(
    rewards: torch.Tensor, greedy_rewards: torch.Tensor
) -> torch.Tensor:
    """ReMax (Li et al., 2023): the reward minus the reward of the greedy completion.

        A_i = R(x_i, y_i) − R(x_i, ŷ_i),  ŷ_i the greedy (argmax) completion of x_i

    `rewards (N,)` of the sampled completions, `greedy_rewards (N,)` the reward of the
    greedy completion of each row's prompt (repeat it for the G rows of a prompt). The
    baseline depends on the prompt only, so the estimate stays unbiased; it costs one
    extra (greedy) generation per prompt. verl's `compute_remax_outcome_advantage`
    (`core_algos.py:735`, its `reward_baselines`). A sample that scores like the greedy
    completion gets exactly 0. Returns `(N,)`.
    """
    _rewards(rewards)
    _rewards(greedy_rewards, "greedy_rewards")
    if greedy_rewards.shape != rewards.shape:
        raise ValueError(
            f"greedy_rewards must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(greedy_rewards.shape)}"
        )
    return rewards - greedy_rewards.to(rewards.dtype)


def opo_advantages(
    rewards: torch.Tensor, lengths: torch.Tensor, group_size: int
) -> torch.Tensor:
    """OPO (Hao et al., 2025): the reward minus a length-weighted group baseline.

        b_g = Σ_{j∈g} |o_j| R_j / Σ_{j∈g} |o_j|,   A_i = R_i − b_g

    the optimal constant baseline E[‖∇log π‖² R] / E[‖∇log π‖²] of chapter 2 with
    ‖∇log π(o_j)‖² taken proportional to the length |o_j|. `rewards (N,)`, `lengths
    (N,)` the number of trained tokens of each completion (non-negative), contiguous
    groups of `group_size` (G >= 2). Equal lengths give Dr.GRPO's R_i − R̄_g. A
    constant group gets 0; a group whose lengths are all 0 trains no token and gets 0.
    verl's `compute_opo_outcome_advantage` (`core_algos.py:640`, lengths =
    `response_mask.sum(-1)`). Advantages do not sum to 0 within a group (Σ_i |o_i| A_i
    does). Returns `(N,)`.
    """
    G = _groups(rewards, group_size)
    check_tensor(lengths, "lengths", 1)
    if lengths.shape != rewards.shape:
        raise ValueError(
            f"lengths must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(lengths.shape)}"
        )
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError(f"lengths must be numbers, got dtype {lengths.dtype}")
    lens = lengths.to(torch.float64)
    check_finite(lens, "lengths")
    if bool((lens < 0).any()):
        raise ValueError("lengths must be non-negative (they count tokens)")
    g = rewards.to(torch.float64).reshape(-1, G)
    w = lens.reshape(-1, G)
    total = w.sum(1, keepdim=True)
    empty = total == 0
    b = (w * g).sum(1, keepdim=True) / torch.where(empty, torch.ones_like(total), total)
    adv = g - b
    zero = empty | _constant(g, rewards.dtype)
    return torch.where(zero, torch.zeros_like(adv), adv).reshape(-1).to(rewards.dtype)


#: What `gpg_advantages` counts in α = N / count.
GPG_COUNTS = ("nonzero_reward", "informative")


def gpg_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    count: str = "nonzero_reward",
    f_norm: float = 1.0,
) -> torch.Tensor:
    """GPG (Chu et al., 2025): the group-centred reward, scaled up by α.

        A_i = α (R_i − R̄_g) / F_norm,   α = N / max(n, 1)

    `count` says what n counts. `"nonzero_reward"` (the default): the number of
    samples of the batch whose reward is not 0, as verl's
    `compute_gpg_outcome_advantage` does (`core_algos.py:811`: `alpha = bsz /
    count_nonzero(scores).clamp(min=1)`, a float32 number there). `"informative"`:
    the number of samples in groups whose rewards are not all equal, so
    α = N / (N − M) with M the samples whose group-centred advantage is 0 by
    construction (how this package reads the paper's "accurate gradient estimation":
    the batch mean over N counts samples that carry no gradient; α turns it into the
    mean over the informative ones). The two agree only when every
    informative sample, and no other, has a nonzero reward. `f_norm` is verl's
    constant normaliser (1: no division; GRPO's std is not used). Pair it with the
    plain −A log π loss (verl `loss_mode=gpg`). G >= 2; a constant group gets 0; an
    all-zero count gives α = N. Returns `(N,)`.
    """
    G = _groups(rewards, group_size)
    if count not in GPG_COUNTS:
        raise ValueError(f"count must be one of {GPG_COUNTS}, got {count!r}")
    f_norm = _check_number(f_norm, "f_norm")
    if f_norm == 0:
        raise ValueError("f_norm must be positive (it divides the advantages)")
    N = rewards.shape[0]
    centred = group_advantages(rewards, G, scale=None).to(torch.float64)
    if count == "nonzero_reward":
        n = int(torch.count_nonzero(rewards))
    else:
        const = _constant(rewards.to(torch.float64).reshape(-1, G), rewards.dtype)
        n = int((~const).sum()) * G
    alpha = N / max(n, 1)
    return (alpha * centred / f_norm).to(rewards.dtype)


def passk_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str | None = "std",
    unbiased: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """verl's pass@k advantage (`grpo_passk`, after Chen et al., 2025, arXiv
    2503.19595): only the best completion of each group gets a nonzero advantage,

        A_{i*} = (r_max − r_2nd) / (σ_g + ε),  i* = argmax_i R_i;  A_i = 0 otherwise

    with r_max, r_2nd the largest and second-largest rewards of the group (a tie gives
    0) and σ_g the group's std (Bessel-corrected with `unbiased`, as verl's
    `torch.std`); `scale=None` drops the division (verl
    `norm_adv_by_std_in_grpo=False`). r_max − r_2nd is the marginal value of the best
    sample to max over the group, the reward of the best of G. verl's
    `compute_grpo_passk_outcome_advantage` (`core_algos.py:472`, eps 1e-6; it divides
    by std + eps by default). G >= 2; a constant group gets 0. Returns `(N,)`.
    """
    G = _check_group_options(group_size, _rewards(rewards).shape[0], scale, unbiased, 0)
    eps = _check_number(eps, "eps")
    g = rewards.to(torch.float64).reshape(-1, G)
    top = g.topk(2, dim=1).values
    gap = (top[:, :1] - top[:, 1:]).clamp_min(0)
    if scale == "std":
        dev = g - g.mean(1, keepdim=True)
        std = ((dev * dev).sum(1, keepdim=True) / (G - 1 if unbiased else G)).sqrt()
        gap = gap / (std + eps)
    best = torch.zeros_like(g).scatter_(1, g.argmax(1, keepdim=True), 1.0)
    adv = torch.where(_constant(g, rewards.dtype), torch.zeros_like(g), best * gap)
    return adv.reshape(-1).to(rewards.dtype)


def _check_k(k) -> int:
    return check_positive_int(k, "k")


def _check_p(p: torch.Tensor) -> torch.Tensor:
    check_float(p, "p")
    check_finite(p, "p")
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError("p must lie in [0, 1] (a probability of success)")
    return p


def pass_at_k(p: torch.Tensor, k: int) -> torch.Tensor:
    """The pass@k of a prompt solved with probability p by one sample:

        pass@k = 1 − (1 − p)^k

    (the probability that at least one of k independent samples is correct). `p` any
    shape, in [0, 1]; `k` a positive integer (k = 1 gives p itself). Elementwise, in
    the dtype of p; differentiable. The per-prompt objective whose gradient
    `pass_at_k_weight` gives.
    """
    k = _check_k(k)
    return 1 - (1 - _check_p(p)) ** k


def pass_at_k_weight(p: torch.Tensor, k: int) -> torch.Tensor:
    """The weight that turns the pass@1 gradient into the pass@k gradient:

        ∇_θ pass@k = k (1 − p)^(k−1) ∇_θ p

    so maximising pass@k is the policy gradient of each prompt's success probability p
    weighted by k (1 − p)^(k−1): 1 for k = 1, k for a prompt never solved, 0 for one
    always solved (the easy prompts stop pulling). `p` any shape in [0, 1], `k` a
    positive integer. Returns the weight elementwise.
    """
    k = _check_k(k)
    return k * (1 - _check_p(p)) ** (k - 1)


def gdpo_advantages(
    components: torch.Tensor,
    group_size: int,
    *,
    weights: torch.Tensor | None = None,
    eps: float = 1e-6,
    batch_eps: float = 1e-4,
    unbiased: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """GDPO (Liu et al., 2026): normalise each reward component within its group, sum,
    then normalise over the batch.

        Ã_i^(k) = (r_i^(k) − r̄_g^(k)) / (σ_g^(k) + ε),   S_i = Σ_k w_k Ã_i^(k),
        A_i = (S_i − mean_batch S) / (std_batch S + ε_batch)

    `components (N, K)`: K reward components per completion (e.g. format and
    correctness), contiguous groups of `group_size` (G >= 2); `weights (K,)`
    (default: all 1). Normalising each component before the sum keeps a component
    with a large spread from drowning the others (GRPO on the summed reward maps
    different component combinations to the same advantage). Without `mask`: the
    batch normalisation is over the N completions, dividing by std + `batch_eps`, as
    TRL's `multi_objective_aggregation="normalize_then_sum"`
    (`trl/trainer/grpo_trainer.py:2790-2799`, ε = ε_batch = 1e-4) — returns `(N,)`.
    With `mask (N, T)`: S_i is given to every trained token and whitened over the
    batch's tokens (`whiten`, each completion weighted by its length), as verl's
    `compute_gdpo_outcome_advantage` (`core_algos.py:362`, ε = 1e-6, `masked_whiten`
    multiplies by (σ² + 10⁻⁸)^(−1/2)) — returns `(N, T)`. A component constant
    within a group contributes 0 there; a constant batch of S gives zeros.
    """
    check_float(components, "components", 2)
    check_finite(components, "components")
    N, K = components.shape
    if K == 0:
        raise ValueError("components has no column: GDPO needs at least one reward")
    G = _check_group_options(group_size, N, "std", unbiased, eps)
    batch_eps = _check_number(batch_eps, "batch_eps")
    if weights is None:
        w = torch.ones(K, dtype=torch.float64, device=components.device)
    else:
        check_float(weights, "weights", 1)
        check_finite(weights, "weights")
        if weights.shape != (K,):
            raise ValueError(
                f"weights must have shape ({K},), got {tuple(weights.shape)}"
            )
        w = weights.to(torch.float64)
    s = sum(
        w[k]
        * group_advantages(components[:, k], G, unbiased=unbiased, eps=eps).to(
            torch.float64
        )
        for k in range(K)
    )
    if mask is not None:
        m = _seq_mask(mask, N)
        tokens = select(s.unsqueeze(1).expand(m.shape), m != 0)
        return whiten(tokens, m, unbiased=unbiased).to(components.dtype)
    if bool(_constant(s.reshape(1, -1), components.dtype).all()):
        return torch.zeros(N, dtype=components.dtype, device=components.device)
    dev = s - s.mean()
    std = ((dev * dev).sum() / (N - 1 if unbiased else N)).sqrt()
    return (dev / (std + batch_eps)).to(components.dtype)


def overlong_penalty(
    lengths: torch.Tensor,
    max_len: int,
    cache_len: int,
    *,
    factor: float = 1.0,
) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al., 2025, eq. 13), added to the reward:

        R_len(|y|) = 0                              if |y| ≤ L_max − L_cache
                   = (L_max − L_cache − |y|) / L_cache  if L_max − L_cache < |y| ≤ L_max
                   = −1                             if |y| > L_max

    times `factor`: a linear ramp from 0 to −factor over the last `cache_len` tokens
    before `max_len`, so a completion is pushed to finish before the hard cut instead
    of being punished by an abrupt step. `lengths (N,)` completion lengths in tokens
    (non-negative); `max_len` = L_max ≥ 1; `cache_len` = L_cache in [0, L_max]
    (0: no ramp, only the −factor beyond L_max). TRL's `get_soft_overlong_punishment`
    (`trl/rewards/other_rewards.py:83-138`, factor 1) and verl's DAPO reward manager
    (`verl/workers/reward_manager/dapo.py:121-127`: `min(-exceed / L_cache * factor,
    0)`, which equals the ramp up to L_max and continues it below −factor beyond, where
    verl never has completions). Returns `(N,)` float.
    """
    check_tensor(lengths, "lengths", 1)
    if lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError(f"lengths must be numbers, got dtype {lengths.dtype}")
    lens = lengths.to(torch.float64)
    check_finite(lens, "lengths")
    if bool((lens < 0).any()):
        raise ValueError("lengths must be non-negative (they count tokens)")
    max_len = check_positive_int(max_len, "max_len")
    if isinstance(cache_len, bool) or not isinstance(cache_len, int):
        raise ValueError(f"cache_len must be an integer, got {cache_len!r}")
    if not 0 <= cache_len <= max_len:
        raise ValueError(
            f"cache_len must lie in [0, max_len={max_len}], got {cache_len}"
        )
    factor = _check_number(factor, "factor")
    start = max_len - cache_len
    ramp = (start - lens) / max(cache_len, 1)
    out = torch.where(lens <= start, torch.zeros_like(lens), ramp)
    out = torch.where(lens > max_len, torch.full_like(lens, -1.0), out) * factor
    dtype = lengths.dtype if lengths.is_floating_point() else torch.get_default_dtype()
    return out.to(dtype)


def optimal_token_baseline_advantages(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    old_log_probs: torch.Tensor,
    sum_pi_squared: torch.Tensor,
    group_size: int,
    *,
    handle_zero_tail: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The optimal token baseline (OTB; Li et al., 2026): a baseline per step, weighted
    by each prefix's accumulated squared score norm.

        w_{i,t} = 1 − 2 π_{i,t} + Σ_v π(v | s_{i,t})²
        W_{i,t} = Σ_{j≤t} m_{i,j} w_{i,j}
        b_t = Σ_{i∈g} m_{i,t} R_{i,t} W_{i,t} / (Σ_{i∈g} m_{i,t} W_{i,t} + ε)
        A_{i,t} = m_{i,t} (R_{i,t} − b_t)

    with R_{i,t} the reward-to-go, π_{i,t} = exp(`old_log_probs`) the probability of
    the sampled token and m the mask.

    Why. Chapter 2's variance-minimising constant baseline for a score ∇log p(y) is
    E[‖∇log p‖² R] / E[‖∇log p‖²]. The token-t term of the estimator,
    (R_t − b_t) ∇log π(y_t | s_t), is correlated with the score of the whole prefix
    y_≤t, Σ_{j≤t} ∇log π(y_j | s_j); that score's squared norm is Σ_{j≤t} ‖∇log π_j‖²
    plus cross terms whose expectation is 0 (each score has mean 0 given its prefix),
    so the per-step baseline weighs each return by the cumulative W_t. Computing
    ‖∇_θ log π‖² needs a backward pass per token; OTB's logit-gradient proxy takes the
    norm with respect to the output layer's logits z instead: ∂ log π_y / ∂z =
    e_y − π, and

        ‖e_y − π‖² = (1 − π_y)² + Σ_{v≠y} π_v² = 1 − 2 π_y + Σ_v π_v²,

    which needs only the forward pass's probabilities (`sum_pi_squared`). The baseline
    includes the sample's own return (as the group mean does), so the estimate is not
    exactly unbiased.

    `rewards`: outcome rewards `(N,)` (R_{i,t} = R_i on every token of the mask, as
    verl's reward on the last token summed back) or per-step rewards `(N, T)`
    (R_{i,t} = Σ_{j≥t} m_{i,j} r_{i,j}); `mask (N, T)` the loss mask; `old_log_probs`
    and `sum_pi_squared` `(N, T)` (anything on padding: it is selected away);
    contiguous groups of `group_size` (G >= 2; verl lets a group of one keep its
    return). `handle_zero_tail` (verl's default): where a group's longest row is
    longer than every other (a unique maximum of the trained-token count), its
    baseline is 0 from the second-longest count on, so the tail it alone reaches keeps
    its return instead of getting R − R = 0. Vectorised over groups. verl's
    `compute_optimal_token_baseline_advantage` (`verl/trainer/ppo/core_algos.py:872`,
    without `rollout_is_weights`; ε = 1e-8), computed in float64. Returns `(N, T)` in
    the dtype of `rewards`, 0 off the mask.
    """
    check_float(rewards, "rewards", (1, 2))
    N = rewards.shape[0]
    m = _seq_mask(mask, N)
    T = m.shape[1]
    if rewards.dim() == 2 and rewards.shape != m.shape:
        raise ValueError(
            f"per-step rewards must have the mask's shape {tuple(m.shape)}, "
            f"got {tuple(rewards.shape)}"
        )
    check_finite(rewards, "rewards", mask=mask if rewards.dim() == 2 else None)
    for x, name in (
        (old_log_probs, "old_log_probs"),
        (sum_pi_squared, "sum_pi_squared"),
    ):
        check_float(x, name, 2)
        if x.shape != m.shape:
            raise ValueError(
                f"{name} must have the mask's shape {tuple(m.shape)}, "
                f"got {tuple(x.shape)}"
            )
        check_finite(x, name, mask=mask)
    G = _check_group_options(group_size, N, None, True, 0.0)
    _check_flag(handle_zero_tail, "handle_zero_tail")
    eps = _check_number(eps, "eps")
    on = m != 0
    m64 = m.to(torch.float64)
    if rewards.dim() == 1:
        returns = select(rewards.to(torch.float64).unsqueeze(1).expand(N, T), on)
    else:
        r = select(rewards.to(torch.float64), on)
        returns = r.flip(-1).cumsum(-1).flip(-1) * m64
    pi = select(old_log_probs.to(torch.float64), on).exp()
    w = 1 - 2 * pi + select(sum_pi_squared.to(torch.float64), on)
    W = (w * m64).cumsum(-1)
    Rg, Wg, mg = (x.reshape(-1, G, T) for x in (returns, W, m64))
    num = (Rg * Wg * mg).sum(1, keepdim=True)
    den = (Wg * mg).sum(1, keepdim=True) + eps
    base = (num / den).expand(-1, G, -1)  # (M, G, T)
    if handle_zero_tail:
        lengths = mg.sum(-1)  # (M, G)
        top = lengths.topk(2, dim=1).values
        longest, second = top[:, 0], top[:, 1]
        unique = (lengths == longest.unsqueeze(1)).sum(1) == 1
        row = lengths.argmax(1)  # the longest row (unique where it applies)
        pos = torch.arange(T, device=m.device, dtype=torch.float64)
        tail = (pos.unsqueeze(0) >= second.unsqueeze(1)) & (
            unique & (longest > second)
        ).unsqueeze(1)  # (M, T)
        which = torch.nn.functional.one_hot(row, G).bool()  # (M, G)
        zero = which.unsqueeze(-1) & tail.unsqueeze(1)
        base = torch.where(zero, torch.zeros_like(base), base)
    adv = (returns - base.reshape(N, T)) * m64
    return select(adv, on).to(rewards.dtype)
