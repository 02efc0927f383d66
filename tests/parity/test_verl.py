"""Parity with verl 0.9 (written against 0.9.1): verl's own functions are the oracle.

Every test runs a verl function and the package's function on the same float64 inputs and compares
the values and, for every loss, the gradient w.r.t. the current log-probs (or the critic's values,
or the logits). The shared batch (:func:`make_inputs`) has 4 groups of G=4 completions of unequal
lengths (1 to 7 tokens, right padding), finite garbage on every padded position (our functions
select it away; verl multiplies by the mask, so it must stay finite), log-ratios in [-1.6, 1.6]
(clipped tokens on both sides for both advantage signs, and ratios above 3 with A<0: the dual-clip
region), a reference policy, and outcome rewards with one all-equal group.

What is compared (``core_algos`` is ``verl/trainer/ppo/core_algos.py``):

* GRPO / Dr.GRPO advantages (``compute_grpo_outcome_advantage``, the vectorised one, and the GRPO
  branch of ``ray_trainer.compute_advantage``) vs ``group_advantages`` + ``broadcast_to_tokens`` and
  ``methods.grpo_advantages``; RLOO (``compute_rloo_outcome_advantage`` and the vectorised one) vs
  ``group_leave_one_out_advantages``, including unequal, non-contiguous groups;
* PPO clip (``compute_policy_loss_vanilla`` with a real ``ActorConfig``) vs ``ppo_clip_loss`` for
  every aggregation mode, symmetric, clip-higher and dual-clip, its clip statistics, and
  ``agg_loss`` vs ``aggregate``; GSPO (``compute_policy_loss_gspo``) vs
  ``ppo_clip_loss(level="geometric")``; GPG and REINFORCE (``compute_policy_loss_gpg``,
  ``compute_policy_loss_reinforce``) vs ``policy_gradient_loss``;
* the KL estimators (``kl_penalty``, every name) vs ``kl_estimate``; the actor's KL loss and the
  whole GRPO actor loss (``verl/workers/utils/losses.py:ppo_loss``, run end to end) vs ``kl_loss``
  and ``methods.grpo(...).loss``;
* RLHF: ``compute_gae_advantage_return`` (and ``ray_trainer.compute_advantage`` for GAE) vs ``gae``
  then ``whiten``; ``masked_whiten`` vs ``whiten``; the KL in the reward
  (``ray_trainer.apply_kl_penalty``, ``compute_rewards``) vs ``kl_shaped_rewards``, end to end vs
  ``methods.rlhf_advantages`` and ``methods.rlhf_value_targets``; ``compute_value_loss`` vs
  ``clipped_value_loss``; the explained variance of ``metric_utils.compute_data_metrics`` vs
  ``explained_variance``;
* ``AdaptiveKLController``, ``logprobs_from_logits``, ``entropy_from_logits`` /
  ``compute_entropy_loss``.

``verl/trainer/ppo/ray_trainer.py`` cannot be imported without its serving dependencies (ray,
cachetools), so :func:`_ray_trainer` compiles its ``apply_kl_penalty`` and ``compute_advantage``
from verl's own source.

Deliberate differences, each pinned by a test that asserts the exact relation (verl file:line):

1. Dual-clip is always on in verl: ``clip_ratio_c`` defaults to 3.0
   (``workers/config/actor.py:163``, ``core_algos.py:1323,1361``); ours only with ``dual_clip=c``,
   and GRPO has none. With ``dual_clip=None`` ours differs exactly on the A<0, ratio>c tokens.
2. Called without ``global_batch_size`` (as the policy losses are outside the trainer), the seq-mean
   modes of ``agg_loss`` divide by the number of non-empty rows (``core_algos.py:1183-1201``); ours
   by B: with one all-masked row, ours = verl * nonempty / B. verl's trainer passes the mini-batch's
   row count (``trainer/ppo/ray_trainer.py:1352-1362``), and then they are equal.
3. ``seq-mean-token-mean`` divides each row by ``n_i + 1e-8`` (``core_algos.py:1196``); ours by
   ``n_i``.
4. GRPO's std is Bessel-corrected (``torch.std``, ``core_algos.py:321``) and its epsilon is 1e-6
   (``core_algos.py:272``): ours matches with ``unbiased=True, eps=1e-6`` (the defaults);
   ``unbiased=False`` and TRL's eps=1e-4 differ. A lone row is its own group there (mean 0, std 1:
   ``core_algos.py:316-317``); ours refuses groups of one.
5. The vectorised GRPO computes the group statistics in float32 (``utils/groupwise.py:191``).
6. RLOO on a group of one: verl keeps the raw reward (``core_algos.py:630``), its vectorised version
   gives 0 (``core_algos.py:864``); ours raises ValueError.
7. k3 (``low_var_kl``) is clamped to [-10, 10] in verl (``core_algos.py:2245``); ours is not.
8. ``kl_penalty`` detaches neither argument (``core_algos.py:2211-2213``): a gradient reaches
   ``ref_logprob``; ours detaches ``ref_logp``. Both straight-through variants use ``sg`` the same
   way.
9. GSPO clamps the log sequence ratio at +10 only (``core_algos.py:1590``), ours at +-20; and verl's
   gradient is the token-level one (``log_prob - sg(log_prob) + sg(seq_ratio)``,
   ``core_algos.py:1589``): equal values, and ours = the row mean of verl's gradient (equal when the
   advantage is constant per row). ``level="sequence"`` (the product of token ratios) is not GSPO.
10. ``masked_whiten`` multiplies by ``rsqrt(var + 1e-8)`` (``utils/torch_functional.py:343``), ours
    divides by the standard deviation; ``shift_mean=False`` re-adds the mean there, ours only
    rescales.
11. The clip statistics: verl's ``ppo_kl`` is the k1 estimate ``mean(-log r)``
    (``core_algos.py:1340``), our ``approx_kl`` the k3 estimate ``mean(r - 1 - log r)``;
    ``pg_clipfrac``/``pg_clipfrac_lower`` equal our ``clip_frac``/``dual_clip_frac``.
12. The explained variance adds 1e-5 to the variance of the returns
    (``trainer/ppo/metric_utils.py:540``).
13. The critic loss: both are ``0.5 * max(...)``; verl aggregates with ``loss_agg_mode``, ours is
    token-mean only. ``kl_loss_coef`` defaults to 0.001 in verl (``workers/config/actor.py:175``),
    GRPO's beta to 0.04.

A gap in the mask: verl's GAE bridges masked tokens inside a row (``core_algos.py:254-256``), and
so does ours (``test_gae_with_a_hole_in_the_mask``, which found the package ending the episode at
the gap).

In verl, not (yet) in the package — for chapters 08-10: policy losses ``cispo``, ``sapo``,
``geo_mean`` (GMPO), ``dppo_tv``, ``dppo_kl``, ``clip_cov``, ``kl_cov``, ``dro``, ``bypass_mode``
and rollout importance weights (``rollout_is_weights``); advantage estimators ``grpo_passk``,
``gdpo``, ``reinforce_plus_plus``, ``reinforce_plus_plus_baseline``, ``remax``, ``opo``, ``gpg``
(its advantage), ``optimal_token_baseline`` and its multi-turn variant; the ``abs`` KL estimator and
``k2+``; ``FixedKLController``; the data-parallel normalisers of ``agg_loss`` (``dp_size``,
``batch_num_tokens`` over ranks) and the critic's ``loss_agg_mode``; PF-PPO reweighting; the entropy
bonus in the actor loss (``entropy_coeff``).
"""

