"""Tests for policygrad.utils: seeding, thread pinning, device selection, generators, show_source."""

import random

import numpy as np
import pytest
import torch

import policygrad as pg
from policygrad import utils


def test_seed_everything_makes_sampling_reproducible():
    g1 = pg.seed_everything(123)
    a = (torch.rand(5), torch.randn(3), random.random(), np.random.rand(), torch.rand(4, generator=g1))  # noqa: NPY002
    g2 = pg.seed_everything(123)
    b = (torch.rand(5), torch.randn(3), random.random(), np.random.rand(), torch.rand(4, generator=g2))  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[2] == b[2] and a[3] == b[3]
    assert torch.equal(a[4], b[4])
    pg.seed_everything(124)
    assert not torch.equal(torch.rand(5), a[0])


def test_seed_everything_sets_one_thread_and_respects_none():
    torch.set_num_threads(2)
    pg.seed_everything(0)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    pg.seed_everything(0, threads=None)
    assert torch.get_num_threads() == 2
    pg.seed_everything(0, threads=1)
    assert torch.get_num_threads() == 1


def test_seed_everything_keeps_deterministic_algorithms_but_does_not_fill_new_memory():
    """Deterministic mode NaN-fills every torch.empty by default; seed_everything turns that off (it cost a
    third of the sampler's time and changes no result of code that writes before it reads)."""
    pg.seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    torch.utils.deterministic.fill_uninitialized_memory = True
    pg.seed_everything(0, deterministic=False)  # leaves both settings alone
    assert torch.utils.deterministic.fill_uninitialized_memory is True
    pg.seed_everything(0)
    assert torch.utils.deterministic.fill_uninitialized_memory is False


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True, None])
def test_seed_everything_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        pg.seed_everything(seed)


@pytest.mark.parametrize("threads", [0, -2, 1.0, True])
def test_seed_everything_rejects_bad_threads(threads):
    with pytest.raises(ValueError, match="threads"):
        pg.seed_everything(0, threads=threads)


def test_make_generator_streams():
    x = torch.rand(6, generator=pg.make_generator(7))
    y = torch.rand(6, generator=pg.make_generator(7))
    z = torch.rand(6, generator=pg.make_generator(8))
    assert torch.equal(x, y)
    assert not torch.equal(x, z)
    # a generator is independent of the global stream
    g = pg.make_generator(7)
    torch.manual_seed(999)
    torch.rand(100)
    assert torch.equal(torch.rand(6, generator=g), x)
    assert pg.make_generator(0).device == torch.device("cpu")


@pytest.mark.parametrize("seed", [-3, 2.0, None, False])
def test_make_generator_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        pg.make_generator(seed)


def test_get_device_default_is_cpu(monkeypatch):
    monkeypatch.delenv(utils.DEVICE_ENV, raising=False)
    assert pg.get_device() == torch.device("cpu")
    monkeypatch.setenv(utils.DEVICE_ENV, "")
    assert pg.get_device() == torch.device("cpu")


def test_get_device_reads_environment(monkeypatch):
    monkeypatch.setenv(utils.DEVICE_ENV, "cpu")
    assert pg.get_device() == torch.device("cpu")
    monkeypatch.setenv(utils.DEVICE_ENV, "not-a-device")
    with pytest.raises(ValueError, match="device"):
        pg.get_device()
    # an explicit argument wins over the environment
    assert pg.get_device("cpu") == torch.device("cpu")
    assert pg.get_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_get_device_cuda_without_gpu_raises(monkeypatch):
    with pytest.raises(ValueError, match="CUDA"):
        pg.get_device("cuda")
    with pytest.raises(ValueError, match="CUDA"):
        pg.get_device("cuda:0")
    monkeypatch.setenv(utils.DEVICE_ENV, "cuda")
    with pytest.raises(ValueError, match="CUDA"):
        pg.get_device()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_get_device_cuda_with_gpu():
    assert pg.get_device("cuda").type == "cuda"


@pytest.mark.parametrize("name", ["gpu", "tpu0", "cpu:x", "meta"])
def test_get_device_rejects_bad_names(name):
    with pytest.raises(ValueError):
        pg.get_device(name)


def test_show_source_returns_the_package_source():
    """A fenced python block (highlighted in Jupyter and in the MyST book), the source verbatim."""
    import inspect

    code = pg.show_source(pg.reward_side.gae)
    text = code.data if hasattr(code, "data") else code
    assert text.startswith("```python\ndef gae(") and text.endswith("\n```")
    assert text[len("```python\n") : -len("\n```")] == inspect.getsource(pg.reward_side.gae).rstrip()
    cls = pg.show_source(pg.TabularPolicy)
    assert "class TabularPolicy" in (cls.data if hasattr(cls, "data") else cls)
    method = pg.show_source(pg.ExactProblem.objective).data  # shown without the class indent
    assert method.startswith("```python\ndef objective(")


def test_show_source_fence_is_longer_than_any_backtick_run_inside():
    def f():
        """Has ``` inside."""

    text = pg.show_source(f).data
    assert text.startswith("````python\n") and text.endswith("\n````")


@pytest.mark.parametrize("obj", [5, "gae", None])
def test_show_source_rejects_objects_without_source(obj):
    with pytest.raises(ValueError, match="source"):
        pg.show_source(obj)
