"""The framework defaults the book's boxes "What TRL and verl do by default" quote.

Chapter 6 ("RLHF-style PPO: critic, GAE, KL in the reward") and chapter 7 ("The DeepSeekMath
objective", "Why is my GRPO loss zero?") state TRL 1.16's and verl 0.9's defaults. Each value a
box quotes is pinned here, read from the installed framework itself: TRL's config dataclass field
defaults (``trl/trainer/grpo_config.py``, ``rloo_config.py``), verl's default YAML
(``verl/trainer/config/{ppo_trainer,actor/actor,critic/critic,rollout/rollout}.yaml``, and the
composed ``_generated_ppo_trainer.yaml``) and its config dataclasses, and where a box states what
the code *does* (the KL estimator, the std convention, the dual clip, the loss normalisers) by
running the framework's function on a hand-checked example. A test fails when a new release
changes a default the book quotes.

The frameworks are optional: each test skips when its framework is missing or has another version
(``_frameworks.require``; a failure under ``POLICYGRAD_REQUIRE_PARITY=1``).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _frameworks import require

from policygrad.reward_side import broadcast_to_tokens, group_advantages
from policygrad.trajectory_side import aggregate, ppo_clip_loss


@pytest.fixture(scope="module")
def trl():
    return require("trl")


@pytest.fixture(scope="module")
def verl():
    return require("verl")


def defaults(cls) -> dict:
    """A dataclass's field defaults (without instantiating it)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def verl_yaml(verl, name: str) -> dict:
    import yaml

    path = Path(verl.__file__).parent / "trainer" / "config" / name
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# The chapter-7 loss-zero example: one group, G = 4, rewards [1, 0, 0, 1], lengths [3, 5, 2, 6].
G, T = 4, 6
REWARDS = [1.0, 0.0, 0.0, 1.0]
LENGTHS = [3, 5, 2, 6]


def example():
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    lengths = torch.tensor(LENGTHS)
    mask = (torch.arange(T) < lengths[:, None]).to(torch.float64)
    logp = -1.0 * mask  # any values: on-policy, the ratio is 1
    return rewards, lengths, mask, logp


def on_policy_values(a: float) -> dict:
    """The clipped loss at ratio 1, beta 0, for advantages (a, -a, -a, a), by hand."""
    s = a * (3 - 5 - 2 + 6)  # sum_i |o_i| A_i = 2a
    return {
        "seq-mean-token-mean": 0.0,  # -(1/G) sum_i A_i
        "token-mean": -s / 16,  # -sum_i |o_i| A_i / sum_i |o_i|
        "seq-mean-token-sum-norm": -s / (G * T),  # ... / (G * T_max), T_max = 6
        "seq-mean-token-sum": -s / G,
    }


# ------------------------------------------------------------------------------ TRL 1.16


def test_trl_has_no_ppo_trainer(trl):
    """Chapter 6's box: TRL 1.16 ships no PPO trainer with a critic (no PPOTrainer/PPOConfig)."""
    import importlib.util

    assert not hasattr(trl, "PPOTrainer") and not hasattr(trl, "PPOConfig")
    assert importlib.util.find_spec("trl.trainer.ppo_trainer") is None
    assert importlib.util.find_spec("trl.trainer.ppo_config") is None
    with warnings.catch_warnings():  # importing trl.experimental warns
        warnings.simplefilter("ignore")
        assert importlib.util.find_spec("trl.experimental.ppo") is None


def test_trl_rloo_kl_in_the_reward_defaults(trl):
    """RLOOTrainer's KL in the reward: beta 0.05 (rloo_config.py:502-503), advantages not
    normalised (rloo_config.py:531-532); k1 summed over the completion (rloo_trainer.py:1669-1673)."""
    d = defaults(trl.RLOOConfig)
    assert d["beta"] == 0.05
    assert d["normalize_advantages"] is False
    assert d["num_iterations"] == 1
    src = (Path(trl.__file__).parent / "trainer" / "rloo_trainer.py").read_text(
        encoding="utf-8"
    )
    assert "per_token_kl = old_per_token_logps - ref_per_token_logps" in src  # k1
    assert "kl = (per_token_kl * completion_mask).sum(-1)" in src
    assert "rewards = rewards - self.beta * kl" in src


