"""Parity of ``policygrad.trajectory_side.corrections`` with verl 0.9 and TRL 1.16 (their code as oracle).

Float64 inputs, several seeds, 16 rows of 0 to 12 tokens (one empty row), log-ratios old - rollout with a
spread of 0.9 per token, so that token and sequence ratios reach far beyond the caps and windows; every
comparison asserts that its truncation, masking or rejection binds. Padding holds finite garbage (+-1e4:
verl and TRL multiply by the mask, so a NaN there would reach their outputs, not ours). rtol 1e-6.

**verl** (``rch`` is ``verl/trainer/ppo/rollout_corr_helper.py``), its functions called directly:

* ``truncated_is_weights`` vs ``compute_rollout_correction_weights(..., rollout_is=level,
  rollout_is_threshold=cap)`` (``rch:522-657``), token and sequence, with and without
  ``rollout_is_batch_normalize``;
* ``masked_is_weights(lo, hi)`` vs the same with ``rollout_is_threshold="lo_hi"`` (IcePop, ``rch:597-604``);
* ``rejection_mask`` vs ``compute_rollout_rejection_mask`` (``rch:197-413``) for all eleven ``rollout_rs``
  options, single and ``"lower_upper"`` k1 thresholds, and a comma-separated chain vs the AND of masks;
* the unified ``compute_rollout_correction_and_rejection_mask`` (``rch:786-901``) for IS weights and mask
  together.

**TRL** (``trl/trainer/grpo_trainer.py``):

* the vLLM importance-sampling ratio is inline code of ``_generate_and_score_completions``
  (``grpo_trainer.py:2661-2707``): ``trl_vllm_is_ratio`` below replicates those lines verbatim (names
  kept) and is compared with ``truncated_is_weights`` (``*_truncate`` modes) and ``masked_is_weights``
  (``*_mask`` modes) on the trained tokens (TRL's ratio is 1 on padding, and ``(B, 1)`` for the
  sequence modes);
* the static ``GRPOTrainer.get_off_policy_mask`` (``grpo_trainer.py:2944-2968``) vs
  ``off_policy_sequence_mask``, with ``(B,)`` and ``(B, T)`` advantages.

Pinned differences (documented in the module): TRL does not clamp the log-ratio at +-20, verl and the
package do; verl's seq-mean and normalising means divide by n + 1e-8 (within rtol here); TRL turns a NaN
sampler log-prob into ratio 1, the package raises.
"""

from __future__ import annotations

import math

import pytest
import torch
from _frameworks import require

verl = require("verl")
trl = require("trl")

from trl.trainer.grpo_trainer import GRPOTrainer  # noqa: E402
from verl.trainer.ppo import rollout_corr_helper as rch  # noqa: E402

from policygrad.trajectory_side import corrections as C  # noqa: E402

DT = torch.float64
B, T = 16, 12
SEEDS = (0, 1, 2, 3)
TOL = {"rtol": 1e-6, "atol": 1e-12}


def inputs(seed, scale=0.9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B, 1), generator=g)
    lengths[0] = 0  # an empty row
    mask = (torch.arange(T) < lengths).to(DT)
    rollout = -2.0 + torch.randn(B, T, generator=g, dtype=DT)
    old = rollout + scale * torch.randn(B, T, generator=g, dtype=DT)
    real = mask.bool()
    junk = torch.tensor(1e4, dtype=DT)
    return torch.where(real, old, junk), torch.where(real, rollout, -junk), mask


def raw_ratios(old, roll, mask, level):
    lr = C.rollout_log_ratios(old, roll, mask, level=level)
    return lr.exp() if level == "token" else lr.exp()[:, None].expand(B, T)


# ------------------------------------------------------------------------------------------------ verl


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("cap", [1.5, 2.0, 5.0])
@pytest.mark.parametrize("bn", [False, True])
def test_tis_vs_verl(seed, level, cap, bn):
    old, roll, mask = inputs(seed)
    ours = C.truncated_is_weights(old, roll, mask, level=level, cap=cap, batch_normalize=bn)
    ref, _ = rch.compute_rollout_correction_weights(
        log_ratio=old - roll, response_mask=mask, rollout_is=level, rollout_is_threshold=cap,
        rollout_is_batch_normalize=bn,
    )
    torch.testing.assert_close(ours, ref, **TOL)
    raw = raw_ratios(old, roll, mask, level)
    assert ((raw > cap) & mask.bool()).any() and ((raw < cap) & mask.bool()).any()  # the cap binds


