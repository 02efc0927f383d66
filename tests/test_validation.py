"""Input validation of the loaders, device arguments, exact enumerations, exact estimators and toy builders.

Every case here is a caller's mistake that used to crash deep inside torch (TypeError, RuntimeError,
AssertionError), load silently, or give a wrong number; each must now be a ValueError that names what is wrong.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch

import policygrad as pg
from policygrad import diagnostics
from policygrad.exact import (
    ExactProblem,
    conjugate_gradient,
    enumerate_completions,
    gradient_table,
    implied_surrogate,
    kl_constrained_step,
    natural_gradient,
    objective_landscape,
)
from policygrad.exact import group as ge
from policygrad.lm import pretrained
from policygrad.lm.pretrained import checkpoint_path, load_warm_start
from policygrad.lm.tinygpt import KVCache
from policygrad.toy import (
    TabularPolicy,
    contextual_bandit,
    target_sequence_task,
    variable_length_task,
)

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


# -- 1. checkpoints are verified on load ----------------------------------------------------------------------


def _payload() -> dict:
    """The shipped addition checkpoint as a plain dict (read with weights_only, so no code is unpickled)."""
    load_warm_start("addition")  # the shipped file passes its SHA-256 and every check
    return torch.load(checkpoint_path("addition"), map_location="cpu", weights_only=True)


def _save(tmp_path, payload, name="bad.pt"):
    path = tmp_path / name
    torch.save(payload, path)
    return path


def test_an_unmodified_copy_loads_with_path_and_equals_the_shipped_model(tmp_path):
    shipped, meta = load_warm_start("addition")
    model, meta2 = load_warm_start("addition", path=_save(tmp_path, _payload(), "copy.pt"))
    assert meta == meta2 and not model.training
    assert model.head.weight is model.wte.weight
    for (k, a), (k2, b) in zip(shipped.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_payload_that_is_not_a_dict(tmp_path):
    with pytest.raises(ValueError, match="holds a list, not a dict"):
        load_warm_start("addition", path=_save(tmp_path, [1, 2, 3]))


@pytest.mark.parametrize("state", [[1, 2], "weights", None])
def test_state_dict_that_is_not_a_mapping(tmp_path, state):
    payload = _payload()
    payload["state_dict"] = state
    with pytest.raises(ValueError, match="state_dict must be a dict of tensors"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_state_dict_value_that_is_not_a_tensor(tmp_path):
    payload = _payload()
    payload["state_dict"]["ln_f.bias"] = [0.0] * 64
    with pytest.raises(ValueError, match=r"map parameter names to tensors.*'ln_f.bias'"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    payload = _payload()
    state = payload["state_dict"]
    del state["ln_f.weight"], state["blocks.1.mlp.2.bias"]
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="missing keys") as err:
        load_warm_start("addition", path=_save(tmp_path, payload))
    msg = str(err.value)
    assert "'ln_f.weight'" in msg and "'blocks.1.mlp.2.bias'" in msg and "(2 in all)" in msg
    assert "unexpected keys ['extra.weight'] (1 in all)" in msg
    # many missing keys: a few are named, with the count
    payload = _payload()
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if k == "wte.weight"}
    with pytest.raises(ValueError, match=r"missing keys \[.*, \.\.\.\] \(28 in all\)"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path):
    payload = _payload()
    payload["state_dict"]["wpe.weight"] = torch.zeros(12, 64)
    with pytest.raises(ValueError, match=r"state_dict\['wpe.weight'\] has shape \(12, 64\), expected \(11, 64\)"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_non_float_tensor_is_refused(tmp_path):
    payload = _payload()
    payload["state_dict"]["ln_f.bias"] = torch.zeros(64, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'ln_f.bias'\] must be a floating-point tensor"):
        load_warm_start("addition", path=_save(tmp_path, payload))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_tensor(tmp_path, bad):
    payload = _payload()
    payload["state_dict"]["blocks.0.attn.qkv.weight"][3, 5] = bad
    with pytest.raises(ValueError, match=r"state_dict\['blocks.0.attn.qkv.weight'\] contains 1 NaN or infinite"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_untied_head_under_a_tied_config_is_refused(tmp_path):
    payload = _payload()
    state = payload["state_dict"]
    state["head.weight"] = state["wte.weight"].clone() + 1.0  # no longer the same tensor, nor equal
    with pytest.raises(ValueError, match="tie_weights=True but state_dict\\['head.weight'\\] differs"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_unknown_and_missing_config_fields_are_named(tmp_path):
    payload = _payload()
    payload["config"]["dropout"] = 0.1
    with pytest.raises(ValueError, match=r"unknown fields \['dropout'\]"):
        load_warm_start("addition", path=_save(tmp_path, payload))
    payload = _payload()
    del payload["config"]["n_head"]
    with pytest.raises(ValueError, match=r"missing fields \['n_head'\]"):
        load_warm_start("addition", path=_save(tmp_path, payload))
    payload = _payload()
    payload["config"] = [15, 11]
    with pytest.raises(ValueError, match="config must be a dict"):
        load_warm_start("addition", path=_save(tmp_path, payload))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("vocab_size", "15", "vocab_size must be a positive integer"),
        ("n_layer", 0, "n_layer must be a positive integer"),
        ("n_head", 3, "must be divisible by n_head"),
        ("tie_weights", 1, "tie_weights must be True or False"),
        ("init_std", float("nan"), "init_std must be a positive number"),
        ("vocab_size", 16, "does not match the 'addition' tokenizer"),
        ("block_size", 8, "shorter than a 'addition' prompt plus answer"),
    ],
)
def test_config_values_of_the_wrong_type_or_range(tmp_path, field, value, match):
    payload = _payload()
    payload["config"][field] = value
    with pytest.raises(ValueError, match=match):
        load_warm_start("addition", path=_save(tmp_path, payload))


@pytest.mark.parametrize(
    "field, value, match",
    [("steps", -1, "steps must be a positive integer"), ("heldout_accuracy", 1.5, "heldout_accuracy"),
     ("format", 2, "format 2, expected 1")],
)  # fmt: skip
def test_metadata_is_checked(tmp_path, field, value, match):
    payload = _payload()
    payload[field] = value
    with pytest.raises(ValueError, match=match):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_file_that_needs_unpickling_code_is_refused(tmp_path):
    payload = _payload()
    payload["recipe"] = argparse.Namespace(lr=3e-3)  # an object weights_only=True will not rebuild
    with pytest.raises(ValueError, match="needs code to be unpickled"):
        load_warm_start("addition", path=_save(tmp_path, payload))


def test_damaged_shipped_file_fails_its_recorded_sha256(monkeypatch):
    # (tests/test_pretrained.py flips a byte in a copy; here the recorded digest is changed instead)
    monkeypatch.setitem(pretrained.CHECKPOINT_SHA256, "reverse", "0" * 64)
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        load_warm_start("reverse")


@pytest.mark.parametrize("task", [["addition"], None, 3])
def test_task_and_path_of_the_wrong_type(task, tmp_path):
    with pytest.raises(ValueError, match="no warm start for task"):
        load_warm_start(task)
    with pytest.raises(ValueError, match="path must be a str or pathlib.Path"):
        load_warm_start("addition", path=3)


# -- 2. devices -----------------------------------------------------------------------------------------------


@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_gpu_is_a_value_error_everywhere(device):
    cfg = pg.TinyGPTConfig(vocab_size=5, block_size=6, n_layer=1, n_head=1, n_embd=4)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        load_warm_start("addition", device=device)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pg.make_generator(0, device)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pg.get_device(device)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        KVCache(cfg, 2, 4, dtype=torch.float32, device=device)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "", 0, None, True, ["cpu"]])
def test_nonsense_and_non_string_devices(device):
    cfg = pg.TinyGPTConfig(vocab_size=5, block_size=6, n_layer=1, n_head=1, n_embd=4)
    with pytest.raises(ValueError, match="device"):
        load_warm_start("addition", device=device)
    with pytest.raises(ValueError, match="device"):
        KVCache(cfg, 2, 4, dtype=torch.float32, device=device)
    if device is not None:  # get_device(None) means "the default"
        with pytest.raises(ValueError, match="device"):
            pg.get_device(device)
        with pytest.raises(ValueError, match="device"):
            pg.make_generator(0, device)


def test_cpu_devices_still_work():
    model, _ = load_warm_start("addition", device=torch.device("cpu"))
    assert model.wte.weight.device.type == "cpu"
    cache = model.new_cache(2, 4)
    assert cache.layers[0][0].shape == (2, 4, 4, 16) and cache.layers[0][0].dtype == torch.float32


def test_kv_cache_checks_its_config_and_dtype():
    cfg = pg.TinyGPTConfig(vocab_size=5, block_size=6, n_layer=1, n_head=1, n_embd=4)
    with pytest.raises(ValueError, match="config must be a TinyGPTConfig"):
        KVCache({"n_layer": 1}, 2, 4, dtype=torch.float32, device="cpu")
    for dtype in (torch.long, torch.bool, "float32"):
        with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype"):
            KVCache(cfg, 2, 4, dtype=dtype, device="cpu")


# -- 3. ExactProblem, the exact estimators, enumerate_completions, the toys ------------------------------------


def _parts(**change):
    comp, mask = enumerate_completions(3, 2, eos=0)  # 7 completions of up to 2 tokens, padded with eos
    parts = dict(
        prompts=torch.arange(2),
        prompt_probs=torch.tensor([0.25, 0.75]),
        completions=comp,
        mask=mask,
        rewards=torch.zeros(2, comp.shape[0]),
    )
    parts.update(change)
    return parts


def _dup(comp, mask):
    """The enumeration plus one completion listed again with other padding: [eos] (mask [1, 0]) as [eos, 1]."""
    i = int((mask[:, -1] == 0).nonzero()[0])
    extra = comp[i : i + 1].clone()
    extra[0, -1] = 1  # a masked-out position: the same completion
    return torch.cat([comp, extra]), torch.cat([mask, mask[i : i + 1]])


_C, _M = enumerate_completions(3, 2, eos=0)
_DUP_C, _DUP_M = _dup(_C, _M)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"prompt_probs": torch.tensor([0.5, 0.50001])}, "sum to 1, got sum 1.0000"),
        ({"prompt_probs": torch.tensor([1, 0])}, "prompt_probs must be a floating-point tensor"),
        ({"prompt_probs": torch.tensor([1.25, -0.25])}, "prompt_probs must be non-negative.*-0.25"),
        ({"prompt_probs": torch.tensor([float("inf"), 0.0])}, "prompt_probs contains 1 NaN or infinite"),
        ({"prompt_probs": torch.tensor([[0.25, 0.75]])}, "prompt_probs must have 1 dimension"),
        ({"prompts": torch.tensor([0.0, 1.0])}, "prompts must be an integer tensor"),
        ({"prompts": torch.tensor([True, False])}, "prompts must be an integer tensor"),
        ({"prompts": torch.tensor([0, -1])}, "prompts must hold non-negative ids"),
        ({"prompts": torch.zeros(0, dtype=torch.long), "prompt_probs": torch.zeros(0)}, "at least one prompt"),
        ({"completions": _C.float()}, "completions must be an integer tensor"),
        ({"completions": _C - 1}, "completions must hold non-negative ids"),
        ({"completions": _C[:0], "mask": _M[:0], "rewards": torch.zeros(2, 0)}, "at least one completion"),
        ({"completions": torch.cat([_C, _C[:1]]), "mask": torch.cat([_M, _M[:1]]), "rewards": torch.zeros(2, 8)},
         r"completions must be distinct: rows \[0, 7\]"),
        ({"completions": _DUP_C, "mask": _DUP_M, "rewards": torch.zeros(2, 8)}, r"completions must be distinct.*\[0\]"),
        ({"mask": _M * 2}, "mask must contain only 0 and 1"),
        ({"mask": _M.masked_fill(_M == 0, float("nan"))}, "mask must contain only 0 and 1"),
        ({"mask": _M.T}, r"mask must have shape \(7, 2\) \(that of completions\)"),
        ({"mask": _M.tolist()}, "mask must be a torch.Tensor"),
        ({"rewards": torch.zeros(2, 7, dtype=torch.long)}, "rewards must be a floating-point tensor.*pass floats"),
        ({"rewards": torch.zeros(2, 7, dtype=torch.bool)}, "rewards must be a floating-point tensor"),
        ({"rewards": torch.zeros(2, 7, 3)}, "rewards must have shape"),
        ({"rewards": torch.full((2, 7), float("-inf"))}, "rewards contains 14 NaN or infinite"),
    ],
)  # fmt: skip
def test_exact_problem_refuses_bad_fields(change, match):
    with pytest.raises(ValueError, match=match):
        ExactProblem(**_parts(**change))


def test_exact_problem_accepts_what_it_did_before():
    ExactProblem(**_parts())
    ExactProblem(**_parts(mask=_M.bool()))  # a bool mask
    ExactProblem(**_parts(prompt_probs=torch.tensor([0.25, 0.75 + 5e-7])))  # within the tolerance
    ExactProblem(**_parts(prompts=torch.tensor([[3, 1], [3, 1]])))  # token prompts (the same prompt twice is fine)
    # completions that share tokens but differ in length are distinct: [1, 2] and [1, eos] (mask [1, 0])
    prob = ExactProblem(**_parts())
    assert prob.with_rewards(torch.ones(2, 7, 2), gamma=0.5).per_step
    with pytest.raises(ValueError, match="rewards must be a floating-point tensor"):
        prob.with_rewards(torch.ones(2, 7, dtype=torch.long))


def _toy():
    prob, _ = target_sequence_task(2, 3, 2, reward="fraction", seed=0)
    pol = TabularPolicy(2, 3, 2, init_scale=0.5, generator=torch.Generator().manual_seed(1))
    return prob, pol


def test_exact_methods_refuse_bad_weights_and_policies():
    prob, pol = _toy()
    N, K, L = 2, 9, 2
    with pytest.raises(ValueError, match="weights must be a floating-point tensor.*pass floats"):
        prob.estimator_moments(pol, torch.ones(N, K, dtype=torch.long))
    with pytest.raises(ValueError, match="weights must have shape"):
        prob.estimator_moments(pol, torch.ones(N, K + 1))
    with pytest.raises(ValueError, match="weights contains 1 NaN"):
        prob.estimator_moments(pol, torch.ones(N, K, L).index_put_((torch.tensor(0),) * 3, torch.tensor(math.nan)))
    with pytest.raises(ValueError, match="weights must have shape"):
        diagnostics.exact_bias_variance(prob, pol, torch.ones(K, N))
    for call in (prob.objective, prob.probs, prob.fisher, prob.values, lambda p: prob.gradient(p)):
        with pytest.raises(ValueError, match="policy must be a torch.nn.Module"):
            call("not a policy")
    with pytest.raises(ValueError, match="policy has no parameters"):
        prob.objective(torch.nn.Identity())
    with pytest.raises(ValueError, match="other must be a torch.nn.Module"):
        prob.expected_kl(pol, None)
    with pytest.raises(ValueError, match="threshold must be a number"):
        prob.success_probability(pol, threshold="0.5")
    with pytest.raises(ValueError, match="completions must be an integer tensor"):
        prob.completion_index(prob.completions.float())
    with pytest.raises(ValueError, match="prompt_ids must be an integer tensor"):
        prob.rewards_for(torch.tensor([0.0]), prob.completions[:1])
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        prob.sample_prompts(3, generator=0)
    with pytest.raises(ValueError, match="problem must be an ExactProblem"):
        diagnostics.exact_bias_variance("problem", pol, torch.ones(N, K))


def test_objective_landscape_checks_its_arguments():
    prob, pol = _toy()
    theta = pol.logits_table
    grid = [-1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="problem must be an ExactProblem"):
        objective_landscape(None, pol, theta, (0, 0, 0), (0, 0, 1), grid, grid)
    with pytest.raises(ValueError, match="index_a must be a tuple of 3 valid indices"):
        objective_landscape(prob, pol, theta, (0, 0), (0, 0, 1), grid, grid)
    with pytest.raises(ValueError, match="index_b must be a tuple of 3 valid indices"):
        objective_landscape(prob, pol, theta, (0, 0, 0), (0, 0, 3), grid, grid)
    with pytest.raises(ValueError, match="two different entries"):
        objective_landscape(prob, pol, theta, (0, 0, 2), (0, 0, -1), grid, grid)
    with pytest.raises(ValueError, match="grid_b must be a non-empty sequence of finite numbers"):
        objective_landscape(prob, pol, theta, (0, 0, 0), (0, 0, 1), grid, [0.0, math.inf])
    with pytest.raises(ValueError, match="grid_a must be a sequence of numbers"):
        objective_landscape(prob, pol, theta, (0, 0, 0), (0, 0, 1), ["a"], grid)
    before = theta.detach().clone()
    land = objective_landscape(prob, pol, theta, (0, 0, 0), (0, 0, 1), grid, grid)
    assert land.shape == (3, 3) and torch.equal(theta.detach(), before)


def test_group_and_kl_estimators_refuse_bad_input():
    prob, pol = _toy()
    W = torch.ones(2, 9)
    with pytest.raises(ValueError, match="weights must be a floating-point tensor"):
        implied_surrogate(prob, pol, W.long())
    with pytest.raises(ValueError, match="weights contains 1 NaN"):
        implied_surrogate(prob, pol, W.index_put((torch.tensor(1), torch.tensor(2)), torch.tensor(math.nan)))
    with pytest.raises(ValueError, match="reference must be a torch.nn.Module"):
        ge.enumerated_update(prob, pol, "grpo", 2, reference="ref")
    with pytest.raises(ValueError, match="policy must be a torch.nn.Module"):
        ge.implied_weights(prob, "pol", 2)
    g = torch.ones(5)
    with pytest.raises(ValueError, match="b contains 1 NaN"):
        gradient_table({"exact": g, "b": torch.tensor([1.0, math.nan, 0, 0, 0])})
    with pytest.raises(ValueError, match="b must be a floating-point gradient"):
        gradient_table({"exact": g, "b": torch.ones(5, dtype=torch.long)})
    with pytest.raises(ValueError, match="reference must be the name"):
        gradient_table({"exact": g}, reference=["exact"])


def test_trust_region_refuses_bad_input():
    F = torch.eye(3, dtype=torch.float64)
    g = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="fisher must be a floating-point matrix"):
        natural_gradient(torch.eye(3, dtype=torch.long), g)
    with pytest.raises(ValueError, match="grad must be a real-valued vector"):
        natural_gradient(F, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="damping must be >= 0"):
        natural_gradient(F, g, damping=-1e-3)
    with pytest.raises(ValueError, match="max_kl must be > 0"):
        kl_constrained_step(F, g, 0.0)
    with pytest.raises(ValueError, match=r"matvec\(v\) contains"):
        conjugate_gradient(lambda v: v * math.nan, g)
    calls = []

    def breaks_on_second_call(v):  # fine inside CG, NaN when the step length is measured
        calls.append(1)
        return v if len(calls) == 1 else v * math.nan

    with pytest.raises(ValueError, match="d\\^T F d is not finite"):
        kl_constrained_step(breaks_on_second_call, g, 0.1, damping=0.0, cg_iters=1)


def test_diagnostics_refuse_bad_input():
    prob, pol = _toy()
    exact = torch.zeros(4)
    with pytest.raises(ValueError, match="estimates must be real-valued"):
        diagnostics.gradient_error_stats(torch.zeros(3, 4, dtype=torch.bool), exact)
    with pytest.raises(ValueError, match="estimate_fn must be a callable"):
        diagnostics.collect_estimates(None, 4, 3)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        diagnostics.collect_estimates(lambda n, g: torch.zeros(4), 4, 3, seed=-1)
    with pytest.raises(ValueError, match="estimate_fn must return a tensor"):
        diagnostics.collect_estimates(lambda n, g: [0.0], 4, 3)
    sizes = iter([4, 4, 5])
    with pytest.raises(ValueError, match="returned 5 numbers in trial 2 but 4 before"):
        diagnostics.collect_estimates(lambda n, g: torch.zeros(next(sizes)), 4, 3)
    with pytest.raises(ValueError, match="every batch size in ns must be a positive integer"):
        diagnostics.convergence(lambda n, g: torch.zeros(4), exact, [4, 0])
    with pytest.raises(ValueError, match="ns must list at least one batch size"):
        diagnostics.convergence(lambda n, g: torch.zeros(4), exact, 4)
    with pytest.raises(ValueError, match="problem must be an ExactProblem"):
        diagnostics.sampled_estimator(None, pol, lambda s, r: r)
    with pytest.raises(ValueError, match="policy must be a torch.nn.Module with a sample method"):
        diagnostics.sampled_estimator(prob, torch.nn.Linear(2, 2), lambda s, r: r)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((3, 2), {"eos": 0.5}, "eos must be a token id"),
        ((3, 2), {"eos": True}, "eos must be a token id"),
        ((3, 2), {"limit": 0}, "limit must be a positive integer"),
        ((3.0, 2), {}, "vocab_size must be a positive integer"),
        ((3, "2"), {}, "max_len must be a positive integer"),
    ],
)
def test_enumerate_completions_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        enumerate_completions(*args, **kwargs)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: contextual_bandit(2, 1), "num_arms must be at least 2"),
        (lambda: contextual_bandit(2, 0), "num_arms must be a positive integer"),
        (lambda: contextual_bandit(2, 2, rewards=[[0.0, 1.0], [1.0, 0.0]]), "rewards must be a torch.Tensor"),
        (lambda: contextual_bandit(2, 2, rewards=torch.ones(2, 2, dtype=torch.bool)), "rewards must hold real"),
        (lambda: contextual_bandit(2, 2, seed=-1), "seed must be a non-negative integer"),
        (lambda: target_sequence_task(2, 1, 2), "vocab_size must be at least 2"),
        (lambda: target_sequence_task(2, 0, 2), "vocab_size must be a positive integer"),
        (lambda: target_sequence_task(0, 3, 2), "num_prompts must be a positive integer"),
        (lambda: target_sequence_task(2, 3, -1), "length must be a positive integer"),
        (lambda: target_sequence_task(2, 3, 2, reward="Fraction"), "reward must be"),
        (lambda: target_sequence_task(2, 3, 2, reward=["fraction"]), "reward must be"),
        (lambda: target_sequence_task(2, 3, 2, seed=1.5), "seed must be a non-negative integer"),
        (lambda: variable_length_task(2, 3, 3, seed="0"), "seed must be a non-negative integer"),
        (lambda: TabularPolicy(2, 3, 2, eos=1.0), "eos must be a token id"),
        (lambda: TabularPolicy(2, 3, 2, init_scale=math.nan), "init_scale must be a finite number"),
        (lambda: TabularPolicy(2, 3, 2, generator=0), "generator must be a torch.Generator"),
    ],
)
def test_toy_builders_refuse_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_tabular_policy_refuses_non_integer_tokens():
    pol = TabularPolicy(2, 3, 2)
    with pytest.raises(ValueError, match="completions must be integer token ids"):
        pol(torch.tensor([0, 1]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="prompts must be integer prompt ids"):
        pol(torch.tensor([0.0, 1.0], dtype=torch.bfloat16), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        pol.sample(torch.tensor([0, 1]), generator=1)


def test_already_validated_skips_only_the_value_checks_and_only_inside_the_block():
    """The lab's per-group path runs a loss on thousands of slices of one validated batch inside
    ``already_validated()``; outside it a NaN or a non-0/1 mask is still a ValueError."""
    from policygrad._checks import already_validated, check_finite, check_mask

    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match="NaN"):
        check_finite(x, "x")
    with pytest.raises(ValueError, match="only 0 and 1"):
        check_mask(torch.tensor([0.0, 0.5]))
    with already_validated():
        assert check_finite(x, "x") is x
        assert torch.equal(check_mask(torch.tensor([True, False])), torch.tensor([1.0, 0.0]))
        with pytest.raises(ValueError, match="must have shape"):  # shapes are still checked
            check_mask(torch.ones(2), shape=torch.Size([3]))
    with pytest.raises(ValueError, match="NaN"):  # restored after the block
        check_finite(x, "x")
