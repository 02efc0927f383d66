"""Sampler/trainer mismatch corrections: importance weights and rejection masks between
the inference engine that sampled the tokens and the trainer that recomputes them.

An RL step for an LLM samples completions with an inference engine (vLLM, SGLang) and
trains with another implementation of the same weights (FSDP, Megatron). The two
disagree: different kernels, precisions (bfloat16 sampling against float32 training),
batch-dependent reductions, MoE routing. So the tokens were drawn from the sampler's
π_rollout, not from the trainer's π_old that the loss assumes, and the batch is
off-policy even on its first epoch. Per token the mismatch is the ratio

    ρ_{i,t} = π_old(y_{i,t} | s_{i,t}) / π_rollout(y_{i,t} | s_{i,t}),

and E_{π_rollout}[ρ f] = E_{π_old}[f]: reweighting by ρ (the sequence level by
Π_t ρ_{i,t}) corrects the gradient, at the price of variance. The corrections here
bound that price:

* `rollout_log_ratios`: log ρ per token, or summed per sequence;
* truncated IS (TIS): `truncated_is_weights`, ρ clamped to [floor, cap];
* masked IS (IcePop, MIS): `masked_is_weights`, ρ where lo ≤ ρ ≤ hi, else 0;
* the off-policy sequence mask of DeepSeek-V3.2 (OPSM): `off_policy_sequence_mask`;
* verl's rejection sampling on divergence statistics: `rejection_mask`.

Inputs: `old_logp (B, T)`, the trainer's log-probabilities of the sampled tokens under
π_old (recomputed by the training engine); `rollout_logp (B, T)`, the sampler's; a 0/1
`mask (B, T)` (float or bool) of trained tokens. All are constants: the outputs are
detached and carry no gradient (the weights change the measure, not the objective).
Padded positions may hold anything (NaN, 10⁴): they are selected away before any
arithmetic, and every output is 0 (or False) there. A row with an empty mask gets
weight 0 and no NaN. Non-finite values on trained positions, non-float log-probs and
mismatched shapes raise ValueError. Computation is in float32, or float64 when an input
is float64 (`policygrad._tensor.compute_dtype`).

Framework facts are quoted from the installed verl 0.9.1
(`verl/trainer/ppo/rollout_corr_helper.py`, "rollout correction") and TRL 1.16
(`trl/trainer/grpo_trainer.py`, "vLLM importance sampling" and OPSM). Both form
log ρ = old − rollout and the sequence ratio as the *sum* of token log-ratios (the
product of token ratios, not the geometric mean). Used in chapter 10 ("Off-policy
training: sequence ratios and corrections").
"""

from __future__ import annotations

import math

import torch

from .._checks import check_float
from .._tensor import select
from .filters import _number
from .masks import check_constant, check_per_token
from .ratios import LOG_RATIO_CLAMP, safe_ratio

__all__ = [
    "CORRECTION_LEVELS",
    "REJECTION_STATISTICS",
    "rollout_log_ratios",
    "truncated_is_weights",
    "masked_is_weights",
    "off_policy_sequence_mask",
    "rejection_mask",
]

#: Levels of the correction weights: one ratio per token, or one per sequence (the
#: product of its token ratios) broadcast over the sequence's tokens.
CORRECTION_LEVELS = ("token", "sequence")

#: The statistics of `rejection_mask`: verl's `rollout_rs` options
#: (`SUPPORTED_ROLLOUT_RS_OPTIONS`, `verl/trainer/ppo/rollout_corr_helper.py:77-89`).
REJECTION_STATISTICS = (
    "token_k1",
    "token_k2",
    "token_k3",
    "seq_sum_k1",
    "seq_sum_k2",
    "seq_sum_k3",
    "seq_mean_k1",
    "seq_mean_k2",
    "seq_mean_k3",
    "seq_max_k2",
    "seq_max_k3",
)

#: verl's batch normalisation divides only by a mean above this
#: (`rollout_corr_helper.py:651`).
_NORM_EPS = 1e-8