from __future__ import annotations

import ast
import importlib.util
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch
from _frameworks import require

verl = require("verl")

from tensordict import TensorDict  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.trainer.ppo.metric_utils import compute_data_metrics  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl.utils import torch_functional as verl_F  # noqa: E402
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.utils import losses as verl_losses  # noqa: E402

import policygrad as pg  # noqa: E402
from policygrad import reward_side as rs  # noqa: E402
from policygrad import trajectory_side as ts  # noqa: E402

DT = torch.float64
G = 4
LENGTHS = (7, 3, 5, 1, 6, 7, 2, 4, 7, 5, 3, 6, 1, 4, 7, 2)
B, T = len(LENGTHS), max(LENGTHS)
P = 2  # prompt length of the actor-loss batch
TOL = {"rtol": 1e-6, "atol": 1e-6}
EXACT = {"rtol": 1e-12, "atol": 1e-12}
MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "token-sum",
)
SEQ_MODES = ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
CLIPS = {"symmetric": (0.2, 0.2), "clip-higher": (0.2, 0.28), "asymmetric": (0.3, 0.5)}
SEED = 34  # the first seed with a token in every region of test_inputs_cover_every_clip_region
NO_DUAL = 1e9  # a clip_ratio_c that no ratio reaches: verl's dual-clip switched off


def close(actual, expected, **tol):
    torch.testing.assert_close(actual, expected, **(tol or TOL))


def not_close(actual, expected, **tol):
    with pytest.raises(AssertionError):
        torch.testing.assert_close(actual, expected, **(tol or TOL))


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Inputs:
    """The shared batch. Per-token tensors are (B, T) float64 with finite garbage on padding."""

    mask: torch.Tensor  # (B, T) 0/1 float64
    logp: torch.Tensor  # current policy (a leaf without grad: tests attach one)
    old: torch.Tensor
    ref: torch.Tensor
    adv: torch.Tensor  # per-token advantages of both signs
    values: torch.Tensor  # a critic's values
    step_rewards: torch.Tensor  # per-step rewards, garbage on padding
    rewards: torch.Tensor  # (B,) outcome rewards; group 0 all equal
    token_rewards: torch.Tensor  # (B, T) the outcome on the last real token, 0 elsewhere
    uid: np.ndarray  # (B,) verl's prompt uids
    group_ids: torch.Tensor  # (B,) ours

    @property
    def real(self) -> torch.Tensor:
        return self.mask.bool()

    @property
    def log_ratio(self) -> torch.Tensor:
        return self.logp - self.old


