"""Shared pytest setup: every test starts from the same seeds, one torch thread and float32."""

import pytest
import torch

import policygrad as pg


@pytest.fixture(autouse=True)
def _seeded():
    """Seed everything before each test and check that no test leaks a changed default dtype."""
    pg.seed_everything(0)
    yield
    leaked = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    assert leaked == torch.float32, "a test changed torch's default dtype without restoring it"
