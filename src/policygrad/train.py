"""Training loops.

* Part I: `train_toy_reinforce` — REINFORCE on an enumerable toy with the exact
  objective logged every step, introduced in chapter 2 ("REINFORCE training on the
  toy"); and `exact_gradient_ascent`.
* From chapter 04 on: `train` — the RL loop for a language-model policy on a
  verifiable task, for any registered `policygrad.methods.Method`, with its metrics in a
  `History`; introduced in chapter 4 ("The training loop").
"""

from __future__ import annotations

import collections
import copy
import csv
import io
import math
import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from ._checks import check_float_dtype, check_positive_int
from ._tensor import select
from .exact.enumeration import ExactProblem
from .lm.tasks import Problem, Task, evaluate
from .methods.base import Method, get_method, policy_loss
from .reward_side.baselines import (
    TabularValue,
    per_step_leave_one_out_baseline,
    sequence_leave_one_out_baseline,
)
from .reward_side.critic import explained_variance
from .reward_side.returns import reinforce_weights, total_return
from .rollout import RolloutBatch, Samples
from .toy.policies import TabularPolicy
from .trajectory_side.filters import (
    AdaptiveEntropyController,
    fill_informative,
    informative_groups,
    truncation_loss_mask,
)
from .trajectory_side.kl import kl_loss
from .trajectory_side.logprobs import token_entropy, token_log_probs
from .trajectory_side.surrogates import pg_surrogate

__all__ = [
    "BASELINES",
    "train_toy_reinforce",
    "exact_gradient_ascent",
    "History",
    "METRICS",
    "NONFINITE",
    "TrainingDiverged",
    "train",
    "k3_kl",
]

#: Baselines accepted by `train_toy_reinforce`.
BASELINES = (
    "none",
    "sequence_leave_one_out",
    "per_step_leave_one_out",
    "learned",
)


