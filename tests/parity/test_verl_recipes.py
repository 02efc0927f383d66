"""A method's verl settings (``to_verl``) through verl's own config, advantage and actor-loss code.

For every registered method that verl can express, the overrides from ``pg.methods.to_verl`` are
composed with verl's Hydra config (``ppo_trainer.yaml``; an unknown key is an error there), the actor's
``ActorConfig`` is instantiated from it, and the batch goes through verl's code: the KL-in-reward step
and the advantage estimator the config names, then ``verl.workers.utils.losses.ppo_loss`` (the actor's
loss: policy loss + KL loss, aggregated by ``agg_loss``) and, for a critic, ``compute_value_loss``.
The package computes the same with ``method.advantages`` and ``method.loss``; advantages, returns, the
loss and its gradient with respect to the log-probs must agree in float64 to a relative 1e-6 (the
whitening of RLHF-PPO differs by design at 1e-8 relative: verl multiplies by (var + 1e-8)^-1/2, the
package divides by the standard deviation; GRPO's paths agree to round-off).

A method with a sampler/trainer correction (``"correction" in method.extra``: ``rollout_correction``'s TIS and
IcePop) gets the sampler's log-probs as ``batch.rollout_log_probs``; on verl's side the composed config's
``algorithm.rollout_correction`` (``rollout_is``, ``rollout_is_threshold``, ``rollout_is_batch_normalize``) goes to
verl's own ``rollout_corr_helper.compute_rollout_correction_weights`` (``rollout_corr_helper.py:522-657``) with
log ratio old - rollout and the response mask, and the weights enter the actor's TensorDict as
``"rollout_is_weights"``, which ``losses.ppo_loss`` hands to the policy loss (``losses.py:87-111``; applied as
``pg_losses * rollout_is_weights``, ``core_algos.py:1364-1365``). They are also compared with the package's
``rollout_correction_weights``, and the cap or window is asserted to bind on some tokens and not on others;
``test_a_wrong_rollout_correction_setting_fails_in_verl`` shows that a changed setting fails the comparison.

``verl.trainer.ppo.ray_trainer`` (where ``compute_advantage`` and ``apply_kl_penalty`` live) imports
verl's inference-server stack (uvicorn, cachetools, ...), which is outside verl's declared dependencies,
so the two helpers are mirrored here line for line (ray_trainer.py:78-118 and 214-260 in verl 0.9.1):
each calls one core_algos function.

Deliberate differences pinned here: the recipe's ``differences`` (verl's always-on dual-clip, the
whitening epsilon, non-empty-row division) are stated in the recipes and pinned in test_verl.py;
the batch here has no empty row and ratios below verl's dual-clip bound 3, where the computations are
the same.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from _frameworks import require

import policygrad as pg
from policygrad.methods import METHODS, Recipe, grpo, to_verl
from policygrad.methods.off_policy import (
    _grpo_no_kl,
    rollout_correction,
    rollout_correction_weights,
)
from policygrad.rollout import RolloutBatch

verl = require("verl")

from hydra import compose, initialize_config_dir  # noqa: E402  (after the framework check)
from tensordict import TensorDict  # noqa: E402
from verl.trainer.ppo import core_algos, rollout_corr_helper  # noqa: E402
from verl.utils.config import omega_conf_to_dataclass  # noqa: E402
from verl.workers.utils import losses  # noqa: E402

F64 = torch.float64
CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
# Run settings a user adds to the method's own overrides (batch sizes; verl requires them).
RUN = [
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
]


def _compose(method):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose("ppo_trainer", overrides=to_verl(method) + RUN)


def _batch(group_size: int, *, seed: int = 0):
    """Several groups, unequal lengths (no empty row), garbage on padding, ratios in (e^-0.6, e^0.6); the
    sampler's log-probs, with log(pi_old / pi_rollout) = bias_i + N(0, 0.8^2) per token (a per-row bias in
    (-0.3, 0.3)), drawn from a generator of their own so that the other tensors are those of before."""
    g = torch.Generator().manual_seed(seed)
    G, n_groups, P, T = group_size, 3, 3, 6
    B = G * n_groups
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).to(F64)
    logp = -torch.rand(B, T, generator=g, dtype=F64) * 2 - 0.05
    old = logp - 0.6 * (2 * torch.rand(B, T, generator=g, dtype=F64) - 1)
    ref = logp - 0.5 * (2 * torch.rand(B, T, generator=g, dtype=F64) - 1)
    old, ref = old.clamp(max=-1e-3), ref.clamp(max=-1e-3)
    rewards = torch.randint(0, 2, (B,), generator=g).to(F64) + 0.25 * torch.rand(B, generator=g, dtype=F64)
    if G > 1:
        rewards[G : 2 * G] = 0.5  # an all-equal group
    values = torch.randn(B, T, generator=g, dtype=F64) * mask
    # ReMax's greedy rewards (one per prompt) and the optimal token baseline's sum pi^2 (in [pi^2, 1])
    greedy = torch.rand(n_groups, generator=g, dtype=F64).repeat_interleave(G)
    spsq = (
        old.exp() ** 2 + (1 - old.exp() ** 2) * torch.rand(B, T, generator=g, dtype=F64)
    ) * mask
    # token entropies of the current policy (with gradient in both losses), for an entropy bonus
    entropy = 2 * torch.rand(B, T, generator=g, dtype=F64) * mask
    junk = 1e3 * (1 - mask)
    g_rollout = torch.Generator().manual_seed(1000 + seed)
    bias = 0.3 * (2 * torch.rand(B, 1, generator=g_rollout, dtype=F64) - 1)
    rollout = (old - bias - 0.8 * torch.randn(B, T, generator=g_rollout, dtype=F64)).clamp(max=-1e-3)
    return {
        "B": B,
        "T": T,
        "P": P,
        "G": G,
        "mask": mask,
        "logp": logp * mask + junk,
        "old": old * mask + junk,
        "ref": ref * mask + junk,
        "rewards": rewards,
        "values": values,
        "lengths": lengths,
        "greedy": greedy,
        "spsq": spsq + junk,
        "entropy": entropy + junk,
        "rollout": rollout * mask - junk,  # other garbage than old's: the log ratio on padding is 2e3
    }


def _policygrad(method, d):
    B, T, P, G = d["B"], d["T"], d["P"], d["G"]
    batch = RolloutBatch(
        prompts=torch.zeros(B, P, dtype=torch.long),
        completions=torch.ones(B, T, dtype=torch.long),
        mask=d["mask"],
        loss_mask=d["mask"],
        old_log_probs=d["old"],
        ref_log_probs=d["ref"],
        rewards=d["rewards"],
        group_ids=torch.arange(B) // G,
        truncated=torch.zeros(B, dtype=torch.bool),
        values=d["values"] if method.needs_critic else None,
        greedy_rewards=d["greedy"] if method.greedy_baseline else None,
        sum_pi_squared=d["spsq"] if method.needs_sum_pi_squared else None,
        rollout_log_probs=d["rollout"] if "correction" in method.extra else None,
    )
    logp = d["logp"].clone().requires_grad_(True)
    ent = d["entropy"].clone().requires_grad_(True)
    adv = method.advantages(batch)
    loss, _ = pg.methods.policy_loss(method, logp, batch, adv, entropy=ent)
    (grad,) = torch.autograd.grad(loss, logp)
    returns = method.value_targets(batch) if method.needs_critic else None
    return {"adv": adv, "loss": loss.detach(), "grad": grad * d["mask"], "returns": returns, "batch": batch}


def _verl_rewards(cfg, d, method):
    """verl's token-level rewards: the outcome on the last response token, then (if configured) the KL
    in the reward as ``ray_trainer.apply_kl_penalty`` computes it."""
    mask, B = d["mask"], d["B"]
    scores = torch.zeros_like(mask)
    rewards = d["rewards"]
    if "overlong_fraction" in method.extra:
        # DAPO: verl's DAPO reward manager adds the soft overlong punishment to the score (configured
        # per run, so not in the overrides; the package's overlong_penalty is pinned to that manager in
        # test_reward_variants_parity.py::test_overlong_penalty_matches_verls_dapo_reward_manager)
        T = d["T"]
        cache = int(method.extra["overlong_fraction"] * T)
        rewards = rewards + pg.reward_side.overlong_penalty(d["lengths"], T, cache)
    scores[torch.arange(B), d["lengths"] - 1] = rewards
    if not cfg.algorithm.use_kl_in_reward:
        return scores
    kld = core_algos.kl_penalty(d["old"] * mask, d["ref"] * mask, kl_penalty=cfg.algorithm.kl_penalty) * mask
    kl_ctrl = core_algos.get_kl_controller(cfg.algorithm.kl_ctrl)
    return scores - kl_ctrl.value * kld


def _verl_advantages(cfg, d, token_rewards):
    """``ray_trainer.compute_advantage``'s dispatch on ``algorithm.adv_estimator``."""
    mask, algo = d["mask"], cfg.algorithm
    uid = np.array([f"prompt-{i // d['G']}" for i in range(d["B"])], dtype=object)
    if algo.adv_estimator == "gae":
        return core_algos.compute_gae_advantage_return(
            token_level_rewards=token_rewards,
            values=d["values"],
            response_mask=mask,
            gamma=algo.gamma,
            lam=algo.lam,
        )
    if algo.adv_estimator == "grpo":
        return core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=token_rewards,
            response_mask=mask,
            index=uid,
            norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo,
        )
    fn = core_algos.get_adv_estimator_fn(algo.adv_estimator)
    kwargs = {}
    if algo.adv_estimator == "remax":  # ray_trainer.py:258-259 (reward_baselines from the greedy batch)
        kwargs["reward_baselines"] = d["greedy"]
    if algo.adv_estimator == "optimal_token_baseline":  # ray_trainer.py:264-275
        assert cfg.actor_rollout_ref.actor.calculate_sum_pi_squared
        kwargs.update(sum_pi_squared=d["spsq"] * mask, old_log_probs=d["old"] * mask, rollout_is_weights=None)
    return fn(token_level_rewards=token_rewards, response_mask=mask, config=algo, index=uid, **kwargs)


