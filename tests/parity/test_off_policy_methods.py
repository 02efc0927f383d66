"""The chapter-10 methods' TRL settings (``to_trl``) through TRL 1.16's own loss code.

``policygrad.methods.off_policy`` registers ``gspo``, ``gspo_token``, ``gmpo``, ``grpo_tis``, ``grpo_icepop`` and
``grpo_opsm``, and ``rollout_correction`` adds a sampler/trainer correction to a method. Here a real
``trl.GRPOConfig(**pg.methods.to_trl(m))`` (``trl.experimental.gmpo.GMPOConfig`` for GMPO) is built with the run
settings (``per_device_train_batch_size`` = the test batch of 3 groups; ``use_vllm=True`` for the corrections, the
only setting under which TRL has sampler log-probs and applies its importance-sampling ratio), and
``GRPOTrainer._compute_loss`` (``trl/trainer/grpo_trainer.py:3020-3290``) or ``GMPOTrainer._compute_loss``
(``trl/experimental/gmpo/gmpo_trainer.py:43-155``) runs unbound on the stand-in ``self`` of
test_trajectory_methods_trl.py, whose attributes are read off that config. The package side is
``pg.methods.policy_loss(m, logp, batch, m.advantages(batch))`` with ``batch.rollout_log_probs`` the sampler's
log-probs. Values and gradients with respect to the current log-probs agree in float64 to a relative 1e-10.

* TRL's ``inputs["importance_sampling_ratio"]`` is computed by the inline code of
  ``_generate_and_score_completions`` (``grpo_trainer.py:2659-2707``), replicated verbatim as
  ``test_corrections_parity.trl_vllm_is_ratio``, from the config's ``vllm_importance_sampling_mode`` /
  ``_clip_min`` / ``_clip_max``, on TRL's completion mask and TRL's view (0 on padding) of the trainer's
  (``old_per_token_logps``) and the sampler's (``sampling_per_token_logps``) log-probs; the inputs dict holds
  what ``grpo_trainer.py:2901-2911`` puts there (the ratio only when ``use_vllm`` and
  ``vllm_importance_sampling_correction``, the sampler's log-probs with vLLM, read by OPSM at line 3073).
* The batch: 3 groups of 8, unequal lengths, one all-equal-rewards group, garbage on padding on the package's
  side, log(pi/pi_old) in (-0.6, 0.6), and sampler log-probs with log(pi_old/pi_rollout) = bias_i + N(0, 1) per
  token (a per-row bias in (-0.9, 0.4)), so TIS's cap, IcePop's window at both ends, the sequence-level weights and
  OPSM's threshold bind on some tokens (rows) and not on others (asserted per case).
* OPSM with vLLM: TRL's default ``vllm_importance_sampling_correction=True`` (mode ``sequence_mask``, clip_max 3)
  would stay on if only ``off_policy_mask_threshold`` were set; the package's OPSM recipes switch it off, and
  ``test_opsm_recipe_switches_trls_default_sequence_mask_off`` pins both that and what the default would add
  (OPSM times the sequence-level masked IS). Without vLLM (no sampler log-probs) TRL's OPSM uses pi_old as the
  sampler, as the package does with ``rollout_log_probs=None``.
* The mutation tests change one setting (a cap, a level, a window, a threshold, GSPO's epsilon_high, GMPO's log
  bounds) on TRL's or on the package's side and assert the comparison then fails by far more than round-off.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import pytest
import torch
from _frameworks import require
from test_corrections_parity import trl_vllm_is_ratio
from test_trajectory_methods_trl import (
    PAD,
    P,
    _rows,
    trl_completion_mask,
    trl_self,
)
from test_trajectory_methods_trl import _batch as _trajectory_batch
from test_trajectory_methods_trl import _data as _trajectory_data

import policygrad as pg
from policygrad.methods import METHODS
from policygrad.methods.off_policy import (
    _grpo_no_kl,
    rollout_correction,
    rollout_correction_weights,
)
from policygrad.trajectory_side.corrections import rollout_log_ratios

trl = require("trl")

with warnings.catch_warnings():  # importing trl.experimental warns
    warnings.simplefilter("ignore")
    from trl.experimental.gmpo import GMPOConfig, GMPOTrainer  # noqa: E402

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-13}
G = 8
SAMPLER_SPREAD, SAMPLER_BIAS = 1.0, (-0.9, 0.4)

BASE = _grpo_no_kl("grpo")  # the base of the registered corrections (GRPO, token-mean, no KL)
CASES = {
    "grpo_tis": METHODS["grpo_tis"],
    "grpo_icepop": METHODS["grpo_icepop"],
    "grpo_opsm": METHODS["grpo_opsm"],
    "tis_sequence": rollout_correction(BASE, "tis", level="sequence", name="tis_sequence"),
    "mis_sequence": rollout_correction(BASE, "mis", level="sequence", lo=0.2, hi=5.0, name="mis_sequence"),
    "tis_floor": rollout_correction(BASE, "tis", cap=1.5, floor=0.6, name="tis_floor"),
    "tis_floor_only": rollout_correction(BASE, "tis", cap=None, floor=0.5, name="tis_floor_only"),
    "mis_no_hi": rollout_correction(BASE, "mis", lo=0.6, hi=None, name="mis_no_hi"),
    "mis_no_lo": rollout_correction(BASE, "mis", lo=None, hi=2.5, name="mis_no_lo"),
    "opsm_delta": rollout_correction(BASE, "opsm", delta=0.2, name="opsm_delta"),
    "dapo_mis_sequence": rollout_correction(METHODS["dapo"], "mis", level="sequence", lo=0.2, hi=5.0),
    "cispo_tis": rollout_correction(METHODS["cispo"], "tis"),
    "gspo_tis_sequence": rollout_correction(METHODS["gspo"], "tis", level="sequence"),
    "gspo_opsm": rollout_correction(METHODS["gspo"], "opsm"),
}
# Run settings added to the recipe: none (the OPSM recipes switch TRL's default vLLM IS off themselves).
TRL_RUN: dict = {}


def close(actual, expected):
    torch.testing.assert_close(actual, expected, **TOL)


def _compare(ours, theirs):
    close(ours.loss, theirs.loss)
    close(ours.grad, theirs.grad)


def _far_apart(ours, theirs) -> bool:
    """The two disagree by far more than round-off (a relative 1e-6 in the value or the gradient)."""
    dv = float((ours.loss - theirs.loss).abs())
    dg = float((ours.grad - theirs.grad).abs().max())
    return dv > 1e-6 * max(float(ours.loss.abs()), 1e-12) or dg > 1e-6 * float(ours.grad.abs().max())


# ------------------------------------------------------------------------------------------- data


def _data(seed: int = 0, *, spread: float = 0.6) -> SimpleNamespace:
    """test_trajectory_methods_trl's batch (3 groups of 8, garbage on padding) plus the sampler's log-probs,
    drawn from their own generator: log(pi_old / pi_rollout) = bias_i + N(0, 1) on real tokens (sampler log-probs
    clamped at -1e-3)."""
    d = _trajectory_data(G, seed=seed, spread=spread)
    g = torch.Generator().manual_seed(1000 + seed)
    B, T = d.mask.shape
    real = d.mask.bool()
    bias = torch.empty(B, 1, dtype=F64).uniform_(*SAMPLER_BIAS, generator=g)
    noise = SAMPLER_SPREAD * torch.randn(B, T, generator=g, dtype=F64)
    roll = (d.trl_old - bias - noise).clamp(max=-1e-3)
    junk = 1e3 * (torch.rand(B, T, generator=g, dtype=F64) - 0.5)
    d.roll = torch.where(real, roll, junk)
    d.trl_roll = torch.where(real, roll, torch.zeros((), dtype=F64))
    return d


def _gspo_data(method, seed: int = 0) -> SimpleNamespace:
    """GSPO's batch: the mean log-ratio of row i is c_i in (-8e-4, 8e-4), so the sequence ratio lies on both sides
    of (1 - 3e-4, 1 + 4e-4); one row with A > 0 has c = 3.5e-4 (clipped only at epsilon_high = 3e-4)."""
    d = _data(seed)
    real = d.mask.bool()
    n = d.mask.sum(-1, keepdim=True)
    g = torch.Generator().manual_seed(2000 + seed)
    c = 8e-4 * (2 * torch.rand(d.B, 1, generator=g, dtype=F64) - 1)
    adv = _rows(method.advantages(_trajectory_batch(method, d)), d.mask)
    c[int(torch.nonzero(adv > 0)[0])] = 3.5e-4
    noise = 0.3 * (2 * torch.rand(d.B, d.mask.shape[1], generator=g, dtype=F64) - 1) * d.mask
    logp = d.trl_old + noise - noise.sum(-1, keepdim=True) / n + c
    d.logp = torch.where(real, logp, d.logp)
    d.trl_logp = torch.where(real, logp, torch.zeros((), dtype=F64))
    d.c = c[:, 0]
    return d


# ------------------------------------------------------------------------------------------ ours


def _batch(method, d, *, sampler: bool = True):
    batch = _trajectory_batch(method, d)
    return dataclasses.replace(batch, rollout_log_probs=d.roll) if sampler else batch


def _ours(method, d, *, sampler: bool = True) -> SimpleNamespace:
    """policy_loss and its gradient w.r.t. the current log-probs; the advantages and the batch."""
    batch = _batch(method, d, sampler=sampler)
    adv = method.advantages(batch)
    logp = d.logp.clone().requires_grad_(True)
    loss, stats = pg.methods.policy_loss(method, logp, batch, adv)
    (grad,) = torch.autograd.grad(loss, logp)
    return SimpleNamespace(loss=loss.detach(), grad=grad * d.mask, adv=adv, batch=batch, stats=stats)


# ------------------------------------------------------------------------------------------- TRL


def _config(method, tmp_path, d, *, cls=None, **run):
    """A real GRPOConfig (GMPOConfig) from the method's settings plus run settings."""
    cls = cls or trl.GRPOConfig
    return cls(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=d.B,
        **{**pg.methods.to_trl(method), **run},
    )  # fmt: skip


