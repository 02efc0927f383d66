"""Parity of the clip zoo (``policygrad.trajectory_side.clips``) with verl 0.9 and TRL 1.16.

Same float64 inputs, equal losses and equal gradients with respect to the current log-probs to
``rtol = atol = 1e-6`` (in practice ~1e-15).

**verl** (``core_algos`` is ``verl/trainer/ppo/core_algos.py``), with real ``ActorConfig`` objects
built as ``tests/parity/test_verl.py`` builds them, on a batch of 16 rows of unequal lengths (1 to
7 tokens), finite garbage on padding (verl multiplies by the mask), log-ratios in [-1.6, 1.6]:

* ``two_sided_clip_loss(delta=c)`` vs ``compute_policy_loss_vanilla`` with ``clip_ratio_c=c``
  (verl's always-on dual clip, ``core_algos.py:1355-1361``): equal for ``c >= 1 + eps_high``,
  every aggregation mode, symmetric and clip-higher; pinned: they differ for ``c < 1 + eps_high``.
* ``cispo_loss(variant="verl")`` vs ``compute_policy_loss_cispo`` (``core_algos.py:2048``), every
  aggregation mode and three clip ranges, and ``clip_frac`` vs its ``pg_clipfrac``.
* ``sapo_loss`` vs ``compute_policy_loss_sapo`` (``core_algos.py:1623``), default and other
  temperatures; pinned: verl aggregates with "seq-mean-token-mean" whatever ``loss_agg_mode`` says
  (``core_algos.py:1687-1690``).

**TRL**: ``GRPOTrainer._compute_loss`` (``trl/trainer/grpo_trainer.py:3020``), TRL's own unbound
method, run on a stand-in ``self`` that carries exactly the attributes the method reads and returns
the test's log-probs from ``_get_per_token_logps_and_entropies``: the loss formula isolated, as the
first of the two comparisons of ``tests/parity/test_trl.py`` (which builds a real trainer around a
tiny GPT-2; not needed here, where no TRL-side log-prob computation is compared). Advantages are
TRL's ``(B,)`` per-sequence ones, log-probs 0 on padding as TRL's are. Compared:

* ``delta`` (two-sided, ``grpo_trainer.py:3113-3120``) with ``loss_type`` "grpo"
  (seq-mean-token-mean) and "bnpo" (token-mean), for ``delta`` above and below ``1 + epsilon_high``;
* ``loss_type="cispo"`` (``grpo_trainer.py:3109-3111``, aggregated by ``num_items_in_batch``,
  3168-3173: token-mean when it is the batch's token count) vs ``cispo_loss(variant="trl")``;
* ``loss_type="sapo"`` (``grpo_trainer.py:3121-3124``, "grpo" aggregation) vs ``sapo_loss``.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from _frameworks import require

verl = require("verl")
trl = require("trl")

from verl.trainer.ppo import core_algos  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402

from policygrad.trajectory_side.clips import cispo_loss, sapo_loss, two_sided_clip_loss  # noqa: E402

DT = torch.float64
TOL = {"rtol": 1e-6, "atol": 1e-6}
LENGTHS = (7, 3, 5, 1, 6, 7, 2, 4, 7, 5, 3, 6, 1, 4, 7, 2)
B, T = len(LENGTHS), max(LENGTHS)
MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum")


def close(actual, expected):
    torch.testing.assert_close(actual, expected, **TOL)


def make_inputs(seed=7):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T) < torch.tensor(LENGTHS)[:, None]).to(DT)
    real = mask.bool()

    def junk(x):
        return torch.where(real, x, 1e3 * (torch.rand(B, T, generator=g, dtype=DT) - 0.5))

    old = -4.5 + 2 * torch.rand(B, T, generator=g, dtype=DT)
    logp = old + 3.2 * torch.rand(B, T, generator=g, dtype=DT) - 1.6  # ratios in [0.2, 5]
    adv = torch.randn(B, T, generator=g, dtype=DT)
    return SimpleNamespace(mask=mask, logp=junk(logp), old=junk(old), adv=junk(adv))


@pytest.fixture(scope="module")
def inp():
    return make_inputs()


def value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x)
    return out.detach(), grad


def test_inputs_cover_every_region(inp):
    """Both advantage signs below 0.8, inside, above 1.28 and above 3 (the delta regions)."""
    r = (inp.logp - inp.old).exp()[inp.mask.bool()]
    a = inp.adv[inp.mask.bool()]
    for sign in (a > 0, a < 0):
        for region in (r < 0.8, (r > 0.8) & (r < 1.2), r > 1.28, r > 3.0):
            assert bool((sign & region).any())


# ------------------------------------------------------------------------------------------- verl


def actor_config(**kw) -> ActorConfig:
    return ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=B, **kw)


def verl_loss(fn, inp, mode, **cfg):
    def loss(logp):
        out, metrics = fn(
            old_log_prob=inp.old,
            log_prob=logp,
            advantages=inp.adv,
            response_mask=inp.mask.bool(),
            loss_agg_mode=mode,
            config=actor_config(loss_agg_mode=mode, **cfg),
        )
        loss.metrics = metrics
        return out

    return (*value_and_grad(loss, inp.logp), loss.metrics)


def ours(fn, inp, **kw):
    def loss(logp):
        out = fn(logp, inp.old, inp.adv, inp.mask, **kw)
        loss.stats = out[1]
        return out[0]

    return (*value_and_grad(loss, inp.logp), loss.stats)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps, delta", [((0.2, 0.2), 3.0), ((0.2, 0.28), 1.28), ((0.2, 0.28), 4.0)])
def test_two_sided_is_verls_dual_clip(inp, mode, eps, delta):
    """delta >= 1 + eps_high: the two-sided clip is verl's vanilla loss with clip_ratio_c = delta."""
    cfg = dict(clip_ratio=eps[0], clip_ratio_low=eps[0], clip_ratio_high=eps[1], clip_ratio_c=delta)
    v_val, v_grad, _ = verl_loss(core_algos.compute_policy_loss_vanilla, inp, mode, **cfg)
    o_val, o_grad, _ = ours(two_sided_clip_loss, inp, delta=delta, eps_low=eps[0], eps_high=eps[1], aggregation=mode)
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert float(v_grad.abs().sum()) > 0


