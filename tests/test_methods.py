"""Tests for policygrad.methods: the method registry, its metadata, and the REINFORCE recipes.

The estimators are checked for *exact* unbiasedness: on a TinyGPT small enough to enumerate every
(prompt, completion) pair, the expectation of the estimator's gradient is a finite weighted sum, computed
in float64 and compared with the exact :math:`-\\nabla J` from :class:`policygrad.ExactProblem`.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch

import policygrad as pg
from policygrad.exact import flat_grad, flat_params
from policygrad.methods import (
    METHODS,
    SIDES,
    Method,
    Recipe,
    batch_loo_advantages,
    get_method,
    method_names,
    methods_table,
    register,
    reinforce_advantages,
    reinforce_loss,
)
from policygrad.rollout import RolloutBatch
from policygrad.trajectory_side import token_log_probs

BOOK = Path(__file__).resolve().parents[1] / "book"


@pytest.fixture
def registry():
    """Leave the global registry exactly as it was (same entries, same order) whatever the test registers."""
    saved = dict(METHODS)
    yield METHODS
    METHODS.clear()
    METHODS.update(saved)


def _method(name="test_dummy", **kw):
    base = {"title": "A test method", "advantages": reinforce_advantages, "loss": reinforce_loss}
    return Method(name=name, **{**base, **kw})


# -- the registry ---------------------------------------------------------------------------------------------


def test_builtin_methods_are_registered_in_order():
    names = method_names()
    assert names[:2] == ["reinforce", "reinforce_baseline"]
    assert names == list(METHODS)
    assert get_method("reinforce") is METHODS["reinforce"]
    m = get_method("reinforce_baseline")
    assert get_method(m) is m  # a Method is returned as is


def test_register_rejects_duplicates_unless_replace(registry):
    before = method_names()
    m = register(_method())
    assert m is registry["test_dummy"] and method_names() == before + ["test_dummy"]
    with pytest.raises(ValueError, match="already registered"):
        register(_method(title="another"))
    assert registry["test_dummy"] is m  # unchanged by the failed attempt
    with pytest.raises(ValueError, match="already registered"):
        register(_method(name="reinforce"))
    assert registry["reinforce"].advantages is reinforce_advantages
    m2 = register(_method(group_size=4), replace=True)
    assert registry["test_dummy"] is m2 and get_method("test_dummy").group_size == 4
    assert method_names() == before + ["test_dummy"]  # replaced in place, not appended twice
    with pytest.raises(ValueError, match="expected a Method"):
        register("test_dummy")


def test_registry_fixture_restores_the_global_registry():
    # runs after test_register_rejects_duplicates_unless_replace in file order: nothing leaked
    assert "test_dummy" not in METHODS
    assert METHODS["reinforce"].advantages is reinforce_advantages


def test_unknown_method_lists_the_registered_names():
    with pytest.raises(ValueError, match="unknown method 'nope'") as err:
        get_method("nope")
    for name in method_names():
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown method"):
        get_method(None)


def test_get_method_rejects_unhashable_input_with_value_error():
    with pytest.raises(ValueError, match="unknown method"):
        get_method(["reinforce"])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "two words"}, "identifier"),
        ({"name": ""}, "identifier"),
        ({"name": "3rd"}, "identifier"),
        ({"name": 3}, "identifier"),
        ({"advantages": None}, "callables"),
        ({"loss": "reinforce_loss"}, "callables"),
        ({"changes": ("value",)}, "changes"),
        ({"changes": ("reward", "reward")}, "changes"),
        ({"changes": "reward"}, "changes"),  # a string is not a tuple of sides
        ({"group_size": 0}, "group_size"),
        ({"group_size": True}, "group_size"),
        ({"inner_epochs": -1}, "inner_epochs"),
        ({"minibatches": 1.5}, "minibatches"),
        ({"minibatches": 0}, "minibatches"),
    ],
)
def test_method_validation(kw, match):
    base = {"name": "ok_name", "title": "t", "advantages": reinforce_advantages, "loss": reinforce_loss}
    with pytest.raises(ValueError, match=match):
        Method(**{**base, **kw})


def test_method_accepts_both_sides():
    m = _method(changes=("trajectory", "reward"), group_size=8, inner_epochs=2, minibatches=4)
    assert set(m.changes) == set(SIDES) and (m.group_size, m.inner_epochs, m.minibatches) == (8, 2, 4)


def test_methods_table_has_one_row_per_method(registry):
    trl = Recipe("trl", "trl.RLOOTrainer", {"num_generations": 4})
    register(_method(changes=("reward", "trajectory"), paper="williams1992", trl=trl, verl=None))
    rows = methods_table()
    assert [r["method"] for r in rows] == method_names()
    for r in rows:
        assert set(r) == {"method", "title", "changes", "paper", "trl", "verl"}
    by = {r["method"]: r for r in rows}
    assert by["reinforce"] == {
        "method": "reinforce",
        "title": "REINFORCE",
        "changes": "—",
        "paper": "williams1992",
        "trl": "—",
        "verl": "adv_estimator=rloo",
    }
    assert by["reinforce_baseline"]["changes"] == "reward"
    assert by["test_dummy"]["changes"] == "reward, trajectory"
    assert by["test_dummy"]["trl"] == "RLOOTrainer" and by["test_dummy"]["verl"] == "—"
    assert by["grpo"]["trl"] == "GRPOTrainer (loss_type=grpo)" and by["grpo"]["verl"] == "adv_estimator=grpo"


def _bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", (BOOK / "references.bib").read_text(encoding="utf-8"), re.M))


def _labels() -> set[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in BOOK.glob("*.md"))
    return set(re.findall(r"^\(([\w-]+)\)=\s*$", text, re.M))


#: Methods registered before the chapter that derives them is written (their ``section`` is still empty).
#: Remove a name from here when its chapter lands; the test then requires its label.
CHAPTER_PENDING: set[str] = set()  # methods registered before their chapter exists


def test_registered_methods_have_metadata_that_resolves_in_the_book():
    keys, labels = _bib_keys(), _labels()
    assert "williams1992" in keys and "sec-reinforce-estimator" in labels  # the parsers work
    for name in ("reinforce", "reinforce_baseline"):
        assert name in METHODS
    for m in METHODS.values():
        assert m.title and m.why and m.unsolved, m.name
        assert m.paper in keys, f"{m.name}: paper {m.paper!r} not in references.bib"
        if m.name in CHAPTER_PENDING:
            assert m.section == "", f"{m.name} has a section now: remove it from CHAPTER_PENDING"
        else:
            assert m.section in labels, f"{m.name}: section {m.section!r} is not a label in book/*.md"
        assert set(m.changes) <= set(SIDES)
    r, rb = METHODS["reinforce"], METHODS["reinforce_baseline"]
    assert r.changes == () and rb.changes == ("reward",)
    assert r.advantages is reinforce_advantages and rb.advantages is batch_loo_advantages
    assert r.loss is reinforce_loss and rb.loss is reinforce_loss
    for m in (r, rb):
        assert (m.group_size, m.inner_epochs, m.minibatches, m.needs_reference) == (1, 1, 1, False)


# -- the recipes on a hand-made batch ------------------------------------------------------------------------


def _batch(rewards, mask, loss_mask=None, group_ids=None):
    B, T = mask.shape
    return RolloutBatch(
        prompts=torch.zeros(B, 1, dtype=torch.long),
        completions=torch.zeros(B, T, dtype=torch.long),
        mask=mask,
        loss_mask=mask if loss_mask is None else loss_mask,
        old_log_probs=torch.zeros(B, T, dtype=mask.dtype),
        ref_log_probs=None,
        rewards=rewards,
        group_ids=torch.arange(B) if group_ids is None else group_ids,
        truncated=torch.zeros(B, dtype=torch.bool),
    )


def test_reinforce_and_loo_advantages_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss_mask = mask.clone()
    loss_mask[0, 0] = 0.0  # a token the policy did not choose gets no weight
    R = torch.tensor([1.0, 0.0, 3.0, 2.0])
    b = _batch(R, mask, loss_mask)
    adv = reinforce_advantages(b)
    assert torch.equal(adv, R.unsqueeze(1) * loss_mask)
    loo = batch_loo_advantages(b)
    others = torch.tensor([(0 + 3 + 2) / 3, (1 + 3 + 2) / 3, (1 + 0 + 2) / 3, (1 + 0 + 3) / 3])
    torch.testing.assert_close(loo, (R - others).unsqueeze(1) * loss_mask)
    # per-step rewards: the return of a row is their sum, given to every trained token (no reward-to-go)
    step = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]])
    ps = _batch(step, mask, loss_mask)
    torch.testing.assert_close(reinforce_advantages(ps), torch.tensor([1.0, 0.0, 3.0, 2.0]).unsqueeze(1) * loss_mask)
    with pytest.raises(ValueError, match="at least 2"):
        batch_loo_advantages(_batch(R[:1], mask[:1]))


def test_reinforce_loss_by_hand_and_empty_loss_mask():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logp = torch.tensor([[-0.5, -1.0, -7.0], [-2.0, -9.0, -9.0]], requires_grad=True)
    adv = torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
    b = _batch(torch.tensor([2.0, -1.0]), mask)
    loss, stats = reinforce_loss(logp, b, adv)
    assert stats == {}
    # -(1/B) sum_{i,t} m A logp = -((2)(-0.5) + (2)(-1.0) + (-1)(-2.0)) / 2 = 0.5
    torch.testing.assert_close(loss, torch.tensor(0.5))
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * mask / 2)
    empty = _batch(torch.tensor([2.0, -1.0]), mask, loss_mask=torch.zeros(2, 3))
    logp2 = logp.detach().clone().requires_grad_(True)
    loss2, _ = reinforce_loss(logp2, empty, torch.zeros(2, 3))
    assert loss2.item() == 0.0 and loss2.requires_grad
    loss2.backward()
    assert torch.equal(logp2.grad, torch.zeros(2, 3))


# -- exact unbiasedness on an enumerable TinyGPT -------------------------------------------------------------

V, L, EOS = 4, 2, 0


def _enumerable(seed=0):
    """A sharp 1-layer TinyGPT in float64, 2 prompts with a non-uniform rho, every completion, 0/1 rewards."""
    cfg = pg.TinyGPTConfig(vocab_size=V, block_size=6, n_layer=1, n_head=1, n_embd=8, init_std=0.5)
    model = pg.TinyGPT(cfg, generator=torch.Generator().manual_seed(seed)).double()
    comp, mask = pg.enumerate_completions(V, L, eos=EOS)  # K = 1 + 3 + 9 = 13
    prompts = torch.tensor([[1, 2], [3, 1]])
    N, K = prompts.shape[0], comp.shape[0]
    rewards = torch.randint(0, 2, (N, K), generator=torch.Generator().manual_seed(seed + 1)).double()
    rho = torch.tensor([0.3, 0.7], dtype=torch.float64)
    problem = pg.ExactProblem(prompts, rho, comp, mask.double(), rewards)
    return model, problem


def _all_items(model, problem):
    """Every (prompt, completion) pair as one row: its log-probs (with gradient), sampling probability, reward."""
    N, K = problem.num_prompts, problem.num_completions
    prompts = problem.prompts.repeat_interleave(K, 0)  # (N*K, P), item i = (i // K, i % K)
    comp = problem.completions.repeat(N, 1)
    mask = problem.mask.repeat(N, 1)
    logp = token_log_probs(model(prompts, comp), comp) * mask  # (N*K, L), differentiable
    with torch.no_grad():
        q = (problem.prompt_probs.unsqueeze(1) * problem.probs(model)).reshape(-1)  # rho(x) p(y|x)
    return prompts, comp, mask, logp, q, problem.rewards.reshape(-1)


def _rows(items, idx, rewards):
    prompts, comp, mask, logp, _, _ = items
    idx = torch.as_tensor(idx)
    batch = RolloutBatch(
        prompts=prompts[idx],
        completions=comp[idx],
        mask=mask[idx],
        loss_mask=mask[idx],
        old_log_probs=logp[idx].detach(),
        ref_log_probs=None,
        rewards=rewards,
        group_ids=torch.arange(len(idx)),
        truncated=~(comp[idx] == EOS).any(-1),
    )
    return batch, logp[idx]


def test_enumerable_problem_is_nondegenerate():
    model, problem = _enumerable()
    with torch.no_grad():
        torch.testing.assert_close(problem.probs(model).sum(-1), torch.ones(2, dtype=torch.float64))
    grad = problem.gradient(model)
    assert grad.norm() > 1e-2  # the identities below are not 0 == 0
    assert 0 < float(problem.rewards.mean()) < 1


def test_reinforce_is_exactly_unbiased():
    model, problem = _enumerable()
    items = _all_items(model, problem)
    q, R = items[4], items[5]
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    expected_loss = 0.0
    for i in range(len(q)):
        batch, logp = _rows(items, [i], R[i : i + 1])
        loss, _ = reinforce_loss(logp, batch, reinforce_advantages(batch))
        expected_loss = expected_loss + q[i] * loss  # E[grad] = grad of the q-weighted sum (q held constant)
    g = flat_grad(expected_loss, flat_params(model))
    torch.testing.assert_close(g, -problem.gradient(model), atol=1e-12, rtol=1e-9)


def _pair_expectation(model, problem, advantages):
    """Exact E over two rows drawn i.i.d. from rho(x) p(y|x) of the gradient of reinforce_loss with ``advantages``."""
    items = _all_items(model, problem)
    q, R = items[4], items[5]
    total = 0.0
    for a, b in itertools.product(range(len(q)), repeat=2):
        batch, logp = _rows(items, [a, b], R[[a, b]])
        loss, _ = reinforce_loss(logp, batch, advantages(batch))
        total = total + q[a] * q[b] * loss
    return flat_grad(total, flat_params(model))


def test_batch_leave_one_out_baseline_is_exactly_unbiased():
    model, problem = _enumerable()
    g = _pair_expectation(model, problem, batch_loo_advantages)
    torch.testing.assert_close(g, -problem.gradient(model), atol=1e-12, rtol=1e-9)


def test_baseline_that_includes_the_sample_is_biased_by_the_predicted_factor():
    """Negative control: b_i = mean of the batch *including* row i shrinks the expectation by (B - 1) / B."""

    def mean_including_self(batch):
        R = batch.sequence_rewards
        return (R - R.mean()).unsqueeze(1) * batch.loss_mask

    model, problem = _enumerable()
    B = 2
    g = _pair_expectation(model, problem, mean_including_self)
    exact = -problem.gradient(model)
    torch.testing.assert_close(g, (B - 1) / B * exact, atol=1e-12, rtol=1e-9)
    assert (g - exact).norm() > 0.4 * exact.norm()  # far from unbiased: the control can fail the test above