def _trl(args, d, adv_rows, *, trainer=None) -> SimpleNamespace:
    """TRL's _compute_loss on the stand-in for `args`; the inputs as _generate_and_score_completions builds them."""
    trainer = trainer or trl.GRPOTrainer
    t = trl_self(args)
    completion_mask, num_items = trl_completion_mask(args, d)
    logp = d.trl_logp.clone().requires_grad_(True)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    inputs = {
        "prompt_ids": torch.zeros(d.B, P, dtype=torch.long),
        "prompt_mask": torch.ones(d.B, P, dtype=torch.long),
        "completion_ids": torch.where(d.mask.bool(), d.completions, PAD),
        "completion_mask": completion_mask,
        "advantages": adv_rows,
        "old_per_token_logps": d.trl_old,
        "num_items_in_batch": num_items,
    }
    if args.use_vllm and args.vllm_importance_sampling_correction:  # grpo_trainer.py:2659-2707, 2908-2909
        inputs["importance_sampling_ratio"] = trl_vllm_is_ratio(
            d.trl_old, d.trl_roll, completion_mask, args.vllm_importance_sampling_mode,
            args.vllm_importance_sampling_clip_min, args.vllm_importance_sampling_clip_max,
        )  # fmt: skip
    if args.use_vllm:  # vLLM returns the sampler's log-probs (grpo_trainer.py:2463-2478, 2910-2911)
        inputs["sampling_per_token_logps"] = d.trl_roll
    loss = trainer._compute_loss(t, None, inputs)
    (grad,) = torch.autograd.grad(loss, logp)
    return SimpleNamespace(loss=loss.detach(), grad=grad * d.mask, inputs=inputs)


