"""Filters against entropy collapse and wasted samples: which groups, rows and tokens
a step trains on, and the losses that keep the policy's entropy up.

RL on verifiable rewards tends to drive the policy's entropy towards 0 within a few
hundred steps (entropy collapse): the policy stops exploring and the reward
plateaus. Much of a batch is also wasted: a group whose G rewards are all equal has
all-zero group advantages, and a completion cut off at the length limit is graded
for its length, not its answer. This module collects the remedies of DAPO, of
"Beyond the 80/20 rule" and of "The Entropy Mechanism of RL for reasoning LMs" as
pure tensor functions:

* dynamic sampling (DAPO): `informative_groups`, `fill_informative`,
  `expected_draws_per_informative_group`;
* overlong filtering (DAPO): `truncation_loss_mask`;
* the 80/20 rule: `high_entropy_token_mask`;
* Clip-Cov and KL-Cov: `clip_cov_selection`, `clip_cov_loss`, `kl_cov_selection`,
  `kl_cov_loss`;
* the entropy bonus: `entropy_bonus_loss` and `AdaptiveEntropyController`.

Conventions as in the rest of the trajectory side: per-token tensors `(B, T)` with a
0/1 `mask`; padded positions may hold anything (they are selected away); loss =
−surrogate; bad input is a `ValueError`; nothing returns NaN. Framework facts are
quoted from the installed TRL 1.16 (`trl/trainer/...`) and verl 0.9.1
(`verl/...`) sources. Used in chapter 9.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch

from .._checks import check_finite, check_float, check_positive_int, check_tensor
from .._tensor import _spread_is_round_off, compute_dtype, select
from .aggregation import aggregate, aggregation_weights
from .masks import TokenLosses, check_constant, check_per_token, check_token_mask
from .ppo import ppo_clip_loss
from .ratios import log_ratios, safe_ratio

__all__ = [
    "informative_groups",
    "expected_draws_per_informative_group",
    "DynamicSampling",
    "fill_informative",
    "truncation_loss_mask",
    "high_entropy_token_mask",
    "clip_cov_selection",
    "clip_cov_loss",
    "kl_cov_selection",
    "kl_cov_loss",
    "entropy_bonus_loss",
    "AdaptiveEntropyController",
]


def _number(v, name: str, lo=-math.inf, hi=math.inf, *, lo_open=False, hi_open=False):
    """`v` as a float if it is a real number in the interval; else ValueError."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ValueError(f"{name} must be a number, got {v!r}")
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok or math.isinf(v):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(
            f"{name} must be a finite number in {left}{lo}, {hi}{right}, got {v!r}"
        )
    return float(v)


def _group_size(group_size) -> int:
    G = check_positive_int(group_size, "group_size")
    if G < 2:
        raise ValueError(
            "group_size must be >= 2: a group of one completion is never informative "
            "(it has no one to compare with)"
        )
    return G