def make_inputs(seed: int = SEED) -> Inputs:
    g = torch.Generator().manual_seed(seed)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(B, T, generator=g, dtype=DT)

    def junk(x, scale=1e3):
        return torch.where(real, x, scale * (torch.rand(B, T, generator=g, dtype=DT) - 0.5))

    lengths = torch.tensor(LENGTHS)
    mask = (torch.arange(T) < lengths[:, None]).to(DT)
    real = mask.bool()
    old = uniform(-4.5, -2.5)  # log-probs stay <= 0 (RolloutBatch checks it)
    logp = old + uniform(-1.6, 1.6)  # ratios in [0.2, 5]
    ref = logp + uniform(-1.2, 0.85)  # logp - ref in [-0.85, 1.2]: k3 < 10 everywhere
    adv = torch.randn(B, T, generator=g, dtype=DT)
    values = torch.randn(B, T, generator=g, dtype=DT)
    step = torch.randn(B, T, generator=g, dtype=DT)
    rewards = torch.cat(
        [
            torch.ones(G, dtype=DT),  # all equal: no signal
            torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=DT),
            torch.randn(G, generator=g, dtype=DT),
            3 * torch.randn(G, generator=g, dtype=DT) + 0.5,
        ]
    )
    last = torch.arange(T) == (lengths - 1)[:, None]
    token_rewards = torch.where(last, rewards[:, None], torch.zeros((), dtype=DT))
    return Inputs(
        mask=mask,
        logp=junk(logp, 50.0),
        old=junk(old),
        ref=junk(ref),
        adv=junk(adv),
        values=junk(values),
        step_rewards=junk(step),
        rewards=rewards,
        token_rewards=token_rewards,
        uid=np.array([f"prompt-{i // G}" for i in range(B)], dtype=object),
        group_ids=torch.arange(B // G).repeat_interleave(G),
    )


@pytest.fixture(scope="module")
def inp() -> Inputs:
    return make_inputs()


def with_empty_row(mask: torch.Tensor, row: int = 5) -> torch.Tensor:
    m = mask.clone()
    m[row] = 0
    return m


def value_and_grad(fn, x):
    """``fn(x)`` and its gradient w.r.t. a fresh leaf copy of ``x``."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x)
    return out.detach(), grad


def actor_config(**kw) -> ActorConfig:
    """A real verl ActorConfig (fresh each time: verl's actor loss writes into
    global_batch_info)."""
    return ActorConfig(strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=B, **kw)


def clip_config(eps_low, eps_high, c=3.0, mode="token-mean") -> ActorConfig:
    return actor_config(
        clip_ratio=eps_low,
        clip_ratio_low=eps_low,
        clip_ratio_high=eps_high,
        clip_ratio_c=c,
        loss_agg_mode=mode,
    )


def verl_vanilla(inp, mode, eps_low=0.2, eps_high=0.2, c=3.0, mask=None, adv=None, stats=False):
    mask = inp.mask if mask is None else mask
    adv = inp.adv if adv is None else adv

    def fn(logp):
        loss, metrics = core_algos.compute_policy_loss_vanilla(
            old_log_prob=inp.old,
            log_prob=logp,
            advantages=adv,
            response_mask=mask.bool(),
            loss_agg_mode=mode,
            config=clip_config(eps_low, eps_high, c, mode),
        )
        fn.metrics = metrics
        return loss

    out = value_and_grad(fn, inp.logp)
    return (*out, fn.metrics) if stats else out


def ours_clip(inp, mode, eps_low=0.2, eps_high=None, dual=3.0, mask=None, adv=None, level="token"):
    mask = inp.mask if mask is None else mask
    adv = inp.adv if adv is None else adv

    def fn(logp):
        loss, _ = ts.ppo_clip_loss(
            logp,
            inp.old,
            adv,
            mask,
            eps_low=eps_low,
            eps_high=eps_high,
            dual_clip=dual,
            aggregation=mode,
            level=level,
        )
        return loss

    return value_and_grad(fn, inp.logp)


def _ray_trainer() -> dict:
    """``apply_kl_penalty`` and ``compute_advantage`` of verl's ``trainer/ppo/ray_trainer.py``,
    compiled from verl's installed source (the module itself imports ray and the rollout
    servers)."""
    path = importlib.util.find_spec("verl.trainer.ppo.ray_trainer").origin
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    ns = {
        "torch": torch,
        "core_algos": core_algos,
        "masked_mean": verl_F.masked_mean,
        "DataProto": DataProto,
        "Optional": Optional,
        "AlgoConfig": AlgoConfig,
        "AdvantageEstimator": core_algos.AdvantageEstimator,
    }
    wanted = {"apply_kl_penalty", "compute_advantage", "compute_response_mask"}
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {n.name for n in nodes} == wanted, "verl's ray_trainer changed: update the parity test"
    exec(compile(ast.Module(nodes, type_ignores=[]), path, "exec"), ns)
    return ns


RAY = _ray_trainer()


def batch_of(inp: Inputs) -> pg.RolloutBatch:
    return pg.RolloutBatch(
        prompts=torch.ones(B, P, dtype=torch.long),
        completions=torch.zeros(B, T, dtype=torch.long),
        mask=inp.mask,
        loss_mask=inp.mask,
        old_log_probs=inp.old,
        ref_log_probs=inp.ref,
        rewards=inp.rewards,
        group_ids=inp.group_ids,
        truncated=torch.zeros(B, dtype=torch.bool),
        values=inp.values,
    )


def test_inputs_cover_every_clip_region(inp):
    """The shared batch exercises every branch the clip tests rely on (else they could pass
    vacuously)."""
    r, A, m = inp.log_ratio.exp(), inp.adv, inp.real
    edges = (0.0, 0.7, 0.8, 1.2, 1.28, 1.5, 3.0, 9.0)  # every side of every clip range used below
    for sign in (A > 0, A < 0):
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            assert int((sign & (r > lo) & (r < hi) & m).sum()) >= 1, (lo, hi)
    assert float(inp.rewards[:G].std()) == 0.0 and len(set(LENGTHS)) > 4


# ------------------------------------------------------------------------------ GRPO advantages


def verl_grpo(inp, eps=1e-6, norm=True):
    adv, ret = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=inp.token_rewards,
        response_mask=inp.mask,
        index=inp.uid,
        epsilon=eps,
        norm_adv_by_std_in_grpo=norm,
    )
    close(ret, adv, **EXACT)
    return adv


@pytest.mark.parametrize("scale", ["std", None])
def test_grpo_advantages_match_verl(inp, scale):
    """(R - mean_g) / (std_g + 1e-6) with the Bessel std (Dr.GRPO: no division), broadcast to
    tokens; the all-equal group gets 0 in both. Also through ``ray_trainer.compute_advantage``."""
    norm = scale == "std"
    expected = verl_grpo(inp, norm=norm)
    ours = rs.broadcast_to_tokens(rs.group_advantages(inp.rewards, G, scale=scale), inp.mask)
    close(ours, expected)
    close(pg.methods.grpo_advantages(batch_of(inp), scale=scale), expected)
    assert bool((ours[:G] == 0).all()) and bool((expected[:G] == 0).all())
    assert float(ours.abs().sum()) > 1.0
    data = DataProto.from_dict(
        tensors={"token_level_rewards": inp.token_rewards, "response_mask": inp.mask},
        non_tensors={"uid": inp.uid},
    )
    out = RAY["compute_advantage"](
        data, core_algos.AdvantageEstimator.GRPO, norm_adv_by_std_in_grpo=norm, config=AlgoConfig()
    )
    close(ours, out.batch["advantages"])


def test_grpo_population_std_differs_from_verl(inp):
    """Pinned: verl's std is Bessel-corrected (core_algos.py:321); ours with unbiased=False is the
    population std, (R - mean) / (sqrt(mean((R - mean)^2)) + eps), and differs from verl wherever A
    != 0."""
    ours = rs.broadcast_to_tokens(rs.group_advantages(inp.rewards, G, unbiased=False), inp.mask)
    R = inp.rewards.reshape(-1, G)
    d = R - R.mean(1, keepdim=True)
    population = (d / ((d * d).mean(1, keepdim=True).sqrt() + 1e-6)).reshape(-1)
    population[:G] = 0.0  # the all-equal group
    close(ours, rs.broadcast_to_tokens(population, inp.mask))
    not_close(ours, verl_grpo(inp))


def test_grpo_epsilon(inp):
    """Pinned: verl's epsilon is 1e-6 (core_algos.py:272); TRL's 1e-4 gives other advantages. Ours
    with eps=1e-4 matches verl's epsilon=1e-4 and differs from verl's default."""
    ours = rs.broadcast_to_tokens(rs.group_advantages(inp.rewards, G, eps=1e-4), inp.mask)
    close(ours, verl_grpo(inp, eps=1e-4))
    not_close(ours, verl_grpo(inp))


def test_grpo_vectorized_matches_in_float32(inp):
    """``compute_grpo_vectorized_outcome_advantage`` takes the same arguments but computes the group
    statistics in float32 (utils/groupwise.py:191): equal to float32 precision, not to float64's."""
    for norm, scale in ((True, "std"), (False, None)):
        adv, _ = core_algos.compute_grpo_vectorized_outcome_advantage(
            token_level_rewards=inp.token_rewards,
            response_mask=inp.mask,
            index=inp.uid,
            norm_adv_by_std_in_grpo=norm,
        )
        ours = rs.broadcast_to_tokens(rs.group_advantages(inp.rewards, G, scale=scale), inp.mask)
        close(ours, adv, rtol=1e-5, atol=1e-5)
        if norm:
            not_close(ours, adv, **EXACT)


def test_grpo_lone_row_is_refused(inp):
    """Pinned: verl gives a lone row mean 0 and std 1, A = R / (1 + eps) (core_algos.py:316-317);
    ours has no group of one."""
    uid = inp.uid.copy()
    uid[0] = "alone"
    adv, _ = core_algos.compute_grpo_outcome_advantage(inp.token_rewards, inp.mask, uid)
    close(adv[0], inp.mask[0] * inp.rewards[0] / (1 + 1e-6))  # verl: float32 std + eps
    with pytest.raises(ValueError, match="group_size >= 2"):
        rs.group_advantages(inp.rewards, 1)


# ----------------------------------------------------------------------------------------- RLOO


def verl_rloo(rewards, mask, uid):
    last = torch.arange(mask.shape[1]) == (mask.sum(-1).long() - 1)[:, None]
    tr = torch.where(last, rewards[:, None], torch.zeros((), dtype=DT))
    out = []
    for fn in (
        core_algos.compute_rloo_outcome_advantage,
        core_algos.compute_rloo_vectorized_outcome_advantage,
    ):
        adv, ret = fn(token_level_rewards=tr, response_mask=mask, index=uid)
        close(ret, adv, **EXACT)
        out.append(adv)
    return out


def test_rloo_matches_verl(inp):
    """R_i - mean of the others in the group = G/(G-1) (R_i - mean_g), both verl implementations."""
    ours = rs.broadcast_to_tokens(
        rs.group_leave_one_out_advantages(inp.rewards, inp.group_ids), inp.mask
    )
    for expected in verl_rloo(inp.rewards, inp.mask, inp.uid):
        close(ours, expected)
    assert bool((ours[:G] == 0).all()) and float(ours.abs().sum()) > 1.0


