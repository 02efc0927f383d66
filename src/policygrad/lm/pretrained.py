"""Shipped warm starts: small TinyGPT checkpoints trained by SFT to *partial* accuracy.

SFT is supervised fine-tuning. RL on a language model starts from a model that already
solves the task sometimes; from a random initialisation the reward of an exact-match
task is almost always 0 and REINFORCE has nothing to push on. Each checkpoint here is a
`policygrad.TinyGPT` trained with teacher forcing on correct answers
(`train_supervised`) and stopped early, as soon as its greedy accuracy on a fixed sample
of *training* problems reaches a target, so that the *held-out* accuracy is left well
below 100 % (RL headroom). The held-out split is never used to choose when to stop.

==========  ==========  =========  ========  ==========================================
task        parameters  SFT steps  stop at   held-out greedy accuracy (480 problems)
==========  ==========  =========  ========  ==========================================
addition    101,760     200        0.40      0.4292
reverse     101,568     114        0.40      0.5000
prefix      101,696     72         0.40      0.4500
==========  ==========  =========  ========  ==========================================

(The numbers are those recorded in `WARM_STARTS`; a test checks that the docstring, the
recipe and the shipped files agree.) Each took under 10 s to train on one CPU thread.

Load one with `load_warm_start` (`torch.load(..., weights_only=True)`). Regenerate
with:

    python -m policygrad.lm.regenerate_warm_starts            # every checkpoint
    python -m policygrad.lm.regenerate_warm_starts addition   # one

which retrains from the recorded seed on CPU with one thread and overwrites
`src/policygrad/lm/checkpoints/<task>.pt`; `--check` retrains into memory and only
compares. The shipped files were built on the book's reference numeric path
(`policygrad.numeric_path`), and the command runs on it (it sets the variables the
environment does not set); there `--check` requires the rebuild to be bitwise identical
to the shipped file. Elsewhere the kernels round differently, early stopping moves, and
`--check` accepts a held-out accuracy within `OFF_PATH_TOLERANCE` of the documented one;
writing into the package directory from there is refused (use `--out`), so the shipped
files keep their recorded SHA-256 (`CHECKPOINT_SHA256`, checked on load). Introduced in
chapter 4 ("Warm starts: why RL starts from a supervised model").
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from .._checks import check_device, check_finite, check_positive_int, check_tensor
from ..trajectory_side.logprobs import token_log_probs
from ..utils import seed_everything
from .tasks import Task, evaluate, make_task
from .tinygpt import TinyGPT, TinyGPTConfig

__all__ = [
    "CHECKPOINT_DIR",
    "EVAL_SIZE",
    "WarmStart",
    "WARM_STARTS",
    "CHECKPOINT_SHA256",
    "OFF_PATH_TOLERANCE",
    "supervised_loss",
    "train_supervised",
    "build_warm_start",
    "checkpoint_path",
    "load_warm_start",
    "warm_start_table",
]

#: Where the shipped checkpoints live (inside the installed package).
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: Size of the held-out evaluation set used to document each checkpoint
#: (`task.eval_set(EVAL_SIZE, seed=0)`).
EVAL_SIZE = 480


@dataclass(frozen=True)
class WarmStart:
    """The recipe of one shipped checkpoint and the accuracy it was documented at.

    * `task`: a name in `policygrad.lm.tasks.TASKS`;
    * `n_layer`, `n_head`, `n_embd`: the TinyGPT size (vocabulary and block size come
      from the task);
    * `seed`: seeds the initialisation and the data order;
    * `lr`, `batch_size`: Adam learning rate and problems per step;
    * `max_steps`: a hard cap;
    * `check_every`: steps between checks of the stopping rule;
    * `stop_at`: stop at the first check where greedy accuracy on
      `task.sample_problems(256)` drawn with `seed` (training split) reaches this value;
    * `heldout_accuracy`: greedy accuracy on `task.eval_set(EVAL_SIZE)` of the shipped
      checkpoint, as measured when it was built.
    """

    task: str
    seed: int
    lr: float
    batch_size: int
    max_steps: int
    check_every: int
    stop_at: float
    heldout_accuracy: float
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64

    def config(self) -> TinyGPTConfig:
        task = make_task(self.task)
        return TinyGPTConfig(
            vocab_size=task.tokenizer.vocab_size,
            block_size=task.prompt_length + task.max_new_tokens,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
        )


#: The shipped warm starts, by task name.
WARM_STARTS: dict[str, WarmStart] = {
    "addition": WarmStart("addition", seed=0, lr=3e-3, batch_size=128, max_steps=2000,
                          check_every=5, stop_at=0.40, heldout_accuracy=206 / 480),
    "reverse": WarmStart("reverse", seed=0, lr=3e-4, batch_size=128, max_steps=2000,
                         check_every=2, stop_at=0.40, heldout_accuracy=0.5),
    "prefix": WarmStart("prefix", seed=0, lr=3e-4, batch_size=128, max_steps=2000,
                        check_every=2, stop_at=0.40, heldout_accuracy=0.45),
}  # fmt: skip

#: SHA-256 of each shipped file, recorded when it was built on the reference numeric
#: path; the shipped checkpoints are checked against it on load.
CHECKPOINT_SHA256: dict[str, str] = {
    "addition": "38bf5631ea3828ffc813b143ed1276a32876cc8b33def45aeb7423f3292282f0",
    "reverse": "62223bd65a2e8c774708d17eeceec170527155629ea64811e49aec88ac1a20b3",
    "prefix": "dd4c33a9630a4173d812c4829c5e9fd4dbc8072674cbb3b398447733f6d761f3",
}


def supervised_loss(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
):
    """Teacher-forced cross-entropy of the target completions, mean over target tokens.

    `prompts` `(B, P)`, `targets` `(B, T)` token ids, `mask` `(B, T)` (1 on answer
    tokens and their EOS):

        -(1 / Σ m) Σ_{i,t} m_{i,t} log π_θ(y*_{i,t} | x_i, y*_{i,<t})
    """
    check_tensor(targets, "targets", 2)
    check_tensor(mask, "mask", 2)
    if mask.shape != targets.shape:
        raise ValueError(
            f"mask must have the shape of targets {tuple(targets.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must contain only 0 and 1")
    m = mask.to(device=targets.device, dtype=torch.get_default_dtype())
    if not m.sum() > 0:
        raise ValueError("mask selects no target token")
    logp = token_log_probs(model(prompts, targets), targets)
    return -(logp * m.to(logp.device)).sum() / m.sum()


def train_supervised(
    model: TinyGPT,
    task: Task,
    *,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    check_every: int | None = None,
    stop_at: float | None = None,
) -> dict:
    """Supervised fine-tuning (Adam) on correct answers of training problems.

    Optionally stopped early.

    Every `check_every` steps the greedy accuracy on a fixed sample of 256 *training*
    problems is measured; training stops at the first check where it reaches `stop_at`.
    Returns a dict with `steps` (taken), `losses` (one per step) and `checks`
    (`(step, train accuracy)` pairs).
    """
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    if isinstance(lr, bool) or not (
        isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0
    ):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if (check_every is None) != (stop_at is None):
        raise ValueError("give both check_every and stop_at, or neither")
    if check_every is not None:
        check_positive_int(check_every, "check_every")
        if (
            isinstance(stop_at, bool)
            or not isinstance(stop_at, (int, float))
            or not 0 < stop_at <= 1
        ):
            raise ValueError(f"stop_at must be a number in (0, 1], got {stop_at!r}")
    device = model.wte.weight.device
    g = torch.Generator().manual_seed(seed)
    probe = task.sample_problems(256, torch.Generator().manual_seed(seed + 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, checks = [], []
    model.train()
    for step in range(1, steps + 1):
        problems = task.sample_problems(batch_size, g)
        prompts = task.encode_prompts(problems).to(device)
        targets, mask = task.target_completions(problems)
        loss = supervised_loss(model, prompts, targets.to(device), mask.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if check_every is not None and step % check_every == 0:
            acc = evaluate(model, task, probe)["accuracy"]
            checks.append((step, acc))
            if acc >= stop_at:
                break
    return {"steps": len(losses), "losses": losses, "checks": checks}


def build_warm_start(spec: WarmStart) -> tuple[TinyGPT, dict]:
    """Train the checkpoint described by `spec` from scratch (CPU, one thread, seeded).

    Returns `(model, info)`. `info` holds the steps taken, the final training-probe
    accuracy, the held-out greedy accuracy and the wall time in seconds.
    """
    if not isinstance(spec, WarmStart):
        raise ValueError(f"spec must be a WarmStart, got {type(spec).__name__}")
    seed_everything(spec.seed)
    task = make_task(spec.task)
    model = TinyGPT(spec.config(), generator=torch.Generator().manual_seed(spec.seed))
    t0 = time.perf_counter()
    log = train_supervised(
        model,
        task,
        steps=spec.max_steps,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=spec.seed,
        check_every=spec.check_every,
        stop_at=spec.stop_at,
    )
    model.eval()
    heldout = evaluate(model, task, task.eval_set(EVAL_SIZE))["accuracy"]
    info = {
        "steps": log["steps"],
        "train_accuracy": log["checks"][-1][1] if log["checks"] else float("nan"),
        "heldout_accuracy": heldout,
        "seconds": time.perf_counter() - t0,
    }
    return model, info


def checkpoint_path(task: str) -> Path:
    """Path of the shipped checkpoint of `task`."""
    if not isinstance(task, str) or task not in WARM_STARTS:
        raise ValueError(
            f"no warm start for task {task!r}; available: {sorted(WARM_STARTS)}"
        )
    return CHECKPOINT_DIR / f"{task}.pt"


def _save(model: TinyGPT, spec: WarmStart, info: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": 1,
        "task": spec.task,
        "config": asdict(model.config),
        "recipe": {k: v for k, v in asdict(spec).items() if k != "heldout_accuracy"},
        "steps": info["steps"],
        "heldout_accuracy": info["heldout_accuracy"],
        "torch_version": str(torch.__version__),
        # tied weights stay shared
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)


def _names(names, limit: int = 5) -> str:
    """A few names of a set, sorted, for an error message.

    For example `['a', 'b', ...] (12 in all)`.
    """
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"


def _checked_config(config, p: Path, task: str) -> TinyGPTConfig:
    """The `TinyGPTConfig` recorded in a checkpoint.

    Or a ValueError that names what is wrong with it.
    """
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{p}: config must be a dict of TinyGPTConfig fields, "
            f"got {type(config).__name__}"
        )
    known = {f.name for f in fields(TinyGPTConfig)}
    unknown, missing = set(config) - known, known - set(config)
    if unknown or missing:
        parts = ([f"unknown fields {_names(map(str, unknown))}"] if unknown else []) + (
            [f"missing fields {_names(missing)}"] if missing else []
        )
        raise ValueError(
            f"{p}: config does not describe a TinyGPTConfig: {'; '.join(parts)}"
        )
    try:
        cfg = TinyGPTConfig(**config)
    except ValueError as err:  # a value of the wrong type or range
        raise ValueError(f"{p}: invalid config: {err}") from None
    t = make_task(task)
    if cfg.vocab_size != t.tokenizer.vocab_size:
        raise ValueError(
            f"{p}: config vocab_size={cfg.vocab_size} "
            f"does not match the {task!r} tokenizer "
            f"({t.tokenizer.vocab_size} tokens)"
        )
    if cfg.block_size < t.prompt_length + t.max_new_tokens:
        raise ValueError(
            f"{p}: config block_size={cfg.block_size} "
            f"is shorter than a {task!r} prompt plus answer "
            f"({t.prompt_length + t.max_new_tokens} tokens)"
        )
    return cfg


def _check_state_dict(
    state, expected: Mapping[str, torch.Tensor], cfg: TinyGPTConfig, p: Path
) -> None:
    """Raise ValueError unless `state` has the keys of `expected`.

    Each must hold a finite float tensor of the expected shape.
    """
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{p}: state_dict must be a dict of tensors, got {type(state).__name__}"
        )
    bad = [
        k
        for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise ValueError(
            f"{p}: state_dict must map parameter names to tensors; "
            f"not so for {_names(map(str, bad))}"
        )
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = ([f"missing keys {_names(missing)}"] if missing else []) + (
            [f"unexpected keys {_names(unexpected)}"] if unexpected else []
        )
        raise ValueError(
            f"{p}: state_dict does not match a TinyGPT with its config: "
            f"{'; '.join(parts)}"
        )
    for k, want in expected.items():
        v = state[k]
        if v.shape != want.shape:
            raise ValueError(
                f"{p}: state_dict[{k!r}] has shape {tuple(v.shape)}, "
                f"expected {tuple(want.shape)} for its config"
            )
        if not v.is_floating_point():
            raise ValueError(
                f"{p}: state_dict[{k!r}] must be a floating-point tensor, "
                f"got dtype {v.dtype}"
            )
        check_finite(v, f"{p}: state_dict[{k!r}]")
    if cfg.tie_weights and not torch.equal(state["head.weight"], state["wte.weight"]):
        raise ValueError(
            f"{p}: config has tie_weights=True "
            "but state_dict['head.weight'] differs from 'wte.weight'"
        )


def load_warm_start(
    task: str, *, device: str | torch.device = "cpu", path: str | Path | None = None
):
    """The SFT warm start of `task` as a `TinyGPT` in eval mode, and its metadata dict.

    Loaded with `torch.load(..., weights_only=True)` (no code is unpickled). `path`
    overrides the shipped file (e.g. a regenerated one). Returns `(model, meta)`; `meta`
    has `task`, `config`, `recipe`, `steps`, `heldout_accuracy` and `torch_version`.

    A shipped file must match its recorded SHA-256 (`CHECKPOINT_SHA256`); every file,
    shipped or given with `path`, is then checked before it is used: a ValueError names
    what is wrong (a file that needs code to be unpickled, a payload that is not a
    checkpoint dict, unknown or missing config fields or invalid values, missing or
    unexpected state-dict keys, a tensor of the wrong shape or dtype, NaN or infinite
    weights). `device` is checked too: `"cuda"` without a GPU is a ValueError.
    """
    dev = check_device(device)
    if path is not None and not isinstance(path, (str, Path)):
        raise ValueError(
            f"path must be a str or pathlib.Path, got {type(path).__name__}"
        )
    p = checkpoint_path(task) if path is None else Path(path)
    if not p.is_file():
        raise ValueError(
            f"checkpoint file {p} does not exist; regenerate it with "
            f"`python -m policygrad.lm.regenerate_warm_starts {task}`"
        )
    if path is None:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        if digest != CHECKPOINT_SHA256[task]:
            raise ValueError(
                f"the shipped checkpoint {p} does not match its recorded SHA-256 "
                f"(got {digest[:12]}..., recorded {CHECKPOINT_SHA256[task][:12]}...): "
                "it was changed or damaged; reinstall the package or rebuild it with "
                f"`python -m policygrad.lm.regenerate_warm_starts {task}`"
            )
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    # a torch file whose objects need code to rebuild them
    except pickle.UnpicklingError:
        raise ValueError(
            f"{p} is not a policygrad warm-start checkpoint: "
            "it needs code to be unpickled, which load_warm_start refuses "
            "(torch.load(weights_only=True) loads only tensors and plain containers)"
        ) from None
    except Exception as err:  # not a torch file
        raise ValueError(
            f"{p} is not a policygrad warm-start checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise ValueError(
            f"{p} is not a policygrad warm-start checkpoint: "
            f"it holds a {kind}, not a dict"
        )
    needed = {"format", "task", "config", "state_dict", "steps", "heldout_accuracy"}
    if not needed <= set(payload):
        raise ValueError(
            f"{p} is not a policygrad warm-start checkpoint "
            f"(missing {sorted(needed - set(payload))})"
        )
    if payload["format"] != 1:
        raise ValueError(
            f"{p} is not a policygrad warm-start checkpoint "
            f"(format {payload['format']!r}, expected 1)"
        )
    if payload["task"] != task:
        raise ValueError(
            f"{p} is a warm start for task {payload['task']!r}, not {task!r}"
        )
    steps, acc = payload["steps"], payload["heldout_accuracy"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{p}: steps must be a positive integer, got {steps!r}")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        raise ValueError(
            f"{p}: heldout_accuracy must be a number in [0, 1], got {acc!r}"
        )
    cfg = _checked_config(payload["config"], p, task)
    state = payload["state_dict"]
    # before building the model: nothing to build it for
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{p}: state_dict must be a dict of tensors, got {type(state).__name__}"
        )
    model = TinyGPT(cfg)
    _check_state_dict(state, model.state_dict(), cfg, p)
    model.load_state_dict(state)
    model.to(dev).eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
    return model, meta


def warm_start_table() -> list[dict]:
    """One row per shipped checkpoint.

    Columns: task, parameters, SFT steps, stopping target, held-out accuracy.
    """
    rows = []
    for name, spec in WARM_STARTS.items():
        model, meta = load_warm_start(name)
        rows.append(
            {
                "task": name,
                "parameters": model.num_parameters(),
                "sft_steps": meta["steps"],
                "stop_at": spec.stop_at,
                "heldout_accuracy": meta["heldout_accuracy"],
            }
        )
    return rows


#: How far a warm start rebuilt *off* the reference numeric path may land from the
#: documented held-out accuracy. SFT stops at the first check that reaches `stop_at`, so
#: a last-bit difference in the kernels moves the stopping step and the accuracy: on one
#: AMD EPYC the addition recipe gave 0.4292 (reference), 0.3688 (native AVX2 kernels,
#: MKL's own choice), 0.4146 (`MKL_CBWR=AVX2`) and 0.5021
#: (`ATEN_CPU_CAPABILITY=default`). On the reference path the rebuild must be bitwise
#: identical.
OFF_PATH_TOLERANCE = 0.10


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa
    )


def main(argv: list[str] | None = None) -> int:
    from .. import numeric_path

    parser = argparse.ArgumentParser(
        prog="python -m policygrad.lm.regenerate_warm_starts",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument(
        "tasks",
        nargs="*",
        default=list(WARM_STARTS),
        help="tasks to rebuild (default: all)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="retrain in memory and compare; write nothing",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=CHECKPOINT_DIR,
        help="directory to write the checkpoints to",
    )
    args = parser.parse_args(argv)
    for name in args.tasks:
        if name not in WARM_STARTS:
            parser.error(f"unknown task {name!r}; choose from {sorted(WARM_STARTS)}")
    path = numeric_path.status()
    print(path.describe(), flush=True)
    if (
        not args.check
        and not path.reference
        and args.out.resolve() == CHECKPOINT_DIR.resolve()
    ):
        print(
            "refusing to overwrite the shipped checkpoints off the reference numeric "
            "path; write them elsewhere with --out DIR and load them with "
            "load_warm_start(task, path=...)",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in args.tasks:
        spec = WARM_STARTS[name]
        model, info = build_warm_start(spec)
        line = (
            f"{name}: {model.num_parameters():,} parameters, "
            f"{info['steps']} SFT steps, "
            f"train-probe accuracy {info['train_accuracy']:.3f}, "
            "held-out greedy accuracy "
            f"{info['heldout_accuracy']:.4f} ({info['seconds']:.1f} s)"
        )
        if args.check:
            gap = abs(info["heldout_accuracy"] - spec.heldout_accuracy)
            if path.reference:
                same = (
                    _same_weights(model, load_warm_start(name)[0])
                    and gap < 0.5 / EVAL_SIZE
                )
                verdict = (
                    "OK, bitwise identical"
                    if same
                    else "DIFFERENT from the shipped checkpoint"
                )
            else:
                same = gap <= OFF_PATH_TOLERANCE
                verdict = (
                    f"OK within {OFF_PATH_TOLERANCE} off the reference path"
                    if same
                    else "DIFFERENT"
                )
            line += f" — documented {spec.heldout_accuracy:.4f}: {verdict}"
            status |= not same
        else:
            _save(model, spec, info, args.out / f"{name}.pt")
            line += f" -> {args.out / (name + '.pt')}"
        print(line, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