WINDOWS = [("token", 0.5, 2.0), ("token", 0.8, 1.25), ("token", 0.2, 5.0), ("sequence", 0.5, 2.0),
           ("sequence", 0.2, 5.0), ("sequence", 0.1, 3.0)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("level, lo, hi", WINDOWS)
@pytest.mark.parametrize("bn", [False, True])
def test_icepop_vs_verl(seed, level, lo, hi, bn):
    old, roll, mask = inputs(seed)
    ours = C.masked_is_weights(old, roll, mask, level=level, lo=lo, hi=hi, batch_normalize=bn)
    ref, _ = rch.compute_rollout_correction_weights(
        log_ratio=old - roll, response_mask=mask, rollout_is=level, rollout_is_threshold=f"{lo}_{hi}",
        rollout_is_batch_normalize=bn,
    )
    torch.testing.assert_close(ours, ref, **TOL)
    real = mask.bool()
    assert ((ours == 0) & real).any() and ((ours > 0) & real).any()  # the window binds


def test_verl_icepop_that_masks_everything_crashes():
    """Pinned: when IcePop zeroes every weight, verl's ESS metric divides by zero (``rch:756-758``); the
    package returns the zero weights."""
    old, roll, mask = inputs(0)
    with pytest.raises(ZeroDivisionError):
        rch.compute_rollout_correction_weights(
            old - roll, mask, rollout_is="sequence", rollout_is_threshold="0.99_1.01"
        )
    w = C.masked_is_weights(old, roll, mask, level="sequence", lo=0.99, hi=1.01)
    assert torch.equal(w, torch.zeros_like(w))


RS_THRESHOLDS = {
    "token_k1": [2.0, (0.6, 1.8)],
    "token_k2": [0.2],
    "token_k3": [0.25],
    "seq_sum_k1": [4.0, (0.3, 2.5)],
    "seq_sum_k2": [2.0],
    "seq_sum_k3": [3.0],
    "seq_mean_k1": [1.4, (0.8, 1.5)],
    "seq_mean_k2": [0.35],
    "seq_mean_k3": [0.4],
    "seq_max_k2": [1.2],
    "seq_max_k3": [2.0],
}


def verl_threshold(thr):
    return f"{thr[0]}_{thr[1]}" if isinstance(thr, tuple) else thr


def test_every_rollout_rs_option_is_covered():
    assert set(RS_THRESHOLDS) == set(C.REJECTION_STATISTICS) == rch.SUPPORTED_ROLLOUT_RS_OPTIONS


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stat, thr", [(s, x) for s, xs in RS_THRESHOLDS.items() for x in xs])
def test_rejection_vs_verl(seed, stat, thr):
    old, roll, mask = inputs(seed)
    ours = C.rejection_mask(old, roll, mask, statistic=stat, threshold=thr)
    ref, _ = rch.compute_rollout_rejection_mask(
        log_ratio=old - roll, response_mask=mask, rollout_rs=stat, rollout_rs_threshold=verl_threshold(thr)
    )
    assert ref.dtype == mask.dtype
    assert torch.equal(ours, ref.bool())
    real = mask.bool()
    assert (ours & real).any() and (~ours & real).any()  # rejects some trained tokens, keeps some


@pytest.mark.parametrize("seed", SEEDS)
def test_rejection_chain_is_and(seed):
    old, roll, mask = inputs(seed)
    ref, _ = rch.compute_rollout_rejection_mask(
        log_ratio=old - roll, response_mask=mask, rollout_rs="token_k1,seq_mean_k3", rollout_rs_threshold="2.0,0.4"
    )
    a = C.rejection_mask(old, roll, mask, statistic="token_k1", threshold=2.0)
    b = C.rejection_mask(old, roll, mask, statistic="seq_mean_k3", threshold=0.4)
    assert torch.equal(a & b, ref.bool())
    assert (a & ~b).any() and (b & ~a).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_k1_window_is_on_the_inverse_ratio(seed):
    """verl's k1 is -log r: the asymmetric window (lower, upper) keeps 1/upper <= r <= 1/lower."""
    old, roll, mask = inputs(seed)
    keep = C.rejection_mask(old, roll, mask, statistic="token_k1", threshold=(0.6, 1.8))
    r = raw_ratios(old, roll, mask, "token")
    assert torch.equal(keep, (r >= 1 / 1.8) & (r <= 1 / 0.6) & mask.bool())
    assert not torch.equal(keep, (r >= 0.6) & (r <= 1.8) & mask.bool())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "is_level, is_thr, rs, rs_thr",
    [("sequence", 2.0, "seq_mean_k1", "0.999_1.001"), ("token", "0.5_2.0", "token_k3", 0.25),
     ("sequence", "0.3_3.0", "seq_max_k2", 1.2), ("token", 1.5, "seq_sum_k1", 4.0)],
)
def test_unified_vs_verl(seed, is_level, is_thr, rs, rs_thr):
    old, roll, mask = inputs(seed)
    proto, ref_mask, _ = rch.compute_rollout_correction_and_rejection_mask(
        old_log_prob=old, rollout_log_prob=roll, response_mask=mask, rollout_is=is_level,
        rollout_is_threshold=is_thr, rollout_rs=rs, rollout_rs_threshold=rs_thr,
    )
    if isinstance(is_thr, str):
        lo, hi = map(float, is_thr.split("_"))
        w = C.masked_is_weights(old, roll, mask, level=is_level, lo=lo, hi=hi)
    else:
        w = C.truncated_is_weights(old, roll, mask, level=is_level, cap=is_thr)
    thr = tuple(map(float, rs_thr.split("_"))) if isinstance(rs_thr, str) else rs_thr
    keep = C.rejection_mask(old, roll, mask, statistic=rs, threshold=thr)
    torch.testing.assert_close(w, proto.batch["rollout_is_weights"], **TOL)
    assert torch.equal(keep, ref_mask.bool())


