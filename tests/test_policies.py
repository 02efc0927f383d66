"""Tests for policygrad.policies: per-token log-probs and entropies, and the tabular softmax policy."""

import math

import pytest
import torch

import policygrad as pg
from policygrad.toy import TabularPolicy
from policygrad.trajectory_side import (
    sequence_log_probs,
    token_entropy,
    token_log_probs,
)


def _problem(policy: TabularPolicy) -> pg.ExactProblem:
    """All completions of the policy's shape, every prompt equally likely, zero rewards."""
    comp, mask = pg.enumerate_completions(policy.vocab_size, policy.max_len, eos=policy.eos)
    N = policy.num_prompts
    return pg.ExactProblem(
        prompts=torch.arange(N),
        prompt_probs=torch.full((N,), 1.0 / N),
        completions=comp,
        mask=mask,
        rewards=torch.zeros(N, comp.shape[0]),
    )


# -- token_log_probs / token_entropy / sequence_log_probs -----------------------------------------------


def test_token_log_probs_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 5, generator=g)
    tokens = torch.randint(0, 5, (3, 4), generator=g)
    got = token_log_probs(logits, tokens)
    assert got.shape == (3, 4)
    for b in range(3):
        for t in range(4):
            z = logits[b, t]
            want = z[tokens[b, t]].item() - math.log(sum(math.exp(v) for v in z.tolist()))
            assert got[b, t].item() == pytest.approx(want, abs=1e-5)


