"""Tests for GRPO: process-supervision advantages (group_step_advantages), the GRPO reward side and loss, the
registered method, the exact group analysis of policygrad.exact.group, variable_length_task and
lm_tasks.success_probabilities.

Every quantity is compared with an independent computation: hand values, brute-force loops written here over
every group of rewards, or autograd of an explicit formula built token by token. float64 throughout where the
comparison is exact; each identity that says two things differ comes with its margin.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from policygrad.exact import ExactProblem, flat_grad, flat_params
from policygrad.exact.group import (
    MAX_GROUPS,
    binary_advantage_table,
    binary_objective,
    binary_weight,
    conditional_advantages,
    enumerated_update,
    expected_group_gradient,
    implied_surrogate,
    implied_weights,
    zero_variance_probability,
)
from policygrad.lm.tasks import Problem, exact_problem, make_task, success_probabilities
from policygrad.methods import (
    Method,
    get_method,
    grpo,
    grpo_advantages,
    grpo_loss,
    rlhf_ppo,
)
from policygrad.reward_side import group_step_advantages
from policygrad.rollout import RolloutBatch
from policygrad.toy import TabularPolicy
from policygrad.toy.tasks import target_sequence_task, variable_length_task
from policygrad.trajectory_side import token_log_probs

F64 = torch.float64
EPS = 1e-6  # the default eps of the advantages


# ---- independent reference implementations -----------------------------------------------------------------------


def _hand_adv(rs, i, scale, unbiased, eps):
    """GRPO advantage of member i of the group rs (a list of floats), written out: 0 for a constant group."""
    G = len(rs)
    if all(r == rs[0] for r in rs):
        return 0.0
    mean = sum(rs) / G
    if scale is None:
        return rs[i] - mean
    var = sum((r - mean) ** 2 for r in rs) / (G - 1 if unbiased else G)
    return (rs[i] - mean) / (math.sqrt(var) + eps)


def _brute_conditional(values, probs, G, scale, unbiased, eps):
    """E[A_1 | R_1 = v] by a loop over every ordered tuple of the other G - 1 rewards."""
    out = []
    for v in values:
        total = 0.0
        for others in itertools.product(range(len(values)), repeat=G - 1):
            w = math.prod(probs[j] for j in others)
            total += w * _hand_adv([v] + [values[j] for j in others], 0, scale, unbiased, eps)
        out.append(total)
    return out


def _step_adv_by_hand(rewards, mask, step_mask, G, scale, unbiased, eps):
    """Process supervision by loops: normalise every step reward of a group, sum those at or after each token."""
    B, T = rewards.shape
    out = torch.zeros(B, T, dtype=F64)
    for g0 in range(0, B, G):
        steps = [(i, t) for i in range(g0, g0 + G) for t in range(T) if step_mask[i, t] != 0]
        vals = [float(rewards[i, t]) for i, t in steps]
        n = len(vals)
        if n < 2 or all(v == vals[0] for v in vals):
            continue
        mean = sum(vals) / n
        den = 1.0
        if scale == "std":
            den = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1 if unbiased else n)) + eps
        normed = {s: (v - mean) / den for s, v in zip(steps, vals, strict=True)}
        for i in range(g0, g0 + G):
            for t in range(T):
                if mask[i, t] != 0:
                    out[i, t] = sum(normed.get((i, s), 0.0) for s in range(t, T))
    return out


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ---- group_step_advantages ------------------------------------------------------------------------------------------

# one group of G = 2, T = 3: row 0 has 3 trained tokens, row 1 has 2; every trained token is a step
R_STEP = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]], dtype=F64)
M_STEP = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)


def test_group_step_advantages_hand_values():
    # the 5 step rewards 1, 0, 2, 0, 3: mean 1.2, deviations -0.2, -1.2, 0.8, -1.2, 1.8, sum of squares 6.8
    # reverse cumulative sums of the deviations in each row:
    #   row 0: -0.2 - 1.2 + 0.8 = -0.6, -1.2 + 0.8 = -0.4, 0.8;  row 1: -1.2 + 1.8 = 0.6, 1.8, (padding) 0
    centred = torch.tensor([[-0.6, -0.4, 0.8], [0.6, 1.8, 0.0]], dtype=F64)
    got = group_step_advantages(R_STEP, M_STEP, 2, scale=None)
    torch.testing.assert_close(got, centred, atol=1e-12, rtol=0)
    biased = group_step_advantages(R_STEP, M_STEP, 2, unbiased=False)  # population std sqrt(6.8 / 5), eps 1e-6
    torch.testing.assert_close(biased, centred / (math.sqrt(1.36) + EPS), atol=1e-12, rtol=0)
    unbiased = group_step_advantages(R_STEP, M_STEP, 2, unbiased=True, eps=0.0)  # std sqrt(6.8 / 4)
    torch.testing.assert_close(unbiased, centred / math.sqrt(1.7), atol=1e-12, rtol=0)
    assert got[1, 2] == 0 and biased[1, 2] == 0  # off the mask: exactly 0
    # negative control: the outcome-style advantage (one number per row) is a different thing
    assert (got[0] - got[0, 0]).abs().max() > 0.5


def test_group_step_advantages_with_steps_a_strict_subset_of_the_mask():
    # G = 2, T = 4; steps end at tokens 1 and 3 of row 0 and token 2 of row 1; rewards sit on the steps
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]], dtype=F64)
    step = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=F64)
    r = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]], dtype=F64)
    # step rewards 1, 0, 2: mean 1, deviations 0, -1, 1 (population std sqrt(2/3))
    # row 0: tokens 0, 1 see both of its steps (0 + -1), tokens 2, 3 only the last (-1); row 1: 1, 1, 1, 0
    centred = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 0.0]], dtype=F64)
    got = group_step_advantages(r, mask, 2, step_mask=step, scale=None)
    torch.testing.assert_close(got, centred, atol=1e-12, rtol=0)
    got = group_step_advantages(r, mask, 2, step_mask=step, eps=0.0, unbiased=False)
    torch.testing.assert_close(got, centred / math.sqrt(2 / 3), atol=1e-12, rtol=0)
    got = group_step_advantages(r, mask, 2, step_mask=step, eps=0.0)  # the default: Bessel, std sqrt(2 / 2) = 1
    torch.testing.assert_close(got, centred / 1.0, atol=1e-12, rtol=0)
    # negative control: with every trained token a step, the zeros on tokens 0, 2 of row 0 count as steps
    assert (group_step_advantages(r, mask, 2, scale=None) - centred).abs().max() > 0.1


@pytest.mark.parametrize("scale, unbiased, eps", [("std", False, 1e-6), ("std", True, 0.3), (None, False, 1e-6)])
def test_group_step_advantages_equal_the_loops_on_random_batches(scale, unbiased, eps):
    g = torch.Generator().manual_seed(3)
    B, T, G = 6, 5, 3
    lengths = torch.tensor([5, 2, 4, 1, 3, 5])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    mask[5, 1] = 0.0  # a gap inside a row (a token the policy did not choose)
    step = mask * (torch.rand(B, T, generator=g) < 0.6).to(F64)
    rewards = torch.randn(B, T, generator=g, dtype=F64) * step
    got = group_step_advantages(rewards, mask, G, step_mask=step, scale=scale, unbiased=unbiased, eps=eps)
    want = _step_adv_by_hand(rewards, mask, step, G, scale, unbiased, eps)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert (want.abs() > 1e-3).sum() > 10  # the comparison is not between zeros
    # default step_mask = mask
    r2 = torch.randn(B, T, generator=g, dtype=F64) * mask
    got = group_step_advantages(r2, mask, G, scale=scale, unbiased=unbiased, eps=eps)
    torch.testing.assert_close(got, _step_adv_by_hand(r2, mask, mask, G, scale, unbiased, eps), atol=1e-12, rtol=0)


def test_normalised_step_rewards_of_a_group_sum_to_zero():
    # the advantage at a row's first trained token is the sum of all its normalised step rewards, so summing it
    # over the rows of a group gives the sum of the group's normalised step rewards: 0
    g = torch.Generator().manual_seed(5)
    B, T, G = 8, 4, 4
    mask = torch.ones(B, T, dtype=F64)
    mask[1, 0] = 0.0  # this row's first trained token is token 1
    mask[2, 3] = 0.0
    step = mask * (torch.rand(B, T, generator=g) < 0.5).to(F64)
    step[1, 1] = 1.0
    rewards = (torch.rand(B, T, generator=g, dtype=F64) + 0.5) * step
    for scale in ("std", None):
        A = group_step_advantages(rewards, mask, G, step_mask=step, scale=scale)
        first = mask.argmax(1)
        sums = A[torch.arange(B), first].reshape(-1, G).sum(1)
        torch.testing.assert_close(sums, torch.zeros(B // G, dtype=F64), atol=1e-12, rtol=0)
    # negative control: the raw step rewards (all positive) do not sum to zero
    assert (rewards.reshape(-1, G * T).sum(1) > 1.0).all()


def test_group_step_advantages_constant_or_single_step_groups_are_exactly_zero():
    T = 3
    mask = torch.ones(6, T, dtype=F64)
    step = torch.tensor([[0, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=F64)
    r = torch.zeros(6, T, dtype=F64)
    r[0:2] = 0.1 * step[0:2]  # group 0: every *step* reward is 0.1 (non-steps are 0, and must not count)
    r[2, 2] = 5.0  # group 1: one step only
    r[4:6] = torch.tensor([[0.0, 1.0, 0.0], [2.0, -1.0, 0.5]], dtype=F64)  # group 2: signal
    for scale in ("std", None):
        A = group_step_advantages(r, mask, 2, step_mask=step, scale=scale)
        assert torch.isfinite(A).all()
        assert torch.equal(A[:4], torch.zeros(4, T, dtype=F64))  # exactly 0, not round-off / eps
        assert (A[4:].abs() > 0.1).any()  # negative control: the group with signal keeps it
    # a group with no step at all
    A = group_step_advantages(torch.zeros(2, T, dtype=F64), mask[:2], 2, step_mask=torch.zeros(2, T, dtype=F64))
    assert torch.equal(A, torch.zeros(2, T, dtype=F64))


_R = torch.zeros(4, 3, dtype=F64)
_M = torch.ones(4, 3, dtype=F64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"group_size": 3}, "does not divide"),
        ({"group_size": 1}, "group_size >= 2"),
        ({"group_size": 0}, "group_size"),
        ({"rewards": torch.tensor([[0.0, float("nan"), 0.0]] * 4, dtype=F64)}, "NaN"),
        ({"step_mask": torch.tensor([[0.0, 0.0, 1.0]] * 4, dtype=F64), "rewards": torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=F64)},
         "rewards must be 0 where step_mask"),
        ({"mask": torch.tensor([[1.0, 1.0, 0.0]] * 4, dtype=F64), "step_mask": torch.ones(4, 3, dtype=F64)},
         "step_mask must be 0 wherever mask"),
        ({"mask": torch.ones(4, 2, dtype=F64)}, "mask must have shape"),
        ({"step_mask": torch.ones(4, 2, dtype=F64)}, "step_mask must have shape"),
        ({"rewards": torch.zeros(4, dtype=F64)}, "dimension"),
        ({"rewards": torch.zeros(4, 3, dtype=torch.long)}, "floating-point"),
        ({"mask": torch.full((4, 3), 0.5, dtype=F64)}, "only 0 and 1"),
        ({"scale": "max"}, "scale"),
        ({"eps": -1.0}, "eps"),
        ({"unbiased": 1}, "unbiased"),
    ],
)  # fmt: skip
def test_group_step_advantages_rejects_bad_input(kwargs, match):
    args = {"rewards": _R, "mask": _M, "group_size": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        group_step_advantages(**args)


# ---- grpo_advantages on a RolloutBatch --------------------------------------------------------------------------------


def _batch(rewards, mask, *, loss_mask=None, G, old=None, ref=None, prompts=None, completions=None):
    B, T = mask.shape
    return RolloutBatch(
        prompts=torch.zeros(B, 1, dtype=torch.long) if prompts is None else prompts.reshape(B, 1),
        completions=torch.zeros(B, T, dtype=torch.long) if completions is None else completions,
        mask=mask,
        loss_mask=mask if loss_mask is None else loss_mask,
        old_log_probs=torch.zeros(B, T, dtype=F64) if old is None else old,
        ref_log_probs=ref,
        rewards=rewards,
        group_ids=torch.arange(B // G).repeat_interleave(G),
        truncated=torch.zeros(B, dtype=torch.bool),
    )


def test_grpo_advantages_outcome_rewards_hand_values():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]] * 3, dtype=F64)
    loss_mask = mask.clone()
    loss_mask[4, 0] = 0.0  # a token in the completion the loss does not train on
    R = torch.tensor([1.0, 0.0, 0.0, 0.2, 0.9, 0.4, 0.5, 0.5, 0.5], dtype=F64)
    batch = _batch(R, mask, loss_mask=loss_mask, G=3)
    # group 0: mean 1/3, unbiased std sqrt(1/3); group 1: mean 0.5, unbiased std sqrt((0.09 + 0.16 + 0.01) / 2)
    s0, s1 = math.sqrt(1 / 3), math.sqrt(0.13)
    seq = torch.tensor([(2 / 3) / (s0 + EPS), (-1 / 3) / (s0 + EPS), (-1 / 3) / (s0 + EPS),
                        -0.3 / (s1 + EPS), 0.4 / (s1 + EPS), -0.1 / (s1 + EPS), 0.0, 0.0, 0.0], dtype=F64)  # fmt: skip
    got = grpo_advantages(batch)
    torch.testing.assert_close(got, seq.unsqueeze(1) * loss_mask, atol=1e-12, rtol=0)
    assert torch.equal(got[6:], torch.zeros(3, 3, dtype=F64))  # all-equal group: exactly 0
    assert got[4, 0] == 0  # off the loss mask
    centred = torch.tensor([2 / 3, -1 / 3, -1 / 3, -0.3, 0.4, -0.1, 0, 0, 0], dtype=F64)
    torch.testing.assert_close(grpo_advantages(batch, scale=None), centred.unsqueeze(1) * loss_mask, atol=1e-12, rtol=0)
    # negative control: the biased std gives different numbers (smaller by sqrt(2/3))
    assert (grpo_advantages(batch, unbiased=False) - got).abs().max() > 0.1


def test_grpo_advantages_per_step_rewards_are_process_supervision():
    g = torch.Generator().manual_seed(11)
    lengths = torch.tensor([3, 1, 2, 3, 3, 2])
    mask = (torch.arange(3).unsqueeze(0) < lengths.unsqueeze(1)).to(F64)
    loss_mask = mask.clone()
    loss_mask[3, 1] = 0.0
    rewards = torch.randn(6, 3, generator=g, dtype=F64) * loss_mask
    batch = _batch(rewards, mask, loss_mask=loss_mask, G=3)
    got = grpo_advantages(batch)
    want = _step_adv_by_hand(rewards, loss_mask, loss_mask, 3, "std", True, EPS)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    want_none = _step_adv_by_hand(rewards, loss_mask, loss_mask, 3, None, True, EPS)
    torch.testing.assert_close(grpo_advantages(batch, scale=None), want_none, atol=1e-12, rtol=0)
    # negative control: the outcome form (summed rewards, one advantage per row) differs
    outcome = grpo_advantages(_batch(rewards.sum(1), mask, loss_mask=loss_mask, G=3))
    assert (outcome - got).abs().max() > 0.1
    # all-equal step rewards: zeros
    flat = _batch(0.7 * loss_mask, mask, loss_mask=loss_mask, G=3)
    assert torch.equal(grpo_advantages(flat), torch.zeros(6, 3, dtype=F64))


# ---- grpo_loss ----------------------------------------------------------------------------------------------------------

G3 = 3
PROMPTS = torch.tensor([0, 0, 0, 1, 1, 1])
COMPLETIONS = torch.tensor([[1, 2, 0], [0, 0, 0], [2, 1, 1], [2, 0, 0], [1, 1, 0], [1, 2, 2]])
REWARDS = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 0.0], dtype=F64)


def _seq_adv(R, unbiased=True, eps=EPS):
    """GRPO sequence advantages by hand (groups of 3)."""
    rs = R.tolist()
    return torch.tensor([_hand_adv(rs[g:g + G3], i, "std", unbiased, eps) for g in range(0, len(rs), G3)
                         for i in range(G3)], dtype=F64)  # fmt: skip


def _policy(seed):
    return TabularPolicy(2, 3, 3, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(seed)).double()


def _logp(policy):
    return token_log_probs(policy(PROMPTS, COMPLETIONS), COMPLETIONS)


def _on_policy_batch(policy, ref_policy=None, rewards=REWARDS, loss_mask=None):
    mask = policy.completion_mask(COMPLETIONS).to(F64)
    with torch.no_grad():
        old = _logp(policy) * mask
        ref = _logp(ref_policy if ref_policy is not None else policy) * mask
    return _batch(rewards, mask, loss_mask=loss_mask, G=G3, old=old, ref=ref, prompts=PROMPTS, completions=COMPLETIONS)


def _hand_reinforce_form(policy, batch, A_seq, beta):
    """-(1/B) sum_i A_i/|o_i| sum_t m log pi + beta (1/B) sum_i 1/|o_i| sum_t m k3, token by token."""
    logp = _logp(policy)
    m, ref = batch.loss_mask, batch.ref_log_probs
    B, T = m.shape
    pg_part, kl_part = 0.0, 0.0
    for i in range(B):
        n = int(m[i].sum())
        for t in range(T):
            if m[i, t] != 0:
                x = ref[i, t] - logp[i, t]
                pg_part = pg_part - A_seq[i] * logp[i, t] / n / B
                kl_part = kl_part + (torch.exp(x) - x - 1) / n / B
    return pg_part + beta * kl_part, kl_part


def test_grpo_loss_on_policy_value_is_zero_but_gradient_is_the_score_formula():
    policy = _policy(0)
    batch = _on_policy_batch(policy)
    method = get_method("grpo")
    adv = method.advantages(batch)
    A = _seq_adv(REWARDS)
    torch.testing.assert_close(adv, A.unsqueeze(1) * batch.loss_mask, atol=1e-12, rtol=0)
    loss, stats = method.loss(_logp(policy), batch, adv)
    assert abs(float(loss.detach())) < 1e-12  # every ratio 1, advantages sum to 0 in each group, KL 0 (ref = policy)
    grad = flat_grad(loss, flat_params(policy))
    hand, _ = _hand_reinforce_form(policy, batch, A, beta=0.04)
    want = flat_grad(hand, flat_params(policy))
    torch.testing.assert_close(grad, want, atol=1e-12, rtol=0)
    assert want.norm() > 0.1  # the update is not zero although the loss is
    assert stats["kl_loss"] == 0.0 and stats["clip_frac"] == 0.0
    # negative control: without the 1/|o_i| (token sums) the gradient is different
    tok_sum = flat_grad(-(A.unsqueeze(1) * batch.loss_mask * _logp(policy)).sum() / 6, flat_params(policy))
    assert (tok_sum - want).norm() > 0.05


def test_grpo_loss_with_a_reference_adds_beta_times_the_k3_term():
    policy, ref_policy = _policy(0), _policy(1)
    batch = _on_policy_batch(policy, ref_policy)
    A = _seq_adv(REWARDS)
    adv = A.unsqueeze(1) * batch.loss_mask
    beta = 0.3
    loss, stats = grpo_loss(_logp(policy), batch, adv, beta=beta)
    hand, kl_hand = _hand_reinforce_form(policy, batch, A, beta)
    assert float(kl_hand.detach()) > 0.1
    assert float(loss.detach()) == pytest.approx(beta * float(kl_hand.detach()), abs=1e-12)
    assert stats["kl_loss"] == pytest.approx(float(kl_hand.detach()), abs=1e-12)
    g_hand = flat_grad(hand, flat_params(policy))
    torch.testing.assert_close(flat_grad(loss, flat_params(policy)), g_hand, atol=1e-12, rtol=0)
    # beta = 0: the reference is ignored; negative control for the KL's gradient
    loss0, stats0 = grpo_loss(_logp(policy), batch, adv, beta=0.0)
    hand0, _ = _hand_reinforce_form(policy, batch, A, 0.0)
    g0 = flat_grad(loss0, flat_params(policy))
    torch.testing.assert_close(g0, flat_grad(hand0, flat_params(policy)), atol=1e-12, rtol=0)
    assert (g0 - g_hand).norm() > 0.01
    assert "kl_loss" not in stats0


def test_grpo_all_equal_rewards_and_reference_equal_policy_give_an_exactly_zero_gradient():
    policy = _policy(2)
    batch = _on_policy_batch(policy, rewards=torch.full((6,), 0.5, dtype=F64))
    method = get_method("grpo")
    loss, _ = method.loss(_logp(policy), batch, method.advantages(batch))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert (policy.logits_table.grad == 0).all()


def test_grpo_loss_rows_with_an_empty_loss_mask():
    policy, ref_policy = _policy(0), _policy(1)
    mask = policy.completion_mask(COMPLETIONS).to(F64)
    loss_mask = mask.clone()
    loss_mask[2] = 0.0
    loss_mask[4] = 0.0
    batch = _on_policy_batch(policy, ref_policy, loss_mask=loss_mask)
    A = _seq_adv(REWARDS)
    loss, _ = grpo_loss(_logp(policy), batch, A.unsqueeze(1) * loss_mask)
    # value by hand (ratio 1): -(1/B) sum over non-empty rows of A_i + beta * the KL part; B still counts 6 rows
    hand, kl_hand = _hand_reinforce_form(policy, batch, A, 0.04)
    value = -float(A[[0, 1, 3, 5]].sum()) / 6 + 0.04 * float(kl_hand.detach())
    assert abs(value) > 0.05
    assert float(loss.detach()) == pytest.approx(value, abs=1e-12)
    grad = flat_grad(loss, flat_params(policy))
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, flat_grad(hand, flat_params(policy)), atol=1e-12, rtol=0)
    # an entirely empty loss mask: loss 0, zero gradient, no NaN
    empty = _on_policy_batch(policy, ref_policy, loss_mask=torch.zeros(6, 3, dtype=F64))
    loss, stats = grpo_loss(_logp(policy), empty, torch.zeros(6, 3, dtype=F64))
    assert float(loss.detach()) == 0.0 and all(math.isfinite(v) for v in stats.values())
    g = flat_grad(loss, flat_params(policy))
    assert (g == 0).all()


def test_grpo_loss_clip_removes_the_gradient_of_tokens_past_the_clip():
    eps = 0.2
    logp_val = torch.tensor([[-1.0, -0.7, -1.5], [-0.9, -1.2, -2.0], [-1.1, -0.6, -3.0], [-0.8, -1.3, -1.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=F64)
    shift = torch.tensor([[0.5, 0.0, -0.5], [0.1, -0.5, 0.0], [0.5, -0.1, -0.5], [0.0, 0.0, 0.0]], dtype=F64)
    old = (logp_val - shift) * mask  # log ratio = shift: e^0.5 = 1.65 > 1.2, e^-0.5 = 0.61 < 0.8
    R = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    A = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)  # hand advantages (G = 2, std, eps = 0)
    batch = _batch(R, mask, G=2, old=old)
    logp = logp_val.clone().requires_grad_(True)
    loss, stats = grpo_loss(logp, batch, A.unsqueeze(1) * mask, eps=eps, beta=0.0)
    (g,) = torch.autograd.grad(loss, logp)
    # by hand: d/dlogp of -min(rA, clip(r)A)/(B |o_i|) is -A r /(B |o_i|) unless the clip is active for A's sign
    want = torch.zeros(4, 3, dtype=F64)
    value, gone = 0.0, 0
    for i in range(4):
        n = int(mask[i].sum())
        for t in range(3):
            if mask[i, t] == 0:
                continue
            r = math.exp(float(shift[i, t]))
            a = float(A[i])
            clipped = (a > 0 and r > 1 + eps) or (a < 0 and r < 1 - eps)
            gone += clipped
            value += -min(r * a, min(max(r, 1 - eps), 1 + eps) * a) / (4 * n)
            want[i, t] = 0.0 if clipped else -a * r / (4 * n)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    assert float(loss.detach()) == pytest.approx(value, abs=1e-12)
    assert gone == 3 and stats["clip_frac"] == pytest.approx(gone / float(mask.sum()), abs=1e-12)
    # the clipped tokens (A > 0 with r = 1.65; A < 0 with r = 0.61) have exactly zero gradient; the others do not
    assert g[0, 0] == 0 and g[2, 2] == 0 and g[1, 1] == 0
    assert g[0, 2] != 0 and g[2, 0] != 0 and g[0, 1] != 0


def test_grpo_loss_rejects_bad_input():
    policy = _policy(0)
    mask = policy.completion_mask(COMPLETIONS).to(F64)
    with torch.no_grad():
        old = _logp(policy) * mask
    no_ref = _batch(REWARDS, mask, G=G3, old=old, prompts=PROMPTS, completions=COMPLETIONS)
    adv = _seq_adv(REWARDS).unsqueeze(1) * mask
    with pytest.raises(ValueError, match="ref_log_probs"):
        grpo_loss(_logp(policy), no_ref, adv, beta=0.04)
    grpo_loss(_logp(policy), no_ref, adv, beta=0.0)  # no KL term: no reference needed
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(_logp(policy), no_ref, adv, beta=-0.1)
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(_logp(policy), no_ref, adv, beta=0.0, aggregation="sum")
    with pytest.raises(ValueError, match="eps_low"):
        grpo_loss(_logp(policy), no_ref, adv, beta=0.0, eps=1.5)


def test_grpo_advantages_refuse_a_step_reward_outside_the_loss_mask():
    mask = torch.ones(2, 3, dtype=F64)
    loss_mask = mask.clone()
    loss_mask[:, 2] = 0.0  # e.g. a token the environment wrote
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="outside the loss mask"):
        grpo_advantages(_batch(rewards, mask, loss_mask=loss_mask, G=2))
    moved = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)  # the same reward on a trained token
    adv = grpo_advantages(_batch(moved, mask, loss_mask=loss_mask, G=2))
    assert adv.abs().max() > 0.5 and torch.equal(adv[:, 2], torch.zeros(2, dtype=F64))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"group_size": 1}, "group_size >= 2"), ({"group_size": 0}, "group_size"), ({"beta": -1.0}, "beta"),
     ({"eps": 1.5}, "eps"), ({"scale": "mad"}, "scale"), ({"kl_kind": "k4"}, "KL estimator"),
     ({"aggregation": "sum"}, "aggregation")],
)  # fmt: skip
def test_grpo_factory_rejects_bad_settings_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo("bad", **kwargs)


def test_method_gradient_estimator_gives_grpo_the_policy_as_its_own_reference():
    """With the policy as the reference the KL term has zero gradient: beta = 0.04 and beta = 0 estimate the same."""
    from policygrad.diagnostics import method_gradient_estimator
    from policygrad.lm.pretrained import load_warm_start

    task = make_task("addition")
    policy = load_warm_start("addition")[0].double()  # solves ~20 % of samples: groups with signal
    problems = task.eval_set(6)
    with_kl = method_gradient_estimator(policy, task, problems, grpo("g_kl", group_size=4), group_size=4)
    no_kl = method_gradient_estimator(policy, task, problems, grpo("g_nokl", group_size=4, beta=0.0), group_size=4)
    a = with_kl(6, torch.Generator().manual_seed(0))
    b = no_kl(6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.isfinite(a).all() and a.norm() > 1e-3  # a real update, not two zero vectors


# ---- the registered method ----------------------------------------------------------------------------------------------


def test_registered_grpo_method_metadata():
    m = get_method("grpo")
    assert isinstance(m, Method)
    assert (m.group_size, m.inner_epochs, m.minibatches) == (8, 1, 1)
    assert m.needs_reference is True and not m.needs_critic
    assert m.changes == ("reward", "trajectory")
    assert m.extra["beta"] == 0.04 and m.extra["eps"] == 0.2
    assert m.extra["aggregation"] == "seq-mean-token-mean" and m.extra["kl_kind"] == "k3"
    assert m.extra["scale"] == "std" and m.extra["unbiased"] is True
    # the factory: no KL, no reference
    assert grpo("grpo_nokl", beta=0.0).needs_reference is False
    assert grpo("g4", group_size=4).group_size == 4


# ---- group_exact: conditional advantages and the binary closed forms -------------------------------------------------


@pytest.mark.parametrize("G", [2, 3, 4])
@pytest.mark.parametrize("scale, unbiased, eps", [("std", False, 1e-6), ("std", True, 1e-6), ("std", False, 0.25),
                                                   (None, False, 1e-6)])  # fmt: skip
def test_conditional_advantages_equal_a_brute_force_loop(G, scale, unbiased, eps):
    values, probs = [0.0, 0.3, 1.0], [0.2, 0.5, 0.3]
    got = conditional_advantages(torch.tensor(values, dtype=F64), torch.tensor(probs, dtype=F64), G,
                                 scale=scale, unbiased=unbiased, eps=eps)  # fmt: skip
    want = torch.tensor(_brute_conditional(values, probs, G, scale, unbiased, eps), dtype=F64)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert want.abs().min() > 1e-3
    # E[c(R)] = E[A_1] = 0: the advantages of a group sum to zero
    assert abs(float((want * torch.tensor(probs, dtype=F64)).sum())) < 1e-12


@pytest.mark.parametrize("G", [2, 3, 5])
@pytest.mark.parametrize("scale, unbiased", [("std", False), ("std", True), (None, False)])
def test_binary_table_and_weight_equal_brute_force(G, scale, unbiased):
    a1, a0 = binary_advantage_table(G, scale=scale, unbiased=unbiased)
    for k in range(G):
        others = [1.0] * k + [0.0] * (G - 1 - k)
        assert float(a1[k]) == pytest.approx(_hand_adv([1.0] + others, 0, scale, unbiased, EPS), abs=1e-12)
        assert float(a0[k]) == pytest.approx(_hand_adv([0.0] + others, 0, scale, unbiased, EPS), abs=1e-12)
    for p in (0.0, 0.15, 0.5, 0.8, 1.0):
        c0, c1 = _brute_conditional([0.0, 1.0], [1 - p, p], G, scale, unbiased, EPS)
        assert float(binary_weight(torch.tensor(p, dtype=F64), G, scale=scale, unbiased=unbiased)) == pytest.approx(
            c1 - c0, abs=1e-12
        )


def test_binary_weight_limits():
    p = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0], dtype=F64)
    for G in (2, 3, 8):
        # no scale: w = (G - 1)/G for every p
        torch.testing.assert_close(binary_weight(p, G, scale=None), torch.full_like(p, (G - 1) / G), atol=1e-12, rtol=0)
    # G = 2, biased std: the advantages are +-0.5/(0.5 + eps), so w = 1/(1 + 2 eps) for every p
    for eps in (1e-6, 0.1):
        torch.testing.assert_close(
            binary_weight(p, 2, eps=eps, unbiased=False), torch.full_like(p, 1 / (1 + 2 * eps)), atol=1e-12, rtol=0
        )
    assert (binary_weight(p, 2, unbiased=False) - 1).abs().max() < 3e-6
    assert (binary_weight(p, 2) - 2**-0.5).abs().max() < 3e-6  # the default, Bessel's correction: 1/sqrt(2)
    # large G: w_G(p) sqrt(p(1-p)) = 1 - O(1/G) (1/G from the sample's own weight in the mean, O(1/G) from the
    # spread of the group's success rate around p, variance p(1-p)/G); at G = 400 that is a few 0.1 %, so 1 %
    q = torch.tensor([0.2, 0.5, 0.7], dtype=F64)
    limit = 1 / (q * (1 - q)).sqrt()
    rel = (binary_weight(q, 400) / limit - 1).abs()
    assert rel.max() < 0.01
    # negative control: at G = 8 the weight is still far (> 5 %) from the limit
    assert ((binary_weight(q, 8) / limit - 1).abs() > 0.05).all()
    # and the objective: Phi_G(b) - Phi_G(a) -> 2 arcsin sqrt(b) - 2 arcsin sqrt(a), the integral of the limit
    # weight (between a = 0.2 and b = 0.7 the integrand converges at O(1/G): measured 0.14 % at G = 400, 9 % at G = 8)
    a, b = torch.tensor(0.2, dtype=F64), torch.tensor(0.7, dtype=F64)
    arc = 2 * (torch.asin(b.sqrt()) - torch.asin(a.sqrt()))
    assert abs(float((binary_objective(b, 400) - binary_objective(a, 400)) / arc) - 1) < 0.01
    assert abs(float((binary_objective(b, 8) - binary_objective(a, 8)) / arc) - 1) > 0.05


@pytest.mark.parametrize("G", [2, 3, 5, 8])
@pytest.mark.parametrize("scale, unbiased", [("std", False), ("std", True), (None, False)])
def test_binary_objective_derivative_is_the_weight(G, scale, unbiased):
    p = torch.tensor([0.05, 0.3, 0.5, 0.77, 0.95], dtype=F64, requires_grad=True)
    phi = binary_objective(p, G, scale=scale, unbiased=unbiased)
    (dphi,) = torch.autograd.grad(phi.sum(), p)
    torch.testing.assert_close(dphi, binary_weight(p.detach(), G, scale=scale, unbiased=unbiased), atol=1e-12, rtol=0)
    assert float(binary_objective(torch.tensor(0.0, dtype=F64), G, scale=scale, unbiased=unbiased)) == 0.0
    if scale is None:
        torch.testing.assert_close(phi.detach(), (G - 1) / G * p.detach(), atol=1e-12, rtol=0)
    # and the integral: Phi(b) - Phi(a) = int_a^b w by Simpson's rule on a fine grid
    u = torch.linspace(0.3, 0.5, 201, dtype=F64)
    w = binary_weight(u, G, scale=scale, unbiased=unbiased)
    simpson = float((w[0] + w[-1] + 4 * w[1:-1:2].sum() + 2 * w[2:-1:2].sum()) * (0.2 / 200) / 3)
    assert float((phi[2] - phi[1]).detach()) == pytest.approx(simpson, abs=1e-9)


@pytest.mark.parametrize("G", [1, 2, 3, 5])
def test_zero_variance_probability_equals_a_sum_over_all_outcomes(G):
    for p in (0.0, 0.25, 0.6, 1.0):
        brute = sum(math.prod(p if o else 1 - p for o in out) for out in itertools.product([0, 1], repeat=G)
                    if len(set(out)) == 1)  # fmt: skip
        assert float(zero_variance_probability(torch.tensor(p, dtype=F64), G)) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="p must hold"):
        zero_variance_probability(torch.tensor(1.5, dtype=F64), G)
    with pytest.raises(ValueError, match="group_size"):
        zero_variance_probability(0.5, 0)


# ---- group_exact on enumerable problems ----------------------------------------------------------------------------------


def _vl(N, V, L, seed=1):
    problem, _ = variable_length_task(N, V, L)
    return problem, TabularPolicy(
        N, V, L, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(seed)
    ).double()


def test_implied_weights_equal_brute_force_conditional_advantages():
    problem, policy = _vl(2, 3, 3)
    with torch.no_grad():
        probs = problem.probs(policy)
    R = problem.rewards.double()
    lengths = problem.mask.double().sum(-1)
    for G, unbiased in ((2, True), (3, False), (4, True)):
        W = implied_weights(problem, policy, G, unbiased=unbiased)
        W_raw = implied_weights(problem, policy, G, unbiased=unbiased, length_norm=False)
        want = torch.zeros_like(R)
        for x in range(2):
            p = float((probs[x] * R[x]).sum())
            c0, c1 = _brute_conditional([0.0, 1.0], [1 - p, p], G, "std", unbiased, EPS)
            want[x] = R[x] * c1 + (1 - R[x]) * c0  # R is 0/1
        torch.testing.assert_close(W_raw, want, atol=1e-12, rtol=0)
        torch.testing.assert_close(W, want / lengths, atol=1e-12, rtol=0)
    # with W = R the implied surrogate is J
    with torch.no_grad():
        assert float(implied_surrogate(problem, policy, R)) == pytest.approx(
            float(problem.objective(policy)), abs=1e-12
        )


@pytest.mark.parametrize("N, L, G", [(2, 3, 2), (2, 2, 3)])
def test_enumerated_grpo_update_equals_the_expected_group_gradient_and_is_not_grad_J(N, L, G):
    problem, policy = _vl(N, 3, L)
    out = enumerated_update(problem, policy, grpo(group_size=G, beta=0.04))
    want = expected_group_gradient(problem, policy, G, unbiased=True)
    scale = float(want.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(out["update"], want, atol=1e-12 * scale, rtol=0)
    assert abs(out["loss"]) < 1e-12
    grad_J = problem.gradient(policy)
    cos = _cos(out["update"], grad_J)
    assert cos < 0.995  # measured 0.964 (L=3) and 0.989 (L=2): the update is not along grad J
    # Dr.GRPO (no std, token sums): exactly (G-1)/G grad J
    drg = grpo(name="drg", group_size=G, beta=0.0, scale=None, aggregation="seq-mean-token-sum")
    d = enumerated_update(problem, policy, drg)["update"]
    torch.testing.assert_close(d, (G - 1) / G * grad_J, atol=1e-12 * float(grad_J.abs().max()), rtol=0)


def test_enumerated_grpo_update_with_a_reference_adds_the_k3_gradient():
    # with a reference other than the policy, E[loss] = beta * sum_x rho sum_y p(y) (1/|y|) sum_t k3_t (the policy
    # term still averages to 0) and the update gains -beta times its gradient with the sampling weights p(y) held
    # fixed (the loss is differentiated, not the sampling distribution)
    problem, policy = _vl(2, 3, 3)
    _, reference = _vl(2, 3, 3, seed=9)
    beta = 0.5
    out = enumerated_update(problem, policy, grpo(group_size=2, beta=beta), reference=reference)
    logp = problem.token_log_probs(policy)
    with torch.no_grad():
        ref = problem.token_log_probs(reference)
    m = problem.mask.to(F64)
    x = ref - logp
    k3 = (torch.exp(x) - x - 1) * m
    p_fixed = logp.detach().sum(-1).exp()
    kl = (problem.prompt_probs.to(F64) * (p_fixed * k3.sum(-1) / m.sum(-1)).sum(-1)).sum()
    assert float(kl.detach()) > 0.1
    assert out["loss"] == pytest.approx(beta * float(kl.detach()), abs=1e-12)
    want = expected_group_gradient(problem, policy, 2, unbiased=True) - beta * flat_grad(kl, flat_params(policy))
    torch.testing.assert_close(out["update"], want, atol=1e-12 * float(want.abs().max()), rtol=0)
    # negative control: the KL term moves the update
    assert (out["update"] - expected_group_gradient(problem, policy, 2, unbiased=True)).norm() > 0.01


def test_expected_group_gradient_for_binary_rewards_is_the_gradient_of_the_binary_objective():
    problem, _ = target_sequence_task(2, 2, 2, reward="exact_match")
    policy = TabularPolicy(2, 2, 2, init_scale=1.0, generator=torch.Generator().manual_seed(4)).double()
    grad_J = problem.gradient(policy)
    with torch.no_grad():
        p_now = (problem.probs(policy) * (problem.rewards == 1).to(F64)).sum(-1)
    assert float(p_now[1] - p_now[0]) > 0.2  # two prompts of different difficulty (0.027 and 0.266)
    for G in (2, 3, 4, 8):
        for scale, unbiased in (("std", False), ("std", True), (None, False)):
            got = expected_group_gradient(problem, policy, G, scale=scale, unbiased=unbiased, length_norm=False)
            p = (problem.probs(policy) * (problem.rewards == 1).to(F64)).sum(-1)  # (N,) success probabilities
            obj = (problem.prompt_probs.to(F64) * binary_objective(p, G, scale=scale, unbiased=unbiased)).sum()
            want = flat_grad(obj, flat_params(policy))
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            # tabular parameters are per prompt: prompt x's block of the update is w_G(p_x) times its block of grad J
            w = binary_weight(p_now, G, scale=scale, unbiased=unbiased)
            torch.testing.assert_close(got.reshape(2, -1), w.unsqueeze(1) * grad_J.reshape(2, -1), atol=1e-12, rtol=0)
            if scale is None:
                torch.testing.assert_close(got, (G - 1) / G * grad_J, atol=1e-12, rtol=0)
            elif G <= 3:
                # a mixed group of 2 or 3 has one std whatever its composition, so w is constant: along grad J
                assert float(w[1] / w[0]) == pytest.approx(1.0, abs=1e-12)
            else:
                # the std reweights the prompts by difficulty: w differs by 4.6 % (G = 4) and 21 % (G = 8)
                assert float(w[1] / w[0]) < 0.96


def test_group_exact_rejects_bad_input():
    problem, policy = _vl(2, 3, 2)
    # an incomplete enumeration: drop two completions, so the probabilities no longer sum to 1
    keep = torch.arange(2, problem.num_completions)
    partial = ExactProblem(problem.prompts, problem.prompt_probs, problem.completions[keep], problem.mask[keep],
                           problem.rewards[:, keep])  # fmt: skip
    with pytest.raises(ValueError, match="enumeration must cover"):
        implied_weights(partial, policy, 2)
    with pytest.raises(ValueError, match="enumeration must cover"):
        expected_group_gradient(partial, policy, 2)
    per_step, _ = target_sequence_task(2, 2, 2, reward="per_step")
    tab = TabularPolicy(2, 2, 2).double()
    with pytest.raises(ValueError, match="terminal rewards"):
        implied_weights(per_step, tab, 2)
    with pytest.raises(ValueError, match="terminal rewards"):
        enumerated_update(per_step, tab, "grpo", 2)
    for G, match in ((1, "group_size >= 2"), (0, "group_size"), (2.5, "group_size")):
        with pytest.raises(ValueError, match=match):
            implied_weights(problem, policy, G)
        with pytest.raises(ValueError, match=match):
            conditional_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), G)
        with pytest.raises(ValueError, match=match):
            binary_weight(0.5, G)
    with pytest.raises(ValueError, match="scale"):
        binary_objective(0.5, 3, scale="max")
    with pytest.raises(ValueError, match="sum to 1"):
        conditional_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.4]), 2)
    with pytest.raises(ValueError, match="one shape"):
        conditional_advantages(torch.tensor([0.0, 1.0]), torch.tensor([1.0]), 2)
    with pytest.raises(ValueError, match="p must hold"):
        binary_weight(torch.tensor([0.5, -0.1]), 3)
    with pytest.raises(ValueError, match="ExactProblem"):
        implied_weights("problem", policy, 2)
    with pytest.raises(ValueError, match="weights must have shape"):
        implied_surrogate(problem, policy, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="critic"):
        enumerated_update(problem, policy, rlhf_ppo(), 2)
    with pytest.raises(ValueError, match="MAX_GROUPS"):
        enumerated_update(problem, policy, "grpo", 8)  # 2 x 7^8 groups
    assert 2 * 7**8 > MAX_GROUPS


# ---- variable_length_task -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N, V, L, lengths", [(3, 3, 4, None), (2, 4, 3, [2, 1]), (4, 2, 5, [4, 1, 3, 2])])
def test_variable_length_task_has_one_correct_completion_of_the_right_length(N, V, L, lengths):
    problem, answers = variable_length_task(N, V, L, answer_lengths=lengths, seed=2)
    want_lengths = lengths if lengths is not None else [1 + x % (L - 1) for x in range(N)]
    assert answers.shape == (N, L)
    R = problem.rewards
    assert set(R.unique().tolist()) <= {0.0, 1.0}
    assert (R.sum(-1) == 1).all()
    for x in range(N):
        k = int(R[x].argmax())
        n = want_lengths[x]
        y = problem.completions[k]
        assert int(problem.mask[k].sum()) == n + 1  # the answer's tokens then EOS
        assert int(y[n]) == 0 and (y[:n] != 0).all() and (y[:n] < V).all()
        assert torch.equal(y, answers[x]) and (answers[x, n:] == 0).all()
    # wrong answers come in every length 1..L
    assert set(problem.mask.sum(-1).long().tolist()) == set(range(1, L + 1))
    # the enumeration is complete for TabularPolicy(..., eos=0): probabilities sum to 1 per prompt
    policy = TabularPolicy(N, V, L, eos=0, init_scale=1.0, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        torch.testing.assert_close(problem.probs(policy).sum(-1), torch.ones(N, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((2, 1, 3), {}, "vocab_size"),
        ((2, 3, 1), {}, "max_len"),
        ((0, 3, 3), {}, "num_prompts"),
        ((2, 3, 3), {"answer_lengths": [1]}, "answer_lengths"),
        ((2, 3, 3), {"answer_lengths": [1, 3]}, "answer length"),
        ((2, 3, 3), {"answer_lengths": [0, 1]}, "answer length"),
        ((2, 3, 3), {"answer_lengths": [True, 1]}, "answer length"),
        ((2, 3, 3), {"answer_lengths": [1.0, 1]}, "answer length"),
        ((2, 3, 3), {"answer_lengths": "11"}, "answer_lengths"),
    ],
)
def test_variable_length_task_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        variable_length_task(*args, **kwargs)


# ---- success_probabilities ------------------------------------------------------------------------------------------


def _addition_problems(task):
    space = task.problem_space()
    return [space[7 * 100 + 2], space[45 * 100 + 30], space[99 * 100 + 99]]  # answers "9", "75", "198"


def test_success_probabilities_match_the_enumeration_and_a_hand_softmax(tiny_gpt):
    task = make_task("addition")
    problems = _addition_problems(task)
    assert [p.answer for p in problems] == ["9", "75", "198"]
    model = tiny_gpt(task, seed=0, init_std=0.3).double()
    model.train()
    got = success_probabilities(model, task, problems)
    assert model.training  # the mode is restored
    assert got.dtype == F64 and got.shape == (3,)
    ep = exact_problem(task, problems, allowed_tokens=["1", "5", "7", "8", "9"])
    with torch.no_grad():
        want = (ep.probs(model) * (ep.rewards == 1).to(F64)).sum(-1)
    assert (ep.rewards.sum(-1) == 1).all()
    torch.testing.assert_close(got, want, atol=0, rtol=1e-10)
    assert (want > 1e-8).all()
    # chunking does not matter
    torch.testing.assert_close(success_probabilities(model, task, problems, batch_size=1), got, atol=0, rtol=1e-10)
    # temperature 2: the product of softmax(logits / 2) at the answer's tokens, written out
    hot = success_probabilities(model, task, problems, temperature=2.0)
    tok = task.tokenizer
    for i, p in enumerate(problems):
        ids = tok.encode(p.answer, eos=True)
        prompt = task.encode_prompts([p])
        completion = torch.tensor([ids + [tok.eos_id] * (task.max_new_tokens - len(ids))])
        with torch.no_grad():
            logits = model(prompt, completion)[0].double()
        prob = 1.0
        for t, a in enumerate(ids):
            z = logits[t] / 2.0
            e = torch.exp(z - z.max())
            prob *= float(e[a] / e.sum())
        assert float(hot[i]) == pytest.approx(prob, rel=1e-10)
    assert ((hot - got).abs() / got > 0.05).all()  # negative control: the temperature matters


def test_success_probabilities_rejects_bad_input(tiny_gpt):
    task = make_task("addition")
    problems = _addition_problems(task)
    model = tiny_gpt(task)
    for t in (0, -1.0, True, "1"):
        with pytest.raises(ValueError, match="temperature"):
            success_probabilities(model, task, problems, temperature=t)
    with pytest.raises(ValueError, match="task must be a Task"):
        success_probabilities(model, "addition", problems)
    with pytest.raises(ValueError, match="policy must be"):
        success_probabilities(lambda p, c: None, task, problems)
    with pytest.raises(ValueError, match="problems"):
        success_probabilities(model, task, [])
    with pytest.raises(ValueError, match="single Problem"):
        success_probabilities(model, task, Problem("07+02=", "9"))
    with pytest.raises(ValueError, match="batch_size"):
        success_probabilities(model, task, problems, batch_size=0)
