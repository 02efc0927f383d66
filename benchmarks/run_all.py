"""Run every benchmark (each in its own process) and write ``benchmarks/results.md``.

    python benchmarks/run_all.py                 # CPU, one thread; writes benchmarks/results.md
    python benchmarks/run_all.py --device cuda   # writes benchmarks/results-cuda.md (skipped without a GPU)
    python benchmarks/run_all.py --only sampling rl_step
    python benchmarks/run_all.py --render-only   # re-format results.md from results.json, running nothing

Each script prints its own figures as it runs; this file only collects their JSON and formats the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C

#: name -> (script, extra arguments). The peers (Hugging Face generate, TRL's GRPOTrainer) need the parity
#: extra; without it those two entries report "skipped".
SCRIPTS = {
    "sampling": ("bench_sampling.py", []),
    "rl_step": ("bench_rl_step.py", []),
    "peers": ("bench_peers.py", []),
    "peers_2_threads": ("bench_peers.py", ["--threads", "2"]),
    "reinforce_addition": ("bench_reinforce_addition.py", []),
}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["figure"], r["target"], r["measured"], f"**{r['pass']}**" if r["pass"] != "—" else "—"] for r in rows]


def source_revision() -> str:
    """The git commit the package was measured at, noting uncommitted changes under src/ ("unknown" outside git)."""
    root = C.HERE.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes in src/)" if dirty else "")


def render_peers(r: dict | None) -> list[str]:
    """The section of one ``bench_peers.py`` run (sampling and RL step against HF and TRL, FLOPs)."""
    if not r or "skipped" in r:
        return []
    th = r["threads"]
    v = r["versions"]
    out = [f"## Against the peers, {th} thread{'s' if th > 1 else ''}", "",
           f"One process, the two sides interleaved repeat by repeat: transformers {v['transformers']}, "
           f"trl {v['trl']}, torch {v['torch']}; {r['repeats']} repeats"
           + (f" of {r['steps']} RL steps each after {r['warmup']} warm-up steps" if "rl_step" in r else "")
           + ". Seconds: min / median / max over repeats; ratio = peer median / policygrad median.", ""]
    samp = r.get("sampling")
    if samp:
        rows = []
        for P, x in samp["by_prompt_len"].items():
            for name, f in x["variants"].items():
                rows.append([P, name, f"{f['min']:.4f} / {f['median']:.4f} / {f['max']:.4f}",
                             f"{f['tokens_per_s_median']:,.0f}"])
            for name, q in x["ratios_of_medians"].items():
                rows.append([P, f"ratio {name}", f"{q:.2f}x", ""])
        worst = max(c["teacher_forced_max_abs_diff"] for c in samp["logit_check"].values())
        out += [f"Sampling: {samp['batch']} prompts x {samp['new_tokens']} new tokens, `eos=None`; GPT-2 of the same "
                f"shape holding TinyGPT's weights (logits agree to {worst:.1e}).", "",
                table(["prompt", "variant", "seconds (min / median / max)", "tokens/s (median)"], rows), ""]
    rl = r.get("rl_step")
    if rl:
        rows, flop_rows = [], []
        for beta, x in rl["by_beta"].items():
            for name, key in (("policygrad `train`", "policygrad_seconds_per_step"),
                              ("TRL `GRPOTrainer`", "trl_seconds_per_step")):
                f = x[key]
                rows.append([f"{float(beta):g}", name, f"{f['min']:.4f} / {f['median']:.4f} / {f['max']:.4f}"])
            rows.append([f"{float(beta):g}", "ratio TRL / policygrad", f"{x['ratio_of_medians_trl_over_policygrad']:.2f}x"])
            fl = x["flops"]
            parts = fl["policygrad_analytic"]["parts"]
            flop_rows.append([f"{float(beta):g}", *(f"{parts[k] / 1e6:.0f}" for k in parts),
                              f"{fl['policygrad_analytic']['total'] / 1e6:.0f}",
                              f"{(fl['trl_flop_counter'] or 0) / 1e6:.0f}",
                              f"{1e3 * fl['policygrad_floor_s_model_rate']:.1f}",
                              f"{fl['policygrad_distance_from_floor_model_rate']:.1f}x",
                              "—" if not fl["trl_distance_from_floor_model_rate"]
                              else f"{fl['trl_distance_from_floor_model_rate']:.1f}x"])
        name, rate = next(iter(rl["by_beta"].values()))["flops"]["floor_rate"].values()
        out += ["One GRPO step from the addition warm start, 64 prompts x 8 completions, at most 4 new tokens, "
                "seconds per step:", "", table(["beta", "side", "seconds per step (min / median / max)"], rows), "",
                f"Matmul FLOPs of one step (MFLOP; policygrad counted from the shapes, TRL by `FlopCounterMode`) and "
                f"the floor: the step's FLOPs at {rate:.1f} GFLOP/s, the fastest float32 matmul rate measured on the "
                f"model's shapes ({name}) on this thread count.", "",
                table(["beta", *[k.replace("_", " ") for k in parts], "policygrad total", "TRL total",
                       "policygrad floor (ms)", "policygrad / floor", "TRL / its floor"], flop_rows), ""]
    return out


README = C.HERE.parent / "README.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def readme_table(saved: dict) -> str:
    """The README's performance table: every target row of the saved run, with its date and machine."""
    results = saved["results"]
    first = next((r for r in results.values() if "machine" in r), None)
    m = first["machine"] if first else {"date": "?", "cpu": "?", "cpu_count": "?"}
    rows = [r for name in SCRIPTS if name in results and "rows" in results[name] for r in results[name]["rows"]]
    head = (f"Measured by `make bench` on {m['date']} ({m['cpu']}, {m['cpu_count']} cores, torch "
            f"{m.get('torch', '?')}, commit {saved.get('revision', 'unknown')}); one thread unless the row says "
            "two. Generated from `benchmarks/results.json` by `benchmarks/run_all.py`; details in "
            "[`benchmarks/results.md`](benchmarks/results.md).")
    return head + "\n\n" + table(["figure", "target", "measured (median)", "verdict"], fmt_rows(rows))