def test_verl_clamps_like_the_package():
    """Log-ratios beyond +-20: verl's SAFETY_BOUND (rch:75) and the package's LOG_RATIO_CLAMP agree."""
    old, roll, mask = inputs(5)
    old = torch.where(mask.bool(), old + torch.linspace(-40, 40, B, dtype=DT)[:, None], old)
    for level in ("token", "sequence"):
        ours = C.truncated_is_weights(old, roll, mask, level=level, cap=1e9)
        ref, _ = rch.compute_rollout_correction_weights(old - roll, mask, rollout_is=level, rollout_is_threshold=1e9)
        torch.testing.assert_close(ours, ref, **TOL)
        assert (ours[mask.bool()] == math.exp(20)).any() and (ours[mask.bool()] == math.exp(-20)).any()


# ------------------------------------------------------------------------------------------------- TRL


def trl_vllm_is_ratio(old_per_token_logps, sampling_per_token_logps, completion_mask, mode, clip_min, clip_max):
    """``trl/trainer/grpo_trainer.py:2661-2707`` verbatim (``self.`` attributes as arguments, no tool mask)."""
    tool_mask = None
    mask = completion_mask if tool_mask is None else completion_mask * tool_mask
    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask
    per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)

    sequence_level_is = mode in ["sequence_mask", "sequence_truncate"]
    if sequence_level_is:
        per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
        logps_diff = per_sequence_logps_diff
    else:
        logps_diff = per_token_logps_diff

    vllm_importance_sampling_ratio = torch.exp(logps_diff)

    if mode in ["sequence_truncate", "token_truncate"]:
        vllm_importance_sampling_ratio = torch.clamp(vllm_importance_sampling_ratio, min=clip_min, max=clip_max)
    elif mode in ["sequence_mask", "token_mask"]:
        min_val = clip_min if clip_min is not None else -math.inf
        max_val = clip_max if clip_max is not None else math.inf

        invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | (vllm_importance_sampling_ratio > max_val)
        vllm_importance_sampling_ratio = vllm_importance_sampling_ratio.masked_fill(invalid_mis_mask, value=0.0)
    else:
        raise ValueError(f"Unknown vLLM importance sampling level: {mode}.")
    return vllm_importance_sampling_ratio


def ours_for_trl_mode(old, roll, mask, mode, clip_min, clip_max):
    level = mode.split("_")[0]
    if mode.endswith("truncate"):
        return C.truncated_is_weights(old, roll, mask, level=level, cap=clip_max, floor=clip_min)
    return C.masked_is_weights(old, roll, mask, level=level, lo=clip_min, hi=clip_max)


