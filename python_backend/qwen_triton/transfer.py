"""Host <-> device copies that do not stall the device's stream.

`torch.tensor(values, device="cuda")` copies from pageable memory and then waits for the stream to
drain: every step input built that way made the host wait for all work queued before it, so the host
could never prepare step n+1 while the GPU ran step n. Copies here go through pinned memory with
`non_blocking=True` (PyTorch's pinned-memory cache keeps a staging block until its copy has run), and
results come back through an event that waits for the step that made them, not for the whole queue.
On the CPU both are plain tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def to_device(values: Sequence | np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A list or array as a tensor on `device`, without synchronizing the device's stream."""
    if device.type != "cuda":
        if isinstance(values, np.ndarray):
            return torch.from_numpy(values).to(device=device, dtype=dtype)
        return torch.tensor(values, dtype=dtype, device=device)
    if isinstance(values, np.ndarray):
        host = torch.from_numpy(values).to(dtype).pin_memory()
    else:
        host = torch.tensor(values, dtype=dtype, pin_memory=True)
    return host.to(device, non_blocking=True)


class HostCopy:
    """Device tensors on their way to host lists: the copy is queued now, `lists()` waits for it alone."""

    def __init__(self, *tensors: torch.Tensor):
        self._ready: torch.cuda.Event | None = None
        if tensors and tensors[0].is_cuda:
            self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
            for host, tensor in zip(self._host, tensors):
                host.copy_(tensor, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = list(tensors)

    def lists(self) -> list[list]:
        if self._ready is not None:
            self._ready.synchronize()
        return [t.tolist() for t in self._host]
