"""Seeding, thread pinning and device selection.

Stored notebook outputs are produced on CPU with one thread; `seed_everything` pins
everything that makes a run differ from the next (Python, NumPy and torch seeds,
deterministic algorithms, torch threads).
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ._checks import check_device

__all__ = [
    "seed_everything",
    "get_device",
    "make_generator",
    "show_source",
    "near_zero",
]

DEVICE_ENV = "POLICYGRAD_DEVICE"


def seed_everything(
    seed: int, *, threads: int | None = 1, deterministic: bool = True
) -> torch.Generator:
    """Seed Python, NumPy and torch, pin torch to `threads` threads, return a generator.

    One thread matters: large reductions can differ in the last bit between 1 and 2
    threads, which would break strict notebook comparison. `threads=None` leaves torch's
    setting alone.

    `deterministic=True` asks torch for deterministic algorithms, but leaves new tensors
    uninitialised (`torch.utils.deterministic.fill_uninitialized_memory = False`): by
    default deterministic mode writes NaN into every `torch.empty`, which changes no
    result of code that never reads memory before writing it, and cost a third of
    TinyGPT's sampling time.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(
                f"threads must be a positive integer or None, got {threads!r}"
            )
        torch.set_num_threads(threads)
    random.seed(seed)
    # seeding the legacy global RNG is the point here
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    return make_generator(seed)


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch generator seeded with `seed`.

    Pass it to samplers to keep streams independent.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    g = torch.Generator(device=check_device(device))
    g.manual_seed(seed)
    return g


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Resolve the device to run on: the argument, else `$POLICYGRAD_DEVICE`, else CPU.

    Asking for `cuda` on a machine without a GPU raises ValueError rather than silently
    using the CPU.
    """
    if device is None:
        device = os.environ.get(DEVICE_ENV, "cpu") or "cpu"
    return check_device(device)


def show_source(obj) -> object:
    """Display the source of a package function or class in a notebook.

    Showing the package's own source keeps text and code from drifting. Returns an
    `IPython.display.Markdown` object holding the source in a fenced `python` block,
    so that Jupyter and the MyST book both show it as highlighted code, or the source
    string when IPython is not available.
    """
    import inspect
    import re
    import textwrap

    try:
        # a method is shown without its class's indent
        src = textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as err:
        raise ValueError(f"cannot show the source of {obj!r}: {err}") from None
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - IPython is present wherever notebooks run
        return src
    runs = re.findall(r"`+", src)
    fence = "`" * max(
        3, 1 + max(map(len, runs), default=0)
    )  # longer than any run inside
    return Markdown(f"{fence}python\n{src.rstrip()}\n{fence}")


def near_zero(x: float, tol: float = 1e-5) -> str:
    """Format a number that is zero up to float round-off the same way on every machine.

    Returns `"0 (< tol)"` when `|x| < tol`, else `x` to 4 significant digits. Used where
    a notebook prints an identity that holds exactly (e.g. the mean of the score), so
    stored outputs do not depend on the last bits of floating point.
    """
    x = float(x)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    return f"0 (< {tol:g})" if abs(x) < tol else f"{x:.4g}"
