"""Import the frameworks the parity tests use as oracles, at the versions they were written against.

``require("trl")`` returns the module. When the framework is missing or has another version, the tests
of that file are skipped with the reason, unless ``POLICYGRAD_REQUIRE_PARITY=1`` (set by ``.ci/run``):
then it is a failure, so CI can never pass by silently not comparing anything. The pins live in
``pyproject.toml`` (the ``parity`` extra) and are read from there, so the two cannot drift.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("POLICYGRAD_REQUIRE_PARITY", "") == "1"


def pinned_versions() -> dict[str, str]:
    """``{"trl": "1.16", "verl": "0.9"}``: the ``name==X.Y.*`` pins of the ``parity`` extra."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    out = {}
    for req in data["project"]["optional-dependencies"]["parity"]:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\d+\.\d+)\.\*", req.replace(" ", ""))
        assert m, f"parity requirement {req!r} is not of the form name==X.Y.*"
        out[m.group(1).lower()] = m.group(2)
    return out


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (POLICYGRAD_REQUIRE_PARITY=1: a missing oracle is a failure)", pytrace=False)
    pytest.skip(f"{reason}; install the parity extra: pip install -e '.[parity]'", allow_module_level=True)


def require(name: str):
    """The imported framework ``name``, checked against its pin (skip or fail, see the module docstring)."""
    want = pinned_versions()[name]
    try:
        have = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        _unavailable(f"{name} is not installed")
    if not (have == want or have.startswith(want + ".")):
        _unavailable(f"{name} {have} is installed; the parity tests are written against {name}=={want}.*")
    try:
        return importlib.import_module(name)
    except Exception as exc:  # an installed framework that cannot be imported is the same failure
        _unavailable(f"{name} {have} is installed but cannot be imported: {exc!r}")
