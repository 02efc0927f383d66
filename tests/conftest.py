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


@pytest.fixture
def tiny_gpt():
    """A factory for fresh, small TinyGPTs sized for a language task (fast; a fresh one never solves addition
    at these seeds): ``tiny_gpt(task, seed=0, init_std=0.02)``."""

    def make(task, seed: int = 0, init_std: float = 0.02):
        cfg = pg.TinyGPTConfig(
            vocab_size=task.tokenizer.vocab_size,
            block_size=task.prompt_length + task.max_new_tokens,
            n_layer=1,
            n_head=2,
            n_embd=16,
            init_std=init_std,
        )
        return pg.TinyGPT(cfg, generator=torch.Generator().manual_seed(seed))

    return make