def test_trl_grpo_config_defaults(trl):
    """Chapter 7's box: GRPOConfig's field defaults (trl/trainer/grpo_config.py:480-973)."""
    d = defaults(trl.GRPOConfig)
    expected = {
        "loss_type": "dapo",
        "beta": 0.0,
        "scale_rewards": "group",
        "epsilon": 0.2,
        "epsilon_high": None,
        "num_iterations": 1,
        "importance_sampling_level": "token",
        "use_bias_correction_kl": True,
        "steps_per_generation": None,
        "generation_batch_size": None,
        "num_generations": 8,
        "max_completion_length": 512,
        "mask_truncated_completions": False,
        "temperature": 1.0,
        "multi_objective_aggregation": "sum_then_normalize",
        "learning_rate": 1e-6,
    }
    assert {k: d[k] for k in expected} == expected


def test_trl_grpo_config_resolves_one_step_per_generation(trl, tmp_path):
    """steps_per_generation defaults to gradient_accumulation_steps (grpo_config.py:1099), which is
    1: by default one generated batch is one optimiser step, of 8 completions (one prompt of 8)."""
    c = trl.GRPOConfig(
        output_dir=str(tmp_path), report_to="none", bf16=False, use_cpu=True
    )
    assert c.gradient_accumulation_steps == 1
    assert c.steps_per_generation == 1
    assert c.per_device_train_batch_size == 8
    assert c.generation_batch_size == 8


def test_trl_group_std_is_bessel_corrected_plus_1e4(trl):
    """TRL's group std is nanstd with Bessel's correction (trl/trainer/utils.py:1041); the
    advantage divides by std + 1e-4 (grpo_trainer.py:2787). policygrad's group_advantages
    with eps=1e-4 (unbiased=True, its default) reproduces it. nanstd's correction count/(count-1)
    is an integer division, so it is float32 whatever the rewards' dtype (TRL's rewards are
    float32 anyway, grpo_trainer.py:1637): agreement to float32 rounding."""
    from trl.trainer.utils import nanstd

    rewards, *_ = example()
    assert float(nanstd(rewards)) == pytest.approx(math.sqrt(1 / 3), rel=1e-7)
    assert float(nanstd(rewards)) != pytest.approx(
        math.sqrt(1 / 4), rel=1e-3
    )  # not 1/G
    src = (Path(trl.__file__).parent / "trainer" / "grpo_trainer.py").read_text(
        encoding="utf-8"
    )
    assert "advantages = advantages / (std_rewards + 1e-4)" in src
    g = rewards.view(-1, G)
    trl_adv = ((g - g.mean(1, keepdim=True)) / (nanstd(g, dim=1)[:, None] + 1e-4)).view(
        -1
    )
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(
        trl_adv, torch.tensor([a, -a, -a, a], dtype=torch.float64), rtol=1e-7, atol=0
    )
    torch.testing.assert_close(
        group_advantages(rewards, G, eps=1e-4), trl_adv, rtol=1e-7, atol=0
    )


def _trl_loss(
    trl, loss_type, adv, logp, mask, *, beta=0.0, ref=None, max_completion_length=T
):
    """GRPOTrainer._compute_loss (grpo_trainer.py:3020) on a stub trainer: TRL's own loss code,
    with the model's log-probs replaced by `logp` (one process, no accumulation)."""
    acc = SimpleNamespace(
        num_processes=1,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
        sync_gradients=True,
    )
    lp = logp.clone().requires_grad_(True)
    stub = SimpleNamespace(
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=0.2,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_completion_length,
        accelerator=acc,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(
            delta=None, use_bias_correction_kl=True, steps_per_generation=1
        ),
        _get_per_token_logps_and_entropies=lambda *a, **k: (
            lp,
            torch.zeros_like(lp),
            None,
        ),
    )
    B = logp.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, logp.shape[1], dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": logp.detach().clone(),
        "num_items_in_batch": mask.sum(),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    return trl.GRPOTrainer._compute_loss(stub, None, inputs).detach()


