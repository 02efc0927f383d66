"""policygrad against its peers: KV-cache sampling vs Hugging Face ``generate``, one GRPO step vs TRL's GRPOTrainer.

Everything runs in ONE process on ``--threads`` torch threads (default 1, pinned by
``policygrad.seed_everything`` and re-checked before every timed call: if a framework changed the
setting it is re-pinned and the JSON says so), the two sides interleaved repeat by repeat so both see
the same machine load. Timings are wall-clock seconds; the tables give min / median / max over repeats
and the ratio of the medians (peer / policygrad, > 1 means policygrad is faster).

**1. Sampling.** ``TinyGPT(TinyGPTConfig(vocab_size=16, block_size=32))`` (2 layers, 4 heads, width 64,
tied head, 103,168 parameters, default ``init_std``) and a ``transformers.GPT2LMHeadModel`` of the same
shape (:func:`gpt2_config`; ``activation_function="gelu"`` is ``ACT2FN["gelu"]`` = ``GELUActivation`` =
``F.gelu``, the exact erf GELU that TinyGPT's ``nn.GELU()`` is; ``"gelu_new"`` would be the tanh one),
holding TinyGPT's weights (:func:`gpt2_from_tinygpt`). Before any timing the two models' logits must
agree to 1e-5 (relative to the largest logit where that exceeds 1; also on an ``init_std=0.5`` copy, whose
logits reach ~15) (teacher-forced ``forward(prompts, completions)`` vs HF's logits of the concatenation, and
``forward_tokens`` vs HF's logits of every position). Timed: ``tiny.sample(prompts, max_new_tokens=16,
eos=None)`` (called as a user calls it: its own ``no_grad``) vs ``hf.generate(input_ids=prompts,
attention_mask=ones, do_sample=True, top_k=0, max_new_tokens=16, min_new_tokens=16, use_cache=True,
pad_token_id=0)`` under ``torch.inference_mode()``, batch 256, random prompts of 6 and of 16 tokens.
``top_k=0`` matters: transformers 5 fills an unset ``top_k`` with its global default 50, which adds a
``TopKLogitsWarper`` (a no-op on 16 tokens that still costs a ``topk`` per step); with ``top_k=0`` the
logits-processor list is empty (checked and printed), temperature and top_p stay 1.0. The GPT-2 has no
eos id, so every row generates 16 tokens (shape checked). HF without a cache (``use_cache=False``)
is timed too, as context. Sanity check: with the same random stream (TinyGPT's generator and the
global generator HF draws from seeded alike) both draw the same tokens.

**2. One RL step.** Both sides start from the addition warm start (``policygrad.load_warm_start
("addition")``: vocabulary 15, block 11, copied into a GPT-2 of that shape, logits checked as above), on
the addition task (prompts of 7 tokens with BOS, at most 4 new tokens, a completion ends at EOS), so
generation lengths and early stopping behave as in the book: 64 prompts x 8 completions, lr 1e-5,
gradient norm clipped to 1, Adam(W) without weight decay, constant learning rate, one optimiser step
per generated batch, GRPO with ``beta`` = 0 and 0.04 (``policygrad.methods.grpo(beta=...)``; the TRL
settings are ``policygrad.methods.to_trl`` of that method: ``loss_type="grpo"``, ``scale_rewards=
"group"``, ``epsilon=0.2``, ``use_bias_correction_kl=False``, ...). The TRL reward function pads the
completion ids it is given and calls the same ``task.rewards`` policygrad's ``train`` calls.

* policygrad: ``train(policy, task, grpo(beta=b), steps=N, prompts_per_step=64, group_size=8,
  eval_every=None, lr=1e-5)`` on a freshly loaded warm start; seconds/step = call time / N (so the
  call's set-up, a deep copy of the reference and a new Adam, is inside, amortised). A step: draw and
  encode 64 problems, sample 8 completions each with the KV cache (prompt prefilled once per group,
  stops when every row has ended), rewards, teacher-forced forward (prompt shared by its group) giving
  the log-probs, the entropy metric, the reference forward (beta > 0 only), advantages, loss, backward,
  clip, Adam step, metrics.
* TRL: a real ``trl.GRPOTrainer`` (``GRPOConfig(per_device_train_batch_size=512, num_generations=8,
  max_completion_length=4, ...)``; TRL 1.16 counts ``per_device_train_batch_size`` in *completions*:
  512 = 64 prompts x 8, ``generation_batch_size = per_device_train_batch_size x steps_per_generation``
  and ``steps_per_generation`` defaults to ``gradient_accumulation_steps`` = 1) over an offline
  character-level tokenizer with the task's vocabulary (BOS added by a post-processor), with
  ``trainer.train()`` run for warm-up + repeats x N (+ 1) steps. A step is timed by a
  ``TrainerCallback`` from ``on_step_begin`` to ``on_step_end``: tokenize the prompts, ``generate``
  (KV cache, stops when every row has ended), decode, rewards, reference forward (beta > 0; TRL builds
  its reference model by reloading the policy's checkpoint directory, hence the temporary
  ``save_pretrained``), advantages, loss (a forward of the full prompt + completion of every row: no
  prefix sharing; entropies computed), backward, clip, optimiser and scheduler step, ``zero_grad``.
  Not inside: the data loader's fetch of the prompt strings and the trainer's logging check between
  steps (reported separately as "between steps"); old log-probs are not recomputed by either side
  (one optimiser step per batch). To interleave the two sides (the sampling section alternates call by
  call), each policygrad repeat runs *from inside* TRL's training loop, in that callback, after every
  block of N timed TRL steps (TRL's seconds/step per repeat = the mean of its block).

One setting is changed from what a user would get, in TRL's favour, with a flag to undo it:
``GRPOConfig`` defaults to ``gradient_checkpointing=True`` (a second forward in the backward, to save
memory that this model does not need; policygrad does not recompute), set False here
(``--trl-gradient-checkpointing`` keeps it). Both sides run under ``policygrad.seed_everything``:
deterministic algorithms on, new memory left uninitialised (``torch.utils.deterministic.
fill_uninitialized_memory = False``; torch's default under deterministic algorithms NaN-fills every
``torch.empty``, which cost TRL's fused LM head, with its (4096, 32768) float32 scratch tile of 512 MB,
about 0.35 s per fill, and TinyGPT's sampler a third of its time). ``--fill-memory`` turns the filling
back on for both sides.

**3. FLOPs.** :func:`step_flops` counts the matmul FLOPs of one policygrad GRPO step from the model
config and the step's token counts: per token and layer ``24 C^2`` (qkv, projection, MLP), per query
and layer ``4 C S`` for the attention scores and values over the ``S`` keys computed (TinyGPT computes
the full ``L x S`` block and masks it), ``2 C V`` per row of the head. Sampling: the prefill of the 64
distinct prompts (prefix sharing: once per group), then one forward of the 512 rows per decoding step
(``max length - 1`` of them: the loop stops when every row has ended), the head at every sampled
position; the teacher-forced forward: the 64 prompts once, the 512 x (T-1) completion tokens over the
cache, the head on 512 x T; backward = 2 x that forward; the reference forward once more when beta > 0.
The token counts are those of the first step ``train`` takes with seed 0 (replayed exactly). The
count is checked against ``torch.utils.flop_counter.FlopCounterMode`` around one real ``train`` step
(which does not see TinyGPT's decode-step attention-value products, written as a broadcast multiply
and sum, so those are left out of the comparison) and the same mode counts one TRL step (it does not
count CPU ``scaled_dot_product_attention``, HF's attention: about 3% of the work here). The matmul rate of
this CPU is measured on the same thread count: ``a @ b`` of the model's shapes ((2048, 64) @ (64, 192)
etc.) and a large (1024, 1024) @ (1024, 1024). "Distance from the floor" = measured step time /
(FLOPs / rate), at the fastest model-shape rate and at the large-matmul rate: how many times slower the
step runs than its matmuls alone would at that rate.

    python benchmarks/bench_peers.py [--repeats 5] [--steps 5] [--warmup 2] [--threads 1] [--only sampling|rl_step]
        [--skip-no-cache] [--trl-gradient-checkpointing] [--fill-memory] [--json out.json]

Needs the parity extras (``pip install -e ".[parity]"``: transformers, trl, datasets); without them it
prints so and exits 0 (with a "skipped" JSON).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _common as C
import torch

import policygrad as pg
from policygrad.lm.tasks import Problem, make_task
from policygrad.methods import grpo, to_trl
from policygrad.train import train

NAME = "peers"
BATCH, NEW_TOKENS, PROMPT_LENS = 256, 16, (6, 16)
PROMPTS, G, LR = 64, 8, 1e-5
BETAS = (0.0, 0.04)
LOGIT_TOL = 1e-5
INSTALL_HINT = 'the peers need `pip install -e ".[parity]"` (transformers, trl, datasets)'


# --------------------------------------------------------------------------- small helpers


def stats(xs: list[float]) -> dict:
    """min / median / max (and every value) of a list of timings."""
    return {"min": min(xs), "median": float(statistics.median(xs)), "max": max(xs), "each": list(xs)}


def pin_threads(n: int, log: list[str], where: str) -> None:
    """Re-pin torch to ``n`` threads if something changed it (and record where)."""
    now = torch.get_num_threads()
    if now != n:
        log.append(f"{where}: torch had {now} threads, re-pinned to {n}")
        torch.set_num_threads(n)


def peers_available() -> str | None:
    """None if transformers, trl and datasets import; else why not."""
    try:
        import datasets  # noqa: F401
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as err:
        return f"{INSTALL_HINT}: {err}"
    return None


def versions() -> dict:
    import datasets
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "datasets": datasets.__version__, "policygrad": pg.__version__}


# --------------------------------------------------------------------------- TinyGPT -> GPT-2


def gpt2_config(cfg: pg.TinyGPTConfig, *, bos: int | None = None, eos: int | None = None, pad: int | None = None):
    """A ``transformers.GPT2Config`` of TinyGPT's shape: exact-erf GELU, no dropout, LayerNorm eps 1e-5, tied head."""
    import transformers

    if not cfg.tie_weights:
        raise ValueError("gpt2_from_tinygpt needs a tied head (GPT2LMHeadModel ties lm_head to wte)")
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=4 * cfg.n_embd, activation_function="gelu",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
    )


