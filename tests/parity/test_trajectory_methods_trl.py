"""The chapter-9 methods' TRL settings (``to_trl``) through TRL 1.16's own loss code.

For every registered trajectory-side variant (``section`` "sec-trajvar-*") whose TRL entry is a
``Recipe`` for ``trl.GRPOTrainer`` (dapo, cispo, sapo, grpo_high_entropy, grpo_entropy_bonus,
grpo_adaptive_entropy), a real ``trl.GRPOConfig(**pg.methods.to_trl(name))`` is built (an unknown key is
a TypeError there; the run setting ``per_device_train_batch_size`` makes one generation batch the test's
batch of 3 groups) and ``trl.GRPOTrainer._compute_loss`` (``trl/trainer/grpo_trainer.py:3020-3290``) is
called unbound on a stand-in ``self`` whose attributes are the ones ``GRPOTrainer.__init__`` sets from
that config (lines 782-857, 945-946, 983: loss_type, epsilon_low/high, beta, importance_sampling_level,
off_policy_mask_threshold, top_entropy_quantile, entropy_coef, use_adaptive_entropy,
``_entropy_bonus_enabled``, ``_last_world_entropy``, ...), with ``args`` the config itself (delta, the
SAPO temperatures, steps_per_generation, entropy_target/delta/min/max) and TRL's own
``get_high_entropy_mask`` (lines 1380-1416) bound to it; ``_get_per_token_logps_and_entropies`` returns
the test's log-probs and entropies. A wrong or missing setting in ``to_trl`` changes TRL's loss.

The package side is ``pg.methods.policy_loss(method, logp, batch, method.advantages(batch), entropy=...)``
on a ``RolloutBatch`` with garbage on padding (TRL's padding is 0), 3 groups of the method's group size,
unequal lengths, one all-equal-rewards group, log-ratios in (-0.6, 0.6) (PPO's clip binds: asserted for
DAPO) and four truncated rows (full length, last token not EOS). Loss values and gradients with respect
to the log-probs (and to the entropies, for the entropy bonus) agree in float64 to a relative 1e-6.

* TRL takes one advantage per completion: the rows of the package's (B, T) advantages (constant along a
  row). For DAPO they include the soft overlong punishment, a reward function in TRL; the reward side is
  pinned in test_reward_variants_parity.py, so TRL is given the package's advantages.
* Overlong filtering: the package's loss mask is ``truncation_loss_mask(mask, truncated)`` when
  ``method.mask_truncated`` (``policygrad/train.py:775-779``); TRL masks ``completion_mask`` in
  ``_generate_and_score_completions`` (``grpo_trainer.py:2488-2492``, replicated line for line here, on
  completions built with TRL's ``pad`` as at lines 2452-2462) when ``mask_truncated_completions``, and
  ``num_items_in_batch`` is that mask's sum (line 2498).
* The 80/20 filter: the package reads ``batch.entropies`` (the sampling policy's), TRL the training
  forward's; both get the same tensor here (the first update of a batch). The entropies are
  float32-representable: TRL computes the quantile in float32 (line 1397), the package in the input's dtype.
* Adaptive entropy: TRL's coefficient is ``self.entropy_coef`` (``args.entropy_coef`` at line 846, then
  updated at lines 3228-3240), applied only when ``self._last_world_entropy <= args.entropy_target``
  (line 3207; inf at the start, line 853). Checked at the initial state (applied 0), at set controller
  states (applied and gated), and over a sequence of steps in which TRL's own update runs inside
  ``_compute_loss`` and the package's ``AdaptiveEntropyController`` is updated as ``train`` does
  (``policygrad/train.py:918-925``).
"""

from __future__ import annotations

import inspect
import math
import types
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from _frameworks import require

import policygrad as pg
from policygrad.methods import METHODS, Recipe
from policygrad.rollout import RolloutBatch
from policygrad.trajectory_side import AdaptiveEntropyController, truncation_loss_mask

trl = require("trl")

from trl.trainer.grpo_trainer import pad  # noqa: E402  (after the framework check)

