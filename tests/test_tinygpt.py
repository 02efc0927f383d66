"""Tests for policygrad.lm.tinygpt: the transformer policy, its key/value cache and its sampler.

References are independent of the code under test where possible: causality by perturbing later tokens,
the cache against recomputing the whole prefix, sampled frequencies against exact enumeration
(:class:`policygrad.ExactProblem`), the exact gradient against finite differences in float64.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

import policygrad as pg
from policygrad.exact import flat_params
from policygrad.lm.tinygpt import KVCache, TinyGPT, TinyGPTConfig
from policygrad.trajectory_side import token_entropy, token_log_probs


def _model(V=5, block=10, seed=0, init_std=0.5, **kw) -> TinyGPT:
    """A tiny, sharp (init_std 0.5) model: 2 layers, 2 heads, width 16."""
    cfg = TinyGPTConfig(vocab_size=V, block_size=block, n_layer=2, n_head=2, n_embd=16, init_std=init_std, **kw)
    return TinyGPT(cfg, generator=torch.Generator().manual_seed(seed))


def _tokens(B, L, V, seed=0) -> torch.Tensor:
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def _problem(prompts, V, T, eos=None, rewards=None, dtype=torch.float32) -> pg.ExactProblem:
    comp, mask = pg.enumerate_completions(V, T, eos=eos)
    N, K = prompts.shape[0], comp.shape[0]
    R = torch.zeros(N, K, dtype=dtype) if rewards is None else rewards
    return pg.ExactProblem(prompts, torch.full((N,), 1.0 / N, dtype=dtype), comp, mask.to(dtype), R)


# -- configuration and size --------------------------------------------------------------------------------


def test_default_parameter_count_is_the_documented_one():
    model = TinyGPT(TinyGPTConfig(vocab_size=16, block_size=32))
    n = model.num_parameters()
    C, V, S, nl = 64, 16, 32, 2
    per_layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert n == V * C + S * C + nl * per_layer + 2 * C == 103_168
    assert f"{n:,}" in TinyGPT.__doc__
    assert model.head.weight is model.wte.weight  # tied by default
    untied = TinyGPT(TinyGPTConfig(vocab_size=16, block_size=32, tie_weights=False))
    assert untied.num_parameters() == n + V * C


@pytest.mark.parametrize(
    "kw",
    [
        {"n_embd": 30, "n_head": 4},
        {"vocab_size": 0},
        {"block_size": -1},
        {"n_layer": 0},
        {"n_head": 2.0},
        {"tie_weights": 1},
        {"init_std": 0.0},
        {"init_std": float("nan")},
    ],
)
def test_config_rejects_bad_values(kw):
    base = {"vocab_size": 5, "block_size": 8}
    with pytest.raises(ValueError):
        TinyGPTConfig(**{**base, **kw})


def test_model_needs_a_config():
    with pytest.raises(ValueError, match="TinyGPTConfig"):
        TinyGPT({"vocab_size": 5, "block_size": 8})


def test_init_is_reproducible_from_the_generator():
    a, b, c = _model(seed=3), _model(seed=3), _model(seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.wte.weight, c.wte.weight)


# -- the teacher-forced forward ------------------------------------------------------------------------------


def _reference_logits(model: TinyGPT, idx: torch.Tensor) -> torch.Tensor:
    """The same architecture from the weights, with torch's own attention and layer norm (minGPT-style check)."""
    F = torch.nn.functional
    cfg = model.config
    B, L = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    x = model.wte.weight[idx] + model.wpe.weight[:L]
    for blk in model.blocks:
        h = F.layer_norm(x, (C,), blk.ln1.weight, blk.ln1.bias)
        q, k, v = F.linear(h, blk.attn.qkv.weight, blk.attn.qkv.bias).split(C, -1)
        q, k, v = (t.reshape(B, L, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, C)
        x = x + F.linear(y, blk.attn.proj.weight, blk.attn.proj.bias)
        h = F.layer_norm(x, (C,), blk.ln2.weight, blk.ln2.bias)
        x = x + F.linear(F.gelu(F.linear(h, blk.mlp[0].weight, blk.mlp[0].bias)), blk.mlp[2].weight, blk.mlp[2].bias)
    return F.linear(F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias), model.head.weight)


