"""Input validation shared by every public function.

Every public function of `policygrad` validates what it is given and raises a
`ValueError` whose message names the argument and says what was wrong. These helpers
keep those messages uniform.
"""

from __future__ import annotations

import contextlib
import math

import torch

__all__ = [
    "check_tensor",
    "check_same_shape",
    "check_finite",
    "check_mask",
    "check_unit_interval",
    "check_positive_int",
    "check_float",
    "check_device",
    "check_float_dtype",
]


def check_tensor(
    x, name: str, ndim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Return `x` if it is a tensor with the expected number of dimensions.

    Otherwise raise ValueError.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(
                f"{name} must have {want} dimension(s), got shape {tuple(x.shape)}"
            )
    return x


def check_same_shape(
    a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str
) -> None:
    """Raise ValueError unless `a` and `b` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


#: Set by `already_validated()`: the value checks below (NaN/inf, 0/1 masks) are
#: skipped while it is True.
_VALIDATED = False


@contextlib.contextmanager
def already_validated():
    """Skip the element-wise value checks (`check_finite`, the 0/1 test of
    `check_mask`) inside the block: for internal loops over slices of inputs that
    were validated once (the gradient lab's per-group path runs a method's loss on
    thousands of slices of one validated batch). Shapes and types are still checked;
    public calls outside such a block are unaffected."""
    global _VALIDATED
    before, _VALIDATED = _VALIDATED, True
    try:
        yield
    finally:
        _VALIDATED = before


def check_finite(
    x: torch.Tensor, name: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Raise ValueError if `x` contains NaN or infinite entries (e.g. a NaN reward).

    With `mask` (same shape, 0/1 or bool) only the entries where the mask is nonzero are
    checked: values on padded positions may be anything, because every function selects
    them away before any arithmetic.
    """
    if not x.is_floating_point() or _VALIDATED:
        return x
    bad = ~torch.isfinite(x.detach())
    if mask is not None:
        bad = bad & (mask.detach() != 0)
    if bool(bad.any()):
        where = " on trained (unmasked) positions" if mask is not None else ""
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s){where}"
        )
    return x


def check_float(
    x, name: str, ndim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Return `x` if it is a floating-point tensor, else raise ValueError.

    Accepted: float16, bfloat16, float32 and float64. Integer, boolean and complex
    tensors are refused rather than silently promoted: a reward tensor of dtype int64 or
    a bool mask passed as log-probabilities is a bug in the caller.
    """
    check_tensor(x, name, ndim)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_device(device) -> torch.device:
    """Parse `device`; refuse one this machine does not have with a ValueError.

    For example `"cuda"` without a GPU.
    """
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise ValueError(
            "device must be a string such as 'cpu' or 'cuda', or a torch.device, "
            f"got {device!r}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was requested but torch sees no CUDA GPU "
                "on this machine"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: "
                f"torch sees {torch.cuda.device_count()} GPU(s)"
            )
    elif dev.type == "mps":
        if not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            raise ValueError(
                f"device {device!r} was requested but torch sees no MPS device "
                "on this machine"
            )
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return dev


def check_mask(
    mask: torch.Tensor,
    name: str = "mask",
    shape: torch.Size | None = None,
    *,
    allow_empty: bool = False,
) -> torch.Tensor:
    """Validate a 0/1 mask and return it as float.

    Raise ValueError if it is not binary, or empty unless `allow_empty` (training code
    where an empty mask has a defined result, e.g. a loss of 0).
    """
    check_tensor(mask, name)
    if shape is not None and mask.shape != shape:
        raise ValueError(
            f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}"
        )
    m = mask.to(torch.float32) if mask.dtype == torch.bool else mask
    if _VALIDATED:
        return m.to(torch.get_default_dtype()) if not m.is_floating_point() else m
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1")
    if not allow_empty and (m.numel() == 0 or not bool((m != 0).any())):
        raise ValueError(f"{name} is empty: it selects no token at all")
    return m.to(torch.get_default_dtype()) if not m.is_floating_point() else m


def check_unit_interval(value: float, name: str) -> float:
    """Raise ValueError unless `0 <= value <= 1` (discount gamma, GAE lambda)."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or math.isnan(value)
    ):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return float(value)


def check_positive_int(value, name: str) -> int:
    """Raise ValueError unless `value` is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_float_dtype(value, name: str) -> torch.dtype | None:
    """`value` if it is a floating `torch.dtype` (e.g. `torch.bfloat16`) or None;
    else ValueError."""
    if value is not None and (
        not isinstance(value, torch.dtype) or not value.is_floating_point
    ):
        raise ValueError(
            f"{name} must be a floating torch.dtype (e.g. torch.bfloat16) or None, "
            f"got {value!r}"
        )
    return value
