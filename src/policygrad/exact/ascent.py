"""Deterministic ascent on an exact objective, with a record of the path.

Several chapters follow the path that exact gradient ascent takes on an enumerable
problem: chapter 1 ("Following the gradient") on a three-armed bandit, chapter 3 on the
token-level MDP, chapter 7 on GRPO's implied surrogate. The loop is the same each time:
evaluate a differentiable objective, step along its gradient (plain ascent, or a torch
optimiser on the loss −objective), and record something every few steps. `ascend` is
that loop, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["ascend"]


def _is_real_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ascend(
    policy: torch.nn.Module,
    objective: Callable[[torch.nn.Module], torch.Tensor],
    steps: int,
    *,
    lr: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    grad_mask: Mapping[torch.nn.Parameter, torch.Tensor] | None = None,
    record: Callable[[int, torch.nn.Module], object] | None = None,
    record_every: int = 1,
) -> list[tuple[int, object]]:
    """Maximise `objective(policy)` by `steps` gradient steps, in place.

    * `objective(policy)` returns a differentiable scalar tensor (e.g.
      `problem.objective(policy)`, or a surrogate whose gradient is the update).
    * Plain ascent θ ← θ + `lr`·∇objective by default; with `optimizer` (a torch
      optimiser over the policy's parameters) each step is `optimizer.step()` on the
      loss −objective instead, and `lr` must not be given.
    * `grad_mask` (plain ascent only) maps parameters to tensors of their shape that
      multiply the gradient, e.g. to move only some coordinates; parameters not in it
      move freely.
    * `record(step, policy)` is called before the first step (step 0), after every
      `record_every`-th step, and after the last step; the result is the list of
      `(step, record(step, policy))` pairs (empty when `record` is None). It runs
      under `torch.no_grad()`.

    Returns the records. Raises `ValueError` on a non-scalar or non-finite objective.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not isinstance(record_every, int) or record_every < 1:
        raise ValueError(
            f"record_every must be a positive integer, got {record_every!r}"
        )
    if record is not None and not callable(record):
        raise ValueError("record must be callable (step, policy) -> value, or None")
    if not callable(objective):
        raise ValueError("objective must be callable: policy -> scalar tensor")
    if optimizer is None:
        if lr is None or not _is_real_number(lr) or not (lr > 0 and lr < float("inf")):
            raise ValueError(f"plain ascent needs a positive finite lr, got {lr!r}")
    else:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}"
            )
        if lr is not None:
            raise ValueError(
                "give lr to the optimizer, not to ascend, when one is used"
            )
        if grad_mask is not None:
            raise ValueError("grad_mask applies to plain ascent only (no optimizer)")
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    masks = {}
    if grad_mask is not None:
        ids = {id(p): p for p in params}
        for p, m in grad_mask.items():
            if id(p) not in ids:
                raise ValueError(
                    "grad_mask has a tensor that is not a policy parameter"
                )
            m = torch.as_tensor(m, dtype=p.dtype, device=p.device)
            if m.shape != p.shape:
                raise ValueError(
                    f"grad_mask entry has shape {tuple(m.shape)}, parameter has "
                    f"{tuple(p.shape)}"
                )
            masks[id(p)] = m

    def _value() -> torch.Tensor:
        value = objective(policy)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("objective(policy) must return a scalar tensor")
        if not torch.isfinite(value.detach()).all():
            raise ValueError(f"objective(policy) is not finite: {value.item()}")
        return value.reshape(())

    records: list[tuple[int, object]] = []

    def _record(step: int) -> None:
        if record is not None:
            with torch.no_grad():
                records.append((step, record(step, policy)))

    _record(0)
    for step in range(1, steps + 1):
        value = _value()
        if optimizer is None:
            grads = torch.autograd.grad(value, params, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    if g is None:
                        continue
                    if id(p) in masks:
                        g = g * masks[id(p)]
                    p.add_(g, alpha=lr)
        else:
            optimizer.zero_grad()
            (-value).backward()
            optimizer.step()
        if step % record_every == 0 or step == steps:
            _record(step)
    return records
