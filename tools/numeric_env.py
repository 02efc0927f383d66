"""Pin the book's reference numeric path in this process before anything imports torch.

``policygrad.numeric_path`` holds the settings (and says why); importing it the usual way would run
``policygrad/__init__.py``, which imports torch, and the variables are read when torch initialises. So
the entry points that produce or check stored outputs load that one file by path, through :func:`load`,
and call its ``pin()`` first: ``conftest.py`` (pytest and nbval's kernels), ``tools/execute_notebooks.py``,
``tools/repro_probe.py`` and ``benchmarks/bench_reinforce_addition.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "policygrad" / "numeric_path.py"
NAME = "_policygrad_numeric_path"


def load():
    """The ``policygrad.numeric_path`` module, loaded from its file without the package (no torch)."""
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(NAME, SOURCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module  # dataclasses look the module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[NAME]


def pin() -> dict[str, str]:
    """Set the reference variables this environment does not set; return those it sets otherwise."""
    return load().pin()