def test_rloo_unequal_noncontiguous_groups():
    """Groups of sizes 2, 3 and 5 whose rows are interleaved: verl groups by uid, ours by id."""
    g = torch.Generator().manual_seed(3)
    ids = torch.tensor([7, 2, 7, 9, 2, 9, 9, 7, 9, 9])
    rewards = torch.randn(len(ids), generator=g, dtype=DT)
    lengths = torch.tensor([3, 1, 4, 2, 4, 4, 1, 2, 3, 4])
    mask = (torch.arange(4) < lengths[:, None]).to(DT)
    uid = np.array([f"u{int(i)}" for i in ids], dtype=object)
    ours = rs.broadcast_to_tokens(rs.group_leave_one_out_advantages(rewards, ids), mask)
    for expected in verl_rloo(rewards, mask, uid):
        close(ours, expected)
    loo = torch.stack(
        [rewards[i] - rewards[(ids == ids[i]) & (torch.arange(10) != i)].mean() for i in range(10)]
    )
    close(ours[:, 0], loo)


def test_rloo_lone_row():
    """Pinned: a group of one keeps its raw reward in verl's loop (core_algos.py:630) and gets 0 in
    the vectorised version (core_algos.py:864); ours refuses it."""
    rewards = torch.tensor([1.0, 2.0, 4.0], dtype=DT)
    mask = torch.ones(3, 2, dtype=DT)
    loop, vec = verl_rloo(rewards, mask, np.array(["a", "a", "b"], dtype=object))
    close(loop[2], torch.full((2,), 4.0, dtype=DT), **EXACT)
    close(vec[2], torch.zeros(2, dtype=DT), **EXACT)
    close(loop[:2], vec[:2], **EXACT)
    with pytest.raises(ValueError, match="single row"):
        rs.group_leave_one_out_advantages(rewards, torch.tensor([0, 0, 1]))


# ------------------------------------------------------------------------------------- PPO clip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_ppo_clip_matches_verl(inp, mode, clip):
    """Vanilla PPO with verl's always-on dual-clip (c=3) vs ours with dual_clip=3, every
    aggregation, symmetric and clip-higher (DAPO) ranges: value and gradient."""
    lo, hi = CLIPS[clip]
    v_val, v_grad = verl_vanilla(inp, mode, lo, hi)
    o_val, o_grad = ours_clip(inp, mode, lo, hi, dual=3.0)
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert float(v_grad.abs().sum()) > 0 and bool((o_grad[~inp.real] == 0).all())


@pytest.mark.parametrize("c", [2.0, 5.0])
def test_ppo_dual_clip_bound(inp, c):
    """Another dual-clip bound: verl's clip_ratio_c = ours dual_clip."""
    close(ours_clip(inp, "token-mean", dual=c), verl_vanilla(inp, "token-mean", c=c))


def test_ppo_dual_clip_always_on_in_verl(inp):
    """Pinned: verl's dual-clip cannot be switched off (clip_ratio_c defaults to 3.0,
    core_algos.py:1323,1361). Ours with dual_clip=None differs exactly on the tokens with A < 0 and
    ratio > 3: there verl's per-token loss is -3A with zero gradient, ours -rA with gradient -rA;
    elsewhere the gradients are equal, and the token-sum losses differ by sum over those tokens of A
    (3 - r)."""
    r, A = inp.log_ratio.exp(), inp.adv
    dual = inp.real & (A < 0) & (r > 3.0)
    assert int(dual.sum()) >= 2
    v_val, v_grad = verl_vanilla(inp, "token-sum")
    o_val, o_grad = ours_clip(inp, "token-sum", dual=None)
    close(o_grad[~dual], v_grad[~dual], **EXACT)
    close(v_grad[dual], torch.zeros_like(v_grad[dual]), **EXACT)
    close(o_grad[dual], (-r * A)[dual], **EXACT)
    close(o_val - v_val, (A * (3.0 - r))[dual].sum(), **EXACT)
    assert float(o_val - v_val) > 0
    close(ours_clip(inp, "token-sum", dual=None), verl_vanilla(inp, "token-sum", c=NO_DUAL))


def test_ppo_log_ratio_clamp():
    """Both clamp the log-ratio to +-20 before exp (core_algos.py:1338; ours LOG_RATIO_CLAMP): a
    log-ratio of 25 with A < 0 (verl's dual-clip switched off) costs -A e^20 with zero gradient in
    both."""
    assert ts.LOG_RATIO_CLAMP == 20.0
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=DT)
    old = torch.tensor([[-30.0, -1.0, -1.0]], dtype=DT)
    logp = torch.tensor([[-5.0, -1.2, -1.0]], dtype=DT)
    adv = torch.tensor([[-0.5, 1.0, 0.0]], dtype=DT)
    fake = Inputs(mask, logp, old, old, adv, *(None,) * 6)
    v_val, v_grad = verl_vanilla(fake, "token-sum", c=NO_DUAL)
    o_val, o_grad = ours_clip(fake, "token-sum", dual=None)
    close(o_val, v_val, **EXACT)
    close(o_grad, v_grad, **EXACT)
    close(o_val, torch.tensor(0.5 * math.exp(20.0) - math.exp(-0.2), dtype=DT), **EXACT)
    assert float(o_grad[0, 0]) == 0.0 and float(o_grad[0, 1]) != 0.0


@pytest.mark.parametrize("mode", MODES)
def test_ppo_empty_row_divides_by_nonempty_rows(inp, mode):
    """Pinned: with an all-masked row, verl's seq-mean modes divide by the 15 non-empty rows
    (core_algos.py:1183-1201), ours by B = 16: ours = verl * 15/16 (value and gradient). The token
    modes are equal."""
    mask = with_empty_row(inp.mask)
    v_val, v_grad = verl_vanilla(inp, mode, mask=mask)
    o_val, o_grad = ours_clip(inp, mode, mask=mask)
    factor = (B - 1) / B if mode in SEQ_MODES else 1.0
    close(o_val, v_val * factor)
    close(o_grad, v_grad * factor)
    if mode in SEQ_MODES:
        not_close(o_val, v_val)


def test_ppo_clip_statistics(inp):
    """verl's pg_clipfrac / pg_clipfrac_lower are our clip_frac / dual_clip_frac (clip-higher
    ranges). Pinned: verl's ppo_kl is the k1 estimate mean(-log r) (core_algos.py:1340), our
    approx_kl the k3 estimate mean(r - 1 - log r)."""
    _, _, metrics = verl_vanilla(inp, "token-mean", 0.2, 0.28, stats=True)
    _, stats = ts.ppo_clip_loss(
        inp.logp, inp.old, inp.adv, inp.mask, eps_low=0.2, eps_high=0.28, dual_clip=3.0
    )
    assert stats["clip_frac"] == pytest.approx(metrics["actor/pg_clipfrac"], rel=1e-7)
    assert stats["dual_clip_frac"] == pytest.approx(metrics["actor/pg_clipfrac_lower"], rel=1e-7)
    assert stats["clip_frac"] > 0 and stats["dual_clip_frac"] > 0
    lr = inp.log_ratio[inp.real]
    assert metrics["actor/ppo_kl"] == pytest.approx(float((-lr).mean()), rel=1e-7)
    assert stats["approx_kl"] == pytest.approx(float((torch.expm1(lr) - lr).mean()), rel=1e-12)
    assert stats["approx_kl"] != pytest.approx(metrics["actor/ppo_kl"], rel=1e-3)