# ------------------------------------------------------------------ dynamic sampling


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups carry a learning signal: `(M,)` bool, True where the G rewards of
    the group are not all equal.

    `rewards (N,)`, N = M·G, rows `i·G .. i·G + G − 1` forming group i (the layout of
    `RolloutBatch.from_samples`). "All equal" is the package's round-off rule (that of
    `policygrad.reward_side.group_advantages`): max − min ≤ 16 ε_dtype · max(1, max|r|).
    An uninformative group has group advantages exactly 0, so its completions cost a
    forward and backward pass and move nothing: DAPO's dynamic sampling drops them and
    draws more prompts (`fill_informative`).

    Framework semantics: verl's V1 `ReplayBuffer._dapo_filtered_keys` drops a group
    when `len(values) > 1 and float(np.std(values)) == 0.0`
    (`verl/trainer/ppo/v1/replay_buffer.py:312`), exact equality of the float64
    metric; the DAPO recipe keeps groups with `std > 0 or len == 1`. Differences: the
    tolerance above (`0.1 + 0.2` and `0.3` count as equal here), and `group_size = 1`
    raises here, where verl keeps singleton groups. Used in chapter 9.
    """
    G = _group_size(group_size)
    check_float(rewards, "rewards", 1)
    if rewards.shape[0] == 0 or rewards.shape[0] % G:
        raise ValueError(
            f"group_size={G} does not divide the batch of {rewards.shape[0]} rewards"
        )
    check_finite(rewards, "rewards")
    # the package's round-off rule for equal rewards (`policygrad._tensor`), which
    # group advantages use too
    g = rewards.detach().to(torch.float64).reshape(-1, G)
    every = torch.ones_like(g, dtype=torch.bool)
    return ~_spread_is_round_off(g, every, rewards.dtype, dim=1).squeeze(1)


def expected_draws_per_informative_group(p, group_size: int) -> torch.Tensor:
    """Expected number of groups drawn per informative group kept, for a prompt whose
    0/1 reward has success probability `p` (any shape):

        E[draws] = 1 / q,   q = 1 − p^G − (1 − p)^G

    q is the chance that a group of G is informative (one minus
    `policygrad.exact.zero_variance_probability`); the number of groups drawn until
    the first informative one is geometric with success probability q, and its mean
    is Σ_{k≥1} k q (1 − q)^{k−1} = 1/q. It is the price of dynamic sampling in
    generated completions (G/q per kept group): near p = 0 or 1 it grows like
    1/(G·min(p, 1 − p)).

    q is computed without cancellation as −expm1(G·log1p(−s)) − s^G with
    s = min(p, 1 − p) (q is symmetric in p ↔ 1 − p), so the result keeps its relative
    accuracy for p as small as 1e-12. At p = 0 or p = 1 every group is uninformative
    (q = 0) and the draws never end: the result is `inf` (the expectation diverges),
    not an error, so a sweep over p ∈ [0, 1] can be plotted. `group_size = 1` raises
    (q = 0 for every p); `p` outside [0, 1] or non-finite raises. Float64 result.
    Used in chapter 9.
    """
    G = _group_size(group_size)
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
    p = p.to(torch.float64)
    s = torch.minimum(p, 1 - p)
    q = -torch.expm1(G * torch.log1p(-s)) - s**G
    inf = torch.full_like(q, math.inf)
    return torch.where(q > 0, 1.0 / torch.where(q > 0, q, torch.ones_like(q)), inf)


class DynamicSampling(NamedTuple):
    """What `fill_informative` decided.

    * `keep`: one bool tensor `(M_b,)` per batch consumed, True for the groups to train
      on (the first `target_groups` informative groups in the order drawn); expand to
      rows with `keep[b].repeat_interleave(group_size)`;
    * `n_batches`: how many batches were consumed (verl's `num_gen_batches`);
    * `groups_drawn`: Σ_b M_b, the groups generated in total — the cost;
    * `n_informative`: informative groups seen, surplus included;
    * `n_kept`: groups kept, `min(target_groups, n_informative)`.
    """

    keep: list[torch.Tensor]
    n_batches: int
    groups_drawn: int
    n_informative: int
    n_kept: int


def fill_informative(
    batches: Iterable[torch.Tensor],
    target_groups: int,
    group_size: int,
    *,
    max_batches: int = 0,
    allow_short: bool = False,
) -> DynamicSampling:
    """DAPO's dynamic sampling as bookkeeping: consume sampled batches until
    `target_groups` informative groups are collected; say which groups to keep and
    what it cost.

    `batches`: an iterable of reward tensors `(M_b·G,)`, one per generation batch
    (grouped as in `informative_groups`). It is consumed lazily and never past the
    batch that completes the target, so a generator that samples and scores a new
    batch on each `next` is asked for exactly as many batches as needed. Returns a
    `DynamicSampling`. The training loop concatenates the kept groups of every batch;
    the surplus informative groups of the last batch are dropped.

    Semantics mirror verl's DAPO recipe (`recipe/dapo/dapo_ray_trainer.py`, not part of
    the installed verl 0.9.1 package): after each generation batch, the kept groups
    are appended; while fewer than `train_batch_size` prompts are kept it generates
    again if `max_num_gen_batches <= 0 or num_gen_batches < max_num_gen_batches`, and
    otherwise raises `ValueError("... Generated too many. Please check if your data are
    too difficult ...")`; once enough, it truncates to the first
    `train_batch_size · n` trajectories (`batch[:traj_bsz]`). Here `max_batches` is
    `max_num_gen_batches` (≤ 0: no limit, verl's default 0 in
    `verl/trainer/config/algorithm.py:59`), and running out of budget — or out of
    batches — raises a ValueError as verl does, unless `allow_short=True`, which
    returns what was collected (`n_kept < target_groups`). verl 0.9.1's built-in V1
    `ReplayBuffer` instead refills evicted groups prompt by prompt and ignores
    `max_num_gen_batches` with a warning
    (`verl/trainer/ppo/v1/trainer_base.py:205-211`);
    TRL 1.16 has no dynamic sampling. Used in chapter 9.
    """
    target = check_positive_int(target_groups, "target_groups")
    G = _group_size(group_size)
    if isinstance(max_batches, bool) or not isinstance(max_batches, int):
        raise ValueError(
            f"max_batches must be an integer (<= 0: no limit), got {max_batches!r}"
        )
    if not isinstance(allow_short, bool):
        raise ValueError(f"allow_short must be True or False, got {allow_short!r}")
    if isinstance(batches, torch.Tensor):
        raise ValueError(
            "batches must be an iterable of reward tensors (one per generation batch), "
            "not one tensor; pass [rewards] for a single batch"
        )
    keep: list[torch.Tensor] = []
    drawn = seen = kept = 0
    for rewards in batches:
        info = informative_groups(rewards, G)
        order = torch.cumsum(info.to(torch.int64), 0)  # rank of each informative group
        k = info & (order <= target - kept)
        keep.append(k)
        drawn += info.shape[0]
        seen += int(info.sum())
        kept += int(k.sum())
        if kept >= target:
            return DynamicSampling(keep, len(keep), drawn, seen, kept)
        if max_batches > 0 and len(keep) >= max_batches:
            if allow_short:
                return DynamicSampling(keep, len(keep), drawn, seen, kept)
            raise ValueError(
                f"dynamic sampling drew max_batches={max_batches} batches ({drawn} "
                f"groups) and found only {kept} of the {target_groups} informative "
                "groups it needs: the prompts are too easy or too hard for the policy "
                "(raise max_batches, use max_batches=0 for no limit, or "
                "allow_short=True)"
            )
    if allow_short:
        return DynamicSampling(keep, len(keep), drawn, seen, kept)
    raise ValueError(
        f"batches ran out after {len(keep)} batch(es) ({drawn} groups) with only "
        f"{kept} of the {target_groups} informative groups needed "
        "(pass allow_short=True to train on fewer)"
    )


# ------------------------------------------------------------------ truncated rows


def truncation_loss_mask(
    loss_mask: torch.Tensor, truncated: torch.Tensor
) -> torch.Tensor:
    """DAPO's overlong filtering: the loss mask with every row that hit the length
    limit zeroed.

    `loss_mask (B, T)` 0/1 (float or bool), `truncated (B,)` bool (as
    `RolloutBatch.truncated`). Returns a mask of `loss_mask`'s dtype,
    m'_{i,t} = m_{i,t} · [not truncated_i]. A truncated completion has no final answer,
    so its reward (usually 0 or a length penalty) grades its length rather than its
    reasoning, and pushing its tokens down teaches "be shorter" on good reasoning that
    ran long; dropping the rows from the loss removes that length bias. Rows still
    count in the B of the `"seq-mean-*"` aggregations (their loss is 0); `"token-mean"`
    divides by the remaining tokens only.

    TRL's `mask_truncated_completions=True` (default False,
    `trl/trainer/grpo_config.py:836-837`) does the same:
    `completion_mask * (~is_truncated).unsqueeze(1).int()`, with `is_truncated` the
    rows whose last token is neither EOS nor pad
    (`trl/trainer/grpo_trainer.py:2488-2492`);
    the masked `completion_mask` also feeds `num_items_in_batch` (line 2498), and
    `get_high_entropy_mask` then only sees the remaining tokens. Used in chapter 9.
    """
    check_tensor(loss_mask, "loss_mask", 2)
    m = check_token_mask(loss_mask, loss_mask.shape, "loss_mask")
    check_tensor(truncated, "truncated", 1)
    if truncated.dtype != torch.bool or truncated.shape[0] != loss_mask.shape[0]:
        raise ValueError(
            f"truncated must be a bool tensor of shape ({loss_mask.shape[0]},), got "
            f"{truncated.dtype} {tuple(truncated.shape)}"
        )
    out = m & ~truncated.to(m.device).unsqueeze(1)
    return out if loss_mask.dtype == torch.bool else out.to(loss_mask.dtype)


# ------------------------------------------------------------------ the 80/20 rule


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(x, q)` (linear interpolation) of a 1-D tensor, by sort and lerp,
    without torch.quantile's limit of 2^24 elements."""
    v = torch.sort(x).values
    n = v.shape[0]
    rank = torch.tensor(q, dtype=x.dtype, device=x.device) * (n - 1)
    lo = rank.floor().to(torch.int64).clamp(0, n - 1)
    hi = rank.ceil().to(torch.int64).clamp(0, n - 1)
    return torch.lerp(v[lo], v[hi], rank - lo.to(x.dtype))


