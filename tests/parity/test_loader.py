"""The parity loader itself: a missing or wrongly versioned framework skips locally, fails in CI."""

from __future__ import annotations

import importlib.metadata

import _frameworks
import pytest


def test_pins_are_read_from_pyproject():
    assert _frameworks.pinned_versions() == {"trl": "1.16", "verl": "0.9"}


@pytest.mark.parametrize("required", [False, True])
def test_missing_framework_skips_or_fails(monkeypatch, required):
    monkeypatch.setattr(_frameworks, "pinned_versions", lambda: {"no_such_framework_xyz": "1.0"})
    monkeypatch.setattr(_frameworks, "REQUIRED", required)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match="no_such_framework_xyz is not installed"):
        _frameworks.require("no_such_framework_xyz")


@pytest.mark.parametrize("required", [False, True])
def test_wrong_version_skips_or_fails(monkeypatch, required):
    have = importlib.metadata.version("pytest")
    monkeypatch.setattr(_frameworks, "pinned_versions", lambda: {"pytest": "0.1"})
    monkeypatch.setattr(_frameworks, "REQUIRED", required)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected, match=f"pytest {have} is installed; .* pytest==0.1"):
        _frameworks.require("pytest")


def test_matching_version_imports(monkeypatch):
    major_minor = ".".join(importlib.metadata.version("pytest").split(".")[:2])
    monkeypatch.setattr(_frameworks, "pinned_versions", lambda: {"pytest": major_minor})
    assert _frameworks.require("pytest") is pytest
