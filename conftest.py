"""Pytest setup for the whole repository (unit tests and the notebooks nbval re-executes).

Before anything imports torch, pin the book's reference numeric path (``policygrad.numeric_path``): the
variables are inherited by nbval's Jupyter kernels, and a value already set in the environment wins.
Then load the notebook comparison (``tools/nbval_numeric.py``): strict on the reference path, numbers
within stated tolerances elsewhere.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tools"))

import numeric_env  # noqa: E402

numeric_env.pin()

pytest_plugins = ["nbval_numeric"]