def high_entropy_token_mask(
    entropy: torch.Tensor, mask: torch.Tensor, top_fraction: float = 0.2
) -> torch.Tensor:
    """The "80/20" token filter: keep the top-ρ fraction (`top_fraction`) of the
    batch's trained tokens by entropy; `(B, T)` bool.

    Wang et al. (2025, "Beyond the 80/20 rule") find that the policy gradient's useful
    part lives on the ~20 % of tokens where the policy is uncertain ("forking" tokens),
    and that training only on them matches or beats full training while keeping the
    entropy up. With H_{i,t} the token entropies (`token_entropy`, detached or not) and
    the threshold τ = the (1 − ρ)-quantile of H over the trained tokens of the whole
    batch (linear interpolation, as `torch.quantile`):

        keep_{i,t} = m_{i,t} · [H_{i,t} ≥ τ]

    Ties: every token at the threshold is kept, so with tied entropies the kept
    fraction can exceed ρ; for distinct entropies exactly n − ⌈(n − 1)(1 − ρ)⌉ of the
    n trained tokens are kept. ρ = 1 keeps every trained token; ρ = 0 keeps the
    maximum-entropy token(s) only. An empty mask gives an all-False mask. Padded
    positions may hold anything. Multiply the loss mask by the result (keep the
    aggregation's denominator over all tokens or over the kept ones: the frameworks
    differ, see below). The quantile is computed in the entropy's dtype.

    Reproduces TRL's `GRPOTrainer.get_high_entropy_mask`
    (`trl/trainer/grpo_trainer.py:1380-1416`): `torch.quantile(entropies[mask].float(),
    1 − top_entropy_quantile)` over the tokens of every process, then
    `entropies * mask >= threshold` and `& mask`; it is applied for
    `top_entropy_quantile < 1.0` (line 3049) by multiplying the per-token loss
    (line 3144) while the aggregation still divides by the full mask. Differences: TRL
    computes the quantile in float32 whatever the input dtype (here: the input's
    dtype, identical for float32 entropies); TRL's default ρ is 1.0
    (`trl/trainer/grpo_config.py:866-867`), 0.2 here (the paper's). verl 0.9.1 has no
    such filter. Used in chapter 9.
    """
    check_float(entropy, "entropy", 2)
    m = check_per_token(entropy, mask, "entropy")
    rho = _number(top_fraction, "top_fraction", 0.0, 1.0)
    if not bool(m.any()):
        return torch.zeros_like(m)
    x = entropy.detach()
    thr = _quantile(x[m], 1.0 - rho)
    return m & (select(x, m) >= thr)