def _run_case(name, tmp_path, d, *, method=None, **override):
    """The package's loss of CASES[name] (or `method`) and TRL's for CASES[name]'s config (+ `override`)."""
    recipe_method = CASES[name]
    ours = _ours(method or recipe_method, d)
    args = _config(recipe_method, tmp_path, d, use_vllm=True, **{**TRL_RUN.get(name, {}), **override})
    theirs = _trl(args, d, _rows(ours.adv, d.mask))
    return ours, theirs, args


def _assert_binds(method, d, ours):
    """The correction changes some trained tokens' weight from the raw ratio (1 for OPSM) and leaves others;
    each of its bounds binds."""
    x = method.extra
    opts = {k: x[k] for k in ("level", "cap", "floor", "lo", "hi", "delta") if k in x}
    w = rollout_correction_weights(d.logp, ours.batch, ours.adv, kind=x["correction"], **opts)
    m = ours.batch.loss_mask.bool()
    if x["correction"] == "opsm":
        raw = torch.ones_like(w)
        dropped = (w == 0) & m
        assert bool((ours.adv[dropped] < 0).all())
        assert bool((m & (ours.adv < 0) & (w == 1)).any())  # some negative rows kept
    else:
        lr = rollout_log_ratios(d.old, d.roll, ours.batch.loss_mask, level=x["level"])
        raw = lr.exp() if x["level"] == "token" else lr.exp()[:, None].expand_as(w)
        low, high = (x["floor"], x["cap"]) if x["correction"] == "tis" else (x["lo"], x["hi"])
        if low is not None:  # every bound the correction has binds on some trained token
            assert bool((m & (raw < low)).any())
        if high is not None:
            assert bool((m & (raw > high)).any())
    changed = m & ~torch.isclose(w, raw, rtol=1e-12, atol=0)
    assert bool(changed.any()) and bool((m & ~changed).any())
    return w