def _verl_rollout_is_weights(cfg, d):
    """verl's rollout IS weights from the composed ``algorithm.rollout_correction``, or None when
    ``rollout_is`` is null (no weights in the batch: ``compute_rollout_correction_and_add_to_batch``,
    rollout_corr_helper.py:1042-1067). Log ratio old - rollout on verl's padded tensors (0 on padding), as
    ``compute_rollout_correction_and_rejection_mask`` forms it (rollout_corr_helper.py:849)."""
    rc = cfg.algorithm.rollout_correction
    if rc.rollout_is is None:
        return None
    assert rc.rollout_rs is None and not rc.bypass_mode  # no rejection, the decoupled (three-policy) mode
    mask = d["mask"]
    weights, _ = rollout_corr_helper.compute_rollout_correction_weights(
        log_ratio=d["old"] * mask - d["rollout"] * mask,
        response_mask=mask,
        rollout_is=rc.rollout_is,
        rollout_is_threshold=rc.rollout_is_threshold,
        rollout_is_batch_normalize=rc.rollout_is_batch_normalize,
    )
    return weights


def _verl_actor_loss(cfg, d, advantages, rollout_is_weights=None):
    """``losses.ppo_loss`` (the actor's loss) on verl's input layout: the log-probs of the whole
    batch flattened without padding (prompt and response tokens), as the model returns them; the
    rollout IS weights, if any, under the key ``ppo_loss`` reads (losses.py:87-97)."""
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    B, T, P, mask = d["B"], d["T"], d["P"], d["mask"]
    logp = d["logp"].clone().requires_grad_(True)
    ent = d["entropy"].clone()

    def flatten(x):
        pieces = []
        for i in range(B):
            n = int(d["lengths"][i])
            # the model's output at position k predicts token k + 1: response token j sits at P - 1 + j
            pieces.append(torch.cat([torch.zeros(P - 1, dtype=F64), x[i, :n], torch.zeros(1, dtype=F64)]))
        return torch.cat(pieces)

    flat = flatten(logp)
    output = {"log_probs": flat}
    if actor.entropy_coeff != 0:
        output["entropy"] = flatten(ent)
    attention = torch.cat([torch.ones(B, P), mask.float()], dim=1).long()
    td = TensorDict(
        {
            "prompts": torch.zeros(B, P, dtype=torch.long),
            "responses": torch.ones(B, T, dtype=torch.long),
            "attention_mask": attention,
            "response_mask": mask,
            "old_log_probs": d["old"] * mask,
            "advantages": advantages,
            "ref_log_prob": d["ref"] * mask,
        },
        batch_size=[B],
    )
    if rollout_is_weights is not None:
        td["rollout_is_weights"] = rollout_is_weights
    for key, value in (("dp_size", 1), ("batch_num_tokens", None), ("global_batch_size", None)):
        td.set_non_tensor(key, value)
    loss, _ = losses.ppo_loss(actor, output, td)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad * mask


