"""train(): the trainer's own old log-probs, the reference forward only when needed, and non-finite steps.

Each test here fails on the loop before Foundation v2: it used the sampler's log-probs as old_log_probs (so
ppo_kl and ppo_rlhf moved the parameters on round-off alone), ran the reference every step, and went on
training with a NaN loss.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import policygrad as pg
from policygrad.lm.tasks import make_task
from policygrad.methods import Method, get_method, reinforce_loss
from policygrad.train import TrainingDiverged, train
from policygrad.trajectory_side import token_log_probs

SMALL = {"steps": 2, "prompts_per_step": 8, "eval_every": None}


def _zero_rewards(self, problems, completions, mask=None):
    return torch.zeros(completions.shape[0])


def _zero_task():
    """The addition task with every reward 0 (a copy of a fresh subclass: the real task is untouched)."""
    base = make_task("addition")
    task = copy.copy(base)
    task.__class__ = type("ZeroRewardAddition", (type(base),), {"rewards": _zero_rewards})
    return task


def _recording(name: str, seen: list) -> Method:
    m = get_method(name)

    def loss(logp, batch, adv):
        seen.append(batch)
        return m.loss(logp, batch, adv)

    return Method(**{**{f: getattr(m, f) for f in m.__dataclass_fields__}, "name": f"rec_{name}", "loss": loss})


@pytest.mark.parametrize("name", ["reinforce", "ppo_clip"])
def test_old_log_probs_are_the_trainers_teacher_forced_ones_and_rollout_log_probs_the_samplers(name):
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    start = copy.deepcopy(policy)
    seen: list = []
    train(policy, task, _recording(name, seen), steps=1, prompts_per_step=8, group_size=1, eval_every=None, seed=3)
    batch = seen[0] if name == "reinforce" else None
    if batch is None:  # ppo_clip: minibatches of the batch; rebuild the full one from the rows seen
        batch = seen[0]
    with torch.no_grad():
        tf = token_log_probs(start(batch.prompts, batch.completions), batch.completions)
    m = batch.mask != 0
    assert torch.equal(batch.old_log_probs[m], tf[m])  # bitwise: the trainer's own forward
    assert torch.equal(batch.old_log_probs[~m], torch.zeros_like(tf[~m]))
    gap = (batch.rollout_log_probs - batch.old_log_probs)[m].abs().max().item()
    assert 0 < gap < 1e-4  # the KV-cached sampler differs from teacher forcing in the last bits only


def test_rollout_kl_measures_the_sampler_trainer_mismatch():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    h = train(policy, task, "reinforce", group_size=1, seed=0, **SMALL)
    assert all(0 < r["rollout_kl"] < 1e-9 for r in h.rows)  # k3 of a ~1e-6 log-ratio: ~1e-13


@pytest.mark.parametrize("name", [m for m in pg.methods.method_names()])
def test_all_rewards_zero_leaves_the_policy_exactly_unchanged(name):
    """Critic-free methods: exactly unchanged. ppo_rlhf: its critic starts with a zero head, so values,
    targets and GAE are all 0 and nothing moves either; see the next test for a critic that is wrong."""
    task = _zero_task()
    policy, _ = pg.load_warm_start("addition")
    before = copy.deepcopy(policy)
    m = get_method(name)
    G = m.group_size
    if m.has_entropy_bonus:  # the bonus moves the policy whatever the rewards: without it, nothing moves
        m = dataclasses.replace(m, entropy_coef=0.0, adaptive_entropy=None)
    train(policy, task, m, steps=2, prompts_per_step=8, group_size=G, eval_every=None, seed=1, lr=1e-2)
    for a, b in zip(before.parameters(), policy.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_with_zero_rewards_an_entropy_bonus_alone_moves_the_policy_and_raises_its_entropy():
    task = _zero_task()
    policy, _ = pg.load_warm_start("addition")
    before = copy.deepcopy(policy)
    m = dataclasses.replace(get_method("grpo_entropy_bonus"), entropy_coef=1.0)
    h = train(policy, task, m, steps=3, prompts_per_step=8, group_size=8, eval_every=None, seed=1, lr=1e-3)
    assert max((a - b).abs().max().item() for a, b in zip(before.parameters(), policy.parameters(), strict=True)) > 0
    for r in h.rows[1:]:
        assert r["loss"] == r["entropy_bonus"] < 0 and r["entropy_coef"] == 1.0  # the policy term is exactly 0
    assert h["entropy"][-1] > h["entropy"][0]


def test_a_critic_method_moves_the_policy_only_through_its_critics_error():
    task = _zero_task()
    policy, _ = pg.load_warm_start("addition")
    before = copy.deepcopy(policy)
    critic = pg.lm.tinygpt.TinyGPTCritic.from_policy(policy)
    with torch.no_grad():
        critic.value_head.bias.fill_(0.5)  # a wrong critic: V = 0.5 where every return is 0
    train(policy, task, "ppo_rlhf", critic=critic, steps=1, prompts_per_step=8, eval_every=None, seed=1)
    moved = max((a - b).abs().max().item() for a, b in zip(before.parameters(), policy.parameters(), strict=True))
    assert moved > 1e-6


class CountingReference(torch.nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.inner = copy.deepcopy(policy)
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)

    def token_log_probs_and_entropy(self, *args, **kwargs):  # the protocol train() checks for
        return self.inner.token_log_probs_and_entropy(*args, **kwargs)


@pytest.mark.parametrize(
    "name, kl_ref, calls", [("reinforce", None, 0), ("reinforce", False, 0), ("reinforce", True, 2), ("grpo", None, 2)]
)
def test_the_reference_forward_runs_only_when_needed_or_asked_for(name, kl_ref, calls):
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    ref = CountingReference(policy)
    G = get_method(name).group_size
    h = train(policy, task, name, reference=ref, kl_ref=kl_ref, group_size=G, **{**SMALL, "prompts_per_step": 2})
    assert ref.calls == calls
    assert ("kl_ref" in h.rows[-1]) == (calls > 0)


def _nan_after(n_ok: int) -> Method:
    count = {"n": 0}

    def loss(logp, batch, adv):
        count["n"] += 1
        out, stats = reinforce_loss(logp, batch, adv)
        return (out * float("nan"), stats) if count["n"] > n_ok else (out, stats)

    return Method(name="nan_after", title="NaN after a few steps", advantages=get_method("reinforce").advantages, loss=loss)


def test_a_nan_loss_stops_training_naming_the_step_and_keeping_the_history():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss is nan") as err:
        train(policy, task, _nan_after(2), steps=5, prompts_per_step=4, eval_every=None, seed=0)
    e = err.value
    assert isinstance(e, ValueError) and e.step == 3 and e.quantity == "loss"
    assert [r["step"] for r in e.history.rows] == [1, 2]  # what was done before the NaN
    assert all(torch.isfinite(p).all() for p in policy.parameters())  # the NaN step was not applied


def test_skip_mode_skips_non_finite_steps_and_counts_them():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    h = train(policy, task, _nan_after(2), steps=4, prompts_per_step=4, eval_every=None, seed=0, on_nonfinite="skip")
    assert [r["skipped"] for r in h.rows] == [0, 0, 1, 2]
    assert "loss" not in h.rows[2] and all(torch.isfinite(p).all() for p in policy.parameters())


def test_an_overflowing_learning_rate_is_named_as_the_likely_cause():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    with pytest.raises(TrainingDiverged, match=r"learning rate \(lr=1e\+30\)") as err:
        train(policy, task, "reinforce_baseline", steps=3, prompts_per_step=8, eval_every=None, seed=1, lr=1e30,
              max_grad_norm=None)  # fmt: skip
    assert err.value.quantity in ("parameters", "loss", "gradient norm", "sampling distribution")
    assert err.value.step == 2 and len(err.value.history) == 1


@pytest.mark.parametrize("bad", [{"kl_ref": 1}, {"on_nonfinite": "ignore"}])
def test_new_options_are_validated(bad):
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    with pytest.raises(ValueError, match=next(iter(bad))):
        train(policy, task, "reinforce", **SMALL, **bad)


def test_all_finite_checks_every_entry_of_every_tensor():
    """The post-step parameter check: one fused test that any NaN or inf, in any tensor, fails."""
    from policygrad.train import _all_finite

    ts = [torch.zeros(3, 2), torch.ones(5), torch.full((2, 2), -1e38)]
    assert _all_finite(ts)
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in range(len(ts)):
            broken = [t.clone() for t in ts]
            broken[i].view(-1)[-1] = bad
            assert not _all_finite(broken), (bad, i)