# ----------------------------------------------------------------------------------------- tests


def test_the_cases_cover_the_registered_corrections():
    corrected = {n for n, m in METHODS.items() if "correction" in m.extra}
    assert corrected == {"grpo_tis", "grpo_icepop", "grpo_opsm"} <= set(CASES)
    # BASE is the registered corrections' base: rebuilding grpo_tis on it gives the same TRL settings
    assert pg.methods.to_trl(rollout_correction(BASE, "tis", name="grpo_tis")) == pg.methods.to_trl("grpo_tis")
    assert pg.methods.to_trl(rollout_correction(BASE, "opsm", name="x")) == pg.methods.to_trl("grpo_opsm")


@pytest.mark.parametrize("name", list(CASES))
def test_corrections_match_trls_compute_loss(name, tmp_path):
    """GRPOConfig(**to_trl(m)) builds and keeps every setting; TRL's _compute_loss with use_vllm=True, the
    importance-sampling ratio computed as grpo_trainer.py does from the config, and the sampler's log-probs ==
    policy_loss(m) with batch.rollout_log_probs = the sampler's (value and d/dlogp)."""
    method = CASES[name]
    d = _data()
    for key, value in pg.methods.to_trl(method).items():
        assert getattr(_config(method, tmp_path, d), key) == value, key
    ours, theirs, args = _run_case(name, tmp_path, d)
    _compare(ours, theirs)
    _assert_binds(method, d, ours)
    kind = method.extra["correction"]
    assert ("importance_sampling_ratio" in theirs.inputs) == (kind != "opsm")
    assert (args.off_policy_mask_threshold is not None) == (kind == "opsm")
    assert float(theirs.grad.abs().sum()) > 0
    assert ours.stats["is_zero_frac"] > 0 if kind != "tis" else ours.stats["is_zero_frac"] == 0


@pytest.mark.parametrize("name", ["grpo_tis", "grpo_icepop", "grpo_opsm", "tis_sequence"])
def test_without_a_sampler_the_corrections_are_trls_run_without_vllm(name, tmp_path):
    """No vLLM: TRL has no sampler log-probs and no IS ratio (its OPSM takes pi_old as the sampler,
    grpo_trainer.py:3073); the package with rollout_log_probs=None gives weight 1 (TIS, MIS) or OPSM against
    pi_old, the same loss."""
    method = CASES[name]
    d = _data()
    ours = _ours(method, d, sampler=False)
    args = _config(method, tmp_path, d)
    assert args.use_vllm is False
    theirs = _trl(args, d, _rows(ours.adv, d.mask))
    assert "importance_sampling_ratio" not in theirs.inputs and "sampling_per_token_logps" not in theirs.inputs
    _compare(ours, theirs)