def test_two_sided_small_delta_is_not_verls_dual_clip(inp):
    """Pinned: for delta < 1 + eps_high, TRL's/INTELLECT-2's formula is not verl's dual clip."""
    cfg = dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=1.1)
    _, v_grad, _ = verl_loss(core_algos.compute_policy_loss_vanilla, inp, "token-mean", **cfg)
    _, o_grad, _ = ours(two_sided_clip_loss, inp, delta=1.1)
    with pytest.raises(AssertionError):
        close(o_grad, v_grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28), (1.0, 2.0)])
def test_cispo_matches_verl(inp, mode, eps):
    cfg = dict(clip_ratio=eps[0], clip_ratio_low=eps[0], clip_ratio_high=eps[1])
    v_val, v_grad, metrics = verl_loss(core_algos.compute_policy_loss_cispo, inp, mode, **cfg)
    o_val, o_grad, stats = ours(cispo_loss, inp, variant="verl", eps_low=eps[0], eps_high=eps[1], aggregation=mode)
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert stats["clip_frac"] == pytest.approx(metrics["actor/pg_clipfrac"], abs=1e-6)  # verl: float32
    assert 0 < stats["clip_frac"] < 1


@pytest.mark.parametrize("taus", [(1.0, 1.05), (2.0, 3.0), (0.5, 0.25)])
def test_sapo_matches_verl(inp, taus):
    v_val, v_grad, _ = verl_loss(
        core_algos.compute_policy_loss_sapo, inp, "seq-mean-token-mean", tau_pos=taus[0], tau_neg=taus[1]
    )
    o_val, o_grad, _ = ours(sapo_loss, inp, tau_pos=taus[0], tau_neg=taus[1])
    close(o_val, v_val)
    close(o_grad, v_grad)


