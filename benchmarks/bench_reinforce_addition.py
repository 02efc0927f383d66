"""How fast REINFORCE with the batch leave-one-out baseline improves the addition warm start, in CPU seconds.

Target (project issue): from the shipped addition warm start (``policygrad.load_warm_start("addition")``,
held-out greedy accuracy 0.4292), ``train(..., "reinforce_baseline", lr=1e-4, prompts_per_step=64,
group_size=8)`` gains >= 15 points of held-out greedy accuracy within 60 s of training on one CPU thread.

Protocol, per seed: ``train`` runs in chunks of ``--eval-every`` (25) steps (of ``--early-every`` (5) steps
during the first 25, to time the +15 points finely), each call continuing the same ``History``
(``history=``); after each chunk the held-out greedy accuracy on ``task.eval_set(480)`` is
measured *outside* the timed region (so the 60 s budget is training time only; evaluation time is reported
separately), and the run stops once the accumulated training time passes ``--budget`` (60) s. Reported:
accuracy at the start and at 15/30/45/60 s (the latest evaluation at or before that training time), the
training time and step at which each seed first reaches +15 points, and the final accuracy. Training time
is wall clock; the process CPU time of the same calls is reported too (on a shared machine it is the
smaller, less load-dependent figure). Verdict:
PASS if every seed reaches +15 points within the budget.

Chunking caveats (``train`` has no callback): each call builds a new Adam (its moments restart every chunk),
re-copies the reference (only used for the ``kl_ref`` metric by this method) and re-seeds its generator, so
chunk ``k`` of seed ``s`` uses ``seed = 1000 * s + k`` (otherwise every chunk would redraw the same problems).

The default runs group_size=8 for seeds 0 1 2 and group_size=1 (64 completions per step instead of 512) for
seed 0 — about 4 x 60 s of training, ~4.5 min in all; ``--seeds`` / ``--g1-seeds`` change that.

    python benchmarks/bench_reinforce_addition.py [--seeds 0 1 2] [--g1-seeds 0] [--budget 60] [--device cuda]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# accuracy gains on the book's reference numeric path (policygrad.numeric_path), pinned before torch loads
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import numeric_env  # noqa: E402

numeric_env.pin()

import _common as C  # noqa: E402

import policygrad as pg  # noqa: E402
from policygrad.lm.tasks import evaluate, make_task  # noqa: E402
from policygrad.train import History, train  # noqa: E402

NAME = "reinforce_addition"
METHOD = "reinforce_baseline"
LR, PROMPTS = 1e-4, 64
TARGET_GAIN = 0.15
CHECKPOINTS = (15.0, 30.0, 45.0, 60.0)


def run_seed(seed: int, group_size: int, *, budget: float, eval_every: int, early_every: int, eval_set, task,
             device) -> dict:
    """One run: chunks of ``eval_every`` steps (``early_every`` during the first ``eval_every`` steps) until
    ``budget`` seconds of training; evaluation untimed."""
    pg.seed_everything(seed)
    policy, _ = pg.load_warm_start("addition", device=device)
    hist = History()
    start_acc = evaluate(policy, task, eval_set)["accuracy"]
    hist.log(step=0, samples=0, heldout_accuracy=start_acc, seconds=0.0)
    curve = [(0.0, 0, start_acc)]  # (training seconds, step, held-out accuracy)
    train_s = eval_s = cpu_s = 0.0
    chunk = 0
    early = [early_every] * (eval_every // early_every) if 0 < early_every < eval_every else []
    while train_s < budget:
        n = early[chunk] if chunk < len(early) else eval_every
        c0 = time.process_time()
        dt, _ = C.timed(lambda k=chunk, n=n: train(policy, task, METHOD, steps=n, prompts_per_step=PROMPTS,
                                              group_size=group_size, lr=LR, eval_every=None, seed=1000 * seed + k,
                                              history=hist), device)
        cpu_s += time.process_time() - c0
        train_s += dt
        chunk += 1
        t0 = time.perf_counter()
        acc = evaluate(policy, task, eval_set)["accuracy"]
        eval_s += time.perf_counter() - t0
        hist.rows[-1]["heldout_accuracy"] = acc  # same column train() would have logged with eval_every
        curve.append((train_s, hist.rows[-1]["step"], acc))

    def acc_at(t: float) -> float:
        return [a for s, _, a in curve if s <= t][-1]

    hit = next(((s, k, a) for s, k, a in curve if a >= start_acc + TARGET_GAIN - 1e-9), None)
    return {
        "seed": seed,
        "group_size": group_size,
        "start": start_acc,
        "at": {f"{t:g}": acc_at(t) for t in CHECKPOINTS if t <= budget} | {"budget": acc_at(budget)},
        "final": curve[-1][2],
        "final_seconds": curve[-1][0],
        "steps": curve[-1][1],
        "seconds_per_step": curve[-1][0] / curve[-1][1],
        "time_to_target": None if hit is None else hit[0],
        "step_to_target": None if hit is None else hit[1],
        "reached_within_budget": hit is not None and hit[0] <= budget,
        "eval_seconds": eval_s,
        "train_cpu_seconds": cpu_s,
        "mean_reward_last_25_steps": sum(hist["reward"][-25:]) / len(hist["reward"][-25:]),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds with group_size=8 (default 0 1 2)")
    p.add_argument("--g1-seeds", type=int, nargs="*", default=[0], help="seeds with group_size=1 (default 0)")
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per run (default 60)")
    p.add_argument("--eval-every", type=int, default=25, help="steps between held-out evaluations (default 25)")
    p.add_argument("--early-every", type=int, default=5,
                   help="steps between evaluations during the first --eval-every steps, to time +15 points "
                        "more finely (default 5; 0 = evaluate every --eval-every steps throughout)")
    p.add_argument("--eval-size", type=int, default=480, help="held-out problems (default 480)")
    args = p.parse_args(argv)
    device, why = C.setup(args.device)
    if device is None:
        return C.skip(NAME, why, args.json)
    C.header(f"REINFORCE ({METHOD}) from the addition warm start, lr={LR}, {PROMPTS} prompts/step, "
             f"{args.budget:g} s of training per run", device)
    task = make_task("addition")
    eval_set = task.eval_set(args.eval_size)
    runs = []
    for G, seeds in ((8, args.seeds), (1, args.g1_seeds)):
        for seed in seeds:
            r = run_seed(seed, G, budget=args.budget, eval_every=args.eval_every, early_every=args.early_every,
                         eval_set=eval_set, task=task, device=device)
            runs.append(r)
            at = "  ".join(f"{k}s {v:.3f}" for k, v in r["at"].items() if k != "budget")
            ttt = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s (step {r['step_to_target']})"
            print(f"  G={G} seed {seed}: start {r['start']:.3f}  {at}  | final {r['final']:.3f} after "
                  f"{r['final_seconds']:.1f} s / {r['steps']} steps ({r['seconds_per_step']:.3f} s/step); "
                  f"process CPU {r['train_cpu_seconds']:.1f} s; +15 pts: {ttt}; eval {r['eval_seconds']:.1f} s untimed",
                  flush=True)

    rows = []
    for G in (8, 1):
        rs = [r for r in runs if r["group_size"] == G]
        if not rs:
            continue
        gains = [r["at"]["budget"] - r["start"] for r in rs]
        n_ok = sum(r["reached_within_budget"] for r in rs)
        times = ", ".join("—" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s" for r in rs)
        verdict = "PASS" if n_ok == len(rs) else ("FAIL" if n_ok == 0 else f"PARTIAL ({n_ok}/{len(rs)} seeds)")
        rows.append(C.row(
            f"held-out accuracy gain in {args.budget:g} s, G={G} x {PROMPTS} prompts (seeds {', '.join(str(r['seed']) for r in rs)})",
            f">= +{100 * TARGET_GAIN:.0f} pts",
            f"+{100 * C.med(gains):.1f} pts median ({', '.join(f'{100 * g:+.1f}' for g in gains)}); "
            f"+15 pts at {times}",
            verdict if G == 8 else f"{verdict} (informative)",
        ))
    C.print_rows(rows)
    per_seed = [{k: v for k, v in r.items() if k != "curve"} for r in runs]
    C.emit(NAME, {"device": str(device), "machine": C.machine_info(device), "budget_s": args.budget,
                  "eval_size": args.eval_size, "eval_every": args.eval_every, "lr": LR, "prompts_per_step": PROMPTS,
                  "rows": rows, "runs": per_seed, "curves": {f"G{r['group_size']}_seed{r['seed']}": r["curve"] for r in runs}},
           args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
