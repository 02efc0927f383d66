"""The peer benchmark compares like with like: ``benchmarks/bench_peers.py``'s GPT-2 copy of TinyGPT and
its FLOP count.

The timings themselves are not tested (a timed test fails on a busy machine); what is tested is what they
rest on: that the Hugging Face model holding TinyGPT's weights computes the same function (logits in float64
to 1e-12, so a wrong transpose, a missing bias or the tanh GELU would fail), that both samplers draw the
same tokens from the same random stream, and that the analytic FLOP count of a policygrad GRPO step
equals ``torch.utils.flop_counter.FlopCounterMode``'s count of a real ``train`` step.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from _frameworks import require

import policygrad as pg
from policygrad.lm.tasks import make_task
from policygrad.methods import grpo
from policygrad.train import train

require("trl")  # the benchmark's peers are the parity extra's transformers and TRL

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))  # bench_peers imports its sibling _common
    try:
        spec = importlib.util.spec_from_file_location("bench_peers", BENCH / "bench_peers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("std", [0.02, 0.5])
def test_gpt2_copy_computes_tinygpts_function(bench, std):
    tiny = pg.TinyGPT(pg.TinyGPTConfig(vocab_size=16, block_size=32, init_std=std),
                      generator=torch.Generator().manual_seed(0)).double().eval()
    hf = bench.gpt2_from_tinygpt(tiny).double().eval()
    g = torch.Generator().manual_seed(1)
    prompts, comps = torch.randint(16, (5, 9), generator=g), torch.randint(16, (5, 7), generator=g)
    ids = torch.cat([prompts, comps], 1)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert float(ref.abs().max()) > (5 if std == 0.5 else 0.05)  # not a degenerate comparison
        torch.testing.assert_close(tiny(prompts, comps), ref[:, 8:15], rtol=0, atol=1e-12)
        torch.testing.assert_close(tiny.forward_tokens(ids)[0], ref, rtol=0, atol=1e-12)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as TinyGPT's head


def test_both_samplers_draw_the_same_tokens_from_the_same_stream(bench):
    tiny = pg.TinyGPT(pg.TinyGPTConfig(vocab_size=16, block_size=32, init_std=0.5),
                      generator=torch.Generator().manual_seed(0)).eval()
    hf = bench.gpt2_from_tinygpt(tiny).eval()
    prompts = torch.randint(16, (64, 6), generator=torch.Generator().manual_seed(2))
    a = tiny.sample(prompts, max_new_tokens=8, eos=None, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(3)
    with torch.inference_mode():
        b = hf.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                        max_new_tokens=8, min_new_tokens=8, use_cache=True, pad_token_id=0)
    assert float((a.completions == b[:, 6:]).double().mean()) > 0.99  # round-off may flip a rare draw


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_analytic_step_flops_equal_the_flop_counter(bench, beta):
    task = make_task("addition")
    shapes = bench.first_step_shapes(task)
    warm, _ = pg.load_warm_start("addition")
    f = bench.step_flops(warm.config, prompts=bench.PROMPTS, group_size=bench.G, prompt_len=shapes["prompt_len"],
                         completion_width=shapes["completion_width"], decode_forwards=shapes["decode_forwards"],
                         beta=beta)
    counted = bench.count_flops(lambda: train(warm, task, grpo(beta=beta), steps=1, seed=0,
                                              prompts_per_step=bench.PROMPTS, group_size=bench.G,
                                              eval_every=None, lr=1e-5))
    assert f["total"] - f["decode_attention_values"] == counted
    assert (f["parts"]["reference_forward"] > 0) == (beta > 0)