def test_sapo_verl_ignores_loss_agg_mode(inp):
    """Pinned (core_algos.py:1687-1690): verl's SAPO asked for token-mean is still
    seq-mean-token-mean; ours follows `aggregation`."""
    v_val, v_grad, _ = verl_loss(core_algos.compute_policy_loss_sapo, inp, "token-mean")
    close(ours(sapo_loss, inp)[0], v_val)
    tm_val, _, _ = ours(sapo_loss, inp, aggregation="token-mean")
    with pytest.raises(AssertionError):
        close(tm_val, v_val)


# -------------------------------------------------------------------------------------------- TRL


class _Accelerator:
    num_processes = 1

    @staticmethod
    def gather(x):
        return x

    @staticmethod
    def reduce(x, reduction="sum"):
        return x


def trl_self(loss_type, logp, *, eps_low=0.2, eps_high=0.2, **args):
    """The attributes GRPOTrainer._compute_loss reads (grpo_trainer.py:3020-3290), no more."""
    defaults = dict(delta=None, sapo_temperature_pos=1.0, sapo_temperature_neg=1.05, steps_per_generation=1)
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=0.0,
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        args=SimpleNamespace(**{**defaults, **args}),
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False,
        accelerator=_Accelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )


@pytest.fixture(scope="module")
def trl_inp(inp):
    """TRL's view of the batch: log-probs 0 on padding, one advantage per completion."""
    real = inp.mask.bool()
    zero = torch.zeros((), dtype=DT)
    seq_adv = torch.randn(B, generator=torch.Generator().manual_seed(3), dtype=DT)
    return SimpleNamespace(
        mask=inp.mask,
        logp=torch.where(real, inp.logp, zero),
        old=torch.where(real, inp.old, zero),
        adv=seq_adv,
    )


def trl_loss(t, loss_type, **attrs):
    def loss(logp):
        inputs = {
            "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
            "prompt_mask": torch.ones(B, 1, dtype=torch.long),
            "completion_ids": torch.zeros(B, T, dtype=torch.long),
            "completion_mask": t.mask.long(),
            "advantages": t.adv,
            "old_per_token_logps": t.old,
            "num_items_in_batch": t.mask.sum(),
        }
        return trl.GRPOTrainer._compute_loss(trl_self(loss_type, logp, **attrs), None, inputs)

    return value_and_grad(loss, t.logp)


def ours_trl(fn, t, **kw):
    return value_and_grad(lambda logp: fn(logp, t.old, t.adv, t.mask, **kw)[0], t.logp)


@pytest.mark.parametrize("loss_type, mode", [("grpo", "seq-mean-token-mean"), ("bnpo", "token-mean")])
@pytest.mark.parametrize("eps_high, delta", [(0.2, 4.0), (0.28, 2.0), (0.28, 1.1)])
def test_two_sided_matches_trl(trl_inp, loss_type, mode, eps_high, delta):
    t_val, t_grad = trl_loss(trl_inp, loss_type, eps_high=eps_high, delta=delta)
    o_val, o_grad = ours_trl(two_sided_clip_loss, trl_inp, delta=delta, eps_high=eps_high, aggregation=mode)
    close(o_val, t_val)
    close(o_grad, t_grad)
    assert float(t_grad.abs().sum()) > 0


@pytest.mark.parametrize("eps_max", [5.0, 1.5, 0.2])
def test_cispo_matches_trl(trl_inp, eps_max):
    """eps_max is TRL's epsilon_high (0.2 is what TRL uses when epsilon_high is left unset)."""
    t_val, t_grad = trl_loss(trl_inp, "cispo", eps_high=eps_max)
    o_val, o_grad = ours_trl(cispo_loss, trl_inp, variant="trl", eps_max=eps_max)
    close(o_val, t_val)
    close(o_grad, t_grad)


@pytest.mark.parametrize("taus", [(1.0, 1.05), (2.0, 3.0)])
def test_sapo_matches_trl(trl_inp, taus):
    t_val, t_grad = trl_loss(trl_inp, "sapo", sapo_temperature_pos=taus[0], sapo_temperature_neg=taus[1])
    o_val, o_grad = ours_trl(sapo_loss, trl_inp, tau_pos=taus[0], tau_neg=taus[1])
    close(o_val, t_val)
    close(o_grad, t_grad)