@torch.no_grad()
def gpt2_from_tinygpt(model: pg.TinyGPT, *, bos: int | None = None, eos: int | None = None,
                      pad: int | None = None):
    """A ``GPT2LMHeadModel`` (eval mode, float32) with ``model``'s weights.

    GPT-2's ``Conv1D`` stores ``(in, out)`` weights, the transpose of ``nn.Linear``'s ``(out, in)``;
    TinyGPT's ``qkv`` is q, k, v stacked like ``c_attn``; ``mlp`` is ``Sequential(Linear, GELU, Linear)``.
    """
    import transformers

    hf = transformers.GPT2LMHeadModel(gpt2_config(model.config, bos=bos, eos=eos, pad=pad)).float()
    tr = hf.transformer
    tr.wte.weight.copy_(model.wte.weight)
    tr.wpe.weight.copy_(model.wpe.weight)
    for blk, h in zip(model.blocks, tr.h, strict=True):
        h.ln_1.weight.copy_(blk.ln1.weight)
        h.ln_1.bias.copy_(blk.ln1.bias)
        h.attn.c_attn.weight.copy_(blk.attn.qkv.weight.T)
        h.attn.c_attn.bias.copy_(blk.attn.qkv.bias)
        h.attn.c_proj.weight.copy_(blk.attn.proj.weight.T)
        h.attn.c_proj.bias.copy_(blk.attn.proj.bias)
        h.ln_2.weight.copy_(blk.ln2.weight)
        h.ln_2.bias.copy_(blk.ln2.bias)
        h.mlp.c_fc.weight.copy_(blk.mlp[0].weight.T)
        h.mlp.c_fc.bias.copy_(blk.mlp[0].bias)
        h.mlp.c_proj.weight.copy_(blk.mlp[2].weight.T)
        h.mlp.c_proj.bias.copy_(blk.mlp[2].bias)
    tr.ln_f.weight.copy_(model.ln_f.weight)
    tr.ln_f.bias.copy_(model.ln_f.bias)
    assert hf.lm_head.weight.data_ptr() == tr.wte.weight.data_ptr(), "GPT-2's head is not tied"
    return hf.eval()