def _expressible() -> list[str]:
    return [n for n, m in METHODS.items() if isinstance(m.verl, Recipe)]


VARIANTS = {
    "grpo_token_mean_no_kl": grpo(name="grpo_token_mean_no_kl", beta=0.0, aggregation="token-mean"),
    "grpo_no_std_k1_seq_sum": grpo(
        name="grpo_no_std_k1_seq_sum", scale=None, kl_kind="k1", aggregation="seq-mean-token-sum"
    ),
    "grpo_k3plus_norm": grpo(
        name="grpo_k3plus_norm", kl_kind="k3+", eps=0.1, aggregation="seq-mean-token-sum-norm"
    ),
    # rollout corrections beyond the registered grpo_tis / grpo_icepop
    "grpo_tis_sequence": rollout_correction(_grpo_no_kl("grpo"), "tis", level="sequence", name="grpo_tis_sequence"),
    "grpo_icepop_sequence": rollout_correction(
        _grpo_no_kl("grpo"), "mis", level="sequence", lo=0.2, hi=5.0, name="grpo_icepop_sequence"
    ),
    "grpo_kl_tis": rollout_correction(grpo(name="grpo_kl"), "tis", cap=1.5),  # the KL loss is not weighted
    "gspo_token_tis": rollout_correction(METHODS["gspo_token"], "tis", cap=1.5),
    "gspo_icepop_sequence": rollout_correction(METHODS["gspo"], "mis", level="sequence", lo=0.2, hi=5.0),
    "dapo_tis": rollout_correction(METHODS["dapo"], "tis"),
    "cispo_icepop": rollout_correction(METHODS["cispo"], "mis", lo=0.6, hi=1.8),
}