def write_readme(saved: dict) -> bool:
    """Replace the README's table between the bench-table markers; False if the markers are missing."""
    text = README.read_text(encoding="utf-8")
    a, b = text.find(START), text.find(END)
    if a < 0 or b < a:
        return False
    README.write_text(text[: a + len(START)] + "\n" + readme_table(saved) + "\n" + text[b:], encoding="utf-8")
    return True


def render(results: dict[str, dict], device: str, load_before: str, load_after: str, wall: dict[str, float],
           revision: str = "unknown") -> str:
    first = next((r for r in results.values() if "machine" in r), None)
    m = first["machine"] if first else C.machine_info()
    out = [
        "# Benchmark results",
        "",
        f"Generated by `python benchmarks/run_all.py{' --device ' + device if device != 'cpu' else ''}` on {m['date']}. "
        "Regenerate rather than edit. Timings are medians over repeats (best repeat in brackets) measured in one run; "
        "ratios compare figures taken in the same run. See `benchmarks/README.md` for what each figure measures.",
        "",
        "## Machine",
        "",
        table(["", ""], [
            ["platform", m["platform"]],
            ["CPU", f"{m['cpu']} — `os.cpu_count()` = {m['cpu_count']}"],
            ["Python / torch / policygrad", f"{m['python']} / {m['torch']} / {m['policygrad']} at commit {revision}"],
            ["torch threads", f"{m['torch_threads']} (`policygrad.seed_everything(0)` pins one)"],
            ["device", device + (f" ({m['gpu']})" if "gpu" in m else "")],
            ["load average (1/5/15 min) before / after", f"{load_before} — {load_after}"],
            ["wall time per script", ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())],
        ]),
        "",
        "The benchmark itself keeps one core busy (load 1); load above that is other processes on the same "
        f"{m['cpu_count']} cores, which slows some repeats and widens the gap between median and best.",
        "",
    ]
    samp, step, rl = results.get("sampling"), results.get("rl_step"), results.get("reinforce_addition")
    models = []
    if samp and "config" in samp:
        c = samp["config"]
        models.append([f"sampling: `TinyGPT(TinyGPTConfig(vocab_size={c['vocab_size']}, block_size={c['block_size']}))`",
                       f"{c['n_layer']} layers, {c['n_head']} heads, width {c['n_embd']}", f"{samp['parameters']:,}"])
    if step and "parameters" in step:
        models.append(["RL step / REINFORCE: `load_warm_start(\"addition\")`",
                       "2 layers, 4 heads, width 64, vocabulary 15, block 11", f"{step['parameters']:,}"])
    if models:
        out += ["## Models", "", table(["model", "size", "parameters"], models), ""]

    out += ["## Targets", ""]
    summary, skipped = [], []
    for name in SCRIPTS:
        r = results.get(name)
        if r is None:
            continue
        if "skipped" in r:
            skipped.append(f"* `{name}`: skipped — {r['skipped']}")
        else:
            summary += fmt_rows(r["rows"])
    if summary:
        out += [table(["figure", "target", "measured", "pass/fail"], summary), ""]
    out += skipped + ([""] if skipped else [])
    out += [
        "`PASS` = the median meets the target; `PASS (best only)` = only the best repeat does (the median was "
        "slowed by other load on the machine); `FAIL` = neither.",
        "",
    ]

    for name in ("peers", "peers_2_threads"):
        out += render_peers(results.get(name))

    if samp and "figures" in samp:
        f = samp["figures"]
        out += [
            "## Sampling details",
            "",
            f"256 random prompts of 16 tokens, 16 new tokens each, `eos=None`; {f['repeats']} interleaved repeats of "
            f"each variant. Seconds per call: {f['cache_seconds_median']:.4f} s with the cache, "
            f"{f['no_cache_seconds_median']:.4f} s without. Of the cached call, the prefill of the 256 x 16 prompt "
            f"tokens (`forward_tokens`, timed alone) takes {f['prefill_seconds_median']:.4f} s "
            f"({f['prefill_share_of_cached_call']:.0%}); the 16 generation steps alone therefore run at "
            f"≈ {f['decode_tokens_per_s_median']:,.0f} tokens/s. With the same random stream both variants drew identical "
            f"tokens in {f['same_tokens_fraction']:.1%} of positions (max |log-prob difference| "
            f"{f['max_abs_logprob_diff']:.1e}), so the ratio compares the same computation.",
            "",
        ]
    if step and "breakdown" in step:
        f = step["figures"]
        sh = f["batch_shapes"]
        out += [
            "## RL step breakdown",
            "",
            f"`train(policy, task, \"reinforce_baseline\", prompts_per_step=64, group_size=8, eval_every=None)`: "
            f"{f['repeats']} repeats of {f['steps_per_repeat']} steps after 5 warm-up steps, each from a fresh warm start; "
            f"seconds/step per repeat: {', '.join(f'{x:.3f}' for x in f['seconds_per_step_each_repeat'])}. "
            f"Batch: {sh['rows']} rows, prompt {sh['prompt_len']} tokens, up to {sh['completion_width']} new tokens "
            f"(mean length {sh['mean_length']:.2f}). Stages: the same package calls `train` makes, with the same "
            f"shapes, timed one by one ({f['breakdown_iters']} iterations interleaved with the repeats above, median).",
            "",
            table(["stage", "median (ms)", "best (ms)", "share of the step"], [
                [b["stage"], f"{b['median_ms']:.1f}", "—" if b["best_ms"] != b["best_ms"] else f"{b['best_ms']:.1f}",
                 "—" if b["share"] != b["share"] else f"{b['share']:.0%}"] for b in step["breakdown"]
            ]),
            "",
        ]
    if rl and "runs" in rl:
        cps = [k for k in ("15", "30", "45", "60") if any(k in r["at"] for r in rl["runs"])]
        out += [
            "## REINFORCE on addition",
            "",
            f"`train(..., \"reinforce_baseline\", lr={rl['lr']}, prompts_per_step={rl['prompts_per_step']}, group_size=G)` "
            f"from the addition warm start for {rl['budget_s']:g} s of training per run, in chunks continuing one "
            f"`History`; held-out greedy accuracy on `task.eval_set({rl['eval_size']})` after every chunk "
            f"({rl['eval_every']} steps; 5 during the first {rl['eval_every']}), untimed. \"at N s\" = the latest "
            "evaluation at or before N s of training. Time to +15 points is resolved to one chunk.",
            "",
            table(["G", "seed", "start", *[f"at {k} s" for k in cps], "final (s, steps)", "s/step",
                   "+15 pts reached at", "train CPU s", "eval s (untimed)"], [
                [r["group_size"], r["seed"], f"{r['start']:.3f}", *[f"{r['at'][k]:.3f}" for k in cps],
                 f"{r['final']:.3f} ({r['final_seconds']:.1f} s, {r['steps']})", f"{r['seconds_per_step']:.3f}",
                 "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s (step {r['step_to_target']})",
                 f"{r['train_cpu_seconds']:.1f}", f"{r['eval_seconds']:.1f}"] for r in rl["runs"]
            ]),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--only", nargs="*", choices=list(SCRIPTS), default=list(SCRIPTS), help="benchmarks to run")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: re-render the markdown from the JSON saved next to it by the last run")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown file to write (default benchmarks/results.md, or results-<device>.md off CPU)")
    args = p.parse_args(argv)
    partial = set(args.only) != set(SCRIPTS) and not args.render_only
    stem = ("results" if args.device == "cpu" else f"results-{args.device}") + ("-partial" if partial else "")
    out = args.out or C.HERE / f"{stem}.md"  # a subset never overwrites the full run the README quotes
    raw = out.with_suffix(".json")
    if args.render_only:
        saved = json.loads(raw.read_text(encoding="utf-8"))
        out.write_text(render(saved["results"], saved["device"], saved["load_before"], saved["load_after"], saved["wall"],
                              saved.get("revision", "unknown")), encoding="utf-8")
        if args.device == "cpu" and write_readme(saved):
            print("[run_all] re-rendered the README's performance table")
        print(f"[run_all] re-rendered {out} from {raw}")
        return 0
    load_before, revision = C.load_average(), source_revision()
    results: dict[str, dict] = {}
    wall: dict[str, float] = {}
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only:
            js = Path(tmp) / f"{name}.json"
            t0 = time.perf_counter()
            script, extra = SCRIPTS[name]
            proc = subprocess.run([sys.executable, str(C.HERE / script), "--device", args.device, "--json", str(js),
                                   *extra], check=False)
            wall[name] = time.perf_counter() - t0
            if proc.returncode != 0 or not js.exists():
                print(f"[run_all] {name} failed with exit status {proc.returncode}", file=sys.stderr)
                status = 1
                continue
            results[name] = json.loads(js.read_text(encoding="utf-8"))
    load_after = C.load_average()
    saved = {"device": args.device, "revision": revision, "load_before": load_before, "load_after": load_after,
             "wall": wall, "results": results}
    raw.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    out.write_text(render(results, args.device, load_before, load_after, wall, revision), encoding="utf-8")
    if args.device == "cpu" and set(args.only) == set(SCRIPTS) and write_readme(saved):
        print("[run_all] wrote the README's performance table")
    print(f"[run_all] wrote {out} (figures as JSON: {raw})")
    return status


if __name__ == "__main__":
    sys.exit(main())
