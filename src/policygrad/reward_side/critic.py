"""The critic's side of the reward: PPO's clipped value loss and the explained variance of its values.

Derived in {ref}`sec-rlhf-ppo`.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_tensor
from .masks import _check_seq_mask

__all__ = ["clipped_value_loss", "explained_variance"]


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.2,
) -> torch.Tensor:
    """PPO's clipped value loss, mean over masked tokens:
    :math:`\\tfrac12\\max\\big((V-G)^2,\\ (V_\\text{old} + \\mathrm{clip}(V - V_\\text{old}, -c, c) - G)^2\\big)`.

    values ``(B, T)`` from the critic (with gradient); old_values ``(B, T)`` the critic's values when the
    batch was sampled; returns ``(B, T)`` the regression targets (e.g. GAE advantages + old values); all
    but ``values`` are constants. ``clip=None`` gives the plain squared error. An empty mask gives 0.
    Derived in {ref}`sec-rlhf-ppo`.
    """
    check_tensor(values, "values", 2)
    for name, x in (("old_values", old_values), ("returns", returns)):
        check_tensor(x, name, 2)
        if x.shape != values.shape:
            raise ValueError(f"{name} must have the shape of values {tuple(values.shape)}, got {tuple(x.shape)}")
        check_finite(x, name)
    m = _check_seq_mask(mask, values.shape[0])
    if m.shape != values.shape:
        raise ValueError(f"mask must have the shape of values {tuple(values.shape)}, got {tuple(m.shape)}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    m = m.to(values.dtype)
    G = returns.detach().to(values.dtype)
    loss = (values - G) ** 2
    if clip is not None:
        old = old_values.detach().to(values.dtype)
        clipped = old + torch.clamp(values - old, -clip, clip)
        loss = torch.maximum(loss, (clipped - G) ** 2)
    n = m.sum()
    return 0.5 * (loss * m).sum() / n.clamp_min(1.0)


def explained_variance(values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """How much of the variance of the critic's regression targets its values explain, over masked tokens:
    :math:`1 - \\mathrm{Var}[G - V] / \\mathrm{Var}[G]`.

    1 means the critic predicts every target; 0 means it does no better than a constant; negative means
    worse than a constant. values, targets, mask: ``(B, T)``. Defined as 0 when the targets have no variance
    (or the mask selects fewer than two tokens), so the metric is never NaN. Explained in
    {ref}`sec-rlhf-ppo`.
    """
    check_tensor(values, "values", 2)
    check_tensor(targets, "targets", 2)
    if targets.shape != values.shape:
        raise ValueError(f"targets must have the shape of values {tuple(values.shape)}, got {tuple(targets.shape)}")
    check_finite(values, "values")
    check_finite(targets, "targets")
    m = _check_seq_mask(mask, values.shape[0])
    if m.shape != values.shape:
        raise ValueError(f"mask must have the shape of values {tuple(values.shape)}, got {tuple(m.shape)}")
    sel = m.detach().bool()
    if int(sel.sum()) < 2:
        return 0.0
    g = targets.detach()[sel].double()
    v = values.detach()[sel].double()
    var_g = g.var(unbiased=False)
    if float(var_g) <= 1e-12:
        return 0.0
    return float(1.0 - (g - v).var(unbiased=False) / var_g)
