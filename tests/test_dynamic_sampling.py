"""Dynamic sampling and truncation masking in the training loop (`Method.dynamic_sampling`,
`Method.mask_truncated`): every trained group carries a signal, every sampled completion is counted,
the budget has a defined end, and truncated rows are never trained on."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import policygrad as pg
from policygrad.lm.tasks import make_task
from policygrad.train import METRICS, train

GRPO = pg.get_method("grpo")


def _ds(**kw):
    return dataclasses.replace(GRPO, name="grpo_ds", dynamic_sampling=True, **kw)


def test_dynamic_sampling_trains_only_informative_groups_and_counts_every_sample():
    task = make_task("addition")
    pg.seed_everything(0)
    policy, _ = pg.load_warm_start("addition")
    h = train(policy, task, _ds(), steps=3, prompts_per_step=8, lr=1e-4, eval_every=None, seed=0)
    assert h["zero_var_groups"] == [0.0, 0.0, 0.0]  # the budget sufficed: only groups that differ
    batches = h["gen_batches"]
    assert all(1 <= b <= 8 for b in batches) and sum(batches) > 3  # some groups were dropped
    # samples counts every sampled completion, the dropped ones too: 8 prompts x G = 8 per batch
    steps_samples = [h["samples"][0]] + [b - a for a, b in zip(h["samples"], h["samples"][1:], strict=False)]
    assert steps_samples == [64 * b for b in batches]
    assert "gen_batches" in METRICS


def test_plain_grpo_draws_the_same_first_batch():
    """Dynamic sampling only adds draws after the first batch: its first generation batch is the
    plain method's (the same problems and samples from the same generator), so on a step where every
    group of that batch is informative the two steps agree."""
    task = make_task("addition")
    rows = {}
    for name, m in (("plain", GRPO), ("ds", _ds())):
        pg.seed_everything(0)
        policy, _ = pg.load_warm_start("addition")
        seen = []

        def record(batch, m=m, seen=seen):
            seen.append(batch.sequence_rewards.clone())
            return m.advantages(batch)

        h = train(policy, task, dataclasses.replace(m, advantages=record), steps=1, prompts_per_step=8,
                  lr=1e-4, eval_every=None, seed=0)  # fmt: skip
        rows[name] = (h, seen[0])
    plain_r, ds_r = rows["plain"][1].reshape(8, 8), rows["ds"][1].reshape(8, 8)
    informative = plain_r.amax(1) != plain_r.amin(1)
    k = int(informative.sum())
    assert 0 < k < 8
    # the informative groups of the first batch come first, in order
    assert torch.equal(ds_r[:k], plain_r[informative])


def test_budget_runs_out_with_a_defined_batch_and_no_update(tiny_gpt):
    """A fresh TinyGPT never solves addition: no group is informative, so after max_gen_batches the
    step trains on uninformative groups (advantage 0): no NaN, no update, every batch counted."""
    task = make_task("addition")
    policy = tiny_gpt(task)
    before = [p.detach().clone() for p in policy.parameters()]
    m = dataclasses.replace(
        pg.methods.grpo(name="grpo_ds_nokl", group_size=4, beta=0.0), dynamic_sampling=True, max_gen_batches=3
    )
    h = train(policy, task, m, steps=2, prompts_per_step=4, seed=0, eval_every=None)
    assert h["gen_batches"] == [3, 3]
    assert h["samples"] == [3 * 16, 6 * 16]
    assert h["zero_var_groups"] == [1.0, 1.0]
    for r in h.rows:
        assert all(math.isfinite(v) for v in r.values()), r
        assert r["loss"] == 0.0 and r["grad_norm"] == 0.0
    for a, b in zip(before, policy.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mask_truncated_zeroes_the_loss_mask_of_truncated_rows_only(tiny_gpt):
    """A fresh TinyGPT rarely emits EOS early, so many rows are truncated: each gets loss mask 0,
    the others keep their completion mask; the rewards (group statistics) are untouched."""
    task = make_task("addition")
    policy = tiny_gpt(task)
    seen = []
    base = pg.methods.grpo(name="grpo_mt", group_size=4, beta=0.0)

    def record(batch):
        seen.append(batch)
        return base.advantages(batch)

    m = dataclasses.replace(base, advantages=record, mask_truncated=True)
    train(policy, task, m, steps=1, prompts_per_step=8, seed=0, eval_every=None)
    b = seen[0]
    assert 0 < int(b.truncated.sum()) < len(b)
    assert torch.all(b.loss_mask[b.truncated] == 0)
    assert torch.equal(b.loss_mask[~b.truncated], b.mask[~b.truncated])
    assert b.rewards.shape == (32,)


def test_dynamic_sampling_needs_groups_and_valid_settings():
    task = make_task("addition")
    policy, _ = pg.load_warm_start("addition")
    with pytest.raises(ValueError, match="group_size >= 2"):
        train(policy, task, _ds(), steps=1, prompts_per_step=4, group_size=1, eval_every=None)
    for bad in ({"max_gen_batches": 0}, {"dynamic_sampling": 1}, {"mask_truncated": "yes"}):
        with pytest.raises(ValueError):
            dataclasses.replace(GRPO, **bad)
