"""The framework entries of the registry: every method has one per framework, settings as data, the table.

These run without TRL or verl; tests/parity runs the frameworks' code with these settings.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import policygrad as pg
from policygrad.methods import (
    FRAMEWORKS,
    METHODS,
    Recipe,
    Unsupported,
    framework_details,
    frameworks_table,
    grpo,
    hydra_value,
    recipe,
    rlhf_ppo,
    to_trl,
    to_verl,
)

ROOT = Path(__file__).resolve().parents[1]


def _parity_tests() -> set[str]:
    """``"tests/parity/file.py::test_name"`` for every test function in tests/parity."""
    out = set()
    for path in (ROOT / "tests" / "parity").glob("test_*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                out.add(f"tests/parity/{path.name}::{node.name}")
    return out


def test_every_registered_method_has_an_entry_per_framework():
    for m in METHODS.values():
        for fw in FRAMEWORKS:
            entry = getattr(m, fw)
            assert isinstance(entry, (Recipe, Unsupported)), f"{m.name} has no {fw} entry"
            assert entry.framework == fw


def test_every_parity_reference_names_an_existing_test():
    tests = _parity_tests()
    variants = [grpo(name=f"g{i}", aggregation=a) for i, a in enumerate(pg.trajectory_side.AGGREGATIONS)]
    for m in [*METHODS.values(), *variants, rlhf_ppo(whiten_advantages=False)]:
        for fw in FRAMEWORKS:
            entry = getattr(m, fw)
            if isinstance(entry, Recipe):
                missing = set(entry.parity) - tests
                assert not missing, f"{m.name}/{fw} cites parity tests that do not exist: {sorted(missing)}"


def test_to_trl_returns_a_copy_and_maps_the_options():
    kw = to_trl("grpo")
    assert kw["loss_type"] == "grpo" and kw["beta"] == 0.04 and kw["num_generations"] == 8
    kw["beta"] = 1.0
    assert to_trl("grpo")["beta"] == 0.04  # the registry is not changed through the returned dict
    expected = {
        "seq-mean-token-mean": "grpo",
        "token-mean": "dapo",
        "seq-mean-token-sum-norm": "dr_grpo",
        "seq-mean-token-sum": "luspo",
    }
    for aggregation, loss_type in expected.items():
        assert to_trl(grpo(aggregation=aggregation))["loss_type"] == loss_type
    variant = grpo(group_size=4, beta=0.0, eps=0.3, scale=None, inner_epochs=2, minibatches=2)
    kw = to_trl(variant)
    assert (kw["num_generations"], kw["beta"], kw["epsilon"], kw["epsilon_high"]) == (4, 0.0, 0.3, 0.3)
    assert (kw["scale_rewards"], kw["num_iterations"], kw["steps_per_generation"]) == ("none", 2, 2)


def test_differences_follow_the_options():
    assert any("1e-4" in d for d in recipe("grpo", "trl").differences)
    assert not any("1e-4" in d for d in recipe(grpo(adv_eps=1e-4), "trl").differences)
    assert any("Bessel" in d for d in recipe(grpo(unbiased=False), "trl").differences)
    assert any("Bessel" in d for d in recipe(grpo(unbiased=False), "verl").differences)
    assert not any("1e-6" in d for d in recipe("grpo", "verl").differences)
    assert not any("non-empty" in d for d in recipe(grpo(aggregation="token-mean"), "verl").differences)


@pytest.mark.parametrize(
    ("method", "framework", "match"),
    [
        (grpo(aggregation="token-sum"), "trl", "token-sum"),
        (grpo(kl_kind="k2"), "trl", "k3 estimator only"),
        ("ppo_rlhf", "trl", "critic"),
        ("reinforce_baseline", "verl", "leave-one-out baseline over the whole batch"),
        ("reinforce", "trl", "group mean"),
        (rlhf_ppo(whiten_advantages=False), "verl", "whitens"),
    ],
)
def test_unsupported_raises_with_the_reason(method, framework, match):
    convert = {"trl": to_trl, "verl": to_verl}[framework]
    with pytest.raises(ValueError, match=match):
        convert(method)


def test_to_verl_writes_hydra_overrides():
    overrides = to_verl("grpo")
    assert "algorithm.adv_estimator=grpo" in overrides
    assert "actor_rollout_ref.actor.use_kl_loss=true" in overrides
    assert "actor_rollout_ref.actor.kl_loss_type=low_var_kl" in overrides
    assert all(re.fullmatch(r"[a-z_][a-z0-9_.]*=[^\s=]+", o) for o in overrides), overrides
    off = to_verl(grpo(beta=0.0, kl_kind="k1"))
    assert "actor_rollout_ref.actor.use_kl_loss=false" in off
    assert (hydra_value(True), hydra_value(None), hydra_value(0.2), hydra_value("x")) == ("true", "null", "0.2", "x")
    with pytest.raises(ValueError, match="Hydra"):
        hydra_value([1, 2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"framework": "deepspeed"}, "framework"),
        ({"trainer": ""}, "trainer"),
        ({"settings": [("a", 1)]}, "dict"),
        ({"settings": {"bad key": 1}}, "setting names"),
        ({"settings": {"a": [1]}}, "must be None, a bool"),
        ({"differences": "one string"}, "tuple of non-empty strings"),
        ({"parity": ("",)}, "tuple of non-empty strings"),
    ],
)
def test_recipe_rejects_bad_input(kwargs, match):
    base = {"framework": "trl", "trainer": "trl.GRPOTrainer", "settings": {}}
    with pytest.raises(ValueError, match=match):
        Recipe(**{**base, **kwargs})


def test_unsupported_and_method_reject_bad_input():
    with pytest.raises(ValueError, match="reason"):
        Unsupported("trl", "")
    with pytest.raises(ValueError, match="framework"):
        Unsupported("jax", "no")
    good = Unsupported("verl", "no")
    with pytest.raises(ValueError, match="for framework 'trl'"):
        pg.methods.Method(name="m", title="t", advantages=len, loss=len, trl=good)
    with pytest.raises(ValueError, match="for framework 'verl'"):
        pg.methods.Method(name="m", title="t", advantages=len, loss=len, verl="adv_estimator=grpo")
    for bad in (None, 3, "nope"):
        with pytest.raises(ValueError):
            recipe("grpo", bad)
    with pytest.raises(ValueError, match="unknown method"):
        to_trl("no_such_method")


def test_table_and_details_cover_every_method():
    table = frameworks_table()
    lines = table.splitlines()
    assert lines[0] == "| method | TRL 1.16 | verl 0.9 |"
    assert [ln.split("|")[1].strip(" `") for ln in lines[2:]] == list(METHODS)
    assert "`GRPOTrainer (loss_type=grpo)`, checked" in table
    details = framework_details("grpo")
    assert "loss_type='grpo'," in details and "algorithm.adv_estimator=grpo" in details
    assert "not expressible" in framework_details("ppo_rlhf")


def test_readme_shows_the_current_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- frameworks-table:start -->\n(.*?)\n<!-- frameworks-table:end -->", text, re.S)
    assert m, "README.md lacks the frameworks-table markers"
    assert m.group(1) == frameworks_table(), "README's table is stale: paste pg.methods.frameworks_table()"
