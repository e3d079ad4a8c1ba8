"""Kernel tests run on CUDA when there is a GPU, else on CPU through the Triton interpreter
(kernel_env.py sets it up; importing it here does so before any test module imports the kernels)."""

import pytest
import torch
from kernel_env import HAS_CUDA


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
