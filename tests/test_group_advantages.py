"""Tests for reward_side.group_advantages (GRPO / Dr.GRPO group baselines): hand values, zero-sum groups,
the zero-variance guard, biased vs unbiased std, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from policygrad.reward_side import group_advantages

F64 = torch.float64


def test_hand_values_for_one_group_of_four():
    R = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=F64)  # groups [1,0,0,1] and [0,1,1,1]
    # group 1: mean 0.5, population std 0.5 -> +-1; group 2: mean 0.75, std sqrt(3)/4
    A = group_advantages(R, 4, eps=0.0, unbiased=False)  # the default is unbiased=True (TRL, verl)
    s2 = math.sqrt(3) / 4
    want = torch.tensor([1, -1, -1, 1, -0.75 / s2, 0.25 / s2, 0.25 / s2, 0.25 / s2], dtype=F64)
    torch.testing.assert_close(A, want, atol=1e-12, rtol=0)
    # unbiased std: sqrt(G / (G - 1)) larger, so the advantages shrink by sqrt((G - 1) / G)
    torch.testing.assert_close(group_advantages(R, 4, eps=0.0, unbiased=True), want * math.sqrt(3 / 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(group_advantages(R, 4, eps=0.0), want * math.sqrt(3 / 4), atol=1e-12, rtol=0)
    # no scaling (Dr.GRPO): the centred rewards
    torch.testing.assert_close(group_advantages(R, 4, scale=None), R - torch.tensor([0.5] * 4 + [0.75] * 4, dtype=F64),
                               atol=1e-12, rtol=0)  # fmt: skip
    # eps enters the denominator
    torch.testing.assert_close(group_advantages(R[:4], 4, eps=0.5, unbiased=False),
                               torch.tensor([0.5, -0.5, -0.5, 0.5], dtype=F64), atol=1e-12, rtol=0)  # fmt: skip


@pytest.mark.parametrize("scale", ["std", None])
def test_groups_sum_to_zero_and_constant_groups_are_exactly_zero(scale):
    g = torch.Generator().manual_seed(0)
    R = torch.rand(6 * 5, generator=g, dtype=F64)
    R[5:10] = 0.1  # a constant group whose mean is not exactly 0.1 in floating point
    R[20:25] = 0.0
    A = group_advantages(R, 5, scale=scale)
    assert torch.isfinite(A).all()
    torch.testing.assert_close(A.reshape(6, 5).sum(1), torch.zeros(6, dtype=F64), atol=1e-12, rtol=0)
    assert torch.equal(A[5:10], torch.zeros(5, dtype=F64)) and torch.equal(A[20:25], torch.zeros(5, dtype=F64))
    assert (A[:5] != 0).all()  # negative control: a group with signal keeps it


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rewards": torch.ones(6), "group_size": 4}, "does not divide"),
        ({"rewards": torch.ones(4), "group_size": 1}, "group_size >= 2"),
        ({"rewards": torch.ones(4), "group_size": 0}, "group_size"),
        ({"rewards": torch.tensor([0.0, float("nan")]), "group_size": 2}, "NaN"),
        ({"rewards": torch.ones(2, 2), "group_size": 2}, "dimension"),
        ({"rewards": torch.ones(4, dtype=torch.long), "group_size": 2}, "floating-point"),
        ({"rewards": torch.ones(0), "group_size": 2}, "does not divide"),
        ({"rewards": torch.ones(4), "group_size": 2, "scale": "max"}, "scale"),
        ({"rewards": torch.ones(4), "group_size": 2, "eps": -1.0}, "eps"),
        ({"rewards": torch.ones(4), "group_size": 2, "unbiased": 1}, "unbiased"),
    ],
)
def test_group_advantages_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(**kwargs)
