"""The critic's side of the reward: PPO's clipped value loss and the explained
variance of its values.

Derived in chapter 6 ("RLHF-style PPO: critic, GAE, KL in the reward").
"""

from __future__ import annotations

import torch

from .._checks import check_float
from .._tensor import select
from .masks import _check_like, _check_seq_mask

__all__ = ["clipped_value_loss", "explained_variance"]


def _check_critic_inputs(values, others, mask) -> torch.Tensor:
    """Float `(B, T)` tensors of one shape, finite on the tokens `mask` selects;
    returns the selection."""
    check_float(values, "values", 2)
    for name, x in others:
        check_float(x, name, 2)
        if x.shape != values.shape:
            raise ValueError(
                f"{name} must have the shape of values {tuple(values.shape)}, "
                f"got {tuple(x.shape)}"
            )
    sel = _check_seq_mask(mask, values.shape[0])
    if sel.shape != values.shape:
        raise ValueError(
            f"mask must have the shape of values {tuple(values.shape)}, "
            f"got {tuple(sel.shape)}"
        )
    for name, x in (("values", values), *others):
        _check_like(x, name, values.shape, sel, ref="values")
    return sel


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """PPO's clipped value loss, mean over masked tokens:

        ½ max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2)

    values `(B, T)` from the critic (with gradient); old_values `(B, T)` the critic's
    values when the batch was sampled; returns `(B, T)` the regression targets (e.g.
    GAE advantages + old values); all but `values` are constants. `clip=None` gives
    the plain squared error. An empty mask gives 0. Padded positions are selected
    away first: whatever sits there, the loss is the same and the gradient there is
    exactly 0. Derived in chapter 6 ("RLHF-style PPO: critic, GAE, KL in the
    reward").
    """
    sel = _check_critic_inputs(
        values, (("old_values", old_values), ("returns", returns)), mask
    )
    if clip is not None and (
        isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0
    ):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    v = select(values, sel)
    G = select(returns.detach(), sel).to(values.dtype)
    loss = (v - G) ** 2
    if clip is not None:
        old = select(old_values.detach(), sel).to(values.dtype)
        clipped = old + torch.clamp(v - old, -clip, clip)
        loss = torch.maximum(loss, (clipped - G) ** 2)
    n = sel.sum().to(loss.dtype)
    return 0.5 * select(loss, sel).sum() / n.clamp_min(1.0)


def explained_variance(
    values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> float:
    """How much of the variance of the critic's regression targets its values
    explain, over masked tokens: 1 - Var[G - V] / Var[G].

    1 means the critic predicts every target; 0 means it does no better than a
    constant; negative means worse than a constant. values, targets, mask: `(B, T)`.
    Defined as 0 when the targets have no variance (or the mask selects fewer than
    two tokens), so the metric is never NaN. Explained in chapter 6 ("RLHF-style PPO:
    critic, GAE, KL in the reward").
    """
    sel = _check_critic_inputs(values, (("targets", targets),), mask)
    if int(sel.sum()) < 2:
        return 0.0
    g = targets.detach()[sel].double()
    v = values.detach()[sel].double()
    var_g = g.var(unbiased=False)
    if float(var_g) <= 1e-12:
        return 0.0
    return float(1.0 - (g - v).var(unbiased=False) / var_g)
