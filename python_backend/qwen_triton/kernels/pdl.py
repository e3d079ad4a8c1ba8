"""Programmatic dependent launch (PDL, Hopper and later) for the decode path's kernels.

A decode step of 7B is ~250 short kernels in a row. Between two of them the GPU idles: the next grid
is launched only once the previous one has completed and flushed, and its programs then start their
memory streams from nothing. With PDL, a kernel is launched while the one before it still runs: its
programs become resident, and block in ``gdc_wait`` until the previous grid has completed and its
writes are visible. So the launch and the scheduling of programs overlap the previous kernel's tail.

The contract every kernel here keeps, which makes this safe with any neighbour (our kernels, torch's,
or ones launched without PDL): ``wait_for_previous_kernel`` is the first thing a program does, before
it reads or writes any memory, and every program calls it (no early return before it). Completion is
transitive: a kernel completes only after its wait returned, so when kernel C's wait returns, every
kernel before C has completed too.

Off when: the device is older than sm_90, the Triton installed has no grid dependency control, the
kernels run under the interpreter (CPU), or ``QWEN_TRITON_PDL=0`` (read at each launch, so a benchmark
can time both in one process: the flag is a constexpr of every kernel, compiled apart).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - older Triton: PDL stays off
    gdc_launch_dependents = gdc_wait = None

ENV_SWITCH = "QWEN_TRITON_PDL"


@functools.cache
def _device_supports_pdl(device_index: int) -> bool:
    return gdc_wait is not None and torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels launched on ``device`` use PDL."""
    if device.type != "cuda" or os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return _device_supports_pdl(device.index if device.index is not None else torch.cuda.current_device())


def launch_options(enabled: bool) -> dict:
    """Keyword arguments of a ``kernel[grid](...)`` launch with PDL on (none when off, so the
    interpreter, which knows no such option, never sees one)."""
    return {"launch_pdl": True} if enabled else {}


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr):
    """Under PDL: block until the previous kernel's writes are visible, then let the next kernel
    launch (its programs will wait in turn). A no-op when PDL is off."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
