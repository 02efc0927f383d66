"""Low-level tensor helpers used by every layer above: flat parameter lists and flat gradients.
"""

from __future__ import annotations

import torch

from ._checks import check_tensor

__all__ = ["flat_params", "flat_grad"]


def flat_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of ``module`` in a fixed order (the order of every flat gradient)."""
    return [p for p in module.parameters() if p.requires_grad]


def flat_grad(
    scalar: torch.Tensor, params: list[torch.Tensor], *, create_graph: bool = False
) -> torch.Tensor:
    """Gradient of a scalar w.r.t. ``params`` as one flat vector ``(P,)`` (zeros for unused params)."""
    check_tensor(scalar, "scalar")
    if scalar.numel() != 1:
        raise ValueError(f"flat_grad needs a scalar, got shape {tuple(scalar.shape)}")
    grads = torch.autograd.grad(scalar, params, allow_unused=True, create_graph=create_graph)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)])
