"""What the kernel tests share outside pytest's fixtures: device facts, the skip mark, and the interpreter switch.

A module of its own rather than ``from conftest import ...``: with several test folders on one command
line (``pytest tests/kernels tests/quant``), ``conftest`` names whichever folder's conftest loaded last.

TRITON_INTERPRET must be set before the kernel modules are imported (Triton picks interpreter or
compiler when it decorates the kernels); conftest.py imports this module, so it is set before any
test module imports them.
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
    not HAS_TRITON, reason="needs CUDA or the Triton interpreter (pip install -r requirements/kernels.txt)"
)


class PoisonedTorch:
    """A kernel module's ``torch`` with ``empty`` filled with NaN: an output (or split-K partial) element
    that the kernels' masks fail to write shows as NaN, which no comparison in these tests lets through."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))