def test_opsm_recipe_switches_trls_default_sequence_mask_off(tmp_path):
    """to_trl("grpo_opsm") sets vllm_importance_sampling_correction=False: with use_vllm=True TRL's default vLLM IS
    (mode "sequence_mask", clip_max 3.0; grpo_config.py defaults, grpo_trainer.py:3146-3147) would otherwise
    multiply the loss too. With the default left on, the run is grpo_opsm with a sequence-level masked IS (no
    lower bound, upper 3) on top, which is far from grpo_opsm."""
    d = _data()
    method = METHODS["grpo_opsm"]
    args = _config(method, tmp_path, d, use_vllm=True)
    assert args.vllm_importance_sampling_correction is False
    ours = _ours(method, d)
    _compare(ours, _trl(args, d, _rows(ours.adv, d.mask)))
    default = _config(method, tmp_path, d, use_vllm=True, vllm_importance_sampling_correction=True)
    assert (default.vllm_importance_sampling_mode, default.vllm_importance_sampling_clip_max) == ("sequence_mask", 3.0)
    assert default.vllm_importance_sampling_clip_min is None
    theirs = _trl(default, d, _rows(ours.adv, d.mask))
    assert _far_apart(ours, theirs)
    both = rollout_correction(method, "mis", level="sequence", lo=None, hi=3.0)
    _compare(_ours(both, d), theirs)


# --------------------------------------------------------------------------------- GSPO and GMPO


def test_gspo_matches_trls_sequence_level_loss(tmp_path):
    """to_trl("gspo") (importance_sampling_level="sequence", loss_type "grpo", epsilon 3e-4 / 4e-4) through
    GRPOTrainer._compute_loss == METHODS["gspo"]'s loss (value and d/dlogp); the sequence ratio lies inside and
    outside the clip range, on both sides."""
    method = METHODS["gspo"]
    d = _gspo_data(method)
    args = _config(method, tmp_path, d)
    assert args.importance_sampling_level == "sequence" and (args.epsilon, args.epsilon_high) == (3e-4, 4e-4)
    ours = _ours(method, d, sampler=False)
    theirs = _trl(args, d, _rows(ours.adv, d.mask))
    _compare(ours, theirs)
    s = d.c.exp()
    assert bool((s > 1 + 4e-4).any()) and bool((s < 1 - 3e-4).any())
    inside = (s > 1 - 3e-4) & (s < 1 + 4e-4)
    assert bool(inside.any()) and bool((~inside).any())
    rows_with_grad = theirs.grad.abs().sum(-1) > 0
    assert bool(rows_with_grad.any()) and bool((~rows_with_grad & (_rows(ours.adv, d.mask) != 0)).any())


def _gmpo_case(tmp_path, d, *, method=None, **override):
    ours = _ours(method or METHODS["gmpo"], d, sampler=False)
    args = _config(METHODS["gmpo"], tmp_path, d, cls=GMPOConfig, **override)
    theirs = _trl(args, d, _rows(ours.adv, d.mask), trainer=GMPOTrainer)
    return ours, theirs, args


def test_gmpo_matches_trls_gmpo_trainer(tmp_path):
    """GMPOConfig(**to_trl("gmpo")) builds (log-space epsilon 0.4 / 0.4) and GMPOTrainer._compute_loss == the
    package's gmpo loss (value and d/dlogp); log-ratios beyond +-0.4 on both advantage signs, so the sign-aware
    log-space clip binds (A > 0 above 0.4, A < 0 below -0.4) and is one-sided (the other tails stay)."""
    d = _data(spread=0.9)
    ours, theirs, args = _gmpo_case(tmp_path, d)
    assert (args.epsilon, args.epsilon_high) == (0.4, 0.4)
    for key, value in pg.methods.to_trl("gmpo").items():
        assert getattr(args, key) == value, key
    _compare(ours, theirs)
    m = d.mask.bool()
    lr, A = d.trl_logp - d.trl_old, ours.adv
    for cond in (A > 0) & (lr > 0.4), (A > 0) & (lr < -0.4), (A < 0) & (lr < -0.4), (A < 0) & (lr > 0.4):
        assert bool((m & cond).any())
    assert float(theirs.grad.abs().sum()) > 0
    assert bool((m & (A > 0) & (lr > 0.4) & (theirs.grad == 0)).any())  # a clipped token has no gradient


