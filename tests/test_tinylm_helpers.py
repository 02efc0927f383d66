"""Tests for the helpers chapter 4 adds: reused_batch_bias, windowed_comparison and
exact_problem(..., rewarded_only=True).

Everything is checked against an exact quantity: a hand computation with ExactProblem
(per-sample gradients weighted by the old policy's probabilities), the full enumeration,
or hand-computed means.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import policygrad as pg
from policygrad.diagnostics import reused_batch_bias, windowed_comparison
from policygrad.exact import ExactProblem
from policygrad.lm.tasks import AdditionTask, Problem, exact_problem

F64 = torch.float64


def _toy():
    comp, mask = pg.enumerate_completions(3, 3, eos=0)  # variable lengths 1..3
    g = torch.Generator().manual_seed(3)
    R = (torch.rand(2, comp.shape[0], generator=g, dtype=F64) > 0.6).to(F64)
    prob = ExactProblem(
        torch.arange(2), torch.tensor([0.35, 0.65], dtype=F64), comp, mask.to(F64), R
    )
    gen = torch.Generator().manual_seed(1)
    old = pg.TabularPolicy(2, 3, 3, eos=0, init_scale=1.0, generator=gen).double()
    return prob, old


def _hand_step2(prob, old, lr):
    """θ_2 = θ_old + lr ∇J(θ_old); h(θ_2) = Σ ρ p_old R ∇log p_θ2; ∇J(θ_2)."""
    new = copy.deepcopy(old)
    step = lr * prob.gradient(old).view_as(new.logits_table)
    with torch.no_grad():
        new.logits_table.add_(step)
        w = prob.prompt_probs.unsqueeze(1) * prob.probs(old)  # ρ(x) p_old(y|x)
    per_sample = prob.per_sample_gradients(new, prob.returns())  # R ∇ log p_θ2
    h = (w.unsqueeze(-1) * per_sample).sum((0, 1))
    return new, h, prob.gradient(new)


def test_step_one_is_unbiased_and_step_two_matches_a_hand_computation():
    prob, old = _toy()
    before = old.logits_table.detach().clone()
    rows = reused_batch_bias(prob, old, steps=3, lr=0.5)
    assert torch.equal(old.logits_table, before)  # the policy is not modified
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["relative_bias"] < 1e-12 and rows[0]["cosine"] == pytest.approx(1)
    assert rows[0]["max_abs_log_ratio"] == 0.0
    with torch.no_grad():
        J_old = float(prob.objective(old))
    assert rows[0]["objective"] == pytest.approx(J_old, abs=1e-12)
    new, h, exact = _hand_step2(prob, old, 0.5)
    bias = float((h - exact).norm() / exact.norm())
    assert bias > 1e-2  # negative control: a reused batch is biased from step 2 on
    assert rows[1]["relative_bias"] == pytest.approx(bias, rel=1e-9)
    assert rows[1]["cosine"] == pytest.approx(
        float(h @ exact / (h.norm() * exact.norm())), rel=1e-9
    )
    with torch.no_grad():
        J_new = float(prob.objective(new))
        lr_ = prob.log_probs(new) - prob.log_probs(old)
    assert rows[1]["objective"] == pytest.approx(J_new, rel=1e-10)
    expected = float(lr_[prob.returns() != 0].abs().max())
    assert rows[1]["max_abs_log_ratio"] == pytest.approx(expected, rel=1e-10)
    for r in rows:  # importance weights remove the bias exactly
        assert r["is_relative_error"] < 1e-12


def test_the_bias_is_first_order_in_the_step():
    prob, old = _toy()
    big = reused_batch_bias(prob, old, steps=2, lr=0.2)[1]["relative_bias"]
    small = reused_batch_bias(prob, old, steps=2, lr=0.1)[1]["relative_bias"]
    assert small > 1e-3
    assert big / small == pytest.approx(2.0, rel=0.05)


def test_reused_batch_bias_on_a_restricted_language_model_problem():
    """On TinyGPT with the rewarded-only enumeration the first step is unbiased."""
    task = AdditionTask()
    problems = [Problem("12+34=", "46"), Problem("03+04=", "7")]
    cfg = pg.TinyGPTConfig(
        vocab_size=task.tokenizer.vocab_size, block_size=12, n_layer=1, n_embd=16,
        n_head=2,
    )  # fmt: skip
    model = pg.TinyGPT(cfg, generator=pg.make_generator(0))
    ep = exact_problem(task, problems, 3, rewarded_only=True)
    rows = reused_batch_bias(ep, model, steps=2, lr=5.0)
    assert rows[0]["relative_bias"] < 1e-5 and rows[1]["relative_bias"] > 1e-3


def test_reused_batch_bias_rejects_bad_input():
    prob, old = _toy()
    with pytest.raises(ValueError, match="problem must be an ExactProblem"):
        reused_batch_bias("problem", old, steps=2, lr=0.1)
    with pytest.raises(ValueError, match="policy must be"):
        reused_batch_bias(prob, "policy", steps=2, lr=0.1)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        reused_batch_bias(prob, old, steps=0, lr=0.1)
    for lr in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="lr must be a positive number"):
            reused_batch_bias(prob, old, steps=2, lr=lr)
    per_step = prob.with_rewards(torch.zeros(2, *prob.completions.shape, dtype=F64))
    with pytest.raises(ValueError, match="terminal rewards"):
        reused_batch_bias(per_step, old, steps=2, lr=0.1)
    with pytest.raises(ValueError, match="is zero"):
        reused_batch_bias(prob.with_rewards(torch.zeros_like(prob.rewards)), old,
                          steps=1, lr=0.1)  # fmt: skip


def test_rewarded_only_keeps_the_objective_and_gradient_exact():
    task = AdditionTask()
    problems = [Problem("12+34=", "46"), Problem("03+04=", "7"), Problem("05+02=", "7")]
    cfg = pg.TinyGPTConfig(
        vocab_size=task.tokenizer.vocab_size, block_size=12, n_layer=1, n_embd=16,
        n_head=2,
    )  # fmt: skip
    model = pg.TinyGPT(cfg, generator=pg.make_generator(0)).double()
    full = exact_problem(task, problems, 3)
    small = exact_problem(task, problems, 3, rewarded_only=True)
    assert full.num_completions == 1111
    # the two distinct answers "46", "7" (with EOS) are the only rewarded completions
    assert small.num_completions == 2
    kept = {tuple(c) for c in small.completions.tolist()}
    tok = task.tokenizer  # completions are padded with EOS after their first EOS
    assert kept == {tuple(tok.encode("46<eos>")), tuple(tok.encode("7<eos><eos>"))}
    assert torch.equal(small.rewards.sum(1), torch.ones(3))
    J_full, J_small = full.objective(model), small.objective(model)
    assert J_full.item() > 0
    assert J_small.item() == pytest.approx(J_full.item(), rel=1e-12)
    torch.testing.assert_close(
        small.gradient(model), full.gradient(model), rtol=1e-10, atol=1e-14
    )
    with torch.no_grad():
        torch.testing.assert_close(
            small.success_probability(model), full.success_probability(model)
        )
    with pytest.raises(ValueError, match="rewarded_only must be True or False"):
        exact_problem(task, problems, 3, rewarded_only="yes")


def _history(values):
    h = pg.History()
    for step, v in enumerate(values, 1):
        h.log(step=step, reward=v)
    return h


def test_windowed_comparison_by_hand():
    runs = {
        ("a", 0): _history([0.0, 1.0, 2.0, 3.0]),
        ("a", 1): _history([9.0, 9.0, 4.0, 6.0]),
        ("b", 0): _history([0.0, 0.0, 4.0, 4.0]),
        ("b", 1): _history([0.0, 0.0, 8.0, 6.0]),
    }
    rows = windowed_comparison(runs, "reward", last=2)
    assert [r["method"] for r in rows] == ["a", "b", "b - a"]
    a, b, d = rows
    assert a["per_seed"] == {0: 2.5, 1: 5.0} and b["per_seed"] == {0: 4.0, 1: 7.0}
    assert (a["mean"], a["min"], a["max"]) == (3.75, 2.5, 5.0)
    assert a["se"] == pytest.approx(
        math.sqrt(((2.5 - 3.75) ** 2 * 2) / 1) / math.sqrt(2)
    )
    assert d["per_seed"] == {0: 1.5, 1: 2.0}
    assert d["mean"] == pytest.approx(1.75) and d["se"] == pytest.approx(0.25)
    one = windowed_comparison({("a", 0): runs["a", 0]}, "reward", last=4)
    assert one[0]["mean"] == 1.5 and math.isnan(one[0]["se"])
    ref_b = windowed_comparison(runs, "reward", last=2, reference="b")
    assert ref_b[2]["method"] == "a - b" and ref_b[2]["mean"] == pytest.approx(-1.75)


def test_windowed_comparison_rejects_bad_input():
    runs = {("a", 0): _history([1.0, 2.0]), ("b", 1): _history([1.0, 2.0])}
    with pytest.raises(ValueError, match="not paired"):
        windowed_comparison(runs, "reward", last=1)
    good = {("a", 0): _history([1.0, 2.0])}
    with pytest.raises(ValueError, match="fewer than"):
        windowed_comparison(good, "reward", last=3)
    with pytest.raises(ValueError, match="no metric"):
        windowed_comparison(good, "loss", last=1)
    with pytest.raises(ValueError, match="non-empty mapping"):
        windowed_comparison({}, "reward", last=1)
    with pytest.raises(ValueError, match="keyed by"):
        windowed_comparison({"a": _history([1.0])}, "reward", last=1)
    with pytest.raises(ValueError, match="reference"):
        windowed_comparison(good, "reward", last=1, reference="c")
    with pytest.raises(ValueError, match="last must be a positive integer"):
        windowed_comparison(good, "reward", last=0)
    nan = {("a", 0): _history([1.0, float("nan")])}
    with pytest.raises(ValueError, match="non-finite"):
        windowed_comparison(nan, "reward", last=1)
