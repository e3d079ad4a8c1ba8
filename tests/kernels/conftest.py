"""Kernel tests run on CUDA when there is a GPU, else on CPU through the Triton interpreter.

TRITON_INTERPRET must be set before the kernel modules are imported (Triton picks interpreter or
compiler when it decorates the kernels), so it is set here, before any test module imports them.
"""

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None

if HAS_TRITON and not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

needs_kernels = pytest.mark.skipif(
    not HAS_TRITON, reason="needs CUDA or the Triton interpreter (pip install -r requirements/kernels.txt)")


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def generator():
    """Fresh random inputs per test, reproducible per test."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def rel_error():
    """||out - expected|| / ||expected||, after checking every output element is finite."""
    def measure(out: torch.Tensor, expected: torch.Tensor) -> float:
        out, expected = out.double().cpu(), expected.double().cpu()
        assert torch.isfinite(out).all(), "kernel output has NaN/inf (unwritten or broken)"
        return ((out - expected).norm() / expected.norm()).item()
    return measure
