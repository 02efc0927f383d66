"""The reference numeric path: the CPU floating-point settings of the book's outputs.

Every stored output of the book is made on these settings. PyTorch picks its vectorised
CPU kernels by the CPU's capability (AVX2 or AVX-512), and MKL and oneDNN pick their
code paths by the CPU, so the same program rounds sums differently in the last bit on
two machines; a few hundred optimiser steps turn that bit into a different third
decimal. Three variables, read once when torch and MKL initialise, pin one path on
every x86-64 CPU with AVX2:

    variable             value       what it pins
    -------------------  ----------  ------------------------------------------------
    ATEN_CPU_CAPABILITY  avx2        PyTorch's own vectorised kernels: the AVX2 build,
                                     even on AVX-512
    ONEDNN_MAX_CPU_ISA   AVX2        oneDNN's kernels capped at AVX2
    MKL_CBWR             COMPATIBLE  MKL's conditional numerical reproducibility branch

Why `COMPATIBLE` and not MKL's `AVX2` branch: MKL honours `AVX2` on Intel CPUs only
(elsewhere it falls back to following the CPU), while `COMPATIBLE` is honoured on every
x86-64 CPU, and the machines this book is built and tested on include AMD CPUs with and
without AVX-512. It costs time: on a 2-core AMD EPYC (AVX2) TinyGPT training ran 1.3 to
1.6 times slower than on MKL's own choice (chapter 4 of the book 92 s against 61 s),
because this model's small matrices spend their time in MKL calls. `OMP_NUM_THREADS`
and `MKL_NUM_THREADS` default to 1 as well; they are not part of the path, because
`policygrad.seed_everything` pins torch (and with it MKL) to one thread in every
notebook, and CI checks that two threads give the same outputs.

The variables must be in the environment *before* torch is imported: setting them
inside a notebook is too late. So this module imports only the standard library at
import time, and the entry points that produce or check the book's outputs
(`tools/execute_notebooks.py`, the repository's `conftest.py` for pytest and nbval's
kernels, `benchmarks/bench_reinforce_addition.py`, `tools/repro_probe.py`) load it by
file path and call `pin` before anything imports torch. They are defaults: a value set
in the environment wins, and `status` then reports that this process is not on the
reference path (the notebook comparison becomes tolerant).
`python -m policygrad.lm.regenerate_warm_starts` re-executes itself with the variables
set. Described in the book's index, "Reproducing the outputs".
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field

__all__ = [
    "REFERENCE_ENV",
    "THREAD_ENV",
    "REFERENCE_TORCH",
    "REFERENCE_CAPABILITY",
    "PathStatus",
    "pin",
    "overridden",
    "status",
]

#: The variables that select the floating-point path, and their reference values.
REFERENCE_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
}

#: Thread counts set by default alongside: not part of the path (see the module
#: docstring).
THREAD_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: The torch release the stored outputs were made with; its local part (e.g. `+cpu`)
#: is ignored.
REFERENCE_TORCH = "2.13.0"

#: What `torch.backends.cpu.get_cpu_capability()` reports on the reference path.
REFERENCE_CAPABILITY = "AVX2"

_X86 = ("x86_64", "amd64", "x64")


def pin(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set every reference variable (and the thread counts) `environ` does not set yet.

    `environ` defaults to `os.environ` (then child processes, e.g. Jupyter kernels,
    inherit the values). Returns the path variables the environment sets to something
    else (see `overridden`). Call it before torch is imported; after that the values
    only reach child processes, and a warning says so.
    """
    env = os.environ if environ is None else environ
    for key, value in {**REFERENCE_ENV, **THREAD_ENV}.items():
        env.setdefault(key, value)
    if env is os.environ and "torch" in sys.modules:
        import warnings

        warnings.warn(
            "policygrad.numeric_path.pin() ran after torch was imported: "
            "this process keeps the CPU kernels it already chose; "
            "only child processes get the reference path",
            RuntimeWarning,
            stacklevel=2,
        )
    return overridden(env)


def overridden(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The path variables `environ` sets to a value other than the reference one.

    Unset ones are included as `""`: an empty dict means the environment selects the
    reference path.
    """
    env = os.environ if environ is None else environ
    return {k: env.get(k, "") for k, v in REFERENCE_ENV.items() if env.get(k, "") != v}


@dataclass(frozen=True)
class PathStatus:
    """Whether this process computes on the reference path, and if not, why not.

    * `reference`: True when every check passed;
    * `reasons`: one line per failed check;
    * `machine`, `torch` and `capability`: what was found;
    * `environment`: the path variables as this process sees them.
    """

    reference: bool
    reasons: tuple[str, ...]
    machine: str
    torch: str
    capability: str
    environment: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for a report header or a notebook."""
        where = f"{self.machine}, torch {self.torch}, CPU kernels {self.capability}"
        if self.reference:
            return (
                f"reference numeric path ({where}, "
                f"MKL_CBWR={self.environment['MKL_CBWR']})"
            )
        return f"not the reference numeric path ({where}): " + "; ".join(self.reasons)


def status() -> PathStatus:
    """Check this process against the reference path.

    Checked: the environment variables, an x86-64 CPU, the torch release, and the CPU
    capability torch actually uses (`ATEN_CPU_CAPABILITY=avx2` on a CPU without AVX2
    falls back to another one). Imports torch.
    """
    import torch

    reasons = []
    for key, value in overridden().items():
        reasons.append(
            f"{key}={value!r} (reference {REFERENCE_ENV[key]!r})"
            if value
            else f"{key} is unset"
        )
    machine = platform.machine()
    if machine.lower() not in _X86:
        reasons.append(f"the CPU is {machine}, not x86-64")
    version = torch.__version__.split("+")[0]
    if version != REFERENCE_TORCH:
        reasons.append(f"torch {version} (reference {REFERENCE_TORCH})")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != REFERENCE_CAPABILITY:
        reasons.append(
            f"torch uses {capability} CPU kernels (reference {REFERENCE_CAPABILITY})"
        )
    return PathStatus(
        reference=not reasons,
        reasons=tuple(reasons),
        machine=machine,
        torch=torch.__version__,
        capability=capability,
        environment={k: os.environ.get(k, "") for k in REFERENCE_ENV},
    )
