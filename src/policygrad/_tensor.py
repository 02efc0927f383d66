"""Low-level tensor helpers: masking by selection, flat parameters and gradients.

Every layer above uses them. Masks select; they never multiply. `x * mask` turns a NaN
or an infinity on a padded position into a NaN in the result (`inf * 0 = nan`) and,
through autograd, into a NaN gradient; `torch.where(mask, x, 0)` drops it in the forward
pass and gives exactly zero gradient there.
"""

from __future__ import annotations

import torch

from ._checks import check_tensor

__all__ = [
    "select",
    "masked_sum",
    "masked_mean",
    "compute_dtype",
    "flat_params",
    "flat_grad",
]


def select(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """`x` where `mask` is nonzero, `fill` elsewhere.

    By selection: padded values never propagate.
    """
    return torch.where(
        mask != 0, x, torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    )


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum of `x` over the positions where `mask` is nonzero (all, or along `dim`)."""
    s = select(x, mask)
    return s.sum() if dim is None else s.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is nonzero.

    0 (never NaN) where it selects nothing.
    """
    n = (mask != 0).to(x.dtype)
    n = n.sum() if dim is None else n.sum(dim)
    return masked_sum(x, mask, dim) / n.clamp_min(1.0)


def compute_dtype(*xs: torch.Tensor) -> torch.dtype:
    """The dtype losses are computed in: float64 if any input is float64, else float32.

    Half-precision inputs (float16, bfloat16) are promoted: `exp` of a log-ratio of 12
    already overflows float16, and a sum over thousands of tokens loses every digit in
    bfloat16. Gradients flow back into the inputs in their own dtype.
    """
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def flat_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable parameters of `module` in a fixed order.

    That order is the order of every flat gradient.
    """
    return [p for p in module.parameters() if p.requires_grad]


def flat_grad(
    scalar: torch.Tensor, params: list[torch.Tensor], *, create_graph: bool = False
) -> torch.Tensor:
    """Gradient of a scalar w.r.t. `params` as one flat vector `(P,)`.

    Zeros for unused params.
    """
    check_tensor(scalar, "scalar")
    if scalar.numel() != 1:
        raise ValueError(f"flat_grad needs a scalar, got shape {tuple(scalar.shape)}")
    grads = torch.autograd.grad(
        scalar, params, allow_unused=True, create_graph=create_graph
    )
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ]
    )


#: A group whose values spread (max - min) by at most this many machine epsilons of
#: the input dtype (float32's for half precision), relative to max(1, max|x|), is
#: constant: its advantages are exactly 0 (see `_constant_groups`).
CONSTANT_ULPS = 16


def _constant_groups(
    lo: torch.Tensor, hi: torch.Tensor, absmax: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """True where a group is constant up to round-off:
    `hi - lo <= 16 * eps(dtype) * max(1, absmax)`.

    `lo`, `hi`, `absmax`: the group's min, max and max absolute value; `dtype`: the
    dtype the values came in (its epsilon, or float32's for half precision, sets the
    tolerance). Exact equality is not enough: `0.1 + 0.2` and `0.3` differ in the
    last bit, and dividing that difference by a standard deviation of 1e-17 gives
    advantages of order 1.
    """
    # half-precision inputs use float32's epsilon: their values are exact, and a
    # bfloat16 tolerance (0.125 at |r| <= 1) would silently zero real reward
    # differences
    tol = (
        CONSTANT_ULPS
        * torch.finfo(torch.promote_types(dtype, torch.float32)).eps
        * absmax.clamp_min(1.0)
    )
    return (hi - lo) <= tol


def _spread_is_round_off(
    x: torch.Tensor, sel: torch.Tensor, dtype: torch.dtype, dim=None
) -> torch.Tensor:
    """`_constant_groups` of the selected entries of `x` (over `dim`, or all of
    them)."""
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    red = {} if dim is None else {"dim": dim, "keepdim": True}
    lo = torch.where(sel, x, inf).amin(**red)
    hi = torch.where(sel, x, -inf).amax(**red)
    top = select(x.abs(), sel).amax(**red)
    return _constant_groups(lo, hi, top, dtype)