# ---------------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("empty", [False, True])
def test_agg_loss_matches_aggregate(inp, mode, empty):
    """``agg_loss`` vs ``aggregate`` on per-token values with garbage on padding; with an all-masked
    row the seq-mean modes differ by exactly nonempty / B (pinned, core_algos.py:1183-1201)."""
    mask = with_empty_row(inp.mask) if empty else inp.mask
    values = inp.values
    v_val, v_grad = value_and_grad(lambda x: core_algos.agg_loss(x, mask, mode), values)
    o_val, o_grad = value_and_grad(lambda x: ts.aggregate(x, mask, mode), values)
    factor = (B - 1) / B if empty and mode in SEQ_MODES else 1.0
    close(o_val, v_val * factor)
    close(o_grad, v_grad * factor)
    w = ts.aggregation_weights(mask, mode, dtype=DT)
    close(o_grad, w, **EXACT)


@pytest.mark.parametrize("mode", MODES)
def test_agg_loss_with_the_trainers_global_batch_size(inp, mode):
    """verl's trainer passes global_batch_size = the mini-batch's row count
    (ray_trainer.py:1352-1362 into workers/utils/losses.py:67) and batch_num_tokens = its token
    count: agg_loss then divides by B, empty rows included, and equals ours in every mode (the
    non-empty-row division is agg_loss's fallback)."""
    mask = with_empty_row(inp.mask)
    kw = {"global_batch_size": B, "batch_num_tokens": mask.sum()}
    v = value_and_grad(lambda x: core_algos.agg_loss(x, mask, mode, **kw), inp.values)
    close(value_and_grad(lambda x: ts.aggregate(x, mask, mode), inp.values), v)


def test_agg_loss_norm_constant():
    """seq-mean-token-sum-norm: verl's normaliser defaults to loss_mask.shape[-1]
    (core_algos.py:1191), ours max_len defaults to T; verl's loss_scale_factor = our max_len."""
    x = torch.arange(12, dtype=DT).reshape(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=DT)
    mode = "seq-mean-token-sum-norm"
    close(ts.aggregate(x, mask, mode), core_algos.agg_loss(x, mask, mode), **EXACT)
    got = ts.aggregate(x, mask, mode, max_len=10)
    close(got, core_algos.agg_loss(x, mask, mode, loss_scale_factor=10), **EXACT)
    close(got, torch.tensor(((0 + 1) + (4 + 5 + 6 + 7) + 8) / 30, dtype=DT), **EXACT)


def test_agg_loss_seq_mean_token_mean_epsilon():
    """Pinned: verl divides each row's sum by n_i + 1e-8 (core_algos.py:1196), ours by n_i."""
    x = torch.tensor([[0.7, 5.0, 5.0]], dtype=DT)
    mask = torch.tensor([[1.0, 0.0, 0.0]], dtype=DT)
    verl_val = core_algos.agg_loss(x, mask, "seq-mean-token-mean")
    ours = ts.aggregate(x, mask, "seq-mean-token-mean")
    close(ours, torch.tensor(0.7, dtype=DT), rtol=0, atol=0)
    close(verl_val, ours / (1 + 1e-8), rtol=1e-14, atol=0)
    not_close(verl_val, ours, rtol=1e-10, atol=0)


# ------------------------------------------------------------------------------------ GSPO, GPG


def verl_gspo(inp, mode, adv, eps=(3e-4, 4e-4), mask=None):
    mask = inp.mask if mask is None else mask

    def fn(logp):
        loss, _ = core_algos.compute_policy_loss_gspo(
            old_log_prob=inp.old,
            log_prob=logp,
            advantages=adv,
            response_mask=mask.bool(),
            loss_agg_mode=mode,
            config=clip_config(*eps, mode=mode),
        )
        return loss

    return value_and_grad(fn, inp.logp)


def grpo_token_adv(inp):
    return rs.broadcast_to_tokens(rs.group_advantages(inp.rewards, G), inp.mask)


@pytest.mark.parametrize("mode", MODES)
def test_gspo_matches_verl_with_sequence_advantages(inp, mode):
    """GSPO's ratio is the geometric mean of the token ratios (our level="geometric"), clipped with
    GSPO's small ranges (3e-4, 4e-4), no dual-clip. With one advantage per row (GRPO's) value and
    gradient match."""
    adv = grpo_token_adv(inp)
    v_val, v_grad = verl_gspo(inp, mode, adv)
    o_val, o_grad = ours_clip(inp, mode, 3e-4, 4e-4, dual=None, adv=adv, level="geometric")
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert float(v_grad.abs().sum()) > 0


def test_gspo_token_level_gradient(inp):
    """Pinned: verl's GSPO gradient is token-level, log s_it = log_prob - sg(log_prob) + sg(log s_i)
    (core_algos.py:1589), ours the gradient of the sequence ratio itself. With per-token advantages
    the values are equal and ours is the row mean of verl's gradient."""
    v_val, v_grad = verl_gspo(inp, "token-mean", inp.adv)
    o_val, o_grad = ours_clip(inp, "token-mean", 3e-4, 4e-4, dual=None, level="geometric")
    close(o_val, v_val)
    row_mean = (v_grad * inp.mask).sum(-1, keepdim=True) / inp.mask.sum(-1, keepdim=True)
    close(o_grad, row_mean * inp.mask)
    not_close(o_grad, v_grad)


def test_gspo_is_not_the_sequence_product(inp):
    """Pinned: level="sequence" (the product of the token ratios) is not verl's GSPO."""
    adv = grpo_token_adv(inp)
    product = ours_clip(inp, "token-mean", 3e-4, 4e-4, None, adv=adv, level="sequence")
    not_close(product[0], verl_gspo(inp, "token-mean", adv)[0])


def test_gspo_clamp():
    """Pinned: verl clamps the log sequence ratio at +10 only (core_algos.py:1590), ours at +-20. A
    row with mean log-ratio 12 and A < 0: verl's loss is -A e^10 per token with zero gradient, ours
    -A e^12."""
    mask = torch.tensor([[1.0, 1.0, 1.0]], dtype=DT)
    old = torch.full((1, 3), -15.0, dtype=DT)
    logp = torch.tensor([[-2.0, -3.0, -4.0]], dtype=DT)
    adv = torch.full((1, 3), -1.0, dtype=DT)
    fake = Inputs(mask, logp, old, old, adv, *(None,) * 6)
    v_val, v_grad = verl_gspo(fake, "token-sum", adv, eps=(0.2, 0.2))
    o_val, o_grad = ours_clip(fake, "token-sum", 0.2, dual=None, adv=adv, level="geometric")
    close(v_val, torch.tensor(3 * math.exp(10.0), dtype=DT), **EXACT)
    close(o_val, torch.tensor(3 * math.exp(12.0), dtype=DT), **EXACT)
    assert bool((v_grad == 0).all())
    close(o_grad, torch.full((1, 3), math.exp(12.0), dtype=DT), **EXACT)