def test_token_log_probs_rejects_bad_inputs():
    logits = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="disagree"):
        token_log_probs(logits, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="dimension"):
        token_log_probs(torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dimension"):
        token_log_probs(logits, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        token_log_probs(logits, torch.full((2, 3), 4))
    with pytest.raises(ValueError, match="vocabulary"):
        token_log_probs(logits, torch.full((2, 3), -1))
    with pytest.raises(ValueError, match="torch.Tensor"):
        token_log_probs(logits.tolist(), torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("V", [2, 3, 7])
def test_token_entropy_uniform_is_log_v(V):
    ent = token_entropy(torch.full((2, 3, V), 0.3))
    assert ent.shape == (2, 3)
    assert torch.allclose(ent, torch.full((2, 3), math.log(V)), atol=1e-6)


def test_token_entropy_matches_hand_computation_and_is_zero_when_peaked():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities 1/4, 3/4
    want = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert token_entropy(logits).item() == pytest.approx(want, abs=1e-6)
    peaked = torch.tensor([[[0.0, 200.0, 0.0]]])
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        token_entropy(torch.zeros(3, 4))


def test_sequence_log_probs_sums_masked_tokens():
    logp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -0.25, -8.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert torch.equal(sequence_log_probs(logp, mask), torch.tensor([-7.0, -0.75]))
    with pytest.raises(ValueError, match="mask"):
        sequence_log_probs(logp, mask[:, :2])


# -- TabularPolicy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("eos", [None, 0, 2])
def test_probabilities_of_all_completions_sum_to_one(eos):
    pol = TabularPolicy(3, 3, 3, eos=eos, init_scale=1.5, generator=torch.Generator().manual_seed(0))
    prob = _problem(pol)
    p = prob.probs(pol)
    assert p.shape == (3, prob.num_completions)
    assert torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5)
    # and the probability of a completion is the product of per-token softmax probabilities
    k = 5
    x = 1
    y = prob.completions[k]
    want = 1.0
    for t in range(pol.max_len):
        if prob.mask[k, t] == 0:
            break
        logits = pol.logits_table[x, pol.prefix_index(y.unsqueeze(0))[0, t]]
        want *= torch.softmax(logits, -1)[y[t]].item()
    assert p[x, k].item() == pytest.approx(want, rel=1e-5)


def test_parameter_count_and_prefix_index():
    pol = TabularPolicy(2, 3, 3)
    assert pol.num_prefixes == 1 + 3 + 9
    assert pol.logits_table.shape == (2, 13, 3)
    # prefix index of position t is sum_{k<t} V^k + base-V code of y_{<t}
    idx = pol.prefix_index(torch.tensor([[2, 1, 0], [0, 0, 0]]))
    assert idx.tolist() == [[0, 1 + 2, 4 + 2 * 3 + 1], [0, 1, 4]]


@pytest.mark.parametrize("eos", [None, 1])
def test_state_index_is_unique_per_distinct_state(eos):
    pol = TabularPolicy(2, 3, 3, eos=eos)
    comp, mask = pg.enumerate_completions(3, 3)  # every token sequence, so every prefix appears
    prompts = torch.arange(2).repeat_interleave(comp.shape[0])
    comps = comp.repeat(2, 1)
    s = pol.state_index(prompts, comps)
    seen = {}
    for i in range(comps.shape[0]):
        for t in range(3):
            key = (int(prompts[i]), tuple(comps[i, :t].tolist()))
            seen.setdefault(key, set()).add(int(s[i, t]))
    assert all(len(v) == 1 for v in seen.values())  # the same state always gets the same index
    indices = [next(iter(v)) for v in seen.values()]
    assert len(set(indices)) == len(seen) == 2 * pol.num_prefixes  # distinct states, distinct indices
    assert min(indices) == 0 and max(indices) == 2 * pol.num_prefixes - 1


def test_forward_is_causal():
    pol = TabularPolicy(2, 4, 4, init_scale=1.0, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([[1, 2, 3, 0], [3, 3, 1, 2]])
    x = torch.tensor([0, 1])
    base = pol(x, y)
    for t in range(4):
        y2 = y.clone()
        y2[:, t] = (y2[:, t] + 1) % 4
        out = pol(x, y2)
        # logits at positions <= t only depend on y_{<=t-1}: unchanged
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        if t < 3:
            assert not torch.equal(out[:, t + 1], base[:, t + 1])
    # different prompts use different tables
    assert not torch.equal(pol(torch.tensor([1, 0]), y), base)


@pytest.mark.parametrize("eos", [None, 0])
def test_sampling_frequencies_match_exact_probabilities(eos):
    pol = TabularPolicy(2, 3, 2, eos=eos, init_scale=1.0, generator=torch.Generator().manual_seed(5))
    prob = _problem(pol)
    p = prob.probs(pol).detach().double()
    n = 20_000
    for x in range(2):
        s = pol.sample(torch.full((n,), x, dtype=torch.long), generator=torch.Generator().manual_seed(10 + x))
        k = prob.completion_index(s.completions)
        freq = torch.bincount(k, minlength=prob.num_completions).double() / n
        bound = 4 * torch.sqrt(p[x] * (1 - p[x]) / n) + 1e-12
        assert bool(((freq - p[x]).abs() < bound).all()), (freq, p[x])


def test_sampled_log_probs_equal_forward_log_probs():
    pol = TabularPolicy(3, 4, 3, eos=3, init_scale=1.0, generator=torch.Generator().manual_seed(2))
    x = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2])
    s = pol.sample(x, generator=torch.Generator().manual_seed(0))
    want = token_log_probs(pol(s.prompts, s.completions), s.completions) * s.mask
    assert torch.allclose(s.log_probs, want)
    assert not s.log_probs.requires_grad
    assert len(s) == 8 and s.completions.shape == (8, 3)
    assert torch.equal(s.prompts, x)


def test_sampling_with_eos_pads_masks_and_flags_truncation():
    pol = TabularPolicy(1, 3, 4, eos=0)
    # make eos likely enough that all cases occur
    s = pol.sample(torch.zeros(400, dtype=torch.long), generator=torch.Generator().manual_seed(1))
    c, m = s.completions, s.mask
    saw_early_end = False
    for i in range(400):
        row = c[i].tolist()
        if 0 in row:
            j = row.index(0)
            assert all(v == 0 for v in row[j:])  # everything after eos is eos
            assert m[i].tolist() == [1.0] * (j + 1) + [0.0] * (3 - j)  # mask includes the eos
            assert not bool(s.truncated[i])
            assert torch.all(s.log_probs[i, j + 1 :] == 0)
            saw_early_end |= j < 3
        else:
            assert m[i].tolist() == [1.0] * 4
            assert bool(s.truncated[i])
    assert saw_early_end and bool(s.truncated.any()) and not bool(s.truncated.all())
    assert torch.equal(s.lengths, m.sum(-1))
    assert torch.equal(m, pol.completion_mask(c))


def test_sampling_without_eos_is_never_truncated_and_full_mask():
    pol = TabularPolicy(2, 2, 3)
    s = pol.sample(torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.mask, torch.ones(3, 3))
    assert not bool(s.truncated.any())


def test_sampling_is_reproducible_with_a_generator():
    pol = TabularPolicy(2, 3, 3, init_scale=1.0, generator=torch.Generator().manual_seed(0))
    x = torch.tensor([0, 1, 0, 1, 1])
    a = pol.sample(x, generator=torch.Generator().manual_seed(4))
    b = pol.sample(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.completions, b.completions)


def test_init_scale_and_generator():
    a = TabularPolicy(2, 3, 2, init_scale=0.5, generator=torch.Generator().manual_seed(0))
    b = TabularPolicy(2, 3, 2, init_scale=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.logits_table, b.logits_table)
    assert torch.equal(TabularPolicy(2, 3, 2).logits_table, torch.zeros(2, 4, 3))


def test_float64_policy_works():
    pol = TabularPolicy(2, 3, 2, eos=0, init_scale=1.0).double()
    s = pol.sample(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    assert s.log_probs.dtype == torch.float64
    assert pol(s.prompts, s.completions).dtype == torch.float64


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 3, 2), {}, "num_prompts"),
        ((2, 1, 2), {}, "vocab_size"),
        ((2, 3, 0), {}, "max_len"),
        ((2, 3, 1.5), {}, "max_len"),
        ((2, 3, 2), {"eos": 3}, "eos"),
        ((2, 3, 2), {"eos": -1}, "eos"),
        ((1000, 10, 6), {}, "5M"),
    ],
)
def test_constructor_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TabularPolicy(*args, **kwargs)


def test_forward_and_sample_reject_bad_inputs():
    pol = TabularPolicy(2, 3, 2)
    good = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="prompt ids"):
        pol(torch.tensor([2]), good)
    with pytest.raises(ValueError, match="prompt ids"):
        pol(torch.tensor([-1]), good)
    with pytest.raises(ValueError, match="integer"):
        pol(torch.tensor([0.0]), good)
    with pytest.raises(ValueError, match="rows"):
        pol(torch.tensor([0, 1]), good)
    with pytest.raises(ValueError, match="max_len"):
        pol(torch.tensor([0]), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="completion tokens"):
        pol(torch.tensor([0]), torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="dimension"):
        pol(torch.tensor([[0]]), good)
    with pytest.raises(ValueError, match="dimension"):
        pol(torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prompt ids"):
        pol.sample(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="prompt ids"):
        pol.state_index(torch.tensor([3]), good)