F64 = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-12}
N_GROUPS, P, T = 3, 2, 7
EOS, PAD, TOKEN = 2, 0, 5
TRUNCATED_ROWS = (2, 9, 10, 17)  # one in the all-equal group (rows G .. 2G-1)
EXPECTED = {"dapo", "cispo", "sapo", "grpo_high_entropy", "grpo_entropy_bonus", "grpo_adaptive_entropy"}


def close(actual, expected):
    torch.testing.assert_close(actual, expected, **TOL)


def _chapter9_grpo_trainer() -> list[str]:
    return [
        n
        for n, m in METHODS.items()
        if m.section.startswith("sec-trajvar")
        and isinstance(m.trl, Recipe)
        and m.trl.trainer == "trl.GRPOTrainer"
    ]


NAMES = _chapter9_grpo_trainer()


# ------------------------------------------------------------------------------------------- data


def _data(group_size: int, *, seed: int = 0, spread: float = 0.6) -> SimpleNamespace:
    """3 groups of `group_size`; log-ratios log(pi/pi_old) in (-spread, spread) on real tokens."""
    g = torch.Generator().manual_seed(seed)
    B = group_size * N_GROUPS
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # full length but ended by EOS: not truncated
    truncated = torch.zeros(B, dtype=torch.bool)
    truncated[list(TRUNCATED_ROWS)] = True
    lengths[truncated] = T  # a truncated completion hit the length limit
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    real = mask.bool()
    completions = torch.full((B, T), PAD, dtype=torch.long)
    completions[real] = TOKEN
    completions[torch.arange(B), lengths - 1] = torch.where(truncated, TOKEN, EOS)
    logp = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.05
    old = (logp - spread * (2 * torch.rand(B, T, generator=g, dtype=F64) - 1)).clamp(max=-1e-3)
    rewards = torch.randint(0, 2, (B,), generator=g).to(F64) + 0.25 * torch.rand(B, generator=g, dtype=F64)
    rewards[group_size : 2 * group_size] = 0.5  # an all-equal group
    ent = (2 * torch.rand(B, T, generator=g)).to(F64)  # float32-representable (see the module docstring)

    def junk():
        return 1e3 * (torch.rand(B, T, generator=g, dtype=F64) - 0.5)

    zero = torch.zeros((), dtype=F64)
    return SimpleNamespace(
        B=B,
        G=group_size,
        lengths=lengths,
        truncated=truncated,
        mask=mask,
        completions=completions,
        rewards=rewards,
        # the package's view: garbage on padding
        logp=torch.where(real, logp, junk()),
        old=torch.where(real, old, junk()),
        ent=torch.where(real, ent, junk()),
        # TRL's view: 0 on padding
        trl_logp=torch.where(real, logp, zero),
        trl_old=torch.where(real, old, zero),
        trl_ent=torch.where(real, ent, zero),
    )


def _scaled_entropies(d, mean):
    """The batch's entropies scaled to a token mean of `mean` over the trained tokens (both views)."""
    m = d.mask.bool()
    s = mean / float(d.trl_ent[m].mean())
    return SimpleNamespace(ours=torch.where(m, d.trl_ent * s, d.ent), trl=d.trl_ent * s)


# ------------------------------------------------------------------------------------------ ours


def _batch(method, d) -> RolloutBatch:
    # policygrad/train.py:775-779: the loss mask of a method with mask_truncated
    loss_mask = truncation_loss_mask(d.mask, d.truncated) if method.mask_truncated else d.mask
    return RolloutBatch(
        prompts=torch.zeros(d.B, P, dtype=torch.long),
        completions=d.completions,
        mask=d.mask,
        loss_mask=loss_mask,
        old_log_probs=d.old,
        ref_log_probs=None,
        rewards=d.rewards,
        group_ids=torch.arange(d.B) // d.G,
        truncated=d.truncated,
        entropies=d.ent if method.needs_entropy else None,
    )


def _ours(method, d, *, ent=None, entropy_coef=None):
    """The package's loss and its gradients w.r.t. logp (and the entropies, with a bonus); the advantages."""
    batch = _batch(method, d)
    adv = method.advantages(batch)
    logp = d.logp.clone().requires_grad_(True)
    ent = (d.ent if ent is None else ent).clone().requires_grad_(True)
    loss, _ = pg.methods.policy_loss(method, logp, batch, adv, entropy=ent, entropy_coef=entropy_coef)
    wrt = (logp, ent) if method.has_entropy_bonus else (logp,)
    grads = torch.autograd.grad(loss, wrt)
    return SimpleNamespace(loss=loss.detach(), grads=grads, adv=adv, batch=batch)