def test_trl_on_policy_loss_per_loss_type(trl):
    """Chapter 7 ("Why is my GRPO loss zero?"): at ratio 1 and beta 0, TRL's loss is 0 for
    "grpo" (seq-mean-token-mean) and -sum|o_i|A_i / sum|o_i| for "bnpo"/"dapo" (token mean),
    -sum|o_i|A_i / (B * max_completion_length) for "dr_grpo", -sum|o_i|A_i / B for "luspo";
    policygrad's aggregate and ppo_clip_loss give the same numbers."""
    rewards, _, mask, logp = example()
    adv = group_advantages(rewards, G, eps=1e-4)
    hand = on_policy_values(float(adv[0]))
    names = {
        "grpo": "seq-mean-token-mean",
        "bnpo": "token-mean",
        "dapo": "token-mean",
        "dr_grpo": "seq-mean-token-sum-norm",
        "luspo": "seq-mean-token-sum",
    }
    At = broadcast_to_tokens(adv, mask)
    for loss_type, mode in names.items():
        got = float(_trl_loss(trl, loss_type, adv, logp, mask))
        assert got == pytest.approx(hand[mode], abs=1e-15, rel=1e-13), loss_type
        ours, _ = ppo_clip_loss(
            logp, logp.detach(), At, mask, aggregation=mode, max_len=T
        )
        assert float(ours) == pytest.approx(got, abs=1e-15, rel=1e-13), loss_type
        assert float(aggregate(-At, mask, mode, max_len=T)) == pytest.approx(
            got, abs=1e-15, rel=1e-13
        )
    assert hand["token-mean"] == pytest.approx(-0.10823443, abs=5e-9)
    assert hand["seq-mean-token-sum-norm"] == pytest.approx(-0.07215629, abs=5e-9)


def test_trl_kl_term_is_k3(trl):
    """With beta > 0, at ratio 1 TRL's per-token KL term is k3 = e^(ref - logp) - (ref - logp) - 1
    (grpo_trainer.py:3100-3102); use_bias_correction_kl multiplies it by the ratio (3105), which is 1
    here. The loss_type="grpo" value is then beta times the per-sequence mean of k3."""
    _, _, mask, logp = example()
    ref = logp - 0.3 * mask
    adv = torch.zeros(G, dtype=torch.float64)
    beta = 0.04
    d = (ref - logp)[mask.bool()]
    k3 = float(torch.expm1(d).sub(d).mean())  # every token has the same d = -0.3
    got = float(_trl_loss(trl, "grpo", adv, logp, mask, beta=beta, ref=ref))
    assert got == pytest.approx(beta * k3, rel=1e-13)
    assert k3 == pytest.approx(math.exp(-0.3) + 0.3 - 1, rel=1e-13)


# ------------------------------------------------------------------------------ verl 0.9


ALGORITHM = {
    "gamma": 1.0,
    "lam": 1.0,
    "adv_estimator": "gae",
    "norm_adv_by_std_in_grpo": True,
    "use_kl_in_reward": False,
    "kl_penalty": "kl",
}
KL_CTRL = {"type": "fixed", "kl_coef": 0.001, "horizon": 10000, "target_kl": 0.1}
ACTOR = {
    "ppo_mini_batch_size": 256,
    "clip_ratio": 0.2,
    "clip_ratio_low": 0.2,
    "clip_ratio_high": 0.2,
    "clip_ratio_c": 3.0,
    "loss_agg_mode": "token-mean",
    "loss_scale_factor": None,
    "use_kl_loss": False,
    "kl_loss_coef": 0.001,
    "kl_loss_type": "low_var_kl",
    "ppo_epochs": 1,
    "shuffle": False,
    "entropy_coeff": 0,
}


def test_verl_yaml_defaults(verl):
    """The default YAML: ppo_trainer.yaml:72-123 (algorithm), actor/actor.yaml:18-122,
    critic/critic.yaml:61, rollout/rollout.yaml:127, ppo_trainer.yaml:232 (the v1 trainer)."""
    top = verl_yaml(verl, "ppo_trainer.yaml")
    alg = top["algorithm"]
    assert {k: alg[k] for k in ALGORITHM} == ALGORITHM
    assert {k: alg["kl_ctrl"][k] for k in KL_CTRL} == KL_CTRL
    assert top["trainer"]["use_v1"] is True
    actor = verl_yaml(verl, "actor/actor.yaml")
    assert {k: actor[k] for k in ACTOR} == ACTOR
    assert actor["policy_loss"]["loss_mode"] == "vanilla"
    critic = verl_yaml(verl, "critic/critic.yaml")
    assert critic["cliprange_value"] == 0.5
    assert (
        "vf_coef" not in critic
    )  # the critic has its own optimiser: no value coefficient
    assert critic["ppo_epochs"] == "${oc.select:actor_rollout_ref.actor.ppo_epochs,1}"
    assert verl_yaml(verl, "rollout/rollout.yaml")["n"] == 1