# ------------------------------------------------------------------------------------------ mutations


MUTATIONS = {
    # (case, TRL settings changed, package method instead of the case's)
    "tis cap 3 in TRL": ("grpo_tis", {"vllm_importance_sampling_clip_max": 3.0}, None),
    "tis cap 3 in the package": ("grpo_tis", {}, rollout_correction(BASE, "tis", cap=3.0)),
    "tis sequence mode in TRL": ("grpo_tis", {"vllm_importance_sampling_mode": "sequence_truncate"}, None),
    "tis token level in the package": ("tis_sequence", {}, rollout_correction(BASE, "tis", level="token")),
    "tis correction off in TRL": ("grpo_tis", {"vllm_importance_sampling_correction": False}, None),
    "icepop truncate in TRL": ("grpo_icepop", {"vllm_importance_sampling_mode": "token_truncate"}, None),
    "icepop hi 3 in TRL": ("grpo_icepop", {"vllm_importance_sampling_clip_max": 3.0}, None),
    "icepop lo 0.6 in the package": ("grpo_icepop", {}, rollout_correction(BASE, "mis", lo=0.6)),
    "tis floor dropped in TRL": ("tis_floor", {"vllm_importance_sampling_clip_min": None}, None),
    "opsm delta 0.2 in TRL": ("grpo_opsm", {"off_policy_mask_threshold": 0.2}, None),
    "opsm delta 1.5 in TRL": ("grpo_opsm", {"off_policy_mask_threshold": 1.5}, None),
    "opsm delta 0.2 in the package": ("grpo_opsm", {}, rollout_correction(BASE, "opsm", delta=0.2)),
    "opsm with TRL's default vLLM IS": ("grpo_opsm", {"vllm_importance_sampling_correction": True}, None),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_correction_setting_fails_the_comparison(mutation, tmp_path):
    name, override, method = MUTATIONS[mutation]
    ours, theirs, _ = _run_case(name, tmp_path, _data(), method=method, **override)
    assert _far_apart(ours, theirs)


@pytest.mark.parametrize(
    "override, level",
    [({"importance_sampling_level": "token"}, None), ({"epsilon_high": None}, None), ({}, "gspo_eps_high")],
)
def test_a_wrong_gspo_setting_fails_the_comparison(override, level, tmp_path):
    """Token-level ratios, or epsilon_high left unset (it falls back to epsilon = 3e-4, the recipe's pitfall),
    or the package's GSPO with eps_high = 3e-4: TRL's loss is no longer the method's."""
    method = METHODS["gspo"]
    d = _gspo_data(method)
    ours = _ours(pg.methods.off_policy.gspo(eps_high=3e-4) if level else method, d, sampler=False)
    theirs = _trl(_config(method, tmp_path, d, **override), d, _rows(ours.adv, d.mask))
    assert _far_apart(ours, theirs)


@pytest.mark.parametrize(
    "override, method",
    [({"epsilon": 0.2}, None), ({"epsilon_high": 0.6}, None), ({}, pg.methods.off_policy.gmpo(clip_low=0.3))],
)
def test_a_wrong_gmpo_setting_fails_the_comparison(override, method, tmp_path):
    """GMPO's log-space bounds changed in TRL (epsilon 0.2, epsilon_high 0.6) or in the package (clip_low 0.3)."""
    ours, theirs, _ = _gmpo_case(tmp_path, _data(spread=0.9), method=method, **override)
    assert _far_apart(ours, theirs)
