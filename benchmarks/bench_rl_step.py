"""Seconds per full RL step of ``policygrad.train.train`` on the addition warm start, and where they go.

Target (project issue): one step of ``train(policy, task, "reinforce_baseline", prompts_per_step=64,
group_size=8)`` — sample 64 prompts x 8 completions (4 new tokens each), rewards,
advantages, loss, backward, clipped Adam step — takes <= 0.10 s on one CPU thread.

Full step: ``train`` is called with ``eval_every=None`` for ``--warmup`` steps, then ``--repeats`` times
for ``--steps`` steps each (from a freshly loaded warm start every time); seconds/step = call time / steps,
reported as the median (and best) over repeats. The call time includes ``train``'s per-call set-up
(deep copy of the reference, a new Adam), amortised over the steps.

Breakdown: the same stages, with the same shapes and the same package functions that ``train`` calls,
timed one by one for ``--breakdown-iters`` iterations (median per stage): problem draw + encoding,
sampling, rewards, batch + advantages, policy forward + backward, clip + Adam step (no reference
forward: ``reinforce_baseline`` has no KL term, and ``train`` runs the reference only for methods that
read it, or when ``kl_ref=True`` asks for the metric).
"other" is the measured full step minus the sum of the stages (``train``'s metrics, ``.item()`` calls,
per-call set-up). An extra line times the policy forward + backward without sharing the prompt prefix
across the group (``group_size=1`` in the forward) to show what that sharing buys.

    python benchmarks/bench_rl_step.py [--steps 20] [--repeats 5] [--device cuda] [--profile] [--json out.json]
"""

from __future__ import annotations

import sys
import time

import _common as C
import torch

import policygrad as pg
from policygrad.lm.tasks import make_task
from policygrad.methods import get_method
from policygrad.rollout import RolloutBatch
from policygrad.train import train
from policygrad.trajectory_side import token_log_probs

NAME = "rl_step"
PROMPTS, G = 64, 8
METHOD = "reinforce_baseline"
TARGET_S = 0.10