# ------------------------------------------------------------------ Clip-Cov, KL-Cov


def _centred_cov(logp, advantages, m):
    """Per-token (A − Ā)(log π − mean log π), means over the trained tokens; 0 on
    padding. Detached (a selection score, never differentiated)."""
    dt = compute_dtype(logp, advantages)
    lp = select(logp.detach().to(dt), m)
    A = select(advantages.detach().to(dt), m)
    n = m.sum().clamp_min(1).to(dt)
    return select((A - A.sum() / n) * (lp - lp.sum() / n), m)


def _check_cov_inputs(logp, old_logp, advantages, mask):
    m = check_per_token(logp, mask, "logp")
    old = check_constant(old_logp, logp, "old_logp", m)
    A = check_constant(advantages, logp, "advantages", m)
    return m, old, A


def clip_cov_selection(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    clip_cov_ratio: float = 0.0002,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The tokens whose gradient Clip-Cov removes: `(B, T)` bool.

    Cui et al. (2025, "The Entropy Mechanism of RL for reasoning LMs") show that the
    entropy change of a policy-gradient step is driven by the covariance between a
    token's log-probability and its advantage: confident tokens with high advantage
    lower the entropy. Clip-Cov takes the per-token covariance score

        c_{i,t} = (A_{i,t} − Ā) · (log π_θ(y_{i,t}) − mean log π_θ)

    (means over the batch's trained tokens), forms the candidates — trained tokens not
    already clipped by PPO's clip and with lb < c < ub — and picks
    k = max(⌊ratio · n⌋, 1) of them uniformly at random (n = trained tokens): the
    first k of `torch.randperm(#candidates, generator=generator)` over the candidates
    in row-major order. `generator=None` uses torch's global RNG, as verl; pass a
    `torch.Generator` for a reproducible choice: `torch.manual_seed(s)` before verl's
    call picks the same tokens as `generator=torch.Generator().manual_seed(s)` here.
    "Already clipped" means −A·clip(r, 1 − ε_low, 1 + ε_high) > −A·r, r = π_θ/π_old.

    Reproduces the selection of verl's `compute_policy_loss_clip_cov`
    (`verl/trainer/ppo/core_algos.py:1810-1828`; defaults ratio 0.0002, lb 1, ub 5 at
    `verl/workers/config/actor.py:95-97`). Difference: verl's means divide by
    n + 1e-8 (`masked_mean`, `verl/utils/torch_functional.py:308`), these by n.
    Used in chapter 9.
    """
    m, old, A = _check_cov_inputs(logp, old_logp, advantages, mask)
    ratio_k = _number(clip_cov_ratio, "clip_cov_ratio", 0.0, 1.0, lo_open=True)
    lb = _number(clip_cov_lb, "clip_cov_lb")
    ub = _number(clip_cov_ub, "clip_cov_ub")
    if not lb < ub:
        raise ValueError(f"clip_cov_lb must be < clip_cov_ub, got {lb} and {ub}")
    e_lo = _number(eps_low, "eps_low", 0.0, 1.0, hi_open=True)
    e_hi = (
        e_lo
        if eps_high is None
        else _number(eps_high, "eps_high", 0.0, 1.0, hi_open=True)
    )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {generator!r}"
        )
    with torch.no_grad():
        lp = select(logp.detach().to(old.dtype), m)
        r = safe_ratio(lp - old)
        clipped = (-A * torch.clamp(r, 1.0 - e_lo, 1.0 + e_hi) > -A * r) & m
        cov = _centred_cov(logp, A, m)
        cand = m & ~clipped & (cov > lb) & (cov < ub)
        k = max(int(ratio_k * float(m.sum())), 1)
        idx = torch.nonzero(cand)
        out = torch.zeros_like(m)
        if idx.shape[0]:
            if generator is None:
                perm = torch.randperm(idx.shape[0])
            else:
                perm = torch.randperm(
                    idx.shape[0], generator=generator, device=generator.device
                )
            pick = idx[perm[: min(k, idx.shape[0])].to(idx.device)]
            out[pick[:, 0], pick[:, 1]] = True
    return out


def clip_cov_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    clip_cov_ratio: float = 0.0002,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    generator: torch.Generator | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """Clip-Cov: PPO's clipped loss with the tokens of `clip_cov_selection` removed.

    Per token, with S the selected tokens,

        L_{i,t} = −min(r A, clip(r, 1 − ε_low, 1 + ε_high) A) · [(i, t) ∉ S]

    aggregated with `aggregation` over the full mask (a removed token still counts in
    the denominator; its loss and gradient are 0). Removing the gradient of a few
    high-covariance tokens is what stops their confident, high-advantage updates from
    collapsing the entropy. logp `(B, T)` with gradient; old_logp, advantages constants;
    the selection options as in `clip_cov_selection`. No dual clip (verl's Clip-Cov has
    none). Returns `(loss, stats)`, or `(loss, stats, TokenLosses)` with
    `per_token=True`; stats: those of `ppo_clip_loss` (`clip_frac`, `approx_kl`,
    `ratio_mean`, `ratio_max`) plus `cov_clip_frac` (selected / trained tokens: verl's
    `actor/pg_clipfrac` for this loss) and `n_cov_selected`.

    Reproduces verl's `compute_policy_loss_clip_cov`
    (`verl/trainer/ppo/core_algos.py:1744-1845`; `pg_losses = max(pg_losses1,
    pg_losses2) * corr`, line 1832). Differences: the ratio is `safe_ratio`'s
    (log-ratio clamped to ±20, verl none); verl's `ppo_kl` metric is the k1 mean
    (line 1799), `approx_kl` here the k3. Used in chapter 9.
    """
    sel = clip_cov_selection(
        logp,
        old_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        clip_cov_ratio=clip_cov_ratio,
        clip_cov_lb=clip_cov_lb,
        clip_cov_ub=clip_cov_ub,
        generator=generator,
    )
    _, stats, tl = ppo_clip_loss(
        logp,
        old_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        aggregation=aggregation,
        max_len=max_len,
        per_token=True,
    )
    m = mask != 0
    values = torch.where(sel, torch.zeros_like(tl.values), tl.values)
    loss = aggregate(values, m, aggregation, max_len=max_len)
    n_sel = int(sel.sum())
    stats = {
        **{k: v for k, v in stats.items() if k != "dual_clip_frac"},
        "cov_clip_frac": n_sel / max(int(m.sum()), 1),
        "n_cov_selected": n_sel,
    }
    if not per_token:
        return loss, stats
    return loss, stats, TokenLosses(values, tl.weights)


def kl_cov_selection(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 0.0002,
) -> torch.Tensor:
    """The tokens KL-Cov penalises: the k = max(1, ⌊ratio · n⌋) trained tokens with
    the largest covariance score c_{i,t} (as in `clip_cov_selection`); `(B, T)` bool.

    Ties at the k-th score: the token first in row-major order wins (a stable
    descending sort); an empty mask selects nothing. Reproduces the selection of verl's
    `compute_policy_loss_kl_cov` (`verl/trainer/ppo/core_algos.py:1897-1913`:
    `torch.topk(cov_lst_all, k_percent_nums)` over the trained tokens, whose means are
    plain `.mean()`s; default ratio 0.0002, `verl/workers/config/actor.py:98`); verl's
    `topk` leaves the order of ties unspecified. Used in chapter 9.
    """
    m = check_per_token(logp, mask, "logp")
    A = check_constant(advantages, logp, "advantages", m)
    ratio_k = _number(kl_cov_ratio, "kl_cov_ratio", 0.0, 1.0, lo_open=True)
    out = torch.zeros_like(m)
    n = int(m.sum())
    if n == 0:
        return out
    with torch.no_grad():
        a = A[m]
        lp = logp.detach().to(A.dtype)[m]
        cov = (a - a.mean()) * (lp - lp.mean())
        k = max(1, int(n * ratio_k))
        top = torch.sort(cov, descending=True, stable=True).indices[:k]
        flat = torch.nonzero(m.reshape(-1)).squeeze(1)[top]
        out.view(-1)[flat] = True
    return out


def kl_cov_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 0.0002,
    kl_coef: float = 0.1,
    aggregation: str = "token-mean",
    max_len: int | None = None,
    per_token: bool = False,
):
    """KL-Cov: the unclipped importance-weighted loss, with a |log r| penalty on the
    tokens of highest covariance (`kl_cov_selection`).

    Per token, with r = π_θ/π_old and S the selected tokens,

        L_{i,t} = −r_{i,t} A_{i,t} + β |log r_{i,t}| · [(i, t) ∈ S]

    (β = `kl_coef`), aggregated with `aggregation`. There is no clip at all: the
    penalty on the high-covariance tokens is what keeps them, and the entropy, from
    moving fast. Returns `(loss, stats)` or `(loss, stats, TokenLosses)`; stats:
    `approx_kl` (k3 mean), `abs_kl` (mean |log r| over trained tokens: verl's
    `actor/ppo_kl` for this loss), `kl_cov_frac`, `n_kl_selected`, `ratio_mean`,
    `ratio_max`.

    Reproduces verl's `compute_policy_loss_kl_cov`
    (`verl/trainer/ppo/core_algos.py:1849-1925`; `pg_losses_kl = -advantages * ratio +
    ppo_kl_coef * abs_kl`, line 1894). The default β = 0.1 is verl's config default
    `ppo_kl_coef` (`verl/workers/config/actor.py:99`; the function itself falls back to
    1.0 only when the config holds None, line 1885). Difference: the ratio is
    `safe_ratio`'s (clamped at ±20). Used in chapter 9.
    """
    beta = _number(kl_coef, "kl_coef", 0.0)
    sel = kl_cov_selection(logp, advantages, mask, kl_cov_ratio=kl_cov_ratio)
    lr = log_ratios(logp, old_logp, mask, "token")
    m = mask != 0
    A = check_constant(advantages, lr, "advantages", m)
    ratio = safe_ratio(lr)
    loss_t = select(
        -ratio * A + torch.where(sel, beta * lr.abs(), torch.zeros_like(lr)), m
    )
    loss = aggregate(loss_t, m, aggregation, max_len=max_len)
    with torch.no_grad():
        n = max(int(m.sum()), 1)
        c = lr.detach().clamp(-20.0, 20.0)
        r = ratio.detach()
        n_sel = int(sel.sum())
        stats = {
            "approx_kl": float(select(torch.expm1(c) - c, m).sum() / n),
            "abs_kl": float(select(lr.detach().abs(), m).sum() / n),
            "kl_cov_frac": n_sel / n,
            "n_kl_selected": n_sel,
            "ratio_mean": float(select(r, m).sum() / n),
            "ratio_max": float(r[m].max()) if bool(m.any()) else 1.0,
        }
    if not per_token:
        return loss, stats
    w = aggregation_weights(m, aggregation, max_len=max_len, dtype=loss_t.dtype)
    return loss, stats, TokenLosses(loss_t, w)


# ------------------------------------------------------------------ entropy bonus


def entropy_bonus_loss(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    aggregation: str = "token-mean",
    *,
    max_len: int | None = None,
) -> torch.Tensor:
    """The entropy bonus as a loss term: −c · aggregate(H), to add to a policy loss.

    `entropy (B, T)`: per-token entropies H_{i,t} = −Σ_v π_v log π_v with gradient
    (`token_entropy` of the logits); `coef` c ≥ 0. Minimising it raises the entropy,
    the oldest remedy for entropy collapse; its cost is that a fixed c either does
    little or, on a long run, lets the entropy explode — hence
    `AdaptiveEntropyController`. Padded positions are selected away.

    verl: `policy_loss -= entropy_coeff * agg_loss(entropy, response_mask,
    loss_agg_mode)` (`verl/workers/utils/losses.py:124-128`; `entropy_coeff` fixed,
    default 0, `verl/workers/config/actor.py:166`): the policy loss's own aggregation,
    as here with the same `aggregation`. TRL 1.16: `loss - coef * (entropies *
    mask).sum() / mask.sum().clamp(min=1)` (`trl/trainer/grpo_trainer.py:3199-3211`),
    always the token mean, over the high-entropy tokens when `top_entropy_quantile <
    1.0` (pass that mask here). Used in chapter 9.
    """
    c = _number(coef, "coef", 0.0)
    m = check_per_token(entropy, mask, "entropy")
    return -c * aggregate(entropy, m, aggregation, max_len=max_len)


class AdaptiveEntropyController:
    """Skywork-OR1's adaptive entropy control, as TRL 1.16 implements it: move the
    entropy coefficient c by ±δ towards a target entropy, and apply it only below the
    target.

    After each optimiser step with measured mean token entropy H:

        c ← min(c + δ, c_max)   if H ≤ H_target
        c ← max(c − δ, c_min)   otherwise

    and the coefficient used in the next step's `entropy_bonus_loss` is
    `applied = c if H_last ≤ H_target else 0` (H_last = +∞ before the first update, so
    the first step applies no bonus). Additive steps of δ, not multiplicative ones as
    `AdaptiveKLController`: the coefficient may start at 0 and must be able to return
    there.

    Source: TRL's `use_adaptive_entropy` (`trl/trainer/grpo_config.py:886-910`, citing
    Skywork-OR1, arXiv 2505.22312), the update at
    `trl/trainer/grpo_trainer.py:3229-3239`
    and the gate at line 3207; `self._last_world_entropy = float("inf")` at line 853.
    Defaults are TRL's: `entropy_coef` 0.0, `entropy_coef_min` 0.0, `entropy_coef_max`
    1.0, `entropy_coef_delta` 0.005, `entropy_target` 0.2 (lines 876-907). TRL
    measures H as the token mean over the tokens of the accumulation window (all
    ranks); pass that number to `update`. verl 0.9.1 has only a fixed `entropy_coeff`.
    Used in chapter 9.
    """

    def __init__(
        self,
        init_coef: float = 0.0,
        target: float = 0.2,
        delta: float = 0.005,
        coef_min: float = 0.0,
        coef_max: float = 1.0,
    ) -> None:
        self.coef_min = _number(coef_min, "coef_min", 0.0)
        self.coef_max = _number(coef_max, "coef_max", 0.0)
        if self.coef_min > self.coef_max:
            raise ValueError(
                f"coef_min must be <= coef_max, got {coef_min} and {coef_max}"
            )
        self.coef = _number(init_coef, "init_coef", 0.0)
        self.target = _number(target, "target", 0.0)
        self.delta = _number(delta, "delta", 0.0)
        self.last_entropy = math.inf

    @property
    def applied(self) -> float:
        """The coefficient to use in this step: c if the last measured entropy was at
        or below the target, else 0."""
        return self.coef if self.last_entropy <= self.target else 0.0

    def update(self, entropy: float) -> float:
        """Record the step's mean token entropy; update c; return the next `applied`."""
        if (
            isinstance(entropy, bool)
            or not isinstance(entropy, (int, float))
            or entropy != entropy
        ):
            raise ValueError(f"entropy must be a number (not NaN), got {entropy!r}")
        if entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_entropy = float(entropy)
        return self.applied