@pytest.mark.parametrize("name", _expressible() + list(VARIANTS))
def test_to_verl_settings_reproduce_the_method_in_verl(name):
    """Config → verl's advantages and actor loss == the method's, for every method verl expresses."""
    method = VARIANTS.get(name) or METHODS[name]
    cfg = _compose(method)
    d = _batch(method.group_size)
    ours = _policygrad(method, d)
    adv, returns = _verl_advantages(cfg, d, _verl_rewards(cfg, d, method))
    tol = {"rtol": 1e-6, "atol": 1e-9}
    torch.testing.assert_close(ours["adv"], adv * d["mask"], **tol)
    weights = _verl_rollout_is_weights(cfg, d)
    assert (weights is not None) == ("correction" in method.extra)
    if weights is not None:
        x = method.extra
        opts = {k: x[k] for k in ("level", "cap", "floor", "lo", "hi", "delta")}
        batch = ours["batch"]
        w = rollout_correction_weights(d["logp"], batch, ours["adv"], kind=x["correction"], **opts)
        torch.testing.assert_close(w, weights, rtol=1e-10, atol=1e-12)
        real = d["mask"].bool()
        lr = (d["old"] - d["rollout"]) * d["mask"]
        raw = lr.exp() if x["level"] == "token" else lr.sum(-1, keepdim=True).exp().expand_as(lr)
        changed = real & ~torch.isclose(weights, raw, rtol=1e-12, atol=0)
        assert bool(changed.any()) and bool((real & ~changed).any())  # the cap / window binds, not everywhere
    loss, grad = _verl_actor_loss(cfg, d, adv, weights)
    torch.testing.assert_close(ours["loss"], loss, **tol)
    torch.testing.assert_close(ours["grad"], grad, **tol)
    if method.needs_critic:
        torch.testing.assert_close(ours["returns"], returns * d["mask"], **tol)


