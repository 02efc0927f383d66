"""Sequence-level ratios and sampler/trainer corrections as registered methods.

Derived in chapter 10 ("Off-policy training: sequence ratios and corrections").

GSPO (one clipped geometric-mean ratio per sequence), GSPO-token (the same value, a
per-token gradient) and GMPO (the geometric mean of the token ratios, each clipped in
log space) change the ratio of GRPO's loss. The corrections change the measure: they
weight (or drop) each token or sequence by how far the *sampler* that drew it is from
the trainer, ρ = π_old / π_rollout from `batch.old_log_probs` and
`batch.rollout_log_probs` (`train(sampler_dtype=..., stale_steps=..., temperature=...)`
make them differ). `rollout_correction` adds one of them to any method whose loss is
linear in the advantage per token: truncated IS (TIS), masked IS (IcePop/MIS) or the
off-policy sequence mask (OPSM). Registered: `gspo`, `gspo_token`, `gmpo`, `grpo_tis`,
`grpo_icepop`, `grpo_opsm`, each on GRPO's reward side without KL (β = 0).

The parts live in `policygrad.trajectory_side` (`sequence_ratios`, `corrections`,
`ppo_clip_loss(level="geometric")`); the frameworks' names are read off TRL 1.16
(`trl/trainer/grpo_config.py`, `trl/experimental/gmpo`) and verl 0.9.1
(`verl/trainer/config/algorithm.py`, `verl/trainer/ppo/core_algos.py`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .._tensor import select
from ..rollout import RolloutBatch
from ..trajectory_side.corrections import (
    CORRECTION_LEVELS,
    masked_is_weights,
    off_policy_sequence_mask,
    truncated_is_weights,
)
from ..trajectory_side.filters import _number
from ..trajectory_side.ppo import ppo_clip_loss
from ..trajectory_side.sequence_ratios import gmpo_loss, gspo_token_loss
from .base import Method, register
from .recipes import Recipe, Unsupported
from .trajectory_variants import _NO_KL, _amend, _base

__all__ = [
    "OFF_POLICY_GROUP_SIZE",
    "CORRECTIONS",
    "gspo_method_loss",
    "gspo_token_method_loss",
    "gmpo_method_loss",
    "rollout_correction_weights",
    "corrected_loss",
    "gspo",
    "gspo_token",
    "gmpo",
    "rollout_correction",
]

#: The group size of the registered methods of this module (GRPO's).
OFF_POLICY_GROUP_SIZE = 8

#: The corrections `rollout_correction` adds: truncated IS, masked IS (IcePop), the
#: off-policy sequence mask of DeepSeek-V3.2.
CORRECTIONS = ("tis", "mis", "opsm")

_P = "tests/parity/"
_ACTOR = "actor_rollout_ref.actor."
_RC = "algorithm.rollout_correction."
_SEQ = _P + "test_sequence_ratios_parity.py::"
_CORR = _P + "test_corrections_parity.py::"
_OFF = _P + "test_off_policy_methods.py::"


# --------------------------------------------------------------- the method parts


def gspo_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    eps: float = 3e-4,
    eps_high: float = 4e-4,
    aggregation: str = "seq-mean-token-mean",
) -> tuple[torch.Tensor, dict]:
    """GSPO's loss on a batch: PPO's clip on the sequence ratio
    s_i = exp((1/|o_i|) Σ_t log r_{i,t}) (`ppo_clip_loss(level="geometric")`), with
    the gradient of s_i flowing through every token (TRL's
    `importance_sampling_level="sequence"`). One advantage per row."""
    return ppo_clip_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        eps_low=eps,
        eps_high=eps_high,
        aggregation=aggregation,
        level="geometric",
    )


def gspo_token_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    eps: float = 3e-4,
    eps_high: float = 4e-4,
    aggregation: str = "seq-mean-token-mean",
) -> tuple[torch.Tensor, dict]:
    """GSPO-token on a batch: `policygrad.trajectory_side.gspo_token_loss` (verl's
    `loss_mode="gspo"`); equals `gspo_method_loss` for advantages constant along
    rows."""
    return gspo_token_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        eps_low=eps,
        eps_high=eps_high,
        aggregation=aggregation,
    )


def gmpo_method_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
) -> tuple[torch.Tensor, dict]:
    """GMPO on a batch: `policygrad.trajectory_side.gmpo_loss` (the log-space clip
    range (−`clip_low`, `clip_high`), the mean over rows)."""
    return gmpo_loss(
        logp,
        batch.old_log_probs,
        advantages,
        batch.loss_mask,
        clip_low=clip_low,
        clip_high=clip_high,
    )


def _check_correction(kind, level, cap, floor, lo, hi, delta) -> None:
    """ValueError for a bad correction setting (at build time, with a dry run)."""
    if kind not in CORRECTIONS:
        raise ValueError(f"unknown correction {kind!r}; choose one of {CORRECTIONS}")
    if level not in CORRECTION_LEVELS:
        raise ValueError(
            f"unknown correction level {level!r}; choose one of {CORRECTION_LEVELS}"
        )
    z = torch.zeros(1, 1)
    m = torch.ones(1, 1)
    if kind == "tis":
        truncated_is_weights(z, z, m, level=level, cap=cap, floor=floor)
    elif kind == "mis":
        masked_is_weights(z, z, m, level=level, lo=lo, hi=hi)
    else:
        _number(delta, "delta", 0.0)


def rollout_correction_weights(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    kind: str,
    level: str = "token",
    cap: float | None = 2.0,
    floor: float | None = None,
    lo: float | None = 0.5,
    hi: float | None = 5.0,
    delta: float = 0.5,
) -> torch.Tensor:
    """The correction's weight of every token, `(B, T)`, detached; 0 on padding.

    With ρ = π_old / π_rollout from `batch.old_log_probs` and
    `batch.rollout_log_probs` (the trainer's and the sampler's log-probs of the
    sampled tokens):

    * `"tis"`: `truncated_is_weights` (ρ clamped to [`floor`, `cap`]) at `level`;
    * `"mis"`: `masked_is_weights` (ρ where `lo` ≤ ρ ≤ `hi`, else 0) at `level`;
    * `"opsm"`: 1 or 0 per sequence, `off_policy_sequence_mask` with threshold
      `delta` between the sampler and the *current* policy (`logp`, detached): a
      sequence with A < 0 whose mean k1 estimate of KL(π_rollout ‖ π_θ) exceeds δ
      gets 0. Without a separate sampler (`rollout_log_probs` None) the sampler is
      π_old, as in TRL, so the mask sees the drift of the later minibatches.

    For TIS and MIS without a separate sampler every weight is 1 (the batch is
    on-policy for the sampler)."""
    m = batch.loss_mask
    rollout = batch.rollout_log_probs
    if kind == "opsm":
        sampler = batch.old_log_probs if rollout is None else rollout
        keep = off_policy_sequence_mask(advantages, logp, sampler, m, delta=delta)
        return select(keep[:, None].expand_as(m).to(logp.dtype), m != 0)
    if rollout is None:
        return (m != 0).to(logp.dtype)
    if kind == "tis":
        w = truncated_is_weights(
            batch.old_log_probs, rollout, m, level=level, cap=cap, floor=floor
        )
    else:
        w = masked_is_weights(
            batch.old_log_probs, rollout, m, level=level, lo=lo, hi=hi
        )
    return w.to(logp.dtype)


def corrected_loss(
    logp: torch.Tensor,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    *,
    inner,
    kind: str,
    level: str = "token",
    cap: float | None = 2.0,
    floor: float | None = None,
    lo: float | None = 0.5,
    hi: float | None = 5.0,
    delta: float = 0.5,
) -> tuple[torch.Tensor, dict]:
    """The loss `inner` with every token's policy loss multiplied by its correction
    weight w (`rollout_correction_weights`).

    It passes the advantages A·w to `inner`: for a loss linear in the advantage per
    token (PPO's clip, with or without dual clip, CISPO, the REINFORCE loss),
    −min(r A w, clip(r) A w) = w · (−min(r A, clip(r) A)) for w ≥ 0, so this is the
    per-token loss times w, which is how verl (`pg_losses * rollout_is_weights`,
    `core_algos.py:1364-1365`) and TRL (`per_token_loss * importance_sampling_ratio`
    and `* off_policy_mask`, `grpo_trainer.py:3140-3147`) apply them; a KL term of
    `inner` is not weighted, as in both. The normaliser of the aggregation is
    unchanged (a dropped token still counts in token-mean's denominator, as in both).
    Stats of `inner`, plus `is_weight_mean` (the mean weight over trained tokens)
    and `is_zero_frac` (the fraction of trained tokens whose weight is 0).
    """
    w = rollout_correction_weights(
        logp,
        batch,
        advantages,
        kind=kind,
        level=level,
        cap=cap,
        floor=floor,
        lo=lo,
        hi=hi,
        delta=delta,
    )
    loss, stats = inner(logp, batch, select(advantages, batch.loss_mask != 0) * w)
    m = batch.loss_mask != 0
    n = float(m.sum().clamp_min(1))
    stats = dict(
        stats,
        is_weight_mean=float(w[m].double().sum()) / n if bool(m.any()) else 1.0,
        is_zero_frac=float(((w == 0) & m).sum()) / n,
    )
    return loss, stats


# ------------------------------------------------------------------- the builders


def _check_eps(eps, name: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {eps!r}")
    return float(eps)


_ON_POLICY = (
    "with one minibatch and one epoch every ratio is exactly 1 and the method is "
    "GRPO without KL: the sequence ratio acts only on later minibatches or epochs"
)


def gspo(
    name: str = "gspo",
    *,
    group_size: int = OFF_POLICY_GROUP_SIZE,
    eps: float = 3e-4,
    eps_high: float = 4e-4,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """GSPO (Zheng et al., 2025): GRPO's advantages, PPO's clip on the sequence ratio
    s_i = (π_θ(y_i | x) / π_old(y_i | x))^(1/|o_i|), ε = 3·10⁻⁴ / 4·10⁻⁴ (the paper's
    §5.1), seq-mean-token-mean, no KL. The paper splits each batch into 4
    minibatches (`minibatches=4`); with 1 the ratio is always 1."""
    e_lo, e_hi = _check_eps(eps, "eps"), _check_eps(eps_high, "eps_high")
    base = _base(
        name, group_size, 0.2, 0.2, "seq-mean-token-mean", inner_epochs, minibatches
    )
    trl = _amend(
        base.trl,
        {
            "importance_sampling_level": "sequence",
            "loss_type": "grpo",
            "epsilon": e_lo,
            "epsilon_high": e_hi,
        },
        pitfalls=(
            "epsilon_high must be set: left unset it falls back to epsilon (3e-4 "
            "both ways)",
        ),
        parity=(
            _SEQ + "test_gspo_token_is_trls_sequence_level_gspo_for_row_advantages",
        ),
    )
    verl = _amend(
        base.verl,
        {
            _ACTOR + "policy_loss.loss_mode": "gspo",
            _ACTOR + "clip_ratio_low": e_lo,
            _ACTOR + "clip_ratio_high": e_hi,
        },
        differences=(
            "verl's gspo is the token form (GSPO-token); with GRPO's one advantage "
            "per sequence its value and gradient are GSPO's",
            "verl clamps log s at 10 before exp, the package at +-20",
        ),
        parity=(_SEQ + "test_gspo_token_matches_verl",),
        other_loss=True,
    )
    return dataclasses.replace(
        base,
        title=(
            f"GSPO (sequence ratio, eps = {e_lo:g}/{e_hi:g}, group size {group_size})"
        ),
        loss=functools.partial(gspo_method_loss, eps=e_lo, eps_high=e_hi),
        paper="zheng2025gspo",
        why="the reward is per sequence, so the importance ratio should be too: one "
        "ratio per completion, the geometric mean of its token ratios, clipped as a "
        "whole; a single extreme token no longer dominates the update and the "
        f"ratio's noise does not grow with length; {_NO_KL}",
        unsolved="a clip on the sequence ratio drops or keeps whole sequences, so a "
        "few off-policy tokens remove every token's gradient; the geometric mean is "
        "not an unbiased correction of the sampling distribution (only the product "
        "is); GRPO's difficulty and length weighting are kept; " + _ON_POLICY,
        trl=trl,
        verl=verl,
        section="sec-offpolicy-sequence",
        extra={**base.extra, "eps": e_lo, "eps_high": e_hi, "ratio_level": "geometric"},
    )


def gspo_token(
    name: str = "gspo_token",
    *,
    group_size: int = OFF_POLICY_GROUP_SIZE,
    eps: float = 3e-4,
    eps_high: float = 4e-4,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """GSPO-token: `gspo` with the per-token ratio of value s_i and gradient
    s_i ∇ log π_θ(y_{i,t}) (`gspo_token_loss`), which also admits token-level
    advantages. verl's `loss_mode="gspo"`; TRL 1.16 has no token form."""
    e_lo, e_hi = _check_eps(eps, "eps"), _check_eps(eps_high, "eps_high")
    g = gspo(
        name,
        group_size=group_size,
        eps=e_lo,
        eps_high=e_hi,
        inner_epochs=inner_epochs,
        minibatches=minibatches,
    )
    verl = dataclasses.replace(
        g.verl,
        differences=tuple(d for d in g.verl.differences if "token form" not in d),
    )
    return dataclasses.replace(
        g,
        title=f"GSPO-token (eps = {e_lo:g}/{e_hi:g}, group size {group_size})",
        loss=functools.partial(gspo_token_method_loss, eps=e_lo, eps_high=e_hi),
        why="GSPO's sequence ratio in value, with the gradient of each token's own "
        "log-probability: the same update as GSPO for one advantage per sequence, "
        f"and it admits per-token advantages; {_NO_KL}",
        trl=Unsupported(
            "trl",
            "TRL 1.16 has no GSPO-token: importance_sampling_level='sequence' is "
            "GSPO with the full gradient of the sequence ratio",
            "importance_sampling_level='sequence' (the same update for one "
            "advantage per sequence)",
        ),
        verl=verl,
        extra={**g.extra, "ratio_level": "gspo-token"},
    )


def gmpo(
    name: str = "gmpo",
    *,
    group_size: int = OFF_POLICY_GROUP_SIZE,
    clip_low: float = 0.4,
    clip_high: float = 0.4,
    inner_epochs: int = 1,
    minibatches: int = 1,
) -> Method:
    """GMPO (Zhao et al., 2025): GRPO's advantages; per sequence −Ā_i times the
    geometric mean of its token ratios, each clipped in log space to
    (−`clip_low`, `clip_high`) on the side its advantage's sign makes pessimistic;
    the mean over rows; no KL. Defaults: the paper's range (e^−0.4, e^0.4)."""
    c_lo = _number(clip_low, "clip_low", 0.0, 20.0, hi_open=True)
    c_hi = _number(clip_high, "clip_high", 0.0, 20.0, hi_open=True)
    base = _base(
        name, group_size, 0.2, 0.2, "seq-mean-token-mean", inner_epochs, minibatches
    )
    trl = dataclasses.replace(
        _amend(
            base.trl,
            {"epsilon": c_lo, "epsilon_high": c_hi},
            drop=("loss_type",),
            differences=(
                "GMPOTrainer ignores loss_type (a plain mean over sequences, as "
                "here) and does not apply the vLLM importance-sampling correction",
            ),
            pitfalls=(
                "GMPOConfig's epsilon and epsilon_high are log-space bounds: the "
                "ratio range is (exp(-epsilon), exp(epsilon_high)), not "
                "(1 - epsilon, 1 + epsilon_high)",
            ),
            parity=(_OFF + "test_gmpo_matches_trls_gmpo_trainer",),
        ),
        trainer="trl.experimental.gmpo.GMPOTrainer",
    )
    verl = _amend(
        base.verl,
        {
            _ACTOR + "policy_loss.loss_mode": "geo_mean",
            _ACTOR + "clip_ratio_low": c_lo,
            _ACTOR + "clip_ratio_high": c_hi,
        },
        differences=(
            "verl's geo_mean ignores loss_agg_mode (the mean over rows, as here) and "
            "divides by |o_i| + 1e-8",
        ),
        pitfalls=(
            "for loss_mode=geo_mean clip_ratio_low/high are log-space bounds, not "
            "1 -/+ epsilon",
        ),
        parity=(_SEQ + "test_gmpo_matches_verls_geo_mean",),
        other_loss=True,
    )
    return dataclasses.replace(
        base,
        title=f"GMPO (geometric mean, log clip {c_lo:g}/{c_hi:g}, group size "
        f"{group_size})",
        loss=functools.partial(gmpo_method_loss, clip_low=c_lo, clip_high=c_hi),
        paper="zhao2025gmpo",
        why="GRPO's arithmetic mean of token ratios is dominated by its largest "
        "term; the geometric mean damps an outlier token ratio to the |o_i|-th root "
        "of its influence, so a wider clip range can be used; " + _NO_KL,
        unsolved="the update is not a reweighting of the sampling distribution (the "
        "geometric mean is not an importance weight); the clip is per token but the "
        "weight per sequence, so one clipped token changes its whole sequence's "
        "weight; GRPO's difficulty weighting is kept; " + _ON_POLICY,
        trl=trl,
        verl=verl,
        section="sec-offpolicy-sequence",
        extra={
            **base.extra,
            "clip_low": c_lo,
            "clip_high": c_hi,
            "ratio_level": "gmpo",
        },
    )


def _trl_correction(kind, level, cap, floor, lo, hi, delta) -> dict:
    if kind == "opsm":
        # with use_vllm=True TRL's default sequence mask (clip_max 3.0) would apply too
        return {
            "off_policy_mask_threshold": float(delta),
            "vllm_importance_sampling_correction": False,
        }
    mode = f"{level}_{'truncate' if kind == 'tis' else 'mask'}"
    low, high = (floor, cap) if kind == "tis" else (lo, hi)
    return {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": mode,
        "vllm_importance_sampling_clip_min": None if low is None else float(low),
        "vllm_importance_sampling_clip_max": None if high is None else float(high),
    }


def _verl_correction(kind, level, cap, floor, lo, hi) -> dict | str:
    """verl's overrides, or why there are none."""
    if kind == "opsm":
        return "verl 0.9.1 has no off-policy sequence mask"
    if kind == "tis":
        if floor is not None or cap is None:
            return (
                "verl 0.9.1's truncated IS has an upper bound only (a float "
                "rollout_is_threshold)"
            )
        threshold: float | str = float(cap)
    else:
        if lo is None or hi is None or lo <= 0:
            return "verl 0.9.1's masked IS needs both bounds, 0 < lo <= hi"
        threshold = f"{float(lo)}_{float(hi)}"
    return {_RC + "rollout_is": level, _RC + "rollout_is_threshold": threshold}


def rollout_correction(
    method: Method,
    kind: str,
    *,
    name: str | None = None,
    level: str = "token",
    cap: float | None = 2.0,
    floor: float | None = None,
    lo: float | None = 0.5,
    hi: float | None = 5.0,
    delta: float = 0.5,
) -> Method:
    """`method` with a sampler/trainer correction: its loss becomes `corrected_loss`
    of its loss (the per-token policy loss times the weight of
    `rollout_correction_weights`).

    kind: `"tis"` (truncated IS, `cap`/`floor`), `"mis"` (masked IS, IcePop: keep ρ in
    [`lo`, `hi`]) or `"opsm"` (drop A < 0 sequences whose mean KL(π_rollout ‖ π_θ)
    exceeds `delta`), at `level` `"token"` or `"sequence"` (TIS and MIS). `name`
    default: `{method.name}_{kind}`. The loss must be linear in the advantage per
    token: GMPO's (a sequence-level product) is refused (GSPO's qualifies: its
    per-token loss −min(s_i A w, clip(s_i) A w) shares the sequence ratio s_i). Bad
    settings raise ValueError here. TRL applies the IS corrections only with
    `use_vllm=True` (its `vllm_importance_sampling_*`); verl's are
    `algorithm.rollout_correction`.
    """
    if not isinstance(method, Method):
        raise ValueError(f"method must be a Method, got {type(method).__name__}")
    _check_correction(kind, level, cap, floor, lo, hi, delta)
    ratio_level = method.extra.get("ratio_level")
    if ratio_level == "gmpo":
        raise ValueError(
            "GMPO's loss is a product over the sequence, not linear in each token's "
            "advantage; weight its sequences instead (verl multiplies by the "
            "geometric mean of the token weights)"
        )
    options = dict(level=level, cap=cap, floor=floor, lo=lo, hi=hi, delta=delta)
    label = {
        "tis": f"TIS ({level}, cap {cap})",
        "mis": f"masked IS ({level}, [{lo}, {hi}])",
        "opsm": f"OPSM (delta {delta:g})",
    }[kind]
    trl, verl = method.trl, method.verl
    if isinstance(trl, Recipe):
        trl = _amend(
            trl,
            _trl_correction(kind, **options),
            pitfalls=(
                "TRL corrects only with use_vllm=True, and then by default "
                "(vllm_importance_sampling_mode='sequence_mask', clip_max 3.0): a "
                "plain GRPOConfig with vLLM is already corrected"
                + (
                    "; the OPSM recipe switches that default off "
                    "(vllm_importance_sampling_correction=False)"
                    if kind == "opsm"
                    else ""
                ),
            ),
            parity=(_OFF + "test_corrections_match_trls_compute_loss",),
        )
    verl_settings = _verl_correction(kind, level, cap, floor, lo, hi)
    if isinstance(verl, Recipe):
        if isinstance(verl_settings, str):
            verl = Unsupported("verl", verl_settings, None)
        else:
            verl = _amend(
                verl,
                verl_settings,
                pitfalls=(
                    "algorithm.rollout_correction.rollout_is is null in verl's YAML "
                    "(the dataclass default 'sequence' is not what a run gets): "
                    "set it",
                ),
                parity=(
                    _P + "test_verl_recipes.py::"
                    "test_to_verl_settings_reproduce_the_method_in_verl",
                ),
            )
    paper = {
        "tis": "yao2025offpolicy",
        "mis": "ling2025icepop",
        "opsm": "deepseek2025v32",
    }[kind]
    why = {
        "tis": "the sampler is not the trainer (lower precision, other kernels, stale "
        "weights), so the batch is off-policy; the ratio rho = pi_old / pi_rollout "
        "corrects the measure and its cap bounds the variance the correction adds",
        "mis": "a token (sequence) whose sampler and trainer disagree by more than a "
        "factor is more likely broken than informative: drop it, and weight the rest "
        "by rho",
        "opsm": "a negative sample that the current policy already finds unlikely "
        "pushes down the probability of what it would not sample: drop such "
        "sequences when the sampler has drifted from the policy by more than delta",
    }[kind]
    unsolved = {
        "tis": "the cap biases the update towards the sampler wherever it binds; at "
        "the token level the prefix's mismatch is ignored (biased even uncapped); "
        "at the sequence level the weight's variance grows with length",
        "mis": "the dropped samples bias the update and their number depends on "
        "the length (a sequence mask) or thins long completions (a token mask); the "
        "window is a hyperparameter",
        "opsm": "it is not a reweighting: kept sequences are as off-policy as "
        "before, and the positive ones are never corrected; delta is a "
        "hyperparameter of the mismatch's scale",
    }[kind]
    return dataclasses.replace(
        method,
        name=name or f"{method.name}_{kind}",
        title=f"{method.title.split(' (')[0]} + {label}",
        loss=functools.partial(corrected_loss, inner=method.loss, kind=kind, **options),
        changes=tuple(dict.fromkeys((*method.changes, "trajectory"))),
        paper=paper,
        why=why,
        unsolved=unsolved,
        trl=trl,
        verl=verl,
        section="sec-offpolicy-corrections",
        extra={**method.extra, "correction": kind, **options},
    )


def _grpo_no_kl(name: str) -> Method:
    """GRPO without KL, token-mean (both frameworks' default): the base of the
    registered corrections."""
    return _base(name, OFF_POLICY_GROUP_SIZE, 0.2, 0.2, "token-mean", 1, 1)


register(gspo())
register(gspo_token())
register(gmpo())
register(rollout_correction(_grpo_no_kl("grpo"), "tis", name="grpo_tis"))
register(rollout_correction(_grpo_no_kl("grpo"), "mis", name="grpo_icepop"))
register(rollout_correction(_grpo_no_kl("grpo"), "opsm", name="grpo_opsm"))