@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_a_reference_implementation(tie):
    model = _model(tie_weights=tie)
    idx = _tokens(4, 9, 5, seed=6)
    with torch.no_grad():
        ref = _reference_logits(model, idx)
    torch.testing.assert_close(model.forward_tokens(idx)[0], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(idx[:, :3], idx[:, 3:]), ref[:, 2:-1], atol=1e-5, rtol=1e-5)


def test_forward_position_t_is_the_next_token_distribution_after_y_lt():
    model = _model()
    prompts, comp = _tokens(4, 3, 5, seed=1), _tokens(4, 5, 5, seed=2)
    logits = model(prompts, comp)
    assert logits.shape == (4, 5, 5)
    for t in range(5):
        seq = torch.cat([prompts, comp[:, :t]], 1)
        ref, _ = model.forward_tokens(seq)  # an independent run on exactly x, y_<t
        torch.testing.assert_close(logits[:, t], ref[:, -1], atol=1e-5, rtol=1e-5)


def test_causality_later_tokens_never_change_earlier_positions():
    model = _model()
    prompts, comp = _tokens(6, 2, 5, seed=1), _tokens(6, 6, 5, seed=2)
    base = model(prompts, comp)
    for s in range(6):
        changed = comp.clone()
        changed[:, s] = (changed[:, s] + 1) % 5
        out = model(prompts, changed)
        # position t depends on y_<t only: positions t <= s are untouched, t = s + 1 does change
        torch.testing.assert_close(out[:, : s + 1], base[:, : s + 1], atol=1e-6, rtol=0)
        if s + 1 < 6:
            assert (out[:, s + 1] - base[:, s + 1]).abs().max() > 1e-4
    other = model(torch.flip(prompts, [0]), comp)
    assert (other[:, 0] - base[:, 0]).abs().max() > 1e-4  # the prompt matters from the first position


def test_token_log_probs_and_entropy():
    model = _model()
    prompts, comp = _tokens(3, 2, 5, seed=1), _tokens(3, 4, 5, seed=2)
    logp, ent = model.token_log_probs_and_entropy(prompts, comp)
    logits = model(prompts, comp)
    torch.testing.assert_close(logp, token_log_probs(logits, comp))
    torch.testing.assert_close(ent, token_entropy(logits))
    assert logp.shape == ent.shape == (3, 4)
    assert bool((logp <= 0).all()) and bool((ent >= 0).all()) and bool((ent <= math.log(5) + 1e-6).all())


# -- key/value cache -------------------------------------------------------------------------------------------


def test_forward_tokens_with_cache_matches_one_full_pass():
    model = _model(block=12)
    seq = _tokens(5, 10, 5, seed=3)
    full, _ = model.forward_tokens(seq)
    logits, cache = model.forward_tokens(seq[:, :4])  # prefill 4
    assert isinstance(cache, KVCache) and cache.length == 4
    parts = [logits]
    for i in range(4, 7):  # one token at a time
        out, cache = model.forward_tokens(seq[:, i : i + 1], cache)
        parts.append(out)
    out, cache = model.forward_tokens(seq[:, 7:], cache)  # a chunk of 3
    parts.append(out)
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert not full.requires_grad  # the cached forward is for sampling only


def test_forward_tokens_rejects_overflow_and_foreign_caches():
    model = _model(block=6)
    _, cache = model.forward_tokens(_tokens(2, 5, 5))
    with pytest.raises(ValueError, match="block_size"):
        model.forward_tokens(_tokens(2, 2, 5), cache)
    with pytest.raises(ValueError, match="block_size"):
        model.forward_tokens(_tokens(2, 7, 5))
    with pytest.raises(ValueError, match="rows"):
        model.forward_tokens(_tokens(3, 1, 5), cache)
    with pytest.raises(ValueError, match="KVCache"):
        model.forward_tokens(_tokens(2, 1, 5), [])
    small = model.new_cache(2, capacity=3)
    with pytest.raises(ValueError, match="capacity"):
        model.forward_tokens(_tokens(2, 4, 5), small)
    with pytest.raises(ValueError, match="capacity"):
        model.new_cache(2, capacity=7)