@pytest.mark.parametrize("mode", MODES)
def test_gpg_and_reinforce_losses(inp, mode):
    """verl's ``gpg`` policy loss and ``compute_policy_loss_reinforce`` (without IS weights) are
    -A log pi aggregated: our ``policy_gradient_loss``."""
    o_val, o_grad = value_and_grad(
        lambda x: ts.policy_gradient_loss(x, inp.adv, inp.mask, aggregation=mode)[0], inp.logp
    )
    for fn, first in (
        (core_algos.compute_policy_loss_gpg, "old_log_prob"),
        (core_algos.compute_policy_loss_reinforce, "rollout_log_prob"),
    ):

        def verl_loss(logp, fn=fn, first=first):
            kw = {first: inp.old}
            cfg = actor_config(loss_agg_mode=mode)
            return fn(
                log_prob=logp,
                advantages=inp.adv,
                response_mask=inp.real,
                loss_agg_mode=mode,
                config=cfg,
                **kw,
            )[0]

        v_val, v_grad = value_and_grad(verl_loss, inp.logp)
        close(o_val, v_val)
        close(o_grad, v_grad)


# ------------------------------------------------------------------------------------------ KL

KL_NAMES = {
    "k1": "k1",
    "kl": "k1",
    "k2": "k2",
    "mse": "k2",
    "k2+": "k2",
    "k3": "k3",
    "low_var_kl": "k3",
    "k1+": "k1+",
    "kl+": "k1+",
    "k3+": "k3+",
    "low_var_kl+": "k3+",
}


def kl_pair():
    g = torch.Generator().manual_seed(1)
    ref = -0.5 - 3.5 * torch.rand(6, 5, generator=g, dtype=DT)
    logp = ref - 1.5 + 4.0 * torch.rand(6, 5, generator=g, dtype=DT)  # logp - ref in [-1.5, 2.5]
    return logp, ref


@pytest.mark.parametrize("name", sorted(KL_NAMES))
def test_kl_estimators(name):
    """``kl_penalty(logprob, ref_logprob, name)`` vs ``kl_estimate``: per-token values and gradients
    (straight-through "+" variants: the value of k1/k3, the gradient of k2 = logp - ref)."""
    logp, ref = kl_pair()
    weights = torch.linspace(0.5, 2.0, logp.numel(), dtype=DT).reshape(logp.shape)
    close(ts.kl_estimate(logp, ref, KL_NAMES[name]), core_algos.kl_penalty(logp, ref, name))
    _, v_wgrad = value_and_grad(
        lambda x: (weights * core_algos.kl_penalty(x, ref, name)).sum(), logp
    )
    _, o_wgrad = value_and_grad(
        lambda x: (weights * ts.kl_estimate(x, ref, KL_NAMES[name])).sum(), logp
    )
    close(o_wgrad, v_wgrad)
    if name.endswith("+") or KL_NAMES[name] == "k2":
        close(o_wgrad, weights * (logp - ref), **EXACT)


def test_k3_clamp():
    """Pinned: verl clamps k3 to [-10, 10] (core_algos.py:2245); ours does not. logp - ref = -3
    gives e^3 - 4 = 16.09 (ours, gradient 1 - e^3) vs 10 (verl, gradient 0); +25 is clamped to 20 by
    both, giving 19 + e^-20 (ours, gradient 0) vs 10. Ours clamped at 10 is verl's value. k3+ keeps
    k2's gradient."""
    ref = torch.tensor([-1.0, -30.0, -2.0], dtype=DT)
    logp = torch.tensor([-4.0, -5.0, -1.5], dtype=DT)
    v_val, v_grad = value_and_grad(
        lambda x: core_algos.kl_penalty(x, ref, "low_var_kl").sum(), logp
    )
    o_k3 = ts.kl_estimate(logp, ref, "k3")
    close(o_k3[:2], torch.tensor([math.exp(3) - 4, math.exp(-20) + 19], dtype=DT), **EXACT)
    close(core_algos.kl_penalty(logp, ref, "low_var_kl"), o_k3.clamp(max=10.0), **EXACT)
    _, o_grad = value_and_grad(lambda x: ts.kl_estimate(x, ref, "k3").sum(), logp)
    close(v_grad[:2], torch.zeros(2, dtype=DT), **EXACT)
    close(o_grad[:2], torch.tensor([1 - math.exp(3), 0.0], dtype=DT), **EXACT)
    close(o_grad[2], v_grad[2], **EXACT)
    close(
        core_algos.kl_penalty(logp, ref, "k3+"),
        ts.kl_estimate(logp, ref, "k3+").clamp(max=10.0),
        **EXACT,
    )
    close(
        value_and_grad(lambda x: core_algos.kl_penalty(x, ref, "k3+").sum(), logp)[1],
        logp - ref,
        **EXACT,
    )


@pytest.mark.parametrize("kind", ["k1", "k3", "k1+"])
def test_kl_reference_is_detached_only_by_us(kind):
    """Pinned: verl's kl_penalty detaches neither argument (core_algos.py:2188-2213), so a reference
    with requires_grad gets the opposite gradient; ours detaches ref_logp."""
    logp, ref = kl_pair()
    ref = ref.clone().requires_grad_(True)
    (v_ref_grad,) = torch.autograd.grad(core_algos.kl_penalty(logp, ref, kind).sum(), ref)
    _, v_grad = value_and_grad(lambda x: core_algos.kl_penalty(x, ref.detach(), kind).sum(), logp)
    close(v_ref_grad, -v_grad, **EXACT)
    logp = logp.clone().requires_grad_(True)
    (o_ref_grad,) = torch.autograd.grad(
        ts.kl_estimate(logp, ref, kind).sum(), ref, allow_unused=True
    )
    assert o_ref_grad is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["low_var_kl", "k1", "mse", "k3+"])
def test_kl_loss_matches_verl(inp, mode, kind):
    """The actor's KL loss (workers/utils/losses.py:135-138: kl_penalty then agg_loss with
    loss_agg_mode) vs ``kl_loss``, on the padded batch."""
    v_val, v_grad = value_and_grad(
        lambda x: core_algos.agg_loss(core_algos.kl_penalty(x, inp.ref, kind), inp.real, mode),
        inp.logp,
    )
    o_val, o_grad = value_and_grad(
        lambda x: ts.kl_loss(x, inp.ref, inp.mask, kind=KL_NAMES[kind], aggregation=mode), inp.logp
    )
    close(o_val, v_val)
    close(o_grad, v_grad)


# ------------------------------------------------------------------------- the GRPO actor loss