def test_verl_composed_yaml_agrees(verl):
    """The composed config verl ships (_generated_ppo_trainer.yaml) has the same values."""
    gen = verl_yaml(verl, "_generated_ppo_trainer.yaml")
    alg = gen["algorithm"]
    assert {k: alg[k] for k in ALGORITHM} == ALGORITHM
    assert {k: alg["kl_ctrl"][k] for k in KL_CTRL} == KL_CTRL
    actor = gen["actor_rollout_ref"]["actor"]
    assert {k: actor[k] for k in ACTOR} == ACTOR
    assert actor["policy_loss"]["loss_mode"] == "vanilla"
    assert gen["critic"]["cliprange_value"] == 0.5
    assert gen["actor_rollout_ref"]["rollout"]["n"] == 1


def test_verl_dataclass_defaults(verl):
    """The config dataclasses agree with the YAML: trainer/config/algorithm.py:36-37, 655-660;
    workers/config/actor.py:94, 151-177; workers/config/critic.py:93."""
    from verl.trainer.config import AlgoConfig, KLControlConfig
    from verl.workers.config import ActorConfig, CriticConfig, PolicyLossConfig

    alg = defaults(AlgoConfig)
    assert {k: alg[k] for k in ALGORITHM} == ALGORITHM
    kl = defaults(KLControlConfig)
    assert {k: kl[k] for k in KL_CTRL} == KL_CTRL
    actor = defaults(ActorConfig)
    assert {k: actor[k] for k in ACTOR} == ACTOR
    assert defaults(PolicyLossConfig)["loss_mode"] == "vanilla"
    assert defaults(CriticConfig)["cliprange_value"] == 0.5


def test_verl_kl_names(verl):
    """kl_penalty "kl" (the in-reward default) is k1; "low_var_kl" (the KL-loss default) is k3,
    clamped to [-10, 10] (core_algos.py:2228-2245)."""
    from verl.trainer.ppo.core_algos import kl_penalty

    logp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(logp, ref, "kl"), logp - ref, rtol=0, atol=0)
    d = ref - logp
    torch.testing.assert_close(kl_penalty(logp, ref, "low_var_kl"), d.exp() - d - 1)
    big = kl_penalty(torch.zeros(1, 1), torch.full((1, 1), 15.0), "low_var_kl")
    assert float(big) == 10.0


def test_verl_grpo_advantage_std(verl):
    """compute_grpo_outcome_advantage: (R - mean) / (torch.std + 1e-6), torch.std Bessel-corrected
    (core_algos.py:272, 321, 326); policygrad's group_advantages defaults reproduce it."""
    import numpy as np
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards, lengths, mask, _ = example()
    scores = torch.zeros(G, T, dtype=torch.float64)
    scores[torch.arange(G), lengths - 1] = rewards
    adv, _ = compute_grpo_outcome_advantage(scores, mask, np.zeros(G, dtype=int))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(
        adv[:, 0], torch.tensor([a, -a, -a, a], dtype=torch.float64)
    )
    torch.testing.assert_close(
        adv[:, 0], group_advantages(rewards, G), rtol=1e-15, atol=0
    )


def _actor_config(**kw):
    from verl.workers.config import ActorConfig

    return ActorConfig(
        strategy="fsdp", rollout_n=G, ppo_micro_batch_size_per_gpu=G, **kw
    )