@torch.no_grad()
def logit_check(tiny: pg.TinyGPT, hf, *, prompt_len: int, completion_len: int, rows: int = 8, seed: int = 0,
                prompts: torch.Tensor | None = None) -> dict:
    """Max |logit difference| of the two models on random tokens (asserted below ``LOGIT_TOL`` = 1e-5, times the
    largest |logit| where that exceeds 1).

    teacher_forced: ``tiny(prompts, completions)`` vs HF's logits of ``cat(prompts, completions)`` at the
    positions predicting the completion; all_positions: ``tiny.forward_tokens`` vs HF on the whole sequence.
    """
    g = torch.Generator().manual_seed(seed)
    V = tiny.config.vocab_size
    if prompts is None:
        prompts = torch.randint(V, (rows, prompt_len), generator=g)
    comps = torch.randint(V, (prompts.shape[0], completion_len), generator=g)
    was = tiny.training
    tiny.eval()
    ids = torch.cat([prompts, comps], 1)
    ref = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    P, T = prompts.shape[1], completion_len
    d_tf = float((tiny(prompts, comps) - ref[:, P - 1 : P + T - 1]).abs().max())
    d_all = float((tiny.forward_tokens(ids)[0] - ref).abs().max())
    tiny.train(was)
    scale = float(ref.abs().max())
    tol = LOGIT_TOL * max(1.0, scale)  # float32 round-off grows with the logits' size
    out = {"teacher_forced_max_abs_diff": d_tf, "all_positions_max_abs_diff": d_all, "logit_scale_max_abs": scale,
           "tolerance": tol, "shape": [int(ids.shape[0]), int(ids.shape[1])]}
    assert d_tf < tol and d_all < tol, f"TinyGPT and its GPT-2 copy disagree: {out}"
    return out


# --------------------------------------------------------------------------- FLOPs


def step_flops(cfg: pg.TinyGPTConfig, *, prompts: int, group_size: int, prompt_len: int, completion_width: int,
               decode_forwards: int, beta: float) -> dict:
    """Matmul FLOPs (2 per multiply-add) of one policygrad GRPO step, by stage; see the module docstring.

    prompts: distinct prompts ``N``; rows ``B = N * group_size``; completion_width: ``T`` (the padded width the
    teacher-forced forward runs on); decode_forwards: forwards of the sampler after the prefill (its
    maximum completion length minus one, at most ``T - 1``).
    """
    C_, L_, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    N, P, T = prompts, prompt_len, completion_width
    B = N * group_size
    lin = 24 * C_ * C_ * L_  # per token: qkv 6C^2, proj 2C^2, MLP 16C^2, every layer

    def attn(queries: int, keys: int) -> int:  # scores + weighted values, every layer (dense block)
        return 4 * C_ * queries * keys * L_

    prefill = N * (P * lin + attn(P, P))
    decode = sum(B * (lin + attn(1, P + t)) for t in range(1, decode_forwards + 1))
    decode_att_values = sum(B * 2 * C_ * (P + t) * L_ for t in range(1, decode_forwards + 1))
    sample_head = (decode_forwards + 1) * B * 2 * C_ * V
    forward = N * (P * lin + attn(P, P)) + B * ((T - 1) * lin + attn(T - 1, P + T - 1)) + B * T * 2 * C_ * V
    parts = {
        "sampling": prefill + decode + sample_head,
        "policy_forward": forward,
        "policy_backward": 2 * forward,
        "reference_forward": forward if beta > 0 else 0,
    }
    total = sum(parts.values())
    return {"parts": parts, "total": total,
            "decode_attention_values": decode_att_values,  # broadcast multiply-sum in TinyGPT, not a matmul op
            "tokens": {"rows": B, "distinct_prompts": N, "prompt_len": P, "completion_width": T,
                       "decode_forwards": decode_forwards}}