def train_toy_reinforce(
    policy: TabularPolicy,
    problem: ExactProblem,
    *,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 0.5,
    baseline: str = "none",
    reward_to_go: bool = False,
    value_lr: float = 0.2,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Train `policy` with REINFORCE by plain SGD; log the *exact* objective every step.

    Each step samples `batch_size` prompts from ρ and one completion each, weights the
    score with `policygrad.reward_side.reinforce_weights` and ascends the surrogate.

    `baseline`: `"none"`;
    `"sequence_leave_one_out"` — b_i, the mean *whole return* of the other samples of
    the batch (`policygrad.reward_side.sequence_leave_one_out_baseline`), subtracted
    from every token's weight (the return, or with `reward_to_go` the reward-to-go);
    `"per_step_leave_one_out"` — b_{i,t}, the mean weight of the other samples at the
    same position t (`policygrad.reward_side.per_step_leave_one_out_baseline`; with
    `reward_to_go`, their reward-to-go R_{j,t});
    `"learned"` — a `policygrad.reward_side.TabularValue` per state s_t, fitted after
    each step on that step's returns (so it is applied only to later samples).
    Both leave-one-out baselines ignore prompts and are independent of the sample they
    are subtracted from, so the estimate stays unbiased.

    Returns a history dict with lists `step`, `objective` (exact J) and `mean_reward`.
    """
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline.endswith("leave_one_out") and batch_size < 2:
        raise ValueError("a leave-one-out baseline needs batch_size >= 2")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    device = policy.logits_table.device
    value = (
        TabularValue(policy.num_prompts * policy.num_prefixes).to(device)
        if baseline == "learned"
        else None
    )
    with torch.no_grad():
        history = {
            "step": [0],
            "objective": [float(problem.objective(policy))],
            "mean_reward": [float("nan")],
        }
    for step in range(1, steps + 1):
        prompts = problem.sample_prompts(batch_size, g)
        samples = policy.sample(prompts, generator=g)
        rewards = problem.rewards_for(prompts, samples.completions)
        per_token = reinforce_weights(
            rewards, samples.mask, reward_to_go=reward_to_go, gamma=problem.gamma
        )
        if baseline == "sequence_leave_one_out":
            R = (
                rewards
                if rewards.dim() == 1
                else total_return(rewards, samples.mask, problem.gamma)
            )  # (B,): R(τ_i)
            b = sequence_leave_one_out_baseline(R).unsqueeze(1) * samples.mask
        elif baseline == "per_step_leave_one_out":
            b = per_step_leave_one_out_baseline(per_token)
        elif baseline == "learned":
            states = policy.state_index(samples.prompts, samples.completions)
            b = value(states).detach()
        else:
            b = torch.zeros_like(per_token)
        weights = (per_token - b) * samples.mask
        logp = token_log_probs(
            policy(samples.prompts, samples.completions), samples.completions
        )
        loss = -pg_surrogate(logp, weights, samples.mask)  # loss = -surrogate
        opt.zero_grad()
        loss.backward()
        opt.step()
        if value is not None:
            value.fit(states, per_token, lr=value_lr, mask=samples.mask)
        with torch.no_grad():
            history["step"].append(step)
            history["objective"].append(float(problem.objective(policy)))
            R = rewards if rewards.dim() == 1 else rewards.sum(-1)
            history["mean_reward"].append(float(R.mean()))
    return history


def exact_gradient_ascent(
    policy: torch.nn.Module,
    problem: ExactProblem,
    *,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    reference: torch.nn.Module | None = None,
    beta: float = 0.0,
) -> list[float]:
    """Maximise the *exact* J(θ) (no sampling) for `steps` steps; minimises loss = -J.

    `optimizer`: `"sgd"` or `"adam"`. Returns the exact J before each step and after the
    last (`steps + 1` values). Used to move a toy policy to a chosen point (a warm
    start) and to show the noise-free path that sampled estimators try to follow.
    Introduced in chapter 1 ("The objective as a finite sum").

    With `reference` and `beta > 0` the objective is the KL-regularised

        J(θ) - β E_{x ~ ρ} KL(p_θ ‖ p_ref)

    of chapter 6 ("The regularised objective and what maximises it"), and the returned
    values are that objective.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if (
        isinstance(beta, bool)
        or not isinstance(beta, (int, float))
        or not 0 <= beta < math.inf
    ):
        raise ValueError(f"beta must be a finite non-negative number, got {beta!r}")
    if beta > 0 and not isinstance(reference, torch.nn.Module):
        raise ValueError("beta > 0 needs a reference policy (a torch.nn.Module)")
    opt_cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = opt_cls(policy.parameters(), lr=lr)

    def objective() -> torch.Tensor:
        J = problem.objective(policy)
        return J - beta * problem.expected_kl(policy, reference) if beta > 0 else J

    history = []
    for _ in range(steps):
        loss = -objective()  # loss = -J (or -(J - beta KL))
        history.append(-loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        history.append(objective().item())
    return history


# --------------------------------------------------------------------------------------
# the RL loop for a language-model policy
# --------------------------------------------------------------------------------------
#: What `train` records, by column name (`heldout_accuracy` only on evaluation steps,
#: `zero_var_groups` only when `G >= 2`, `clip_frac` only if the method's loss reports
#: it).
METRICS = {
    "step": "optimiser steps taken so far (0 = before training)",
    "samples": "completions sampled so far",
    "greedy_samples": "greedy completions generated so far (ReMax's baseline; "
    "methods with greedy_baseline only)",
    "gen_batches": "generation batches drawn this step (dynamic sampling only: "
    "batches of prompts_per_step prompts until that many groups carry a signal)",
    "reward": "mean reward of the step's completions",
    "heldout_accuracy": "greedy exact-match accuracy on the held-out "
    "evaluation problems",
    "entropy": "mean per-token entropy of the policy on its own samples (nats)",
    "kl_ref": "mean per-token k3 estimate of KL(policy || reference) on the step's "
    "samples (when the reference forward runs: the method needs it, or kl_ref=True)",
    "rollout_kl": "mean per-token k3 estimate of KL(sampler || trainer): the sampler's "
    "log-probs against the trained policy's teacher-forced ones on the same tokens "
    "(0 in exact arithmetic)",
    "rollout_log_ratio_std": "standard deviation over the trained tokens of log "
    "pi_trainer - log pi_sampler (only when the sampler differs from the policy: "
    "sampler_dtype, stale_steps, a temperature other than 1 or top_k)",
    "length": "mean completion length in tokens (EOS included)",
    "truncated": "fraction of completions that hit the length limit without EOS",
    "zero_var_groups": "fraction of prompt groups whose G rewards are all equal "
    "(no learning signal)",
    "grad_norm": "gradient norm before clipping (mean over the step's optimiser steps)",
    "loss": "the loss (= -surrogate), mean over the step's optimiser steps",
    "clip_frac": "fraction of trained tokens whose ratio was clipped "
    "(methods with a ratio)",
    "approx_kl": "mean k3 estimate of KL(old policy || current policy) on the trained "
    "tokens (methods with a ratio)",
    "value_loss": "the critic's loss, mean over the step's optimiser steps "
    "(methods with a critic)",
    "explained_variance": "1 - Var[target - V] / Var[target] of the critic's values "
    "at sampling time (critic methods)",
    "entropy_coef": "the entropy bonus's coefficient, mean over the step's optimiser "
    "steps (methods with an entropy bonus; adaptive: the controller's applied value)",
    "entropy_bonus": "the entropy bonus's term of the loss, -c * aggregate(H), mean "
    "over the step's optimiser steps (methods with an entropy bonus)",
    "skipped": "optimiser steps skipped so far because the loss or gradient was not "
    "finite (on_nonfinite='skip')",
    "seconds": "wall-clock seconds since training started "
    "(volatile: never print it in stored outputs)",
}

#: What `train` may do on a non-finite loss, gradient norm or parameter
#: (`on_nonfinite`).
NONFINITE = ("raise", "skip")


class TrainingDiverged(ValueError):
    """Raised by `train` at the first non-finite loss, gradient norm or parameter.

    Attributes:

    * `step`: the RL step;
    * `quantity`: `"loss"`, `"value loss"`, `"gradient norm"`, `"critic gradient norm"`,
      `"parameters"` or `"sampling distribution"`;
    * `history`: the `History` up to the last completed step, so a diverged run can
      still be plotted.
    """

    def __init__(
        self, message: str, *, step: int, quantity: str, history: History
    ) -> None:
        super().__init__(message)
        self.step = step
        self.quantity = quantity
        self.history = history


class History:
    """The metrics of a training run: one row (a dict) per logged step.

    Exportable to a dict or CSV. `history["reward"]` is the list of that column over the
    rows that have it; `to_dict` gives every column over every row (None where a row
    lacks it); `to_csv` writes the same as CSV (empty cells).
    """

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def log(self, **metrics) -> None:
        """Append one row; values must be numbers."""
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"metric {k!r} must be a number, got {v!r}")
        self.rows.append(dict(metrics))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        """Column names in order of first appearance."""
        cols: dict[str, None] = {}
        for r in self.rows:
            cols.update(dict.fromkeys(r))
        return list(cols)

    def __getitem__(self, column: str) -> list[float]:
        if column not in self.columns:
            raise KeyError(f"no metric {column!r}; recorded: {self.columns}")
        return [r[column] for r in self.rows if column in r]

    def series(self, column: str) -> tuple[list[int], list[float]]:
        """`(steps, values)` of one column, over the rows that have it."""
        rows = [r for r in self.rows if column in r]
        if not rows:
            raise KeyError(f"no metric {column!r}; recorded: {self.columns}")
        return [r["step"] for r in rows], [r[column] for r in rows]

    def last(self, column: str) -> float:
        """The last recorded value of `column`."""
        return self[column][-1]

    def to_dict(self) -> dict[str, list]:
        """`{column: [value or None per row]}`.

        Plain Python, ready for `json` or pandas.
        """
        return {c: [r.get(c) for r in self.rows] for c in self.columns}

    def to_csv(self, path=None) -> str:
        """The history as CSV text (missing values are empty cells).

        Also written to `path` if given.
        """
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow(
                {k: repr(v) if isinstance(v, float) else v for k, v in r.items()}
            )
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text


def k3_kl(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over masked tokens of the k3 estimator.

    Per token, with ℓ = `logp` and ℓ_ref = `ref_logp`:

        e^(ℓ_ref - ℓ) - (ℓ_ref - ℓ) - 1 ≥ 0

    With tokens sampled from the policy, each term is an unbiased estimate of the
    per-token KL(π_θ ‖ π_ref) of its state. `(B, T)` inputs -> a scalar; 0 if the
    mask is empty. (Chapter 06 derives k1/k2/k3 and measures them.)
    """
    return kl_loss(logp, ref_logp, mask, kind="k3", aggregation="token-mean")


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite.

    One check (largest |entry| of each) and one sync.
    """
    return bool(
        torch.stack(torch._foreach_norm(tensors, float("inf"))).isfinite().all()
    )


def _group_zero_variance(rewards: torch.Tensor, group_size: int) -> float:
    """The fraction of groups whose rewards are equal, by the package's round-off
    rule (the groups dynamic sampling drops)."""
    return 1.0 - informative_groups(rewards, group_size).double().mean().item()


def _cat_samples(parts: list[Samples]) -> Samples:
    """Rows of several `Samples`, padded to the widest (padding: mask 0, log-prob 0,
    the last token id repeated, which every function selects away)."""
    T = max(s.completions.shape[1] for s in parts)

    def pad(x: torch.Tensor, value) -> torch.Tensor:
        if x.shape[1] == T:
            return x
        return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

    return Samples(
        prompts=torch.cat([s.prompts for s in parts]),
        completions=torch.cat([pad(s.completions, 0) for s in parts]),
        mask=torch.cat([pad(s.mask, 0) for s in parts]),
        log_probs=torch.cat([pad(s.log_probs, 0.0) for s in parts]),
        truncated=torch.cat([s.truncated for s in parts]),
    )


def _keep_groups(
    drawn: list[tuple],
    keep: list[torch.Tensor],
    target: int,
    G: int,
    task: Task,
    device,
) -> tuple:
    """Dynamic sampling's batch: the kept (informative) groups of every drawn batch,
    in order; if the budget ran out first, the earliest other groups fill it up to
    `target` groups (they carry no signal for group methods, but keep the batch
    size, and so the minibatch split, of every step)."""
    chosen = [(b, int(m)) for b, k in enumerate(keep) for m in k.nonzero().flatten()]
    if len(chosen) < target:
        rest = [
            (b, m)
            for b, k in enumerate(keep)
            for m in range(k.shape[0])
            if not bool(k[m])
        ]
        chosen += rest[: target - len(chosen)]
    problems, parts, rewards, comps = [], [], [], []
    for b, m in chosen:
        probs_b, _, samples_b, rewards_b, comps_b = drawn[b]
        rows = torch.arange(m * G, (m + 1) * G, device=samples_b.completions.device)
        problems.append(probs_b[m])
        parts.append(
            Samples(
                prompts=samples_b.prompts[rows],
                completions=samples_b.completions[rows],
                mask=samples_b.mask[rows],
                log_probs=samples_b.log_probs[rows],
                truncated=samples_b.truncated[rows],
            )
        )
        rewards.append(rewards_b[rows])
        if comps_b is not None:
            comps.append(comps_b[rows])
    samples = _cat_samples(parts)
    return (
        problems,
        task.encode_prompts(problems).to(device),
        samples,
        torch.cat(rewards),
        torch.cat(comps) if comps else None,
    )


def train(
    policy: torch.nn.Module,
    task: Task,
    method: str | Method = "reinforce_baseline",
    *,
    steps: int,
    prompts_per_step: int = 64,
    group_size: int | None = None,
    lr: float = 1e-3,
    max_grad_norm: float | None = 1.0,
    inner_epochs: int | None = None,
    minibatches: int | None = None,
    eval_every: int | None = 10,
    eval_problems: Sequence[Problem] | None = None,
    reference: torch.nn.Module | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    progress: bool = False,
    history: History | None = None,
    critic: torch.nn.Module | None = None,
    critic_lr: float | None = None,
    kl_ref: bool | None = None,
    on_nonfinite: str = "raise",
    sampler_dtype: torch.dtype | None = None,
    stale_steps: int = 0,
) -> History:
    """Train a language-model `policy` on `task` with `method`.

    The policy is e.g. a `policygrad.TinyGPT`. One step: draw `prompts_per_step`
    training problems and `G = group_size` (default: the method's) completions each at
    `temperature` → rewards → the `policygrad.rollout.RolloutBatch` → advantages
    (the method's reward side) → `inner_epochs` passes, each split into `minibatches`
    (whole groups, shuffled), of loss (the method's trajectory side,
    loss = −surrogate) → Adam step with the gradient norm clipped to `max_grad_norm`
    (None: no clipping).

    Before the updates, `batch.old_log_probs` are recomputed by a teacher-forced forward
    pass of the policy being trained (as verl does; with one inner epoch and one
    minibatch the training forward itself gives them, at no extra cost); the sampler's
    own log-probs are kept as `batch.rollout_log_probs` and their gap is logged as
    `rollout_kl`. So every ratio starts at exactly 1, and with all rewards 0 a
    critic-free method leaves the parameters exactly unchanged (a critic method moves
    the policy only through its critic's error: nonzero values make nonzero GAE
    advantages).

    `reference`: the frozen policy that `kl_ref` (and methods with a KL term) measure
    against; default a copy of `policy` at the start; never updated (its forward runs
    under `no_grad`). Its forward pass runs only if the method needs it
    (`needs_reference`) or `kl_ref=True` asks for the metric (`kl_ref=None`: only when
    the method needs it; then the metric comes free). `eval_every`: held-out greedy
    accuracy on `eval_problems` (default `task.eval_set(240)`) before training, every
    `eval_every` steps and after the last (None: never). Everything random comes from
    `seed` (problems and samples are drawn with one CPU generator), so a run is
    repeatable on CPU. Records the columns of `METRICS` in a `History` (`history` to
    append to an existing one). `progress`: show a tqdm bar.

    Methods with a critic (`policygrad.methods.Method.needs_critic`): `critic` is the
    value model (`critic(prompts, completions, group_size=G) -> (B, T)`; default
    `policygrad.lm.tinygpt.TinyGPTCritic.from_policy`), trained in place with its own
    Adam at `critic_lr` (default `lr`) on the method's value loss, in the same
    minibatches as the policy. Its values of the sampled states go into `batch.values`
    before the advantages are computed.

    What a method asks for beyond the sampled batch
    (`policygrad.methods.Method`): with `greedy_baseline` (ReMax) the loop also decodes
    one greedy completion per prompt (`top_k=1`, with its own generator seeded by
    `seed`, so the draws of the run's generator are unchanged), scores it with
    `task.rewards` and puts it, repeated over the prompt's G rows, in
    `batch.greedy_rewards`; the `greedy_samples` column counts those extra
    generations. With `needs_sum_pi_squared` it puts Σ_v π_old(v | s_t)², from the
    logits of the forward that gives `old_log_probs` (detached), in
    `batch.sum_pi_squared`. A task with several reward components
    (`len(task.reward_names) > 1`, e.g. `policygrad.lm.FormatAdditionTask`) gets them
    in `batch.reward_components` for every method. With `dynamic_sampling` (DAPO) a
    step draws further batches of `prompts_per_step` problems until that many groups
    have rewards that differ, or `max_gen_batches` batches are spent (then the
    earliest other groups fill the batch); `samples` counts every completion sampled,
    `gen_batches` the batches, and `reward` is the mean over the trained batch. With
    `mask_truncated` the rows that hit the length limit get loss mask 0. With
    `needs_entropy` the entropies of π_old at every position (from the same forward
    as `old_log_probs`, detached) go in `batch.entropies`. A method with an entropy
    bonus (`entropy_coef`, `adaptive_entropy`) gets the token entropies of each
    minibatch's forward, with gradient, in `policy_loss`; an adaptive one keeps one
    `AdaptiveEntropyController` for the run, updated after every optimiser step with
    the minibatch's mean token entropy (the `entropy_coef` column).

    A sampler that differs from the trainer (chapter 10): by default the
    policy samples its own completions. A `temperature` other than 1 or a `top_k`
    makes the sampler differ from the policy the loss assumes (π_θ at temperature 1):
    `batch.rollout_log_probs` are then the log-probs of the tempered, truncated
    distribution the tokens were drawn from. `sampler_dtype` (e.g.
    `torch.bfloat16`) samples from a copy of the policy cast to that dtype, as an
    inference engine in lower precision does; `stale_steps=k` samples from the
    weights of k steps ago (the first k steps from the initial weights), as
    asynchronous RL does. Either way the trainer
    recomputes `old_log_probs` with the current policy in its own dtype, the sampler's
    log-probs are `batch.rollout_log_probs`, and the `rollout_kl` and
    `rollout_log_ratio_std` columns measure the mismatch. The sampler draws from the
    same generator, so the run's random numbers are those of a plain run.

    Every optimiser step checks the loss, the gradient norm (policy and critic) and,
    after the step, the parameters for NaN/inf. `on_nonfinite="raise"` (default) stops
    at the first one with a `TrainingDiverged` (a ValueError) naming the step, the
    quantity and the likely cause, carrying the history so far; `"skip"` skips that
    optimiser step instead (counted in the `skipped` column); non-finite parameters
    always raise (nothing can undo the update).
    """
    if not isinstance(policy, torch.nn.Module) or not callable(
        getattr(policy, "sample", None)
    ):
        raise ValueError(
            "policy must be a torch.nn.Module with a sample(...) method, e.g. a TinyGPT"
        )
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    method = get_method(method)
    check_positive_int(steps, "steps")
    check_positive_int(prompts_per_step, "prompts_per_step")
    G = (
        method.group_size
        if group_size is None
        else check_positive_int(group_size, "group_size")
    )
    epochs = (
        method.inner_epochs
        if inner_epochs is None
        else check_positive_int(inner_epochs, "inner_epochs")
    )
    n_mb = (
        method.minibatches
        if minibatches is None
        else check_positive_int(minibatches, "minibatches")
    )
    if prompts_per_step % n_mb:
        raise ValueError(
            f"minibatches={n_mb} must divide prompts_per_step={prompts_per_step} "
            "(whole groups)"
        )
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not math.isfinite(lr)
        or lr <= 0
    ):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if max_grad_norm is not None and (
        isinstance(max_grad_norm, bool)
        or not isinstance(max_grad_norm, (int, float))
        or not max_grad_norm > 0
    ):
        raise ValueError(
            f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}"
        )
    if eval_every is not None:
        check_positive_int(eval_every, "eval_every")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if history is not None and not isinstance(history, History):
        raise ValueError("history must be a History or None")
    if reference is not None and not callable(
        getattr(reference, "token_log_probs_and_entropy", None)
    ):
        raise ValueError(
            "reference must be a policy like the trained one "
            "(with token_log_probs_and_entropy)"
        )
    if eval_every is not None and eval_problems is None:
        eval_problems = task.eval_set(240)
    if critic_lr is not None and (
        isinstance(critic_lr, bool)
        or not isinstance(critic_lr, (int, float))
        or not math.isfinite(critic_lr)
        or critic_lr <= 0
    ):
        raise ValueError(
            f"critic_lr must be a positive number or None, got {critic_lr!r}"
        )
    if kl_ref is not None and not isinstance(kl_ref, bool):
        raise ValueError(f"kl_ref must be True, False or None, got {kl_ref!r}")
    if on_nonfinite not in NONFINITE:
        raise ValueError(
            f"on_nonfinite must be one of {NONFINITE}, got {on_nonfinite!r}"
        )
    check_float_dtype(sampler_dtype, "sampler_dtype")
    if (
        isinstance(stale_steps, bool)
        or not isinstance(stale_steps, int)
        or (stale_steps < 0)
    ):
        raise ValueError(
            f"stale_steps must be a non-negative integer, got {stale_steps!r}"
        )
    if top_k is not None:
        check_positive_int(top_k, "top_k")
    if method.dynamic_sampling and G < 2:
        raise ValueError(
            f"method {method.name!r} uses dynamic sampling, which keeps groups whose "
            f"rewards differ: it needs group_size >= 2, got {G}"
        )
    if critic is not None and not method.needs_critic:
        raise ValueError(f"method {method.name!r} has no critic; do not pass one")
    if method.needs_critic:
        if critic is None:
            from .lm.tinygpt import TinyGPT, TinyGPTCritic

            if not isinstance(policy, TinyGPT):
                raise ValueError(
                    f"method {method.name!r} needs a critic: "
                    "pass critic=... for a non-TinyGPT policy"
                )
            critic = TinyGPTCritic.from_policy(policy)
        if not isinstance(critic, torch.nn.Module):
            raise ValueError(
                f"critic must be a torch.nn.Module, got {type(critic).__name__}"
            )

    device = next(policy.parameters()).device
    if reference is None:
        reference = copy.deepcopy(policy)
    # the reference is never updated: it is in no optimiser and its forward runs under
    # no_grad. Its parameters' requires_grad flags are left alone on purpose: frozen
    # parameters select other CPU kernels (on the reference numeric path) whose last
    # bits differ, so KL(policy || its own copy) would start as round-off, not 0
    reference.eval()
    g = torch.Generator().manual_seed(seed)
    # foreach: one multi-tensor Adam update instead of a loop over the parameters: the
    # same arithmetic (every stored output of the book is bitwise unchanged), less
    # overhead per step
    params = list(policy.parameters())
    opt = torch.optim.Adam(params, lr=lr, foreach=True)
    critic_opt = (
        torch.optim.Adam(critic.parameters(), lr=critic_lr or lr, foreach=True)
        if critic is not None
        else None
    )
    hist = History() if history is None else history
    step0 = hist.rows[-1]["step"] if hist.rows else 0
    samples_seen = hist.rows[-1].get("samples", 0) if hist.rows else 0
    greedy_seen = hist.rows[-1].get("greedy_samples", 0) if hist.rows else 0
    # greedy decoding (top_k=1) still calls the sampler's multinomial: its own
    # generator, so the draws from g are those of every other method
    greedy_g = torch.Generator().manual_seed(seed) if method.greedy_baseline else None
    components = len(getattr(task, "reward_names", ("reward",))) > 1
    eos = task.tokenizer.eos_id
    t0 = time.perf_counter()

    def heldout() -> float:
        return evaluate(policy, task, eval_problems)["accuracy"]

    if eval_every is not None and not hist.rows:
        hist.log(step=0, samples=0, heldout_accuracy=heldout(), seconds=0.0)

    need_ref = method.needs_reference or bool(kl_ref)
    # the training forward gives old_log_probs itself
    one_pass = epochs == 1 and n_mb == 1
    controller = (
        AdaptiveEntropyController(**method.adaptive_entropy)
        if method.adaptive_entropy is not None
        else None
    )
    clip = float("inf") if max_grad_norm is None else max_grad_norm
    skipped = hist.rows[-1].get("skipped", 0) if hist.rows else 0

    def diverged(
        step: int, quantity: str, value: float, cause: str
    ) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged at step {step}: the {quantity} is {value} "
            f"(not finite). Likely cause: {cause}",
            step=step,
            quantity=quantity,
            history=hist,
        )

    lr_cause = (
        f"the learning rate (lr={lr:g}) is too large for this model, "
        f"or max_grad_norm is off ({max_grad_norm})"
    )

    # the sampler: the policy itself, or a copy in another dtype and/or k steps behind
    own_sampler = sampler_dtype is None and stale_steps == 0
    tempered = not (temperature == 1 and top_k is None)
    sampler = policy if own_sampler else copy.deepcopy(policy)
    # the policy's weights after each of the last stale_steps + 1 steps
    versions: collections.deque = collections.deque(maxlen=stale_steps + 1)

    def refresh_sampler() -> None:
        if own_sampler:
            return
        state = versions[0] if len(versions) > stale_steps else None
        with torch.no_grad():
            source = policy.state_dict() if stale_steps == 0 else state
            if source is not None:  # else: still the initial weights
                sampler.load_state_dict(source)
        if sampler_dtype is not None:
            sampler.to(sampler_dtype)

    if not own_sampler:
        refresh_sampler()

    def draw(step: int) -> tuple:
        """One generation batch: problems, their prompts, G samples each, rewards and
        reward components (None for a single-reward task)."""
        problems = task.sample_problems(prompts_per_step, g)
        prompts = task.encode_prompts(problems).to(device)
        policy.eval()
        sampler.eval()
        try:
            samples = sampler.sample(
                prompts,
                max_new_tokens=task.max_new_tokens,
                eos=eos,
                temperature=temperature,
                top_k=top_k,
                generator=g,
                group_size=G,
            )
        # torch.multinomial on NaN/inf probabilities: the policy's logits overflowed
        except RuntimeError as err:
            if "inf" not in str(err) and "nan" not in str(err):
                raise
            raise diverged(
                step,
                "sampling distribution",
                float("nan"),
                "the policy's logits overflowed: " + lr_cause,
            ) from err
        # 2. rewards (and their components, for a task with several)
        rows_problems = [p for p in problems for _ in range(G)]
        rewards = task.rewards(rows_problems, samples.completions, samples.mask)
        reward_components = (
            task.reward_components(rows_problems, samples.completions, samples.mask)
            if components
            else None
        )
        return problems, prompts, samples, rewards, reward_components

    bar = tqdm(range(1, steps + 1), desc=method.name, disable=not progress, leave=False)
    for i in bar:
        step = step0 + i
        # 1. sample G completions for each of the step's prompts (no gradient);
        # with dynamic sampling, more batches until enough groups carry a signal
        if method.dynamic_sampling:
            drawn_batches: list[tuple] = []

            def rewards_of_new_batches(step=step, drawn=drawn_batches):
                while True:
                    drawn.append(draw(step))
                    yield drawn[-1][3]

            ds = fill_informative(
                rewards_of_new_batches(),
                prompts_per_step,
                G,
                max_batches=method.max_gen_batches,
                allow_short=True,
            )
            problems, prompts, samples, rewards, reward_components = _keep_groups(
                drawn_batches, ds.keep, prompts_per_step, G, task, device
            )
            gen_batches = ds.n_batches
            sampled_now = ds.groups_drawn * G
        else:
            problems, prompts, samples, rewards, reward_components = draw(step)
            gen_batches = 1
            sampled_now = len(samples)
        loss_mask = (
            truncation_loss_mask(samples.mask, samples.truncated)
            if method.mask_truncated
            else None
        )
        greedy_rewards = None
        if method.greedy_baseline:  # one greedy completion per prompt (ReMax)
            with torch.no_grad():
                greedy = policy.sample(
                    prompts,
                    max_new_tokens=task.max_new_tokens,
                    eos=eos,
                    temperature=1.0,
                    top_k=1,
                    generator=greedy_g,
                )
            greedy_rewards = task.rewards(
                problems, greedy.completions, greedy.mask
            ).repeat_interleave(G)
            greedy_seen += len(problems)
        policy.train()
        if one_pass:
            logits = policy(samples.prompts, samples.completions, group_size=G)
            logp_full = token_log_probs(logits, samples.completions)
        else:
            with torch.no_grad():
                logits = policy(samples.prompts, samples.completions, group_size=G)
                logp_full = token_log_probs(logits, samples.completions)
        old_logp = select(logp_full.detach(), samples.mask)
        sum_pi_sq = None
        if method.needs_sum_pi_squared:  # Σ_v π_old(v | s_t)², no gradient
            with torch.no_grad():
                sum_pi_sq = select(
                    torch.softmax(logits.detach(), dim=-1).square().sum(-1),
                    samples.mask,
                )
        # the policy's entropy on its own samples, before any update
        with torch.no_grad():
            ent = token_entropy(logits.detach())
            entropy = (
                select(ent, samples.mask).sum() / samples.mask.sum().clamp_min(1)
            ).item()
        entropies = select(ent, samples.mask) if method.needs_entropy else None
        ref_logp = None
        if need_ref:
            with torch.no_grad():
                ref_logits = reference(
                    samples.prompts, samples.completions, group_size=G
                )
                ref_logp = select(
                    token_log_probs(ref_logits, samples.completions), samples.mask
                )
        values = None
        # the critic's values of the sampled states, before any update
        if critic is not None:
            critic.eval()
            with torch.no_grad():
                values = select(
                    critic(samples.prompts, samples.completions, group_size=G),
                    samples.mask,
                )
        batch = RolloutBatch.from_samples(
            samples,
            rewards,
            group_size=G,
            loss_mask=loss_mask,
            ref_log_probs=ref_logp,
            values=values,
            old_log_probs=old_logp,
            greedy_rewards=greedy_rewards,
            reward_components=reward_components,
            sum_pi_squared=sum_pi_sq,
            entropies=entropies,
        )
        # 3. advantages (reward side), and the critic's regression targets
        adv = method.advantages(batch)
        targets = method.value_targets(batch).detach() if critic is not None else None
        # 4. loss (trajectory side), inner epochs x minibatches
        losses, norms, value_losses, stats_acc = [], [], [], {}
        if critic is not None:
            critic.train()
        for _ in range(epochs):
            order = (
                torch.randperm(prompts_per_step, generator=g)
                if n_mb > 1
                else torch.arange(prompts_per_step)
            )
            for chunk in order.chunk(n_mb):
                rows = (chunk.unsqueeze(1) * G + torch.arange(G)).reshape(-1).to(device)
                mb = batch if n_mb == 1 else batch.select(rows)
                if one_pass:
                    logp = logp_full
                else:
                    # each prompt run once per group
                    logits = policy(mb.prompts, mb.completions, group_size=G)
                    logp = token_log_probs(logits, mb.completions)
                H = None  # the entropy bonus's token entropies, with gradient
                if method.has_entropy_bonus:
                    H = token_entropy(logits)
                coef = None if controller is None else controller.applied
                loss, stats = policy_loss(
                    method,
                    logp,
                    mb,
                    adv if n_mb == 1 else adv[rows],
                    entropy=H,
                    entropy_coef=coef,
                )
                opt.zero_grad()
                bad = None
                if not bool(torch.isfinite(loss.detach())):
                    bad = (
                        "loss",
                        float(loss.detach()),
                        "non-finite log-probabilities "
                        "(a policy whose logits overflowed) "
                        f"or advantages; or {lr_cause}",
                    )
                else:
                    loss.backward()
                    norm = float(
                        torch.nn.utils.clip_grad_norm_(policy.parameters(), clip)
                    )
                    if not math.isfinite(norm):
                        bad = ("gradient norm", norm, lr_cause)
                if bad is not None:
                    if on_nonfinite == "raise":
                        raise diverged(step, *bad)
                    opt.zero_grad()
                    skipped += 1
                else:
                    opt.step()
                    norms.append(norm)
                    losses.append(loss.item())
                    if not _all_finite(params):
                        raise diverged(
                            step,
                            "parameters",
                            float("nan"),
                            "the update overflowed: " + lr_cause,
                        )
                    for k, v in stats.items():
                        stats_acc.setdefault(k, []).append(float(v))
                    if controller is not None:  # TRL: after each optimiser step
                        m_on = mb.loss_mask
                        controller.update(
                            float(
                                (select(H.detach(), m_on) * m_on).sum()
                                / m_on.sum().clamp_min(1)
                            )
                        )
                if critic is not None:  # the critic's step on the same minibatch
                    v = critic(mb.prompts, mb.completions, group_size=G)
                    vloss = method.value_loss(
                        v, mb, targets if n_mb == 1 else targets[rows]
                    )
                    critic_opt.zero_grad()
                    cbad = None
                    if not bool(torch.isfinite(vloss.detach())):
                        cbad = (
                            "value loss",
                            float(vloss.detach()),
                            f"non-finite critic values or targets; or {lr_cause}",
                        )
                    else:
                        vloss.backward()
                        cnorm = float(
                            torch.nn.utils.clip_grad_norm_(critic.parameters(), clip)
                        )
                        if not math.isfinite(cnorm):
                            cbad = (
                                "critic gradient norm",
                                cnorm,
                                f"the critic's learning rate; or {lr_cause}",
                            )
                    if cbad is not None:
                        if on_nonfinite == "raise":
                            raise diverged(step, *cbad)
                        critic_opt.zero_grad()
                        skipped += 1
                    else:
                        critic_opt.step()
                        value_losses.append(vloss.item())
        samples_seen += sampled_now
        if not own_sampler:  # the sampler of the next step
            if stale_steps > 0:
                versions.append(
                    {k: v.detach().clone() for k, v in policy.state_dict().items()}
                )
            refresh_sampler()
        lm = batch.mask
        row = {
            "step": step,
            "samples": samples_seen,
        }
        if method.greedy_baseline:
            row["greedy_samples"] = greedy_seen
        if method.dynamic_sampling:
            row["gen_batches"] = gen_batches
        row |= {
            "reward": batch.sequence_rewards.mean().item(),
            "entropy": entropy,
        }
        if ref_logp is not None:
            row["kl_ref"] = k3_kl(batch.old_log_probs, batch.ref_log_probs, lm).item()
        row["rollout_kl"] = kl_loss(
            batch.rollout_log_probs, batch.old_log_probs, lm, kind="k3"
        ).item()
        if not own_sampler or tempered:
            on = lm != 0
            gap = (batch.old_log_probs - batch.rollout_log_probs.to(torch.float64))[on]
            row["rollout_log_ratio_std"] = float(gap.std()) if gap.numel() > 1 else 0.0
        row["length"] = batch.lengths.mean().item()
        row["truncated"] = batch.truncated.double().mean().item()
        if G >= 2:
            row["zero_var_groups"] = _group_zero_variance(batch.sequence_rewards, G)
        if norms:
            row["grad_norm"] = sum(norms) / len(norms)
            row["loss"] = sum(losses) / len(losses)
        row.update({k: sum(v) / len(v) for k, v in stats_acc.items()})
        if critic is not None:
            if value_losses:
                row["value_loss"] = sum(value_losses) / len(value_losses)
            row["explained_variance"] = explained_variance(
                batch.values, targets, batch.loss_mask
            )
        if on_nonfinite == "skip":
            row["skipped"] = skipped
        if eval_every is not None and (i % eval_every == 0 or i == steps):
            row["heldout_accuracy"] = heldout()
        row["seconds"] = time.perf_counter() - t0
        hist.log(**row)
        if progress:
            bar.set_postfix(reward=f"{row['reward']:.3f}", refresh=False)
    policy.eval()
    if critic is not None:
        critic.eval()
    return hist