BOUNDS = [(None, 3.0), (0.5, 3.0), (0.4, None), (None, 1.5)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("clip_min, clip_max", BOUNDS)
def test_vllm_is_ratio_vs_trl(seed, mode, clip_min, clip_max):
    old, roll, mask = inputs(seed)
    ref = trl_vllm_is_ratio(old, roll, mask, mode, clip_min, clip_max).expand(B, T)
    ours = ours_for_trl_mode(old, roll, mask, mode, clip_min, clip_max)
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], **TOL)
    assert not ours[~real].any()
    # the bounds bind: some trained ratio lies outside them
    raw = raw_ratios(old, roll, mask, mode.split("_")[0])[real]
    out = torch.zeros_like(raw, dtype=torch.bool)
    if clip_min is not None:
        out |= raw < clip_min
    if clip_max is not None:
        out |= raw > clip_max
    assert out.any() and (~out).any()


def test_trl_does_not_clamp_the_log_ratio():
    """Pinned: past |log r| = 20, TRL's ratio is e^{log r}, the package's e^{+-20}."""
    old = torch.tensor([[25.0], [-25.0], [5.0]], dtype=DT)
    roll, mask = torch.zeros_like(old), torch.ones_like(old)
    ref = trl_vllm_is_ratio(old, roll, mask, "token_mask", None, None)
    ours = C.masked_is_weights(old, roll, mask, lo=0.0, hi=None)
    torch.testing.assert_close(ref[:, 0], old[:, 0].exp(), rtol=1e-14, atol=0)
    torch.testing.assert_close(ours[:, 0], torch.tensor([math.exp(20), math.exp(-20), math.exp(5)], dtype=DT))
    # truncation from above hides it; a floor below e^-20 does not
    torch.testing.assert_close(
        C.truncated_is_weights(old, roll, mask, cap=3.0),
        trl_vllm_is_ratio(old, roll, mask, "token_truncate", None, 3.0),
    )
    assert trl_vllm_is_ratio(old, roll, mask, "token_truncate", 1e-13, 3.0)[1, 0] == math.exp(-25)
    assert C.truncated_is_weights(old, roll, mask, cap=3.0, floor=1e-13)[1, 0] == math.exp(-20)


def test_trl_nan_sampler_logprob_is_ratio_one():
    """Pinned: TRL maps a NaN difference to 0 (ratio 1, ``grpo_trainer.py:2665``); the package raises."""
    old = torch.zeros(1, 2, dtype=DT)
    roll = torch.tensor([[float("nan"), 0.0]], dtype=DT)
    mask = torch.ones_like(old)
    assert torch.equal(trl_vllm_is_ratio(old, roll, mask, "token_truncate", None, 3.0), torch.ones(1, 2, dtype=DT))
    with pytest.raises(ValueError, match="rollout_logp contains 1 NaN"):
        C.truncated_is_weights(old, roll, mask, cap=3.0)


def opsm_inputs(seed):
    old, roll, mask = inputs(seed, scale=0.6)  # "old" plays the current policy pi_theta here
    g = torch.Generator().manual_seed(100 + seed)
    A = torch.randn(B, generator=g, dtype=DT)
    A[1] = 0.0
    kl = C.rollout_log_ratios(roll, old, mask, level="sequence") / mask.sum(-1).clamp_min(1)
    return A, old, roll, mask, kl


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_off_policy_mask_vs_trl(seed, quantile):
    A, logp, roll, mask, kl = opsm_inputs(seed)
    delta = max(float(torch.quantile(kl[1:], quantile)), 0.0)
    ours = C.off_policy_sequence_mask(A, logp, roll, mask, delta=delta)
    ref = GRPOTrainer.get_off_policy_mask(
        advantages=A.unsqueeze(1), per_token_logps=logp, sampling_per_token_logps=roll, mask=mask,
        off_policy_threshold=delta,
    )
    assert ref.shape == (B, 1)
    assert torch.equal(ours, ref[:, 0].bool())
    # (B, T) advantages constant along rows: TRL's mask is (B, T), every column equal to ours
    A2 = A[:, None].expand(B, T)
    ref2 = GRPOTrainer.get_off_policy_mask(A2, logp, roll, mask, delta)
    assert torch.equal(C.off_policy_sequence_mask(A2, logp, roll, mask, delta=delta)[:, None].expand(B, T), ref2.bool())
    # it binds: some negative-advantage sequences dropped, some high-KL ones kept for A >= 0
    assert (~ours).any() and ((A >= 0) & (kl > delta) & ours).any()