class StageBreakdown:
    """The stages of one RL step, built from the same calls ``train`` makes, timed one by one.

    State (policy, Adam, generator) persists across :meth:`run` calls, so the iterations can be
    interleaved with the full-step timings and both see the same machine load.
    """

    NAMES = ("problems + encode", "sampling", "rewards", "batch + advantages",
             "policy forward + backward", "clip + Adam step")
    UNSHARED = "policy forward + backward, prefix not shared"

    def __init__(self, device: torch.device, seed: int) -> None:

        self.device = device
        self.policy, _ = pg.load_warm_start("addition", device=device)
        self.task = make_task("addition")
        self.method = get_method(METHOD)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=1e-4)
        self.g = torch.Generator().manual_seed(seed)
        self.times: dict[str, list[float]] = {n: [] for n in (*self.NAMES, self.UNSHARED)}
        self.shapes: dict = {}

    def _t(self, name, fn):
        dt, out = C.timed(fn, self.device)
        self.times[name].append(dt)
        return out

    def run(self, iters: int) -> None:
        task, policy, method, g, t = self.task, self.policy, self.method, self.g, self._t
        G_ = G
        for _ in range(iters):
            def draw():
                problems = task.sample_problems(PROMPTS, g)
                return problems, task.encode_prompts(problems).to(self.device)

            problems, prompts = t("problems + encode", draw)
            policy.eval()
            samples = t("sampling", lambda: policy.sample(prompts, max_new_tokens=task.max_new_tokens,  # noqa: B023
                                                          eos=task.tokenizer.eos_id, generator=g, group_size=G_))
            rewards = t("rewards", lambda: task.rewards([p for p in problems for _ in range(G_)],  # noqa: B023
                                                        samples.completions, samples.mask))  # noqa: B023

            def make_batch():
                b = RolloutBatch.from_samples(samples, rewards, group_size=G_)  # noqa: B023
                return b, method.advantages(b)

            batch, adv = t("batch + advantages", make_batch)
            policy.train()

            def fwd_bwd(group_size=G_):
                logits = policy(batch.prompts, batch.completions, group_size=group_size)  # noqa: B023
                logp = token_log_probs(logits, batch.completions) * batch.mask  # noqa: B023
                loss, _ = method.loss(logp, batch, adv)  # noqa: B023
                self.opt.zero_grad()
                loss.backward()
                return loss

            t(self.UNSHARED, lambda: fwd_bwd(1))
            t("policy forward + backward", fwd_bwd)

            def step():
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                self.opt.step()

            t("clip + Adam step", step)
            self.shapes = {"rows": len(batch), "prompt_len": batch.prompts.shape[1],
                           "completion_width": batch.completions.shape[1], "mean_length": float(batch.lengths.mean())}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps per timed train() call (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed train() calls (default 5)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    p.add_argument("--breakdown-iters", type=int, default=20, help="iterations of the per-stage breakdown (default 20)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one train() step")
    args = p.parse_args(argv)
    device, why = C.setup(args.device)
    if device is None:
        return C.skip(NAME, why, args.json)
    C.header(f"one RL step: train(..., {METHOD!r}, prompts_per_step={PROMPTS}, group_size={G}) on the addition warm start", device)
    task = make_task("addition")

    def fresh():
        return pg.load_warm_start("addition", device=device)[0]

    kw = dict(prompts_per_step=PROMPTS, group_size=G, lr=1e-4, eval_every=None)
    train(fresh(), task, METHOD, steps=args.warmup, seed=0, **kw)  # warm-up
    parts = StageBreakdown(device, seed=100)
    parts.run(2)  # warm-up
    parts.times = {k: [] for k in parts.times}
    per_step, per_row, breakdown_s = [], [], 0.0
    chunks = [args.breakdown_iters // args.repeats + (r < args.breakdown_iters % args.repeats) for r in range(args.repeats)]
    for r in range(args.repeats):  # full steps and the stage breakdown interleaved: same machine load for both
        policy = fresh()
        dt, hist = C.timed(lambda: train(policy, task, METHOD, steps=args.steps, seed=1 + r, **kw), device)  # noqa: B023
        per_step.append(dt / args.steps)
        secs = [0.0] + hist["seconds"]
        per_row += [b - a for a, b in zip(secs[:-1], secs[1:], strict=True)]
        t0 = time.perf_counter()
        parts.run(chunks[r])
        breakdown_s += time.perf_counter() - t0
    full_med, full_best = C.med(per_step), min(per_step)
    stages, shapes = parts.times, parts.shapes
    stage_med = {k: C.med(v) for k, v in stages.items()}
    core = list(StageBreakdown.NAMES)
    total_stages = sum(stage_med[k] for k in core)

    fig = {
        "seconds_per_step_median": full_med,
        "seconds_per_step_best": full_best,
        "seconds_per_step_each_repeat": per_step,
        "seconds_per_step_median_of_single_steps": C.med(per_row),
        "completions_per_second_median": PROMPTS * G / full_med,
        "stages_median_seconds": stage_med,
        "stages_best_seconds": {k: min(v) for k, v in stages.items()},
        "sum_of_stages": total_stages,
        "other": full_med - total_stages,
        "batch_shapes": shapes,
        "steps_per_repeat": args.steps,
        "repeats": args.repeats,
        "breakdown_iters": args.breakdown_iters,
        "breakdown_seconds": breakdown_s,
    }
    rows = [
        C.row(f"one RL step ({METHOD}, {PROMPTS} prompts x {G} completions, addition)", f"<= {TARGET_S:.2f} s",
              f"{full_med:.3f} s (best {full_best:.3f} s)",
              C.status(full_med, TARGET_S, best=full_best, higher_is_better=False)),
    ]
    breakdown = [{"stage": k, "median_ms": 1e3 * stage_med[k], "best_ms": 1e3 * min(stages[k]),
                  "share": stage_med[k] / full_med} for k in core]
    breakdown.append({"stage": "other (train's metrics, .item() syncs, per-call set-up)",
                      "median_ms": 1e3 * fig["other"], "best_ms": float("nan"), "share": fig["other"] / full_med})
    extra = {"stage": "(for comparison) policy forward + backward, prefix not shared (group_size=1 forward)",
             "median_ms": 1e3 * stage_med[StageBreakdown.UNSHARED],
             "best_ms": 1e3 * min(stages[StageBreakdown.UNSHARED]), "share": float("nan")}

    print(f"  {args.repeats} repeats x {args.steps} steps after {args.warmup} warm-up steps; "
          f"batch {shapes['rows']} rows, prompt {shapes['prompt_len']} + up to {shapes['completion_width']} tokens "
          f"(mean length {shapes['mean_length']:.2f})")
    print("  seconds/step per repeat: " + ", ".join(f"{x:.3f}" for x in per_step))
    C.print_rows(rows)
    print(f"  = {fig['completions_per_second_median']:,.0f} completions/s (against TRL's GRPOTrainer: bench_peers.py)")
    print(f"  breakdown (median of {args.breakdown_iters} iterations, same shapes):")
    for b in [*breakdown, extra]:
        share = "" if b["share"] != b["share"] else f"{b['share']:6.1%}"
        print(f"    {b['stage']:<86} {b['median_ms']:7.1f} ms {share}")
    print(f"    {'sum of the timed stages':<86} {1e3 * total_stages:7.1f} ms")
    if args.profile:
        policy = fresh()
        train(policy, task, METHOD, steps=2, seed=0, **kw)
        print(C.profile_table(lambda: train(policy, task, METHOD, steps=1, seed=0, **kw), rows=20))
    C.emit(NAME, {"device": str(device), "machine": C.machine_info(device), "parameters": fresh().num_parameters(),
                  "figures": fig, "rows": rows, "breakdown": [*breakdown, extra]}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
