"""A sampler that differs from the trainer (``train(sampler_dtype=..., stale_steps=...)``, chapter 10 planned).

The sampler draws from the run's own generator, so a sampler identical to the policy (a float32 copy) gives the
plain run's completions exactly; a bfloat16 sampler gives a measurable mismatch while the trainer's
``old_log_probs`` stay its own float32 ones; a sampler k steps stale samples from the weights of k steps ago,
checked against the teacher-forced log-probs of a saved copy of those weights.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import policygrad as pg
from policygrad.methods import get_method
from policygrad.train import METRICS, train

TASK = pg.lm.tasks.make_task("addition")
RUN = dict(steps=3, prompts_per_step=4, lr=1e-3, eval_every=None, seed=0)


def _spy(method_name="grpo"):
    m = get_method(method_name)
    seen = []

    def loss(logp, batch, adv):
        seen.append(batch)
        return m.loss(logp, batch, adv)

    return dataclasses.replace(m, loss=loss), seen


def test_a_float32_copy_as_sampler_reproduces_the_plain_run_exactly():
    p1, _ = pg.load_warm_start("addition")
    p2, _ = pg.load_warm_start("addition")
    h1 = train(p1, TASK, "grpo", **RUN)
    h2 = train(p2, TASK, "grpo", sampler_dtype=torch.float32, **RUN)
    assert h1["reward"] == h2["reward"] and h1["loss"] == h2["loss"]
    assert all(torch.equal(a, b) for a, b in zip(p1.parameters(), p2.parameters(), strict=True))
    assert "rollout_log_ratio_std" not in h1.columns and "rollout_log_ratio_std" in METRICS
    assert all(x < 1e-6 for x in h2["rollout_log_ratio_std"])


def test_a_bfloat16_sampler_is_measurably_off_while_the_trainer_keeps_float32():
    policy, _ = pg.load_warm_start("addition")
    m, seen = _spy()
    h = train(policy, TASK, m, sampler_dtype=torch.bfloat16, **RUN)
    assert all(b.old_log_probs.dtype == torch.float32 for b in seen)
    assert all(b.rollout_log_probs.dtype == torch.bfloat16 for b in seen)
    assert all(1e-7 < x < 1e-2 for x in h["rollout_kl"]) and all(x > 1e-3 for x in h["rollout_log_ratio_std"])
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # the trained policy is untouched


def test_a_stale_sampler_samples_from_the_weights_of_k_steps_ago():
    policy, _ = pg.load_warm_start("addition")
    initial = copy.deepcopy(policy)
    m, seen = _spy()
    h = train(policy, TASK, m, stale_steps=2, steps=4, prompts_per_step=4, lr=1e-3, eval_every=None, seed=0)
    assert h["rollout_kl"][0] < 1e-9 and all(x > 1e-6 for x in h["rollout_kl"][1:])
    # steps 1-3 sample from the initial weights (steps 1, 2: nothing older; step 3: the weights before step 1)
    for batch in seen[:3]:
        with torch.no_grad():
            logits = initial(batch.prompts, batch.completions, group_size=8)
        ref = pg.trajectory_side.token_log_probs(logits, batch.completions)
        on = batch.mask.bool()
        torch.testing.assert_close(batch.rollout_log_probs[on], ref[on], rtol=1e-5, atol=1e-5)
    # step 4 does not: it samples from the weights after step 1
    with torch.no_grad():
        logits = initial(seen[3].prompts, seen[3].completions, group_size=8)
    ref = pg.trajectory_side.token_log_probs(logits, seen[3].completions)
    on = seen[3].mask.bool()
    assert float((seen[3].rollout_log_probs[on] - ref[on]).abs().max()) > 1e-4


@pytest.mark.parametrize("kw, match", [
    ({"sampler_dtype": torch.int64}, "sampler_dtype"), ({"sampler_dtype": "bfloat16"}, "sampler_dtype"),
    ({"stale_steps": -1}, "stale_steps"), ({"stale_steps": True}, "stale_steps"), ({"stale_steps": 1.5}, "stale_steps"),
])  # fmt: skip
def test_bad_sampler_settings_are_value_errors(kw, match):
    policy, _ = pg.load_warm_start("addition")
    with pytest.raises(ValueError, match=match):
        train(policy, TASK, "grpo", **RUN, **kw)


@pytest.mark.parametrize("kw", [dict(temperature=0.7), dict(top_k=3), dict(temperature=1.5, top_k=5)])
def test_a_tempered_or_truncated_sampler_reports_its_own_log_probs(kw):
    """``sample(temperature=, top_k=)``: ``log_probs`` stay the policy's (temperature 1), ``sampler_log_probs`` are
    those of the distribution the tokens came from, checked by teacher forcing with the same logits."""
    policy, _ = pg.load_warm_start("addition")
    prompts = TASK.encode_prompts(TASK.sample_problems(4, torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(2)
    s = policy.sample(prompts, max_new_tokens=TASK.max_new_tokens, eos=TASK.tokenizer.eos_id, generator=g, group_size=3, **kw)
    assert s.sampler_log_probs is not None
    with torch.no_grad():
        logits = policy(prompts.repeat_interleave(3, 0), s.completions)
    z = logits / kw.get("temperature", 1.0)
    k = kw.get("top_k")
    if k is not None:
        kth = torch.topk(z, k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    on = s.mask != 0
    want_q = torch.log_softmax(z, -1).gather(-1, s.completions[..., None])[..., 0]
    want_p = torch.log_softmax(logits, -1).gather(-1, s.completions[..., None])[..., 0]
    torch.testing.assert_close(s.sampler_log_probs[on], want_q[on], atol=1e-5, rtol=0)
    torch.testing.assert_close(s.log_probs[on], want_p[on], atol=1e-5, rtol=0)
    assert bool((s.sampler_log_probs[~on] == 0).all())
    assert float((s.sampler_log_probs - s.log_probs)[on].abs().max()) > 1e-3  # they really differ
    batch = pg.rollout.RolloutBatch.from_samples(s, torch.zeros(len(s)), group_size=3)
    assert torch.equal(batch.rollout_log_probs, s.sampler_log_probs)


def test_an_untempered_sampler_has_no_separate_log_probs_and_train_logs_the_tempered_gap():
    policy, _ = pg.load_warm_start("addition")
    prompts = TASK.encode_prompts(TASK.sample_problems(2, torch.Generator().manual_seed(1)))
    s = policy.sample(prompts, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    assert s.sampler_log_probs is None
    h = train(policy, TASK, "grpo", temperature=0.8, **RUN)
    assert all(x > 1e-3 for x in h["rollout_kl"]) and all(x > 1e-2 for x in h["rollout_log_ratio_std"])
    with pytest.raises(ValueError, match="top_k"):
        train(policy, TASK, "grpo", top_k=0, **RUN)