VERL_MUTATIONS = {
    "tis cap 3": ("grpo_tis", {"rollout_is_threshold": 3.0}),
    "tis at the sequence level": ("grpo_tis", {"rollout_is": "sequence"}),
    "tis batch-normalised": ("grpo_tis", {"rollout_is_batch_normalize": True}),
    "tis off (rollout_is null, the YAML default)": ("grpo_tis", {"rollout_is": None}),
    "icepop window 0.6_1.8": ("grpo_icepop", {"rollout_is_threshold": "0.6_1.8"}),
    "icepop as tis (threshold 5.0)": ("grpo_icepop", {"rollout_is_threshold": 5.0}),
}


@pytest.mark.parametrize("mutation", list(VERL_MUTATIONS))
def test_a_wrong_rollout_correction_setting_fails_in_verl(mutation):
    """The correction check can fail: one ``algorithm.rollout_correction`` setting changed in the composed
    config moves verl's actor loss or gradient away from the method's by far more than the tolerance."""
    name, changes = VERL_MUTATIONS[mutation]
    method = METHODS[name]
    cfg = _compose(method)
    for key, value in changes.items():
        cfg.algorithm.rollout_correction[key] = value
    d = _batch(method.group_size)
    ours = _policygrad(method, d)
    adv, _ = _verl_advantages(cfg, d, _verl_rewards(cfg, d, method))
    loss, grad = _verl_actor_loss(cfg, d, adv, _verl_rollout_is_weights(cfg, d))
    dv = float((ours["loss"] - loss).abs()) / float(loss.abs())
    dg = float((ours["grad"] - grad).abs().max()) / float(grad.abs().max())
    assert max(dv, dg) > 1e-4


def test_to_verl_critic_settings_reproduce_the_value_loss():
    """``critic.cliprange_value`` and the critic's ``loss_agg_mode`` from the config, through
    ``core_algos.compute_value_loss``: both are 0.5 x the clipped squared error, token-mean."""
    method = METHODS["ppo_rlhf"]
    cfg = _compose(method)
    d = _batch(1)
    ours = _policygrad(method, d)
    batch, targets = ours["batch"], ours["returns"]
    g = torch.Generator().manual_seed(5)
    new_values = (d["values"] + 0.4 * torch.randn(d["B"], d["T"], generator=g, dtype=F64)).requires_grad_(True)
    loss = method.value_loss(new_values, batch, targets)
    (grad,) = torch.autograd.grad(loss, new_values)
    v_new = new_values.detach().clone().requires_grad_(True)
    vf_loss, _ = core_algos.compute_value_loss(
        vpreds=v_new,
        values=d["values"],
        returns=targets,
        response_mask=d["mask"],
        cliprange_value=cfg.critic.cliprange_value,
        loss_agg_mode=cfg.critic.loss_agg_mode,
    )
    (v_grad,) = torch.autograd.grad(vf_loss, v_new)
    torch.testing.assert_close(vf_loss.detach(), loss.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v_grad * d["mask"], grad * d["mask"], rtol=1e-10, atol=1e-12)


def test_unknown_override_is_refused_by_verl():
    """The check above means something: verl's Hydra config rejects a key it does not have."""
    with pytest.raises(Exception, match="Could not override"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            compose("ppo_trainer", overrides=["algorithm.no_such_key=1"])
    assert pg.methods.VERL_VERSION == ".".join(verl.__version__.split(".")[:2])