# ------------------------------------------------------------------------- validation


def _prepare(old_logp, rollout_logp, mask):
    """The mask (bool) and the selected token log-ratios old − rollout `(B, T)`,
    detached, in the compute dtype, 0 on padding."""
    m = check_per_token(old_logp, mask, "old_logp")
    ro = check_constant(rollout_logp, old_logp, "rollout_logp", m)
    old = select(old_logp.detach().to(ro.dtype), m)
    return m, select(old - ro, m)


def _check_level(level) -> str:
    if level not in CORRECTION_LEVELS:
        raise ValueError(
            f"unknown correction level {level!r}; choose one of {CORRECTION_LEVELS}"
        )
    return level


def _optional_bound(v, name: str, lo: float, *, lo_open: bool):
    return None if v is None else _number(v, name, lo, lo_open=lo_open)


def _check_bounds(lo, hi, lo_name: str, hi_name: str, what: str):
    """`(lo, hi)` as floats or None: lo ≥ 0, hi > 0, lo ≤ hi, not both None."""
    lo = _optional_bound(lo, lo_name, 0.0, lo_open=False)
    hi = _optional_bound(hi, hi_name, 0.0, lo_open=True)
    if lo is None and hi is None:
        raise ValueError(
            f"{what} needs a bound: set {hi_name} or {lo_name} (both None leaves the "
            "weights unbounded: use safe_ratio(rollout_log_ratios(...)) for those)"
        )
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{lo_name} must be <= {hi_name}, got {lo} and {hi}")
    return lo, hi