@pytest.mark.parametrize("eos, pad", [(None, None), (1, None), (1, 4)])
def test_cached_sampling_equals_recomputing_and_the_full_forward(eos, pad):
    model = _model(block=10)
    prompts = _tokens(64, 3, 5, seed=5)
    kw = {"max_new_tokens": 6, "eos": eos, "pad": pad}
    a = model.sample(prompts, generator=torch.Generator().manual_seed(7), **kw)
    b = model.sample(prompts, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert torch.equal(a.completions, b.completions)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.truncated, b.truncated)
    torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-5, rtol=1e-5)
    ref = token_log_probs(model(prompts, a.completions), a.completions) * a.mask
    torch.testing.assert_close(a.log_probs, ref, atol=1e-5, rtol=1e-5)
    assert not a.log_probs.requires_grad
    if eos is not None:  # the seed gives both ended and truncated rows
        assert 0 < int(a.truncated.sum()) < 64


def test_sampling_is_reproducible_and_seed_dependent():
    model = _model()
    prompts = _tokens(32, 2, 5)
    a = model.sample(prompts, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    b = model.sample(prompts, max_new_tokens=5, generator=torch.Generator().manual_seed(0))
    c = model.sample(prompts, max_new_tokens=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.completions, b.completions)
    assert not torch.equal(a.completions, c.completions)


# -- end of sequence, mask, truncation, padding ------------------------------------------------------------


@pytest.mark.parametrize("pad", [None, 3])
def test_eos_mask_truncation_and_padding(pad):
    eos, T = 1, 6
    model = _model()
    s = model.sample(
        _tokens(200, 2, 5, seed=2), max_new_tokens=T, eos=eos, pad=pad, generator=torch.Generator().manual_seed(3)
    )
    fill = eos if pad is None else pad
    assert s.completions.shape == s.mask.shape == s.log_probs.shape == (200, T)
    for row in range(200):
        y, m, lp = s.completions[row].tolist(), s.mask[row].tolist(), s.log_probs[row]
        if eos in y:
            end = y.index(eos)  # the eos itself is a real token
            assert m == [1.0] * (end + 1) + [0.0] * (T - end - 1)
            assert y[end + 1 :] == [fill] * (T - end - 1)
            assert not bool(s.truncated[row])
            assert bool((lp[end + 1 :] == 0).all()) and bool((lp[: end + 1] < 0).all())
        else:
            assert m == [1.0] * T and bool(s.truncated[row])
    assert 0 < int(s.truncated.sum()) < 200
    torch.testing.assert_close(s.lengths, s.mask.sum(-1))


def test_without_eos_nothing_is_truncated_and_mask_is_full():
    s = _model().sample(_tokens(8, 2, 5), max_new_tokens=4, pad=2, generator=torch.Generator().manual_seed(0))
    assert bool((s.mask == 1).all()) and not bool(s.truncated.any())


def test_all_rows_ending_at_once_stops_early_and_pads():
    model = _model()
    eos = 2
    with torch.no_grad():  # every hidden state becomes a multiple of the eos embedding: eos is near certain
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(10 * model.wte.weight[eos])
    for use_cache in (True, False):
        s = model.sample(_tokens(16, 3, 5), max_new_tokens=5, eos=eos, pad=0, use_cache=use_cache)
        assert bool((s.completions[:, 0] == eos).all()) and bool((s.completions[:, 1:] == 0).all())
        assert bool((s.mask == torch.tensor([1.0, 0, 0, 0, 0])).all())
        assert not bool(s.truncated.any())


def test_samples_leave_inference_mode_and_feed_autograd():
    """The loop runs under torch.inference_mode; what it returns is ordinary tensors that a training forward
    with gradients may use (inference tensors cannot be saved for backward)."""
    model = _model()
    s = model.sample(_tokens(6, 2, 5), max_new_tokens=3, eos=1, group_size=2, generator=torch.Generator().manual_seed(0))
    for t in (s.prompts, s.completions, s.mask, s.log_probs, s.truncated):
        assert not t.is_inference()
    logp = torch.log_softmax(model(s.prompts, s.completions, group_size=2), -1)
    loss = -(logp.gather(-1, s.completions.unsqueeze(-1)).squeeze(-1) * s.mask).sum()
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_group_size_repeats_each_prompt():
    model = _model()
    prompts = _tokens(3, 2, 5)
    a = model.sample(prompts, max_new_tokens=3, group_size=4, generator=torch.Generator().manual_seed(1))
    b = model.sample(prompts.repeat_interleave(4, 0), max_new_tokens=3, generator=torch.Generator().manual_seed(1))
    assert a.prompts.shape == (12, 2) and torch.equal(a.prompts, b.prompts)
    assert torch.equal(a.completions, b.completions)


# -- the sampler against exact probabilities --------------------------------------------------------------


@pytest.mark.parametrize("eos", [None, 0])
def test_sampled_completion_frequencies_match_exact_enumeration(eos):
    V, T, n = 3, 2, 6000
    model = _model(V=V, block=4, init_std=1.0, seed=1)
    prompts = torch.tensor([[0, 1], [2, 2]])
    problem = _problem(prompts, V, T, eos=eos)
    with torch.no_grad():
        p = problem.probs(model)  # (N, K)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    s = model.sample(prompts, max_new_tokens=T, eos=eos, group_size=n, generator=torch.Generator().manual_seed(11))
    k = problem.completion_index(s.completions).reshape(2, n)
    freq = torch.stack([torch.bincount(k[i], minlength=problem.num_completions) for i in range(2)]) / n
    tol = 4 * torch.sqrt(p * (1 - p) / n)
    assert bool(((freq - p).abs() <= tol).all()), (freq, p)
    # each sample's summed log-prob is the exact log-probability of its completion
    exact_logp = p.log()[torch.arange(2).repeat_interleave(n), k.reshape(-1)]
    torch.testing.assert_close(s.log_probs.sum(-1), exact_logp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature, top_k", [(2.0, None), (0.5, None), (1.0, 2), (0.7, 3)])
def test_temperature_and_top_k_sample_the_tempered_truncated_distribution(temperature, top_k):
    V, n = 5, 8000
    model = _model(V=V, init_std=1.0)
    prompt = torch.tensor([[1, 4]])
    z = model(prompt, torch.zeros(1, 1, dtype=torch.long))[0, 0].detach()  # logits of the first token
    zs = z / temperature
    if top_k is not None:
        zs = zs.masked_fill(zs < torch.topk(zs, top_k).values[-1], float("-inf"))
    q = torch.softmax(zs, -1)  # the sampler's distribution
    s = model.sample(
        prompt,
        max_new_tokens=1,
        temperature=temperature,
        top_k=top_k,
        group_size=n,
        generator=torch.Generator().manual_seed(2),
    )
    freq = torch.bincount(s.completions[:, 0], minlength=V) / n
    assert bool(((freq - q).abs() <= 4 * torch.sqrt(q * (1 - q) / n)).all()), (freq, q)
    if top_k is not None:
        assert bool((q[s.completions[:, 0]] > 0).all())  # never outside the top k
    # log_probs are the policy's own (temperature 1, no truncation), not the sampler's
    torch.testing.assert_close(s.log_probs[:, 0], torch.log_softmax(z, -1)[s.completions[:, 0]])


def test_top_k_one_is_greedy_and_tiny_temperature_approaches_it():
    model = _model(init_std=1.0)
    prompts, T = _tokens(64, 2, 5, seed=4), 5
    greedy = model.sample(prompts, max_new_tokens=T, top_k=1, generator=torch.Generator().manual_seed(0))
    seq = prompts
    for _ in range(T):  # reference: argmax of a full forward at every step
        logits, _ = model.forward_tokens(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy.completions, seq[:, 2:])
    cold = model.sample(prompts, max_new_tokens=T, temperature=1e-4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cold.completions, greedy.completions)
    warm = model.sample(prompts, max_new_tokens=T, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(warm.completions, greedy.completions)


# -- exact enumeration on a transformer -------------------------------------------------------------------------


@pytest.mark.parametrize("eos", [None, 2])
def test_exact_problem_works_on_tinygpt_and_gradient_matches_finite_differences(eos):
    V, T = 3, 3
    model = _model(V=V, block=5, init_std=0.7, seed=2).double()
    prompts = torch.tensor([[0, 1], [2, 0]])
    comp, _ = pg.enumerate_completions(V, T, eos=eos)
    R = torch.rand(2, comp.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    problem = _problem(prompts, V, T, eos=eos, rewards=R, dtype=torch.float64)
    p = problem.probs(model)
    assert p.dtype == torch.float64
    torch.testing.assert_close(p.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    grad = problem.gradient(model)
    params = flat_params(model)
    assert grad.shape == (sum(q.numel() for q in params),)
    offsets, total = {}, 0
    for q in params:
        offsets[id(q)] = total
        total += q.numel()
    picks = [
        (model.wte.weight, 4),  # tied with the head
        (model.wpe.weight, 17),
        (model.blocks[0].attn.qkv.weight, 100),
        (model.blocks[1].attn.proj.bias, 3),
        (model.blocks[1].mlp[2].weight, 50),
        (model.ln_f.weight, 5),
    ]
    eps = 1e-6
    for q, i in picks:
        flat = q.data.view(-1)
        old = flat[i].item()
        with torch.no_grad():
            flat[i] = old + eps
            up = problem.objective(model).item()
            flat[i] = old - eps
            down = problem.objective(model).item()
            flat[i] = old
        fd = (up - down) / (2 * eps)
        assert grad[offsets[id(q)] + i].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)
    # the REINFORCE estimator's exact mean is the exact gradient (per-sample Jacobians through the transformer)
    mean, var = problem.estimator_moments(model, problem.returns())
    torch.testing.assert_close(mean, grad, atol=1e-10, rtol=1e-8)
    assert var > 0


# -- persistence, dtype, devices --------------------------------------------------------------------------------


def test_state_dict_round_trip_with_weights_only():
    model = _model(seed=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = _model(seed=2)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.head.weight is other.wte.weight  # still tied after loading
    prompts, comp = _tokens(3, 2, 5), _tokens(3, 4, 5, seed=1)
    assert torch.equal(other(prompts, comp), model(prompts, comp))
    assert not any("causal" in key for key in model.state_dict())  # buffers are rebuilt, not stored


def test_double_precision_sampling():
    model = _model().double()
    s = model.sample(_tokens(4, 2, 5), max_new_tokens=3, eos=1, generator=torch.Generator().manual_seed(0))
    assert s.log_probs.dtype == s.mask.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_same_results_on_cuda():
    cpu = _model()
    gpu = _model().to("cuda")
    prompts, comp = _tokens(8, 2, 5), _tokens(8, 4, 5, seed=1)
    torch.testing.assert_close(gpu(prompts.cuda(), comp.cuda()).cpu(), cpu(prompts, comp), atol=1e-5, rtol=1e-4)
    a = cpu.sample(prompts, max_new_tokens=4, eos=1, generator=torch.Generator().manual_seed(0))
    b = gpu.sample(prompts.cuda(), max_new_tokens=4, eos=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.completions, b.completions.cpu())


# -- bad inputs -----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_errors():
    model = _model(block=6)
    prompts, comp = _tokens(2, 2, 5), _tokens(2, 3, 5)
    bad_pairs = [
        (prompts.float(), comp, "integer"),
        (prompts.bool(), comp, "integer"),
        (prompts[0], comp, "dimension"),
        (prompts[:, :0], comp, "at least one"),
        (prompts, comp[:, :0], "at least one"),
        (prompts[:0], comp[:0], "at least one"),
        (prompts, comp[:1], "rows"),
        (prompts + 5, comp, "vocabulary"),
        (prompts, comp - 1, "vocabulary"),
        (prompts, _tokens(2, 5, 5), "block_size"),
        (prompts.tolist(), comp, "torch.Tensor"),
    ]
    for p, c, msg in bad_pairs:
        with pytest.raises(ValueError, match=msg):
            model(p, c)
    bad_sampling = [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 5}, "block_size"),
        ({"max_new_tokens": 2, "temperature": 0.0}, "temperature"),
        ({"max_new_tokens": 2, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 2, "temperature": float("nan")}, "temperature"),
        ({"max_new_tokens": 2, "top_k": 0}, "top_k"),
        ({"max_new_tokens": 2, "eos": 5}, "eos"),
        ({"max_new_tokens": 2, "eos": 1, "pad": -1}, "pad"),
        ({"max_new_tokens": 2, "group_size": 0}, "group_size"),
        ({"max_new_tokens": 2, "use_cache": 1}, "use_cache"),
        ({"max_new_tokens": 2, "generator": 0}, "generator"),
    ]
    for kw, msg in bad_sampling:
        with pytest.raises(ValueError, match=msg):
            model.sample(prompts, **kw)
    with pytest.raises(ValueError, match="integer"):
        model.sample(prompts.double(), max_new_tokens=2)
    with pytest.raises(ValueError, match="at least one"):
        model.sample(prompts[:, :0], max_new_tokens=2)


# -- shared-prompt (grouped) forward and sampling -----------------------------------------------------------------


def _grouped(N=3, G=4, P=3, T=5, V=5, seed=0):
    prompts = _tokens(N, P, V, seed=seed).repeat_interleave(G, 0)  # rows i*G .. i*G+G-1 share prompt i
    return prompts, _tokens(N * G, T, V, seed=seed + 1)


@pytest.mark.parametrize("T", [1, 2, 5])
def test_grouped_forward_equals_the_plain_forward_with_the_same_gradients(T):
    model = _model(block=10)
    prompts, comp = _grouped(T=T)
    weights = torch.randn(prompts.shape[0], T, 5, generator=torch.Generator().manual_seed(9))
    outs, grads = [], []
    for G in (1, 4):
        model.zero_grad()
        logits = model(prompts, comp, group_size=G)
        (logits * weights).sum().backward()  # a generic scalar of the logits
        outs.append(logits.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert outs[1].shape == (12, T, 5)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    assert (grads[1] - grads[0]).norm() <= 1e-4 * grads[0].norm()
    assert grads[0].norm() > 1e-3
    lp1, ent1 = model.token_log_probs_and_entropy(prompts, comp, group_size=4)
    lp0, ent0 = model.token_log_probs_and_entropy(prompts, comp)
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=0)


def test_grouped_forward_group_size_equal_to_the_batch_and_double():
    model = _model(block=10).double()
    prompts = torch.tensor([[1, 2, 3]]).repeat(6, 1)
    comp = _tokens(6, 4, 5, seed=3)
    torch.testing.assert_close(model(prompts, comp, group_size=6), model(prompts, comp), atol=1e-12, rtol=0)


def test_grouped_forward_rejects_inconsistent_groups():
    model = _model(block=10)
    prompts, comp = _grouped(N=3, G=4)
    with pytest.raises(ValueError, match="does not divide"):
        model(prompts, comp, group_size=5)
    with pytest.raises(ValueError, match="same prompt"):
        model(prompts, comp, group_size=6)  # 6 divides 12, but rows 0..5 hold two prompts
    mixed = prompts.clone()
    mixed[5, 0] = (mixed[5, 0] + 1) % 5  # one row of group 1 differs
    with pytest.raises(ValueError, match="same prompt"):
        model(mixed, comp, group_size=4)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="group_size"):
            model(prompts, comp, group_size=bad)


@pytest.mark.parametrize("eos", [None, 1])
def test_grouped_sampling_log_probs_are_the_teacher_forced_ones_and_match_no_cache(eos):
    model = _model(block=10)
    prompts = _tokens(5, 3, 5, seed=4)
    G, T = 6, 5
    kw = {"max_new_tokens": T, "eos": eos, "group_size": G}
    a = model.sample(prompts, generator=torch.Generator().manual_seed(2), **kw)
    assert a.prompts.shape == (30, 3) and torch.equal(a.prompts, prompts.repeat_interleave(G, 0))
    with torch.no_grad():
        ref = token_log_probs(model(a.prompts, a.completions), a.completions) * a.mask
        ref_g = token_log_probs(model(a.prompts, a.completions, group_size=G), a.completions) * a.mask
    torch.testing.assert_close(a.log_probs, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.log_probs, ref_g, atol=1e-5, rtol=0)
    b = model.sample(prompts, generator=torch.Generator().manual_seed(2), use_cache=False, **kw)
    assert torch.equal(a.completions, b.completions) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.truncated, b.truncated)
    torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-5, rtol=0)
    # the G completions of a prompt are distinct draws, not copies
    assert len({tuple(r) for r in a.completions[:G].tolist()}) > 1
    if eos is not None:
        assert 0 < int(a.truncated.sum()) < 30