def verl_actor_loss(inp, adv, mode, *, eps, beta, c):
    """verl's actor loss, ``workers/utils/losses.py:ppo_loss``, run end to end: the policy loss of
    ``policy_loss.loss_mode`` ("vanilla") plus kl_loss_coef * the KL loss. The model output is the
    flat (no-padding) log-prob tensor of prompt + response tokens that ``no_padding_2_padding``
    slices."""
    lengths = [int(n) for n in inp.mask.sum(-1)]

    def fn(logp):
        pieces = []
        for i, n in enumerate(lengths):
            pieces += [
                torch.full((P - 1,), -7.0, dtype=DT),
                logp[i, :n],
                torch.full((1,), -9.0, dtype=DT),
            ]
        attention = torch.cat([torch.ones(B, P, dtype=torch.long), inp.mask.long()], 1)
        data = TensorDict(
            {
                "prompts": torch.ones(B, P, dtype=torch.long),
                "responses": torch.ones(B, T, dtype=torch.long),
                "attention_mask": attention,
                "response_mask": inp.mask.long(),
                "old_log_probs": inp.old,
                "advantages": adv,
                "ref_log_prob": inp.ref,
            },
            batch_size=[B],
        )
        tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
        cfg = actor_config(
            clip_ratio=eps,
            clip_ratio_low=eps,
            clip_ratio_high=eps,
            clip_ratio_c=c,
            loss_agg_mode=mode,
            use_kl_loss=beta > 0,
            kl_loss_coef=beta,
            kl_loss_type="low_var_kl",
        )
        loss, _ = verl_losses.ppo_loss(cfg, {"log_probs": torch.cat(pieces)}, data)
        return loss

    return value_and_grad(fn, inp.logp)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_verl_actor(inp, mode, beta):
    """GRPO end to end: verl's advantages (compute_grpo_outcome_advantage) and actor loss
    (losses.py:ppo_loss with use_kl_loss, low_var_kl, kl_loss_coef = beta, dual-clip out of reach)
    vs ``methods.grpo``'s advantages and loss on a RolloutBatch."""
    method = pg.methods.grpo(group_size=G, beta=beta, eps=0.2, aggregation=mode)
    batch = batch_of(inp)
    adv = method.advantages(batch)
    v_adv = verl_grpo(inp)
    close(adv, v_adv)
    v_val, v_grad = verl_actor_loss(inp, v_adv, mode, eps=0.2, beta=beta, c=NO_DUAL)
    o_val, o_grad = value_and_grad(lambda x: method.loss(x, batch, adv)[0], inp.logp)
    close(o_val, v_val)
    close(o_grad, v_grad)
    assert float(o_grad.abs().sum()) > 0


def test_grpo_loss_lacks_verls_dual_clip(inp):
    """Pinned: verl's actor loss dual-clips with c=3 by default; our GRPO does not. verl's loss is
    ours with ``ppo_clip_loss(dual_clip=3)`` + beta * ``kl_loss``; our GRPO loss differs from it."""
    mode, beta = "seq-mean-token-mean", 0.04
    adv = grpo_token_adv(inp)
    r = inp.log_ratio.exp()
    assert int((inp.real & (adv < 0) & (r > 3)).sum()) >= 1
    v_val, v_grad = verl_actor_loss(inp, adv, mode, eps=0.2, beta=beta, c=3.0)

    def ours_dual(x):
        pg_loss = ts.ppo_clip_loss(x, inp.old, adv, inp.mask, dual_clip=3.0, aggregation=mode)[0]
        return pg_loss + beta * ts.kl_loss(x, inp.ref, inp.mask, kind="k3", aggregation=mode)

    close(value_and_grad(ours_dual, inp.logp), (v_val, v_grad))
    method = pg.methods.grpo(group_size=G, beta=beta, aggregation=mode)
    o_val, o_grad = value_and_grad(lambda x: method.loss(x, batch_of(inp), adv)[0], inp.logp)
    not_close(o_val, v_val)
    not_close(o_grad, v_grad)


# ------------------------------------------------------------------------------------------ RLHF


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0), (1.0, 1.0)])
def test_gae_matches_verl(inp, gamma, lam):
    """compute_gae_advantage_return: GAE whitened over the batch's tokens, returns = GAE + values;
    ours ``whiten(gae(...))`` and ``gae + values``. Compared on real tokens (verl's padding holds
    values and the whitened 0); garbage rewards and values on padding reach neither. Also via
    ray_trainer.compute_advantage."""
    adv, ret = core_algos.compute_gae_advantage_return(
        inp.step_rewards, inp.values, inp.mask, gamma, lam
    )
    raw = rs.gae(inp.step_rewards, inp.values, inp.mask, gamma=gamma, lam=lam)
    m = inp.real
    close(rs.whiten(raw, inp.mask)[m], adv[m])
    close((raw + inp.values)[m], ret[m])
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": inp.step_rewards,
            "values": inp.values,
            "response_mask": inp.mask,
        }
    )
    out = RAY["compute_advantage"](
        data,
        core_algos.AdvantageEstimator.GAE,
        gamma=gamma,
        lam=lam,
        config=AlgoConfig(gamma=gamma, lam=lam),
    )
    close(out.batch["advantages"], adv, **EXACT)


def test_gae_with_a_hole_in_the_mask():
    """A mask with a hole (e.g. a tool output that is not trained on): verl bridges it, V(s_{t+1})
    and the running GAE come from the next real token (core_algos.py:254-256), and so does ours.
    (This test found the package treating a hole as the end of the episode.)"""
    g = torch.Generator().manual_seed(4)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]], dtype=DT)
    rewards = torch.randn(2, 7, generator=g, dtype=DT) * mask
    values = torch.randn(2, 7, generator=g, dtype=DT)
    _, ret = core_algos.compute_gae_advantage_return(rewards, values, mask, 1.0, 0.95)
    ours = rs.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(ours[mask.bool()], (ret - values)[mask.bool()])


def test_masked_whiten_vs_whiten(inp):
    """Pinned: masked_whiten scales by rsqrt(var + 1e-8) (utils/torch_functional.py:343), ours by
    1/std: with a variance of order 1e-8 the results differ by a factor std / sqrt(std^2 + 1e-8).
    shift_mean=False re-adds the mean there ((x - mu) s + mu); ours only rescales (x / std). Both
    take the Bessel variance."""
    m = inp.real
    x = torch.where(m, 1e-4 * (inp.adv + 0.2), inp.adv)  # mean ~1e-5: verl's n + 1e-8 is invisible
    xs = x[m]
    mu, std = xs.mean(), xs.std()
    s = torch.rsqrt(std**2 + 1e-8)
    ours = rs.whiten(x, inp.mask)
    close(ours[m], (xs - mu) / std, rtol=1e-9, atol=1e-9)
    close(verl_F.masked_whiten(x, inp.mask)[m], ours[m] * std * s, rtol=1e-7, atol=1e-9)
    not_close(verl_F.masked_whiten(x, inp.mask)[m], ours[m])
    unshifted = rs.whiten(x, inp.mask, shift_mean=False)
    close(unshifted[m], xs / std, **EXACT)
    close(
        verl_F.masked_whiten(x, inp.mask, shift_mean=False)[m],
        (xs - mu) * s + mu,
        rtol=1e-7,
        atol=1e-9,
    )
    # at unit scale the two whitenings agree to 1e-8
    close(rs.whiten(inp.adv, inp.mask)[m], verl_F.masked_whiten(inp.adv, inp.mask)[m])


@pytest.mark.parametrize(("verl_kind", "kind"), [("kl", "k1"), ("low_var_kl", "k3"), ("mse", "k2")])
def test_kl_in_reward_matches_verl(inp, verl_kind, kind):
    """ray_trainer.apply_kl_penalty: token_level_scores - beta * kl_penalty(old, ref) on real
    tokens, vs ``kl_shaped_rewards`` (outcome on the last token); its KL metric (mean over rows of
    each row's token mean) is our seq-mean-token-mean ``kl_loss``, and the adaptive controller's
    update is ours."""
    beta = 0.05
    ctrl = core_algos.AdaptiveKLController(init_kl_coef=beta, target_kl=0.02, horizon=100)
    data = DataProto.from_dict(
        tensors={
            "token_level_scores": inp.token_rewards,
            "old_log_probs": inp.old,
            "ref_log_prob": inp.ref,
            "response_mask": inp.mask,
        }
    )
    data, metrics = RAY["apply_kl_penalty"](data, ctrl, kl_penalty=verl_kind)
    ours = rs.kl_shaped_rewards(inp.rewards, inp.old, inp.ref, inp.mask, beta=beta, kind=kind)
    close(ours, data.batch["token_level_rewards"])
    if kind == "k1":
        close(
            ours, core_algos.compute_rewards(inp.token_rewards, inp.old, inp.ref, beta) * inp.mask
        )
    kl = float(ts.kl_loss(inp.old, inp.ref, inp.mask, kind=kind, aggregation="seq-mean-token-mean"))
    assert kl == pytest.approx(metrics["actor/reward_kl_penalty"], rel=1e-7)
    ours_ctrl = ts.AdaptiveKLController(beta, 0.02, 100)
    assert ours_ctrl.update(kl, B) == pytest.approx(ctrl.value, rel=1e-7)