def _bool_flag(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v


def _raw_weights(lr, level):
    """exp(clamp(log ρ, ±20)) per token, or exp(clamp(Σ_t log ρ, ±20)) per sequence
    broadcast to `(B, T)`; not yet selected."""
    if level == "token":
        return safe_ratio(lr)
    return safe_ratio(lr.sum(-1, keepdim=True)).expand_as(lr)


def _batch_normalize(w, m, level):
    """Divide the weights by their batch mean (over trained tokens, or over the
    sequence weights of the non-empty rows) when that mean exceeds 1e-8."""
    if level == "token":
        mean = w.sum() / m.sum().clamp_min(1).to(w.dtype)
    else:
        rows = m.any(-1)
        # a row's weight sits on each of its trained tokens, 0 elsewhere, and is >= 0
        seq = w.amax(-1) if w.shape[1] else w.new_zeros(w.shape[0])
        mean = seq.sum() / rows.sum().clamp_min(1).to(w.dtype)
    return w / mean if float(mean) > _NORM_EPS else w


# ------------------------------------------------------------------------ log-ratios


def rollout_log_ratios(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    level: str = "token",
) -> torch.Tensor:
    """Log importance ratios of the trainer to the sampler, log ρ = log π_old −
    log π_rollout.

    * `"token"`: log ρ_{i,t} `(B, T)`, 0 where the mask is 0;
    * `"sequence"`: Σ_t log ρ_{i,t} over the row's trained tokens `(B,)`, the log of
      the *product* of token ratios, p_old(y_i) / p_rollout(y_i) (0 for an empty row).

    Not clamped (this is the log; the weights clamp it before `exp`). Detached.
    verl: `log_ratio = old_log_prob - rollout_log_prob`
    (`verl/trainer/ppo/rollout_corr_helper.py:849`), summed per sequence with
    `verl_F.masked_sum` (line 580); TRL: `(old_per_token_logps -
    sampling_per_token_logps) * mask`, `.sum(dim=-1, keepdim=True)` for the sequence
    modes (`trl/trainer/grpo_trainer.py:2662-2669`). Neither uses the mean (GSPO's
    geometric ratio) here. Used in chapter 10.
    """
    m, lr = _prepare(old_logp, rollout_logp, mask)
    level = _check_level(level)
    return lr if level == "token" else lr.sum(-1)


# --------------------------------------------------------------------------- weights


def truncated_is_weights(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "token",
    cap: float | None = 2.0,
    floor: float | None = None,
    batch_normalize: bool = False,
) -> torch.Tensor:
    """Truncated importance sampling (TIS): w = clamp(ρ, floor, cap), `(B, T)`.

    ρ = exp(clamp(log ρ, −20, 20)) per token, or per sequence ρ_i =
    exp(clamp(Σ_t log ρ_{i,t}, −20, 20)) broadcast over the row's trained tokens
    (`level="sequence"`); 0 on padding and on empty rows. `cap` (> 0, or None: no upper
    bound) and `floor` (≥ 0, or None: no lower bound, the default) with floor ≤ cap;
    at least one of them must be set. The weight multiplies the per-token policy loss.

    Truncation trades bias for variance: E_{π_rollout}[min(ρ, C) f] =
    E_{π_old}[f] − E_{π_rollout}[(ρ − C)⁺ f], a bias carried only by the tokens
    (sequences) whose ratio exceeds C, while the weight's second moment is at most C².
    The token level weights each token by its own ratio only and ignores how the
    sampler shifted the distribution of its prefix: biased even without a cap, but of
    low variance; the sequence level is unbiased until the cap binds, but its ratio is
    a product over hundreds of tokens.

    `batch_normalize=True` divides by the batch mean of the weights (over trained
    tokens at the token level; over the sequence weights of the non-empty rows at the
    sequence level) when that mean exceeds 1e-8, so the weights average to 1, as verl's
    `rollout_is_batch_normalize` (`rollout_corr_helper.py:627-655`; single process:
    verl's distributed mean over ranks is not reproduced). The normalised weights may
    exceed `cap`.

    verl: `compute_rollout_correction_weights(log_ratio, response_mask,
    rollout_is="token" | "sequence", rollout_is_threshold=cap)`
    (`rollout_corr_helper.py:522-657`): the log-ratio (sequence level: the masked sum
    of the unclamped token log-ratios, line 580) is clamped to ±`SAFETY_BOUND` = 20
    (line 75) before `exp`, multiplied by the mask and clamped at the upper threshold
    only (line 596): verl's TIS has no floor (a single float threshold is upper-only;
    defaults `rollout_is="sequence"`, threshold 2.0 at
    `verl/trainer/config/algorithm.py:179-180`). Its normalising means divide by
    n + 1e-8 (`verl_F.masked_mean`, `verl/utils/torch_functional.py:308`), these by n.
    TRL: `vllm_importance_sampling_mode="token_truncate" | "sequence_truncate"`
    (`grpo_trainer.py:2661-2685`): `torch.clamp(torch.exp(logps_diff),
    min=vllm_importance_sampling_clip_min, max=vllm_importance_sampling_clip_max)`
    (defaults None and 3.0, `trl/trainer/grpo_config.py:947-961`, TRL's default mode
    is "sequence_mask"). Differences from TRL: TRL does not clamp the log-ratio, so a
    sequence with Σ log ρ < −20 gets weight e^Σ there (or the floor), e^−20 here, and
    one with Σ log ρ > 20 and no cap e^Σ (inf past ≈ 88 in float32), e^20 here; TRL's
    ratio is exp(0) = 1 on padding and its sequence ratio has shape `(B, 1)`, here the
    weights are `(B, T)` and 0 on padding; a NaN sampler log-prob is a difference of
    0 (ratio 1) in TRL (`nan_to_num`, line 2665), a ValueError here; TRL requires
    clip_min < clip_max (`grpo_config.py:1152-1160`), here floor ≤ cap; both require
    at least one bound (TRL at `grpo_config.py:1162-1171`). Used in chapter 10.
    """
    level = _check_level(level)
    lo, hi = _check_bounds(floor, cap, "floor", "cap", "truncated IS")
    _bool_flag(batch_normalize, "batch_normalize")
    m, lr = _prepare(old_logp, rollout_logp, mask)
    with torch.no_grad():
        w = select(torch.clamp(_raw_weights(lr, level), lo, hi), m)
        if batch_normalize:
            w = _batch_normalize(w, m, level)
    return w


def masked_is_weights(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: str = "token",
    lo: float | None = 0.5,
    hi: float | None = 2.0,
    batch_normalize: bool = False,
) -> torch.Tensor:
    """Masked importance sampling (IcePop, MIS): w = ρ · 1[lo ≤ ρ ≤ hi], `(B, T)`.

    ρ as in `truncated_is_weights` (token, or sequence broadcast; log-ratio clamped to
    ±20 before `exp`); 0 on padding and on empty rows. A token (sequence) whose ratio
    leaves [lo, hi] is dropped from the gradient altogether instead of being kept
    with a capped weight: the mismatch is treated as a sign that the sample is broken,
    not merely unlikely. Bounds inclusive; `lo` ≥ 0 or None (no lower bound), `hi` > 0
    or None (no upper bound), lo ≤ hi, not both None. `batch_normalize` as in
    `truncated_is_weights`.

    verl: `compute_rollout_correction_weights(..., rollout_is_threshold="lo_hi")`
    (`rollout_corr_helper.py:597-604`: `token_kept_mask = (raw >= lower) & (raw <=
    upper)`, `torch.where(token_kept_mask, raw, 0)`; verl requires 0 < lower ≤ upper,
    lines 121-127, and both bounds). TRL: `vllm_importance_sampling_mode="token_mask"
    | "sequence_mask"` (`grpo_trainer.py:2686-2703`: ratios `< clip_min` or `> clip_max`
    filled with 0, a None bound read as ∓inf, as here; TRL also accepts both None,
    which masks nothing, a ValueError here). Differences from TRL: TRL does
    not clamp the log-ratio, so with `hi=None` a kept ratio above e^20 is e^20 here
    and e^Σ (possibly inf) there, and with `lo` below e^−20 (or None) a ratio below
    e^−20 is e^−20 here; padding and NaN handling as in `truncated_is_weights`. Used in
    chapter 10.
    """
    level = _check_level(level)
    lo_, hi_ = _check_bounds(lo, hi, "lo", "hi", "masked IS")
    _bool_flag(batch_normalize, "batch_normalize")
    m, lr = _prepare(old_logp, rollout_logp, mask)
    with torch.no_grad():
        r = _raw_weights(lr, level)
        keep = m.clone()
        if lo_ is not None:
            keep &= r >= lo_
        if hi_ is not None:
            keep &= r <= hi_
        w = select(r, keep)
        if batch_normalize:
            w = _batch_normalize(w, m, level)
    return w


# --------------------------------------------------------------------- sequence masks


def off_policy_sequence_mask(
    advantages: torch.Tensor,
    logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    delta: float,
) -> torch.Tensor:
    """The off-policy sequence mask of DeepSeek-V3.2 (OPSM): `(B,)` bool, True for the
    sequences to keep.

    A sequence is dropped when its advantage is negative and the sampler has drifted
    from the current policy on it by more than δ:

        keep_i = (A_i ≥ 0) or (1/|o_i|) Σ_t [log π_rollout(y_it) − log π_θ(y_it)] ≤ δ

    the mean over the row's trained tokens (0 for an empty row, which is therefore
    kept) of the k1 estimate of KL(π_rollout ‖ π_θ). Negative samples that the current
    policy already finds unlikely are the ones whose gradient (pushing their
    probability further down) is most off-policy and most destabilising; positive
    samples are always kept. `logp (B, T)`: the current policy's log-probs (detached
    here); `rollout_logp (B, T)`: the sampler's; `advantages`: `(B,)`, or `(B, T)`
    constant along each row's trained tokens (a ValueError otherwise); `delta` ≥ 0.
    Apply it as `keep[:, None] & (mask != 0)`.

    Reproduces TRL's static `GRPOTrainer.get_off_policy_mask`
    (`trl/trainer/grpo_trainer.py:2944-2968`: `kl_div = sampling_per_token_logps -
    per_token_logps.detach()`, `avg_seq_kl = (kl_div * mask).sum(1, keepdim=True) /
    mask.sum(1, keepdim=True).clamp(min=1.0)`, `(advantages >= 0) | (avg_seq_kl <=
    off_policy_threshold)`), enabled by `off_policy_mask_threshold` (δ; default None,
    off; "expects a positive value (e.g., 0.5)", `grpo_config.py:963-970`) and applied
    as `per_token_loss * off_policy_mask` (line 3141). TRL passes its `(B,)` advantages
    unsqueezed to `(B, 1)` (line 3059) and returns a `(B, 1)` float; with per-token
    `(B, T)` advantages its mask is per token, equal to this one when they are constant
    along rows. TRL replaces a NaN KL term (a token vLLM could not score) by 0 (line
    2961); here a NaN on a trained token is a ValueError. verl 0.9.1 has no OPSM.
    Paper: DeepSeek-AI, "DeepSeek-V3.2" (2025), arXiv:2512.02556, Eq. 9. Used in
    chapter 10.
    """
    d = _number(delta, "delta", 0.0)
    m = check_per_token(logp, mask, "logp")
    ro = check_constant(rollout_logp, logp, "rollout_logp", m)
    check_float(advantages, "advantages", (1, 2))
    B = logp.shape[0]
    with torch.no_grad():
        if advantages.dim() == 1:
            if advantages.shape[0] != B:
                raise ValueError(
                    f"per-sequence advantages must have shape ({B},), got "
                    f"{tuple(advantages.shape)}"
                )
            A = check_constant(advantages, advantages, "advantages", m.any(-1))
        else:
            A2 = check_constant(advantages, logp, "advantages", m)
            inf = torch.tensor(math.inf, dtype=A2.dtype, device=A2.device)
            hi = torch.where(m, A2, -inf).amax(-1)
            lo = torch.where(m, A2, inf).amin(-1)
            rows = m.any(-1)
            if bool((rows & (hi != lo)).any()):
                raise ValueError(
                    "per-token advantages must be constant along each row's trained "
                    "tokens (one advantage per sequence); pass them as (B,)"
                )
            A = torch.where(rows, hi, 0.0)
        lp = select(logp.detach().to(ro.dtype), m)
        n = m.sum(-1).clamp_min(1).to(ro.dtype)
        kl = (ro - lp).sum(-1) / n
        return (A >= 0) | (kl <= d)


def _check_threshold(statistic, threshold):
    """verl's threshold rules (`_parse_rollout_rs_thresholds`,
    `rollout_corr_helper.py:132-194`): `(lower, upper)` for k1, `upper` otherwise."""
    if statistic not in REJECTION_STATISTICS:
        raise ValueError(
            f"unknown rejection statistic {statistic!r}; choose one of "
            f"{REJECTION_STATISTICS}"
        )
    if not statistic.endswith("k1"):
        if isinstance(threshold, (tuple, list)):
            raise ValueError(
                f"statistic {statistic!r} takes a single upper bound, got "
                f"{threshold!r} (a (lower, upper) window belongs to the k1 statistics)"
            )
        return None, _number(threshold, "threshold", 0.0, lo_open=True)
    if isinstance(threshold, (tuple, list)):
        if len(threshold) != 2:
            raise ValueError(
                f"a k1 threshold is an upper bound or a (lower, upper) pair, got "
                f"{threshold!r}"
            )
        lower = _number(threshold[0], "threshold lower bound", 0.0, lo_open=True)
        upper = _number(threshold[1], "threshold upper bound", 0.0, lo_open=True)
    else:
        upper = _number(threshold, "threshold", 0.0, lo_open=True)
        lower = 1.0 / upper
    if lower > upper:
        raise ValueError(
            f"the k1 window needs lower <= upper, got lower={lower} and upper={upper}"
            " (a single threshold u means (1/u, u): u must be >= 1)"
        )
    return lower, upper


def rejection_mask(
    old_logp: torch.Tensor,
    rollout_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    statistic: str,
    threshold,
) -> torch.Tensor:
    """verl's rejection sampling: the trained tokens that pass a divergence test,
    `(B, T)` bool (False on padding).

    With c_{i,t} = clamp(log ρ_{i,t}, −20, 20), log ρ = log π_old − log π_rollout, the
    per-token statistics are verl's

        k1 = −c,   k2 = c²/2,   k3 = e^c − 1 − c

    (k1 is −log ρ = log π_rollout/π_old: the k1 estimate of KL(π_rollout ‖ π_old);
    k2 and k3 are ≥ 0). `statistic` is one of `REJECTION_STATISTICS`:

    * `token_k{1,2,3}`: the token's own value; the test removes single tokens;
    * `seq_sum_k{1,2,3}`, `seq_mean_k{1,2,3}`, `seq_max_k{2,3}`: the sum, mean or max
      over the row's trained tokens, one test per sequence; a failing sequence loses
      all its tokens.

    Tests: k2 and k3 keep stat ≤ `threshold` (a number > 0). k1 keeps log(lower) ≤
    stat ≤ log(upper) for `threshold=(lower, upper)`, 0 < lower ≤ upper, and a single
    number u means (1/u, u) (u ≥ 1). Mind the sign: since k1 = −log ρ, the window is on
    1/ρ = π_rollout/π_old, i.e. 1/upper ≤ ρ ≤ 1/lower for `token_k1`, the same for the
    sequence ratio Π_t ρ_t (`seq_sum_k1`) and for its geometric mean (`seq_mean_k1`,
    verl's "Geo-RS", default window (0.999, 1.001) at
    `verl/trainer/config/algorithm.py:262-282`). A symmetric window (1/u, u) is the
    same on ρ and 1/ρ; an asymmetric one is mirrored.

    Reproduces `compute_rollout_rejection_mask`
    (`verl/trainer/ppo/rollout_corr_helper.py:197-413`: statistics at lines 262-265,
    tests at 312-372, `response_mask * combined_mask` at 412), called through
    `compute_rollout_correction_and_rejection_mask(..., rollout_rs=statistic,
    rollout_rs_threshold=...)` (lines 786-901). verl's comma-separated chains of
    options (`"token_k1,seq_mean_k3"`) keep the tokens that pass every option: the
    logical AND of the masks of this function. Differences: verl writes the k1
    window as the string `"lower_upper"`, here a pair; k3 is computed as
    `expm1(c) − c` (verl `exp(c) − 1 − c`, equal up to round-off, never negative
    here); `seq_mean` divides by n, verl by n + 1e-8 (`verl_F.masked_mean`,
    `verl/utils/torch_functional.py:308`); verl returns the mask in the dtype of
    `response_mask`, here bool. TRL 1.16 has no rejection sampling of this kind (its
    masked IS is `masked_is_weights`). Used in chapter 10.
    """
    lower, upper = _check_threshold(statistic, threshold)
    m, lr = _prepare(old_logp, rollout_logp, mask)
    with torch.no_grad():
        c = torch.clamp(lr, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kind = statistic[-2:]
        if kind == "k1":
            tok = -c
        elif kind == "k2":
            tok = 0.5 * c.square()
        else:
            tok = torch.expm1(c) - c
        tok = select(tok, m)
        if statistic.startswith("token"):
            stat = tok
        elif statistic.startswith("seq_sum"):
            stat = tok.sum(-1, keepdim=True)
        elif statistic.startswith("seq_mean"):
            stat = tok.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)
        else:
            # the row max over trained tokens, 0 on an empty row (as verl, line 279-284)
            neg = torch.tensor(-math.inf, dtype=tok.dtype, device=tok.device)
            top = torch.where(m, tok, neg).amax(-1, keepdim=True)
            stat = torch.where(m.any(-1, keepdim=True), top, 0.0)
        if kind == "k1":
            keep = (stat >= math.log(lower)) & (stat <= math.log(upper))
        else:
            keep = stat <= upper
        return keep & m
