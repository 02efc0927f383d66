"""KV-cache sampling throughput of the default TinyGPT, and its speed-up over recomputing the prefix.

Target (project issue): with ``TinyGPT(TinyGPTConfig(vocab_size=16, block_size=32))`` (2 layers, 4 heads,
width 64, 103,168 parameters) on one CPU thread, ``sample`` of 256 rows x 16 new tokens runs at
>= 80,000 tokens/s with the KV cache, and >= 3x faster than ``use_cache=False`` (which re-runs the whole
prefix at every step). Both are timed in the same run, interleaved (cached, uncached, cached, ...), so
the ratio compares like with like on a shared machine.

Prompts are 16 random tokens (so prompt + completion = 32 = block_size), ``eos=None`` so every row
produces exactly 16 tokens: tokens/s = 256 * 16 / seconds (the prompt's prefill is inside the timed call).
Also printed: the time of that prefill alone (``forward_tokens`` on the 256 x 16 prompt tokens), so the
throughput of the generation steps themselves can be read off.

    python benchmarks/bench_sampling.py [--repeats 9] [--device cuda] [--profile] [--json out.json]
"""

from __future__ import annotations

import sys

import _common as C
import torch

import policygrad as pg

NAME = "sampling"
BATCH, PROMPT_LEN, NEW_TOKENS = 256, 16, 16
TARGET_TOKENS_PER_S = 80_000
TARGET_SPEEDUP = 3.0


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=9, help="timed repeats of each variant (default 9)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one cached call")
    args = p.parse_args(argv)
    device, why = C.setup(args.device)
    if device is None:
        return C.skip(NAME, why, args.json)
    C.header("TinyGPT sampling: KV cache vs recomputing the prefix", device)

    cfg = pg.TinyGPTConfig(vocab_size=16, block_size=32)
    model = pg.TinyGPT(cfg, generator=torch.Generator().manual_seed(0)).to(device).eval()
    prompts = torch.randint(cfg.vocab_size, (BATCH, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    prompts = prompts.to(device)
    n_tokens = BATCH * NEW_TOKENS

    def run(use_cache: bool, seed: int = 0):
        g = torch.Generator().manual_seed(seed)  # CPU generator: same tokens on any device
        return model.sample(prompts, max_new_tokens=NEW_TOKENS, eos=None, use_cache=use_cache, generator=g)

    # sanity: both paths produce 256 x 16 tokens, and the same tokens for the same random stream
    a, b = run(True), run(False)
    assert a.completions.shape == (BATCH, NEW_TOKENS) and bool((a.mask == 1).all())
    same = float((a.completions == b.completions).double().mean())
    max_lp = float((a.log_probs - b.log_probs).abs().max())

    for _ in range(2):  # warm-up
        run(True), run(False)
    def prefill():  # the cached sampler's first forward: all 16 prompt tokens of the 256 rows, into a fresh cache
        return model.forward_tokens(prompts, model.new_cache(BATCH, PROMPT_LEN + NEW_TOKENS))

    prefill()
    t_cache, t_full, t_prefill = [], [], []
    for r in range(args.repeats):  # interleaved, so all variants see the same machine load
        t_cache.append(C.timed(lambda r=r: run(True, r), device)[0])
        t_full.append(C.timed(lambda r=r: run(False, r), device)[0])
        t_prefill.append(C.timed(prefill, device)[0])

    tps_cache = [n_tokens / t for t in t_cache]
    tps_full = [n_tokens / t for t in t_full]
    ratios = [f / c for f, c in zip(t_full, t_cache, strict=True)]  # per interleaved pair
    fig = {
        "cache_tokens_per_s_median": C.med(tps_cache),
        "cache_tokens_per_s_best": max(tps_cache),
        "no_cache_tokens_per_s_median": C.med(tps_full),
        "no_cache_tokens_per_s_best": max(tps_full),
        "cache_seconds_median": C.med(t_cache),
        "no_cache_seconds_median": C.med(t_full),
        "prefill_seconds_median": C.med(t_prefill),
        "prefill_share_of_cached_call": C.med(t_prefill) / C.med(t_cache),
        "decode_tokens_per_s_median": n_tokens / max(C.med(t_cache) - C.med(t_prefill), 1e-9),
        "speedup_median_of_pairs": C.med(ratios),
        "speedup_best_vs_best": min(t_full) / min(t_cache),
        "same_tokens_fraction": same,
        "max_abs_logprob_diff": max_lp,
        "repeats": args.repeats,
    }
    rows = [
        C.row(
            f"KV-cache sampling, {BATCH} x {NEW_TOKENS} new tokens (prompt {PROMPT_LEN})",
            f">= {TARGET_TOKENS_PER_S:,} tok/s",
            f"{fig['cache_tokens_per_s_median']:,.0f} tok/s (best {fig['cache_tokens_per_s_best']:,.0f})",
            C.status(fig["cache_tokens_per_s_median"], TARGET_TOKENS_PER_S, best=fig["cache_tokens_per_s_best"]),
        ),
        C.row(
            "sampling without cache (use_cache=False), same shapes",
            "(reference)",
            f"{fig['no_cache_tokens_per_s_median']:,.0f} tok/s (best {fig['no_cache_tokens_per_s_best']:,.0f})",
            "—",
        ),
        C.row(
            "speed-up of the cache over recomputing the prefix",
            f">= {TARGET_SPEEDUP:.0f}x",
            f"{fig['speedup_median_of_pairs']:.1f}x (best/best {fig['speedup_best_vs_best']:.1f}x)",
            C.status(fig["speedup_median_of_pairs"], TARGET_SPEEDUP, best=fig["speedup_best_vs_best"]),
        ),
    ]
    print(f"  seconds per call: cache median {fig['cache_seconds_median']:.4f} s, no cache {fig['no_cache_seconds_median']:.4f} s "
          f"({args.repeats} interleaved repeats)")
    print(f"  of the cached call, the prefill of the 256 x {PROMPT_LEN} prompt tokens (forward_tokens) takes "
          f"{fig['prefill_seconds_median']:.4f} s = {fig['prefill_share_of_cached_call']:.0%}; the rest generates "
          f"{n_tokens} tokens at {fig['decode_tokens_per_s_median']:,.0f} tokens/s")
    C.print_rows(rows)
    print(f"  same random stream -> identical tokens in {same:.1%} of positions; max |log-prob diff| {max_lp:.1e}")
    print("  (against Hugging Face generate on the same weights: bench_peers.py)")
    if args.profile:
        print(C.profile_table(lambda: run(True)))
    C.emit(NAME, {"device": str(device), "machine": C.machine_info(device), "parameters": model.num_parameters(),
                  "config": {"vocab_size": 16, "block_size": 32, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
                             "n_embd": cfg.n_embd},
                  "figures": fig, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