# ------------------------------------------------------------------------------------------- TRL


def trl_config(name, tmp_path, d) -> trl.GRPOConfig:
    """A real GRPOConfig from the method's settings; the run setting: one generation batch = the test batch."""
    return trl.GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=d.B,
        **pg.methods.to_trl(name),
    )


class _Accelerator:
    num_processes = 1
    sync_gradients = True  # every call is one whole accumulation window (gradient_accumulation_steps = 1)

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def reduce(x, reduction="sum"):
        return x

    @staticmethod
    def pad_across_processes(x, dim=0, pad_index=0):
        return x


def _bind(ns, name):
    """TRL's own GRPOTrainer method `name` on the stand-in (a staticmethod stays unbound)."""
    if isinstance(inspect.getattr_static(trl.GRPOTrainer, name), staticmethod):
        return getattr(trl.GRPOTrainer, name)
    return types.MethodType(getattr(trl.GRPOTrainer, name), ns)


def trl_self(args) -> SimpleNamespace:
    """What GRPOTrainer.__init__ sets from `args` and _compute_loss reads, read off the config."""
    ns = SimpleNamespace(
        args=args,
        # grpo_trainer.py:832: a property of the model (MoE router logits); these are not MoE models
        aux_loss_enabled=False,
        max_completion_length=args.max_completion_length,  # :782
        use_vllm=args.use_vllm,  # :811
        vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,  # :815
        loss_type=args.loss_type,  # :819
        importance_sampling_level=args.importance_sampling_level,  # :834
        off_policy_mask_threshold=args.off_policy_mask_threshold,  # :835
        top_entropy_quantile=args.top_entropy_quantile,  # :845
        entropy_coef=args.entropy_coef,  # :846
        use_adaptive_entropy=args.use_adaptive_entropy,  # :847
        _entropy_bonus_enabled=args.entropy_coef != 0.0 or args.use_adaptive_entropy,  # :850
        _last_world_entropy=float("inf"),  # :853
        _entropy_window_stats=None,  # :857
        epsilon_low=args.epsilon,  # :945
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,  # :946
        beta=args.beta,  # :983
        # transformers' Trainer sets it to the number of micro-batches of the window (trainer.py:1714)
        current_gradient_accumulation_steps=args.gradient_accumulation_steps,
        model=SimpleNamespace(training=True),
        accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    ns.get_high_entropy_mask = _bind(ns, "get_high_entropy_mask")
    ns.get_off_policy_mask = _bind(ns, "get_off_policy_mask")
    return ns


def trl_completion_mask(args, d):
    """TRL's completion mask and num_items_in_batch, built as _generate_and_score_completions builds them."""
    completion_ids_list = [d.completions[i, : int(n)].tolist() for i, n in enumerate(d.lengths)]
    completion_ids = [torch.tensor(ids) for ids in completion_ids_list]
    completion_mask = [torch.ones_like(ids, dtype=torch.long) for ids in completion_ids]  # :2453
    completion_mask = pad(completion_mask, padding_value=0, padding_side="right")  # :2460-2462
    eos_token_ids, pad_token_id = [EOS], PAD
    # grpo_trainer.py:2488-2492, line for line (no tool mask)
    if args.mask_truncated_completions:
        eos_and_pad = [*eos_token_ids, pad_token_id]
        is_truncated = torch.tensor([ids[-1] not in eos_and_pad for ids in completion_ids_list])
        completion_mask = completion_mask * (~is_truncated).unsqueeze(1).int()
    loss_mask = completion_mask  # :2497, no tool_mask
    num_items_in_batch = loss_mask.sum()  # :2498 (one process: gather(...).sum() is the sum)
    return completion_mask, num_items_in_batch


def trl_loss(t, args, d, adv_rows, *, ent=None):
    """TRL's loss on stand-in `t` and its gradients w.r.t. logp (and the entropies, with a bonus)."""
    completion_mask, num_items = trl_completion_mask(args, d)
    logp = d.trl_logp.clone().requires_grad_(True)
    ent = (d.trl_ent if ent is None else ent).clone().requires_grad_(True)
    t._get_per_token_logps_and_entropies = lambda *a, **k: (logp, ent, None)
    inputs = {
        "prompt_ids": torch.zeros(d.B, P, dtype=torch.long),
        "prompt_mask": torch.ones(d.B, P, dtype=torch.long),
        "completion_ids": torch.where(d.mask.bool(), d.completions, PAD),
        "completion_mask": completion_mask,
        "advantages": adv_rows,
        "old_per_token_logps": d.trl_old,
        "num_items_in_batch": num_items,
    }
    loss = trl.GRPOTrainer._compute_loss(t, None, inputs)
    wrt = (logp, ent) if t._entropy_bonus_enabled else (logp,)
    grads = torch.autograd.grad(loss, wrt)
    return SimpleNamespace(loss=loss.detach(), grads=grads)


def _rows(adv, mask):
    """One advantage per completion, checked constant along each row's real tokens."""
    rows = adv[:, 0]
    assert bool((adv == rows[:, None])[mask.bool()].all())
    return rows


def _compare(ours, theirs):
    close(ours.loss, theirs.loss)
    for a, b in zip(ours.grads, theirs.grads, strict=True):
        close(a, b)


# ----------------------------------------------------------------------------------------- tests


def test_the_chapter9_grpo_trainer_methods():
    assert set(NAMES) == EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_to_trl_settings_are_grpo_config_fields(name, tmp_path):
    """Every setting is a GRPOConfig field and survives its __post_init__ unchanged."""
    method = pg.get_method(name)
    cfg = trl_config(name, tmp_path, _data(method.group_size))
    for key, value in pg.methods.to_trl(name).items():
        assert getattr(cfg, key) == value, key
    assert cfg.generation_batch_size == N_GROUPS * method.group_size


@pytest.mark.parametrize("name", NAMES)
def test_to_trl_settings_reproduce_the_method_in_trl(name, tmp_path):
    """Config → TRL's _compute_loss == policy_loss (value, d/dlogp, d/dentropy). Adaptive: initial state."""
    method = pg.get_method(name)
    d = _data(method.group_size)
    args = trl_config(name, tmp_path, d)
    coef = None
    if method.adaptive_entropy is not None:  # policygrad/train.py:687-689, 874
        coef = AdaptiveEntropyController(**method.adaptive_entropy).applied
        assert coef == 0.0
    ours = _ours(method, d, entropy_coef=coef)
    theirs = trl_loss(trl_self(args), args, d, _rows(ours.adv, d.mask))
    _compare(ours, theirs)
    g = theirs.grads[0]
    assert float(g.abs().sum()) > 0
    if name == "dapo":  # the clip binds: trained tokens with an advantage and no gradient
        trained = ours.batch.loss_mask.bool() & (ours.adv != 0)
        assert bool((trained & (g == 0)).any())
        assert bool((trained & (g != 0)).any())
    if args.mask_truncated_completions:  # the truncated rows are out of both losses
        assert bool((g[d.truncated] == 0).all()) and bool((ours.grads[0][d.truncated] == 0).all())


LAST_ENTROPY = {
    "at target": lambda h: h,
    "below": lambda h: h / 2,
    "just above": lambda h: math.nextafter(h, math.inf),
    "above": lambda h: 1.5 * h,
}


@pytest.mark.parametrize("coef, last", [(0.3, k) for k in LAST_ENTROPY] + [(0.0, "below")])
def test_adaptive_entropy_at_a_controller_state(coef, last, tmp_path):
    """TRL's stand-in and the package's controller in the same state (coefficient `coef`, last measured
    entropy relative to the package's target); policy_loss with entropy_coef = the controller's applied
    coefficient == TRL's loss, whose gate reads args.entropy_target (grpo_trainer.py:3206-3209)."""
    name = "grpo_adaptive_entropy"
    method = pg.get_method(name)
    d = _data(method.group_size)
    args = trl_config(name, tmp_path, d)
    ctl = AdaptiveEntropyController(**method.adaptive_entropy)
    h = LAST_ENTROPY[last](ctl.target)
    ctl.coef, ctl.last_entropy = coef, h
    t = trl_self(args)
    t.entropy_coef, t._last_world_entropy = coef, h
    ours = _ours(method, d, entropy_coef=ctl.applied)
    theirs = trl_loss(t, args, d, _rows(ours.adv, d.mask))
    _compare(ours, theirs)
    assert ctl.applied == (coef if last in ("at target", "below") else 0.0)
    n = float(ours.batch.loss_mask.sum())
    close(theirs.grads[1], -ctl.applied / n * ours.batch.loss_mask)  # the applied coefficient, visible


def test_adaptive_entropy_controller_follows_trl(tmp_path):
    """Several optimiser steps, the batch's mean entropy just below or above the package's target: TRL
    updates its coefficient inside _compute_loss (grpo_trainer.py:3212-3240), the package's controller is
    updated after each step as train() does; the coefficients, the losses and the gradients agree at every
    step."""
    name = "grpo_adaptive_entropy"
    method = pg.get_method(name)
    d = _data(method.group_size)
    args = trl_config(name, tmp_path, d)
    t = trl_self(args)
    ctl = AdaptiveEntropyController(**method.adaptive_entropy)
    applied = []
    for rel in (0.99, 0.99, 1.01, 0.99, 1.01, 1.01):
        ent = _scaled_entropies(d, rel * ctl.target)
        ours = _ours(method, d, ent=ent.ours, entropy_coef=ctl.applied)
        theirs = trl_loss(t, args, d, _rows(ours.adv, d.mask), ent=ent.trl)
        _compare(ours, theirs)
        applied.append(ctl.applied)
        m_on = ours.batch.loss_mask  # policygrad/train.py:918-925
        ctl.update(float((torch.where(m_on.bool(), ent.ours, 0.0) * m_on).sum() / m_on.sum().clamp_min(1)))
        assert ctl.coef == pytest.approx(t.entropy_coef, abs=1e-15)
        assert ctl.last_entropy == pytest.approx(t._last_world_entropy, rel=1e-12)
    c0, delta = method.adaptive_entropy["init_coef"], method.adaptive_entropy["delta"]
    assert applied == pytest.approx([0.0, c0 + delta, c0 + 2 * delta, 0.0, c0 + 2 * delta, 0.0], abs=1e-15)


def test_cispo_cap_binds_in_trl(tmp_path):
    """Log-ratios up to 2 (ratios up to e^2 > eps_max = 5): TRL's cap at epsilon_high
    (grpo_trainer.py:3109-3111) binds on some trained tokens with A > 0 and the losses still agree, so a
    wrong cap in to_trl is seen (in the main test's (-0.6, 0.6) no ratio reaches 5)."""
    name = "cispo"
    method = pg.get_method(name)
    d = _data(method.group_size, spread=2.0)
    args = trl_config(name, tmp_path, d)
    ours = _ours(method, d)
    theirs = trl_loss(trl_self(args), args, d, _rows(ours.adv, d.mask))
    _compare(ours, theirs)
    ratio = (d.trl_logp - d.trl_old).exp()
    assert bool((ours.batch.loss_mask.bool() & (ratio > method.extra["eps_max"]) & (ours.adv > 0)).any())


def test_truncation_loss_mask_is_trls_mask_truncated_completions(tmp_path):
    """DAPO's overlong filtering: truncation_loss_mask == TRL's completion_mask with the config's
    mask_truncated_completions (grpo_trainer.py:2488-2492); a full-length row ended by EOS stays in."""
    method = pg.get_method("dapo")
    d = _data(method.group_size)
    args = trl_config("dapo", tmp_path, d)
    assert args.mask_truncated_completions is True and method.mask_truncated is True
    completion_mask, num_items = trl_completion_mask(args, d)
    ours = truncation_loss_mask(d.mask, d.truncated)
    assert torch.equal(ours, completion_mask.to(ours.dtype))
    assert float(num_items) == float(ours.sum())
    assert not bool(d.truncated[0]) and int(d.lengths[0]) == T and bool(ours[0].all())
    assert bool((ours[d.truncated] == 0).all())
    assert math.isclose(float(d.mask[d.truncated].sum()), len(TRUNCATED_ROWS) * T)