def test_verl_dual_clip_only_caps_negative_advantages(verl):
    """The default vanilla loss has the dual clip on (clip_ratio_c=3.0, core_algos.py:1355-1361):
    for A < 0 the loss is min(3|A|, PPO's), so only A < 0 with r > 3 changes (capped at 3|A|); A > 0
    and A < 0 with r < 3 keep PPO's clipped loss."""
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    ratio = torch.tensor([[5.0, 5.0, 2.0, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    old = torch.zeros_like(ratio)
    expected = [3.0, -1.2, 2.0, 0.8]  # -A*c; -(1+eps)A; -rA; -(1-eps)A
    for i, e in enumerate(expected):
        sl = slice(i, i + 1)
        m = torch.ones(1, 1, dtype=torch.float64)
        loss, _ = compute_policy_loss_vanilla(
            old[:, sl], ratio[:, sl].log(), adv[:, sl], m, config=_actor_config()
        )
        assert float(loss) == pytest.approx(e, rel=1e-12), i


def test_verl_on_policy_loss_per_aggregation(verl):
    """Chapter 7 ("Why is my GRPO loss zero?"): verl's vanilla loss at ratio 1 for each
    loss_agg_mode (agg_loss, core_algos.py:1140-1207; seq-mean-token-sum-norm divides by the padded
    width T = 6 when loss_scale_factor is null), on verl's own GRPO advantages. Its
    seq-mean-token-mean divides each row by |o_i| + 1e-8 (core_algos.py:1196), so its "zero" is
    +1e-8 (1/G) sum_i A_i/|o_i| (about -4e-10 here), not an exact 0."""
    import numpy as np
    from verl.trainer.ppo.core_algos import (
        compute_grpo_outcome_advantage,
        compute_policy_loss_vanilla,
    )

    rewards, lengths, mask, logp = example()
    scores = torch.zeros(G, T, dtype=torch.float64)
    scores[torch.arange(G), lengths - 1] = rewards
    adv, _ = compute_grpo_outcome_advantage(scores, mask, np.zeros(G, dtype=int))
    hand = on_policy_values(float(adv[0, 0]))
    for mode, value in hand.items():
        loss, _ = compute_policy_loss_vanilla(
            logp,
            logp,
            adv,
            mask,
            loss_agg_mode=mode,
            config=_actor_config(loss_agg_mode=mode),
        )
        assert float(loss) == pytest.approx(value, abs=1e-9, rel=1e-7), mode
        ours = aggregate(-adv, mask, mode, max_len=T)
        assert float(ours) == pytest.approx(float(loss), abs=1e-9, rel=1e-7), mode
    a = float(adv[0, 0])
    loss, _ = compute_policy_loss_vanilla(
        logp,
        logp,
        adv,
        mask,
        loss_agg_mode="seq-mean-token-mean",
        config=_actor_config(),
    )
    inv = sum(s / n for s, n in zip((1, -1, -1, 1), LENGTHS, strict=True))
    assert float(loss) == pytest.approx(1e-8 * a * inv / G, rel=1e-3)
    assert hand["token-mean"] == pytest.approx(-0.10825299, abs=5e-9)


def test_verl_gae_whitens_and_value_loss_is_clipped_and_halved(verl):
    """compute_gae_advantage_return always whitens (core_algos.py:262; masked_mean divides by
    the count + 1e-8, utils/torch_functional.py:308, hence mean 0 only to ~1e-9); compute_value_loss is
    0.5 * agg(max((V - R)^2, (V_clip - R)^2)) (core_algos.py:2171-2175)."""
    from verl.trainer.ppo.core_algos import (
        compute_gae_advantage_return,
        compute_value_loss,
    )

    _, _, mask, _ = example()
    g = torch.Generator().manual_seed(0)
    r = torch.randn(G, T, generator=g, dtype=torch.float64) * mask
    v = torch.randn(G, T, generator=g, dtype=torch.float64) * mask
    adv, _ = compute_gae_advantage_return(r, v, mask, gamma=1.0, lam=1.0)
    sel = adv[mask.bool()]
    assert float(sel.mean()) == pytest.approx(0.0, abs=1e-8)
    assert float(sel.var(unbiased=True)) == pytest.approx(1.0, rel=1e-6)
    one = torch.ones(1, 1, dtype=torch.float64)
    # V_old = 0, V = 2, R = 2: unclipped error 0, clipped (V_clip = 0.5) error 2.25
    vf, _ = compute_value_loss(2 * one, 2 * one, 0 * one, one, cliprange_value=0.5)
    assert float(vf) == pytest.approx(0.5 * 1.5**2, rel=1e-15)


def test_verl_mini_batch_counts_prompts(verl):
    """ppo_mini_batch_size counts prompts: the v1 trainer multiplies it by rollout.n before it
    splits the batch (trainer/ppo/v1/trainer_base.py:1829-1830), and the actor's loss divides by the
    mini-batch's token count (fsdp engine, transformer_impl.py:729-734)."""
    src = (
        Path(verl.__file__).parent / "trainer" / "ppo" / "v1" / "trainer_base.py"
    ).read_text(encoding="utf-8")
    assert (
        "ppo_mini_batch_size = ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n"
        in src
    )
    assert '"global_batch_size": ppo_mini_batch_size' in src


# ---------------------------------------------------- chapter 8's box (reward-side variants)


def test_trl_reward_variant_settings(trl):
    """Chapter 8's box: RLOOConfig's num_generations defaults to 2 (rloo_config.py:301-302);
    GRPOTrainer accepts scale_rewards 'group'/'batch'/'none' (grpo_trainer.py:2767-2786) and
    multi_objective_aggregation 'sum_then_normalize'/'normalize_then_sum' (grpo_trainer.py:
    2761-2805); loss_type='dr_grpo' divides by rows x max_completion_length (grpo_trainer.py:
    3163-3164)."""
    assert defaults(trl.RLOOConfig)["num_generations"] == 2
    src = (Path(trl.__file__).parent / "trainer" / "grpo_trainer.py").read_text(
        encoding="utf-8"
    )
    assert 'if self.scale_rewards in ["group", "none"]:' in src
    assert 'elif self.scale_rewards == "batch":' in src
    assert 'if self.multi_objective_aggregation == "sum_then_normalize":' in src
    assert 'elif self.multi_objective_aggregation == "normalize_then_sum":' in src
    assert (
        "loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * "
        "self.max_completion_length)" in src
    )
    for name in ("Remax", "ReMax", "REINFORCEPlusPlus", "OPOTrainer", "GPGTrainer"):
        assert not hasattr(trl, name)


def test_verl_reward_variant_estimators(verl):
    """Chapter 8's box: verl's advantage estimators (core_algos.py:97-110), the std switch
    (ppo_trainer.yaml:81), ReMax's greedy baseline rollout (ray_trainer.py:1493-1500) and
    the optimal token baseline's sum_pi_squared switch (actor/actor.yaml:100, ray_trainer.py:
    264-271)."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, AdvantageEstimator

    names = {e.value for e in AdvantageEstimator}
    box = {
        "grpo",
        "rloo",
        "rloo_vectorized",
        "reinforce_plus_plus",
        "reinforce_plus_plus_baseline",
        "remax",
        "opo",
        "gpg",
        "grpo_passk",
        "gdpo",
        "optimal_token_baseline",
    }
    assert box <= names
    assert box <= set(ADV_ESTIMATOR_REGISTRY)
    assert verl_yaml(verl, "ppo_trainer.yaml")["algorithm"]["norm_adv_by_std_in_grpo"]
    assert verl_yaml(verl, "actor/actor.yaml")["calculate_sum_pi_squared"] is False
    src = (Path(verl.__file__).parent / "trainer" / "ppo" / "ray_trainer.py").read_text(
        encoding="utf-8"
    )
    assert "REMAX needs one sampled rollout plus one greedy baseline per prompt" in src
    assert "Please set actor.calculate_sum_pi_squared=True in config." in src


# ------------------------------------------------------------------ chapter 9's "What TRL and verl run" box


def test_trl_trajectory_side_defaults_of_the_chapter_9_box(trl):
    """grpo_config.py:697-722 (delta, epsilon_high, SAPO's temperatures), 836 (mask_truncated_completions),
    866-910 (top_entropy_quantile, the entropy bonus and its adaptive controller); grpo_trainer.py:946
    (epsilon_high falls back to epsilon)."""
    d = defaults(trl.GRPOConfig)
    assert d["loss_type"] == "dapo" and d["epsilon"] == 0.2
    assert d["epsilon_high"] is None and d["delta"] is None
    assert (d["sapo_temperature_pos"], d["sapo_temperature_neg"]) == (1.0, 1.05)
    assert d["mask_truncated_completions"] is False and d["top_entropy_quantile"] == 1.0
    assert d["entropy_coef"] == 0.0 and d["use_adaptive_entropy"] is False
    assert (d["entropy_target"], d["entropy_coef_delta"]) == (0.2, 0.005)
    src = inspect.getsource(trl.GRPOTrainer.__init__)
    assert "self.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon" in src
    for name in ("cispo", "sapo", "luspo", "bnpo", "dr_grpo"):  # the loss types the box names
        assert f'"{name}"' in inspect.getsource(trl.GRPOTrainer._compute_loss)


def test_verl_trajectory_side_defaults_of_the_chapter_9_box(verl):
    """actor/actor.yaml (tau_pos, tau_neg, loss_mode), policy_loss registry (core_algos.py), ppo_trainer.yaml:84
    (filter_groups off by default)."""
    from verl.trainer.ppo import core_algos

    actor = verl_yaml(verl, "actor/actor.yaml")
    assert (actor["tau_pos"], actor["tau_neg"]) == (1.0, 1.05)
    assert actor["policy_loss"]["loss_mode"] == "vanilla"
    for mode in ("vanilla", "cispo", "sapo", "clip_cov", "kl_cov", "gpg"):
        assert callable(core_algos.get_policy_loss_fn(mode)), mode
    top = verl_yaml(verl, "ppo_trainer.yaml")
    assert top["algorithm"]["filter_groups"]["enable"] is False


# ------------------------------------------------------------------ chapter 10's box (off-policy training)


def test_trl_off_policy_defaults_of_the_chapter_10_box(trl):
    """grpo_config.py:760 (importance_sampling_level), 925-970 (the vLLM importance-sampling correction: on by
    default, mode "sequence_mask", clip_max 3.0, no clip_min; OPSM off); GMPOConfig (trl/experimental/gmpo/
    gmpo_config.py) redefines epsilon as a log-space bound, 0.4, and leaves epsilon_high None (falls back to
    epsilon, grpo_trainer.py:946)."""
    d = defaults(trl.GRPOConfig)
    expected = {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "sequence_mask",
        "vllm_importance_sampling_clip_max": 3.0,
        "vllm_importance_sampling_clip_min": None,
        "off_policy_mask_threshold": None,
        "importance_sampling_level": "token",
    }
    assert {k: d[k] for k in expected} == expected
    with warnings.catch_warnings():  # importing trl.experimental warns
        warnings.simplefilter("ignore")
        from trl.experimental.gmpo import GMPOConfig
    g = defaults(GMPOConfig)
    assert g["epsilon"] == 0.4 and g["epsilon_high"] is None


ROLLOUT_CORRECTION = {"rollout_is": None, "rollout_is_threshold": 2.0, "bypass_mode": False, "rollout_rs": None}


def test_verl_rollout_correction_defaults_of_the_chapter_10_box(verl):
    """algorithm.rollout_correction in the composed config (algorithm/rollout_correction.yaml, composed into
    ppo_trainer.yaml:40; _generated_ppo_trainer.yaml:850-857): no IS weights (rollout_is null), threshold 2.0,
    no bypass, no rejection. The dataclass RolloutCorrectionConfig (trainer/config/algorithm.py:179-184) says
    rollout_is "sequence": not what a run from the YAML gets."""
    import os

    from hydra import compose, initialize_config_dir
    from verl.trainer.config.algorithm import RolloutCorrectionConfig

    gen = verl_yaml(verl, "_generated_ppo_trainer.yaml")["algorithm"]["rollout_correction"]
    assert {k: gen[k] for k in ROLLOUT_CORRECTION} == ROLLOUT_CORRECTION
    assert verl_yaml(verl, "algorithm/rollout_correction.yaml")["rollout_is"] is None
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose("ppo_trainer")
    rc = cfg.algorithm.rollout_correction
    assert {k: rc[k] for k in ROLLOUT_CORRECTION} == ROLLOUT_CORRECTION
    dc = defaults(RolloutCorrectionConfig)
    assert dc["rollout_is"] == "sequence"
    assert (dc["rollout_is_threshold"], dc["bypass_mode"], dc["rollout_rs"]) == (2.0, False, None)


def test_verl_sequence_ratio_losses_of_the_chapter_10_box(verl):
    """verl's policy-loss registry has GSPO(-token) and GMPO: loss_mode "gspo" and "geo_mean"
    (core_algos.py:1545, 1928)."""
    from verl.trainer.ppo import core_algos

    assert {"gspo", "geo_mean"} <= set(core_algos.POLICY_LOSS_REGISTRY)
    assert core_algos.get_policy_loss_fn("gspo") is core_algos.compute_policy_loss_gspo
    assert core_algos.get_policy_loss_fn("geo_mean") is core_algos.compute_policy_loss_geo_mean