def first_step_shapes(task, seed: int = 0) -> dict:
    """Replay the sampling of ``train``'s first step (same generator calls) and return its token counts."""
    policy, _ = pg.load_warm_start("addition")
    g = torch.Generator().manual_seed(seed)
    problems = task.sample_problems(PROMPTS, g)
    prompts = task.encode_prompts(problems)
    s = policy.sample(prompts, max_new_tokens=task.max_new_tokens, eos=task.tokenizer.eos_id, generator=g,
                      group_size=G)
    lengths = s.mask.sum(1)
    return {"prompt_len": prompts.shape[1], "completion_width": s.completions.shape[1],
            "max_length": int(lengths.max()), "mean_length": float(lengths.mean()),
            "decode_forwards": min(int(lengths.max()), s.completions.shape[1]) - 1}


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


BIG = "(1024,1024)@(1024,1024)"


def matmul_rates(repeats: int = 5) -> dict:
    """Measured float32 matmul GFLOP/s on the current thread count: ``a @ b`` of the model's shapes and a large
    one, best of ``repeats``."""
    shapes = {"(2048,64)@(64,192) qkv": (2048, 64, 192), "(2048,64)@(64,256) mlp up": (2048, 64, 256),
              "(2048,256)@(256,64) mlp down": (2048, 256, 64), "(512,64)@(64,192) decode qkv": (512, 64, 192),
              BIG: (1024, 1024, 1024)}
    g = torch.Generator().manual_seed(0)
    fns = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        fns[name] = (2 * m * k * n, lambda a=a, b=b: a @ b)
    out = {}
    for name, (flops, fn) in fns.items():
        inner = max(1, int(2e8 // flops))  # ~0.2 GFLOP per timing
        try:
            for _ in range(2):
                fn()
        except RuntimeError:  # a kernel this build cannot run
            continue
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            best = min(best, (time.perf_counter() - t0) / inner)
        out[name] = flops / best / 1e9
    return out


def model_rate(rates: dict) -> tuple[str, float]:
    """The fastest measured rate on the model's shapes (the most demanding floor): ``(name, GFLOP/s)``."""
    name = max((k for k in rates if k != BIG), key=rates.get)
    return name, rates[name]


# --------------------------------------------------------------------------- 1. sampling


def bench_sampling(args, log: list[str]) -> dict:
    cfg = pg.TinyGPTConfig(vocab_size=16, block_size=32)
    tiny = pg.TinyGPT(cfg, generator=torch.Generator().manual_seed(0)).eval()
    hf = gpt2_from_tinygpt(tiny)
    checks = {f"prompt {P} + {NEW_TOKENS}": logit_check(tiny, hf, prompt_len=P, completion_len=NEW_TOKENS, seed=P)
              for P in PROMPT_LENS}
    # the default init (std 0.02) gives small logits; a copy of a sharper model checks the mapping harder
    sharp = pg.TinyGPT(pg.TinyGPTConfig(vocab_size=16, block_size=32, init_std=0.5),
                       generator=torch.Generator().manual_seed(1)).eval()
    checks[f"init_std=0.5, prompt 16 + {NEW_TOKENS}"] = logit_check(sharp, gpt2_from_tinygpt(sharp), prompt_len=16,
                                                                  completion_len=NEW_TOKENS, seed=3)
    gen_kw = dict(do_sample=True, top_k=0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, use_cache=True,
                  pad_token_id=0)
    generation = {"attn_implementation": hf.config._attn_implementation}
    try:  # private transformers API (5.x): what generate will apply, and what an unset top_k becomes
        gc, _ = hf._prepare_generation_config(None, **gen_kw)
        procs = hf._get_logits_processor(generation_config=gc, input_ids_seq_length=PROMPT_LENS[0],
                                         encoder_input_ids=torch.zeros(1, PROMPT_LENS[0], dtype=torch.long),
                                         prefix_allowed_tokens_fn=None, logits_processor=None, device="cpu")
        gc_default, _ = hf._prepare_generation_config(None, **{k: v for k, v in gen_kw.items() if k != "top_k"})
    except (AttributeError, TypeError) as err:
        generation["logits_processors"] = f"not inspected ({type(err).__name__}: {err})"
    else:
        generation.update({"logits_processors": [type(p).__name__ for p in procs], "top_k": gc.top_k,
                           "top_p": gc.top_p, "temperature": gc.temperature, "top_k_if_unset": gc_default.top_k})
        assert not procs, f"generate would apply logits processors/warpers: {generation}"
    print(f"  GPT-2 copy ({sum(p.numel() for p in hf.parameters()):,} parameters; TinyGPT {tiny.num_parameters():,}), "
          f"attention {generation['attn_implementation']!r}; generate's logits processors: "
          f"{generation['logits_processors']} (top_k={generation.get('top_k')}, top_p={generation.get('top_p')}, "
          f"temperature={generation.get('temperature')}; an unset top_k becomes {generation.get('top_k_if_unset')})")
    for key, c in checks.items():
        print(f"  logits, {key}: max |diff| teacher-forced {c['teacher_forced_max_abs_diff']:.1e}, "
              f"all positions {c['all_positions_max_abs_diff']:.1e} (logits up to {c['logit_scale_max_abs']:.2f})")

    results = {}
    for P in PROMPT_LENS:
        prompts = torch.randint(cfg.vocab_size, (BATCH, P), generator=torch.Generator().manual_seed(100 + P))
        ones = torch.ones_like(prompts)

        def tiny_run(seed=0, prompts=prompts):
            return tiny.sample(prompts, max_new_tokens=NEW_TOKENS, eos=None, generator=torch.Generator().manual_seed(seed))

        def hf_run(seed=0, cache=True, prompts=prompts, ones=ones):
            torch.manual_seed(seed)
            with torch.inference_mode():
                return hf.generate(input_ids=prompts, attention_mask=ones, **{**gen_kw, "use_cache": cache})

        a, b, c = tiny_run(7), hf_run(7), hf_run(7, cache=False)
        assert a.completions.shape == (BATCH, NEW_TOKENS) and b.shape == c.shape == (BATCH, P + NEW_TOKENS)
        assert bool((b[:, :P] == prompts).all())
        same = float((a.completions == b[:, P:]).double().mean())
        same_nc = float((b == c).double().mean())
        variants = {"policygrad sample (KV cache)": [], "HF generate (KV cache)": []}
        if not args.skip_no_cache:
            variants["HF generate (no cache)"] = []
        fns = {"policygrad sample (KV cache)": tiny_run, "HF generate (KV cache)": hf_run,
               "HF generate (no cache)": lambda seed: hf_run(seed, cache=False)}
        for name in variants:  # warm-up
            fns[name](0)
        for r in range(args.repeats):
            for name in variants:
                pin_threads(args.threads, log, f"sampling P={P}")
                variants[name].append(C.timed(lambda fn=fns[name], r=r: fn(r), torch.device("cpu"))[0])
        figs = {name: {**stats(t), "tokens_per_s_median": BATCH * NEW_TOKENS / statistics.median(t)}
                for name, t in variants.items()}
        pg_med = figs["policygrad sample (KV cache)"]["median"]
        ratios = {f"{name} / policygrad": f["median"] / pg_med for name, f in figs.items() if "policygrad" not in name}
        results[P] = {"prompt_len": P, "variants": figs, "ratios_of_medians": ratios,
                      "same_tokens_fraction_same_stream": same, "hf_cache_vs_no_cache_same_tokens": same_nc}
    return {"config": {"vocab_size": 16, "block_size": 32, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                       "n_embd": cfg.n_embd, "parameters": tiny.num_parameters()},
            "batch": BATCH, "new_tokens": NEW_TOKENS, "logit_check": checks, "generate": generation,
            "generate_kwargs": gen_kw, "by_prompt_len": results}


def print_sampling(res: dict) -> None:
    print(f"  {'variant':<44} {'min s':>8} {'median s':>9} {'max s':>8} {'tokens/s (median)':>18}")
    for P, r in res["by_prompt_len"].items():
        print(f"  -- prompt {P}, {res['batch']} x {res['new_tokens']} new tokens")
        for name, f in r["variants"].items():
            print(f"  {name:<44} {f['min']:8.4f} {f['median']:9.4f} {f['max']:8.4f} {f['tokens_per_s_median']:18,.0f}")
        for name, x in r["ratios_of_medians"].items():
            print(f"  ratio of medians {name}: {x:.2f}x")
        print(f"  same random stream -> same tokens in {r['same_tokens_fraction_same_stream']:.1%} of positions "
              f"(HF with vs without cache: {r['hf_cache_vs_no_cache_same_tokens']:.1%})")


# --------------------------------------------------------------------------- 2. RL step


def char_tokenizer(task):
    """A ``PreTrainedTokenizerFast`` with the task's vocabulary: one token a character, BOS prepended."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    t = task.tokenizer
    vocab = {tok: i for i, tok in enumerate(t.vocab)}
    tk = Tokenizer(WordLevel(vocab, unk_token=t.PAD))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(single=f"{t.BOS} $A", special_tokens=[(t.BOS, t.bos_id)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=t.PAD, bos_token=t.BOS,
                                               eos_token=t.EOS)
    tok.padding_side = "left"
    return tok


def addition_reward(task):
    """A TRL reward function computing ``task.rewards`` (what policygrad's ``train`` calls) on TRL's completions."""
    pad = task.tokenizer.pad_id

    def reward(prompts, completions, completion_ids, answer, **kwargs):
        problems = [Problem(p, a) for p, a in zip(prompts, answer, strict=True)]
        width = max(1, max(len(c) for c in completion_ids))
        ids = torch.tensor([list(c) + [pad] * (width - len(c)) for c in completion_ids], dtype=torch.long)
        mask = torch.tensor([[1.0] * len(c) + [0.0] * (width - len(c)) for c in completion_ids])
        return task.rewards(problems, ids, mask).tolist()

    reward.__name__ = "addition_reward"
    return reward


def make_step_timer(args, log: list[str], warmup: int, interleave, flop_step: int):
    """A TrainerCallback timing each step (begin -> end), calling ``interleave(k)`` after the k-th block of
    ``--steps`` timed steps, and counting the FLOPs of step ``flop_step`` (untimed)."""
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    class StepTimer(transformers.TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.threads, self.flops, self._fc = [], [], [], None, None
            self.trainer, self.lengths, self.rewards = None, [], []  # set trainer after building it

        def on_step_begin(self, a, state, control, **kw):
            self.threads.append(torch.get_num_threads())
            pin_threads(args.threads, log, f"TRL step {state.global_step + 1}")
            if state.global_step + 1 == flop_step:
                self._fc = FlopCounterMode(display=False)
                self._fc.__enter__()
            self.begin.append(time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            self.end.append(time.perf_counter())
            n = state.global_step  # steps done
            if self.trainer is not None:  # TRL's own per-step metrics (cleared when it logs at the end)
                m = self.trainer._metrics["train"]
                self.lengths.append(m["completions/mean_length"][-1])
                self.rewards.append(m["reward"][-1])
            if self._fc is not None:
                self._fc.__exit__(None, None, None)
                self.flops, self._fc = int(self._fc.get_total_flops()), None
            if n > warmup and (n - warmup) % args.steps == 0 and (n - warmup) // args.steps <= args.repeats:
                interleave((n - warmup) // args.steps - 1)
                self.begin.append(None)  # marks a block boundary: no "between steps" gap across it
                self.end.append(None)

    return StepTimer()


def bench_rl_step(args, log: list[str], rates: dict) -> dict:
    task = make_task("addition")
    warm, info = pg.load_warm_start("addition")
    tok = char_tokenizer(task)
    probe = task.sample_problems(4, torch.Generator().manual_seed(0))
    assert tok([p.prompt for p in probe])["input_ids"] == task.encode_prompts(probe).tolist(), "tokenizers disagree"
    eos, pad, bos = task.tokenizer.eos_id, task.tokenizer.pad_id, task.tokenizer.bos_id
    hf_warm = gpt2_from_tinygpt(warm, bos=bos, eos=eos, pad=pad)
    check = logit_check(warm, hf_warm, prompt_len=task.prompt_length, completion_len=task.max_new_tokens,
                        prompts=task.encode_prompts(task.sample_problems(16, torch.Generator().manual_seed(1))))
    print(f"  addition warm start ({warm.num_parameters():,} parameters, vocabulary {warm.config.vocab_size}, block "
          f"{warm.config.block_size}) copied into GPT-2: max |logit diff| teacher-forced "
          f"{check['teacher_forced_max_abs_diff']:.1e}, all positions {check['all_positions_max_abs_diff']:.1e} "
          f"(logits up to {check['logit_scale_max_abs']:.1f})")

    shapes = first_step_shapes(task)
    out = {"logit_check": check, "warm_start_heldout_accuracy": info["heldout_accuracy"], "first_step": shapes,
           "by_beta": {}}
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        for beta in BETAS:
            out["by_beta"][beta] = _rl_step_beta(args, log, rates, task, tok, hf_warm, warm, shapes, Path(tmp), beta)
    return out


def _rl_step_beta(args, log, rates, task, tok, hf_warm, warm, shapes, tmp: Path, beta: float) -> dict:
    import datasets
    import transformers
    import trl

    warmup, N, R = args.warmup, args.steps, args.repeats
    method = grpo(beta=beta)
    kw = dict(prompts_per_step=PROMPTS, group_size=G, eval_every=None, lr=LR)
    pg_times, pg_lengths, pg_rewards = [], [], []
    pin_threads(args.threads, log, "policygrad warm-up")
    train(pg.load_warm_start("addition")[0], task, method, steps=max(1, warmup), seed=999, **kw)  # warm-up

    def policygrad_repeat(r: int) -> None:  # one timed train() call of N steps, from a fresh warm start
        policy = pg.load_warm_start("addition")[0]
        pin_threads(args.threads, log, "policygrad repeat")
        t0 = time.perf_counter()
        hist = train(policy, task, method, steps=N, seed=r, **kw)
        pg_times.append((time.perf_counter() - t0) / N)
        pg_lengths.extend(hist["length"])
        pg_rewards.extend(hist["reward"])

    model_dir = tmp / f"gpt2_beta{beta:g}"
    hf_warm.save_pretrained(model_dir)  # TRL rebuilds its reference model from this path (beta > 0)
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32)
    total = warmup + R * N + 1  # the last step is FLOP-counted, not timed
    problems = task.sample_problems(PROMPTS * total, torch.Generator().manual_seed(2))
    ds = datasets.Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})
    settings = to_trl(method)
    config = trl.GRPOConfig(
        output_dir=str(tmp / f"trl_beta{beta:g}"), per_device_train_batch_size=PROMPTS * G,
        max_completion_length=task.max_new_tokens, learning_rate=LR, lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=1.0, max_steps=total, logging_strategy="no", report_to="none",
        save_strategy="no", use_cpu=True, bf16=False, fp16=False, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, gradient_checkpointing=args.trl_gradient_checkpointing, **settings,
    )
    timer = make_step_timer(args, log, warmup, policygrad_repeat, flop_step=total)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.GRPOTrainer(model=model, reward_funcs=addition_reward(task), args=config, train_dataset=ds,
                                  processing_class=tok, callbacks=[timer])
    timer.trainer = trainer
    trainer.remove_callback(transformers.PrinterCallback)  # the end-of-training summary print
    assert trainer.model.dtype == torch.float32 and (beta > 0) == (trainer.ref_model is not None)
    assert config.generation_batch_size == PROMPTS * G and config.steps_per_generation == 1
    gen_cfg = trainer.generation_config
    pin_threads(args.threads, log, "before trainer.train()")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    # per-step timings of the timed blocks (after warm-up, before the FLOP-counted step)
    steps, gaps = [], []
    k = 0
    for b, e in zip(timer.begin, timer.end, strict=True):
        if b is None:
            continue
        k += 1
        if warmup < k <= warmup + R * N:
            steps.append(e - b)
    pairs = list(zip(timer.begin, timer.end, strict=True))
    for (_, e0), (b1, _) in zip(pairs[:-1], pairs[1:], strict=True):
        if e0 is not None and b1 is not None:
            gaps.append(b1 - e0)
    trl_blocks = [statistics.mean(steps[i * N : (i + 1) * N]) for i in range(R)]
    pg_flops = step_flops(warm.config, prompts=PROMPTS, group_size=G, prompt_len=shapes["prompt_len"],
                          completion_width=shapes["completion_width"],
                          decode_forwards=shapes["decode_forwards"], beta=beta)
    counted = count_flops(lambda: train(pg.load_warm_start("addition")[0], task, method,
                                                              steps=1, seed=0, **kw))
    comparable = pg_flops["total"] - pg_flops["decode_attention_values"]
    rate_model = model_rate(rates)[1] * 1e9
    rate_big = rates[BIG] * 1e9
    pg_s, trl_s = stats(pg_times), stats(trl_blocks)
    res = {
        "beta": beta,
        "policygrad_seconds_per_step": pg_s,
        "trl_seconds_per_step": trl_s,
        "trl_seconds_per_step_each_step": steps,
        "trl_between_steps_seconds_median": float(statistics.median(gaps)) if gaps else None,
        "ratio_of_medians_trl_over_policygrad": trl_s["median"] / pg_s["median"],
        "policygrad_mean_completion_length": float(statistics.mean(pg_lengths)),
        "trl_mean_completion_length": float(statistics.mean(timer.lengths[warmup : warmup + R * N])),
        "policygrad_mean_reward": float(statistics.mean(pg_rewards)),
        "trl_mean_reward": float(statistics.mean(timer.rewards[warmup : warmup + R * N])),
        "trl_threads_seen_at_step_begin": sorted(set(timer.threads)),
        "trl_settings": settings,
        "trl_generation_config": {"top_k": gen_cfg.top_k, "top_p": gen_cfg.top_p,
                                  "temperature": gen_cfg.temperature, "eos_token_id": gen_cfg.eos_token_id,
                                  "max_new_tokens": gen_cfg.max_new_tokens},
        "trl_per_device_train_batch_size": config.per_device_train_batch_size,
        "trl_generation_batch_size": config.generation_batch_size,
        "trl_steps_per_generation": config.steps_per_generation,
        "trl_optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__ + f" ({config.optim})",
        "flops": {
            "floor_rate": dict(zip(("name", "gflops"), model_rate(rates), strict=True)),
            "policygrad_analytic": pg_flops,
            "policygrad_flop_counter": counted,
            "policygrad_analytic_without_decode_att_values": comparable,
            "analytic_over_counter": comparable / counted if counted else None,
            "trl_flop_counter": timer.flops,
            "policygrad_floor_s_model_rate": pg_flops["total"] / rate_model,
            "policygrad_floor_s_large_matmul_rate": pg_flops["total"] / rate_big,
            "policygrad_distance_from_floor_model_rate": pg_s["median"] / (pg_flops["total"] / rate_model),
            "policygrad_distance_from_floor_large_matmul_rate": pg_s["median"] / (pg_flops["total"] / rate_big),
            "trl_distance_from_floor_model_rate": (trl_s["median"] / (timer.flops / rate_model)
                                                   if timer.flops else None),
        },
    }
    del trainer, model
    return res


def print_rl(res: dict, rates: dict) -> None:
    fs = res["first_step"]
    print(f"  first step replayed: prompt {fs['prompt_len']} tokens, completion width {fs['completion_width']}, max "
          f"length {fs['max_length']}, mean {fs['mean_length']:.2f} -> {fs['decode_forwards']} decode forwards")
    print(f"  {'variant':<44} {'min s':>8} {'median s':>9} {'max s':>8}")
    for beta, r in res["by_beta"].items():
        print(f"  -- GRPO beta = {beta:g}, {PROMPTS} prompts x {G} completions, at most 4 new tokens")
        for name, key in (("policygrad train (s/step)", "policygrad_seconds_per_step"),
                          ("TRL GRPOTrainer (s/step)", "trl_seconds_per_step")):
            f = r[key]
            print(f"  {name:<44} {f['min']:8.4f} {f['median']:9.4f} {f['max']:8.4f}")
        print(f"  ratio of medians TRL / policygrad: {r['ratio_of_medians_trl_over_policygrad']:.2f}x; "
              f"TRL between steps (data fetch + logging check, not in its step): "
              f"{1e3 * (r['trl_between_steps_seconds_median'] or float('nan')):.1f} ms")
        print(f"  mean completion length policygrad {r['policygrad_mean_completion_length']:.2f} vs TRL "
              f"{r['trl_mean_completion_length']:.2f}; mean reward {r['policygrad_mean_reward']:.3f} vs "
              f"{r['trl_mean_reward']:.3f}; TRL threads seen {r['trl_threads_seen_at_step_begin']}")
        f = r["flops"]
        a = f["policygrad_analytic"]
        parts = ", ".join(f"{k} {v / 1e6:.1f}" for k, v in a["parts"].items())
        print(f"  FLOPs of one policygrad step (analytic, MFLOP): {parts}; total {a['total'] / 1e6:.1f}")
        ratio = f["analytic_over_counter"]
        print(f"    FlopCounterMode on one train step: {f['policygrad_flop_counter'] / 1e6:.1f} MFLOP vs analytic "
              f"without the decode attention-value products {f['policygrad_analytic_without_decode_att_values'] / 1e6:.1f}"
              f" (ratio {ratio:.3f}); TRL step (FlopCounterMode, no sdpa): {(f['trl_flop_counter'] or 0) / 1e6:.1f} MFLOP")
        if ratio is None or abs(ratio - 1) > 0.02:
            print("    (FlopCounterMode and the analytic count disagree: the analytic count is the one used)")
        name, rate = model_rate(rates)
        print(f"    floor at {rate:.1f} GFLOP/s (fastest model-shape rate, {name}): "
              f"{1e3 * f['policygrad_floor_s_model_rate']:.2f} ms -> policygrad is "
              f"{f['policygrad_distance_from_floor_model_rate']:.1f}x the floor"
              + (f", TRL {f['trl_distance_from_floor_model_rate']:.1f}x its own" if f["trl_distance_from_floor_model_rate"]
                 else "")
              + f"; at {rates[BIG]:.1f} GFLOP/s (large matmul): "
              f"{f['policygrad_distance_from_floor_large_matmul_rate']:.1f}x")


# --------------------------------------------------------------------------- targets


SAMPLING_TARGET, STEP_TARGET, FLOOR_TARGET = 2.5, 5.0, 3.0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_rows(payload: dict, threads: int) -> list[dict]:
    """The project issue's targets as result rows (ratios of medians from this run)."""
    rows, t = [], f", {threads} thread{'s' if threads > 1 else ''}"
    for P, r in (payload.get("sampling") or {}).get("by_prompt_len", {}).items():
        x = r["ratios_of_medians"]["HF generate (KV cache) / policygrad"]
        rows.append(C.row(f"sampling 256 x 16 new tokens, prompt {P}: HF generate / policygrad{t}",
                          f">= {SAMPLING_TARGET:g}x", f"{x:.2f}x", _verdict(x >= SAMPLING_TARGET)))
    for beta, r in (payload.get("rl_step") or {}).get("by_beta", {}).items():
        x = r["ratio_of_medians_trl_over_policygrad"]
        rows.append(C.row(f"GRPO step, beta {float(beta):g}, 64 x 8: TRL GRPOTrainer / policygrad{t}",
                          f">= {STEP_TARGET:g}x", f"{x:.2f}x", _verdict(x >= STEP_TARGET)))
        d = r["flops"]["policygrad_distance_from_floor_model_rate"]
        rows.append(C.row(f"GRPO step, beta {float(beta):g}: time / matmul floor{t}", f"<= {FLOOR_TARGET:g}x",
                          f"{d:.1f}x", _verdict(d <= FLOOR_TARGET)))
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of every variant (default 5)")
    p.add_argument("--steps", type=int, default=5, help="RL steps per timed repeat (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up RL steps of each side (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sides (default 1)")
    p.add_argument("--only", choices=("sampling", "rl_step"), default=None, help="run one part only")
    p.add_argument("--skip-no-cache", action="store_true", help="do not time HF generate without a cache")
    p.add_argument("--trl-gradient-checkpointing", action="store_true",
                   help="keep GRPOConfig's default gradient_checkpointing=True (default here: False, as policygrad)")
    p.add_argument("--fill-memory", action="store_true",
                   help="NaN-fill new memory under deterministic algorithms, torch's default (off in seed_everything)")
    args = p.parse_args(argv)
    if args.device != "cpu":
        return C.skip(NAME, "the peer comparison runs on CPU only", args.json)
    why = peers_available()
    if why is not None:
        return C.skip(NAME, why, args.json)
    if min(args.repeats, args.steps, args.threads) < 1 or args.warmup < 0:
        p.error("--repeats, --steps and --threads must be >= 1, --warmup >= 0")
    device, _ = C.setup("cpu")  # seeds, one thread, deterministic algorithms without NaN-filled memory
    torch.set_num_threads(args.threads)
    torch.utils.deterministic.fill_uninitialized_memory = args.fill_memory
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    C.header(f"policygrad vs Hugging Face generate and TRL GRPOTrainer, {args.threads} thread(s)", device)
    v = versions()
    print(f"   transformers {v['transformers']}, trl {v['trl']}, datasets {v['datasets']}; new memory "
          f"{'NaN-filled' if args.fill_memory else 'not filled'}; TRL gradient checkpointing "
          f"{'on' if args.trl_gradient_checkpointing else 'off'}")
    log: list[str] = []
    rates = matmul_rates()
    print("  float32 matmul rate on this thread count: "
          + ", ".join(f"{k} {x:.1f} GFLOP/s" for k, x in rates.items()))
    payload = {"device": "cpu", "machine": C.machine_info(device), "versions": v, "threads": args.threads,
               "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
               "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
               "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
               "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "matmul_gflops": rates}
    if args.only in (None, "sampling"):
        print("== 1. sampling: TinyGPT.sample (KV cache) vs GPT2LMHeadModel.generate")
        sys.stdout.flush()
        payload["sampling"] = res = bench_sampling(args, log)
        print_sampling(res)
    if args.only in (None, "rl_step"):
        print("== 2. one RL step: policygrad.train(grpo) vs trl.GRPOTrainer")
        sys.stdout.flush()
        payload["rl_step"] = res = bench_rl_step(args, log, rates)
        print_rl(res, rates)
    payload["rows"] = target_rows(payload, args.threads)
    payload["thread_repins"] = log
    print("  threads: " + ("; ".join(log) if log else f"torch stayed at {args.threads} thread(s) throughout"))
    payload["machine_after"] = {"load_average_1_5_15min": C.load_average()}
    C.emit(NAME, payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