@pytest.mark.parametrize(("verl_kind", "kind"), [("kl", "k1"), ("low_var_kl", "k3")])
def test_rlhf_end_to_end(inp, verl_kind, kind):
    """RLHF-style PPO's reward side: verl's apply_kl_penalty (fixed beta) then
    compute_advantage(GAE) vs ``methods.rlhf_advantages`` (whitened) and
    ``methods.rlhf_value_targets`` (returns), on real tokens."""
    beta, gamma, lam = 0.1, 0.97, 0.9
    data = DataProto.from_dict(
        tensors={
            "token_level_scores": inp.token_rewards,
            "old_log_probs": inp.old,
            "ref_log_prob": inp.ref,
            "response_mask": inp.mask,
            "values": inp.values,
        }
    )
    data, _ = RAY["apply_kl_penalty"](
        data, core_algos.FixedKLController(beta), kl_penalty=verl_kind
    )
    data = RAY["compute_advantage"](
        data,
        core_algos.AdvantageEstimator.GAE,
        gamma=gamma,
        lam=lam,
        config=AlgoConfig(gamma=gamma, lam=lam),
    )
    batch = batch_of(inp)
    opts = {"beta": beta, "kl_kind": kind, "gamma": gamma, "lam": lam}
    m = inp.real
    close(pg.methods.rlhf_advantages(batch, **opts)[m], data.batch["advantages"][m])
    targets = pg.methods.rlhf_value_targets(batch, **opts)
    close(targets[m], data.batch["returns"][m])
    assert bool((targets[~m] == 0).all())


@pytest.mark.parametrize("clip", [0.2, 0.5, None])
def test_value_loss_matches_verl(inp, clip):
    """compute_value_loss: 0.5 * token-mean of max((V - G)^2, (clip(V, V_old +- c) - G)^2) in both
    (the 0.5 included); clip=None is verl's cliprange_value = inf. Gradient w.r.t. the critic's
    values."""
    g = torch.Generator().manual_seed(5)
    vpreds = inp.values + 0.4 * torch.randn(B, T, generator=g, dtype=DT)
    returns = torch.where(inp.real, inp.values + torch.randn(B, T, generator=g, dtype=DT), inp.adv)
    c = math.inf if clip is None else clip

    def verl_fn(v):
        return core_algos.compute_value_loss(v, returns, inp.values, inp.real, c, "token-mean")[0]

    v_val, v_grad = value_and_grad(verl_fn, vpreds)
    o_val, o_grad = value_and_grad(
        lambda v: rs.clipped_value_loss(v, inp.values, returns, inp.mask, clip=clip), vpreds
    )
    close(o_val, v_val)
    close(o_grad, v_grad)
    if clip == 0.2:
        unclipped = rs.clipped_value_loss(vpreds, inp.values, returns, inp.mask, clip=None)
        not_close(o_val, unclipped)
        seq = core_algos.compute_value_loss(
            vpreds, returns, inp.values, inp.real, c, "seq-mean-token-mean"
        )[0]
        not_close(o_val, seq)  # ours is token-mean only


def test_explained_variance(inp):
    """Pinned: verl's vf_explained_var is 1 - Var(G - V) / (Var(G) + 1e-5) (metric_utils.py:540),
    ours 1 - Var(G - V) / Var(G) (the n/(n-1) of both variances cancels)."""
    g = torch.Generator().manual_seed(6)
    returns = torch.where(
        inp.real, 0.01 * (inp.values + 0.5 * torch.randn(B, T, generator=g, dtype=DT)), 0.0
    )
    values = torch.where(inp.real, 0.01 * inp.values, 0.0)
    data = DataProto.from_dict(
        tensors={
            "token_level_scores": inp.token_rewards,
            "token_level_rewards": inp.token_rewards,
            "advantages": returns - values,
            "returns": returns,
            "values": values,
            "prompts": torch.ones(B, P, dtype=torch.long),
            "responses": torch.ones(B, T, dtype=torch.long),
            "attention_mask": torch.cat([torch.ones(B, P, dtype=torch.long), inp.mask.long()], 1),
            "response_mask": inp.mask,
        }
    )
    verl_ev = compute_data_metrics(data, use_critic=True)["critic/vf_explained_var"]
    ours = rs.explained_variance(values, returns, inp.mask)
    var_g = float(returns[inp.real].var())
    assert verl_ev == pytest.approx(1 - (1 - ours) * var_g / (var_g + 1e-5), rel=1e-10)
    assert verl_ev != pytest.approx(ours, rel=1e-2)


# ------------------------------------------------------------------------------------------ other


def test_adaptive_kl_controller():
    """core_algos.AdaptiveKLController.update (Ziegler et al.) vs ours over a sequence of steps:
    above and below target, beyond the +-20% clip, negative KL, different batch sizes."""
    theirs = core_algos.AdaptiveKLController(init_kl_coef=0.1, target_kl=0.05, horizon=1000)
    ours = ts.AdaptiveKLController(0.1, 0.05, 1000)
    for kl, n in [
        (0.05, 64),
        (0.06, 64),
        (0.2, 256),
        (0.0, 16),
        (0.04, 512),
        (-0.3, 64),
        (1e3, 1000),
    ]:
        theirs.update(kl, n)
        assert ours.update(kl, n) == pytest.approx(theirs.value, rel=1e-12)
    assert theirs.value != pytest.approx(0.1, rel=1e-3)


def test_log_probs_and_entropy():
    """logprobs_from_logits (the torch path) vs token_log_probs; entropy_from_logits and
    compute_entropy_loss (every aggregation) vs token_entropy + aggregate: values and gradients
    w.r.t. the logits."""
    g = torch.Generator().manual_seed(7)
    logits = 3 * torch.randn(B, T, 11, generator=g, dtype=DT)
    labels = torch.randint(0, 11, (B, T), generator=g)
    close(
        ts.token_log_probs(logits, labels), verl_F.logprobs_from_logits_v2(logits, labels), **EXACT
    )
    if not verl_F.FLAH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE:
        close(
            ts.token_log_probs(logits, labels), verl_F.logprobs_from_logits(logits, labels), **EXACT
        )
    close(ts.token_entropy(logits), verl_F.entropy_from_logits(logits))
    mask = make_inputs().mask
    for mode in MODES:
        v = value_and_grad(
            lambda x, mode=mode: core_algos.compute_entropy_loss(x, mask, mode), logits
        )
        o = value_and_grad(
            lambda x, mode=mode: ts.aggregate(ts.token_entropy(x), mask, mode), logits
        )
        close(o, v)
