"""The tensor-parallel process group: this rank's place in it and the three collectives the model needs.

NCCL on CUDA devices, gloo on CPU (tests). At world size 1 every collective returns its input untouched
and no process group exists, so a single-device engine never calls into torch.distributed.

The group is torch.distributed's default group, set up from an explicit TCPStore that rank 0 opens on
a free port of 127.0.0.1 (all ranks are processes of one host): nothing depends on MASTER_ADDR /
MASTER_PORT in the environment, and two engines in two processes never collide on a port.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

STORE_HOST = "127.0.0.1"
# A collective that waits longer than this fails instead of hanging; the worker monitor
# (workers.py) normally reports a dead rank long before.
DEFAULT_TIMEOUT = timedelta(seconds=300)


@dataclass
class TensorParallelGroup:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (the partial outputs of row-parallel linears and the embedding)."""
        if self.is_parallel:
            dist.all_reduce(tensor)
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """[..., n] on every rank -> [..., world_size * n], rank 0's slice first (vocabulary-parallel logits)."""
        if not self.is_parallel:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=-1)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s values into `tensor` on every rank, in place (input tokens only rank 0 holds)."""
        if self.is_parallel:
            dist.broadcast(tensor, src)
        return tensor

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's `value` (KV blocks: each rank sizes its pool from its own device,
        and all must hold the same block count because they share one block table)."""
        if not self.is_parallel:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return int(tensor.item())

    def destroy(self) -> None:
        """Leave the group; after a peer died (its communicators possibly aborted) this must not raise."""
        if self.is_parallel and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 — a group a dead rank broke: nothing left to release cleanly
                pass


SINGLE = TensorParallelGroup(0, 1, torch.device("cpu"))


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def open_store(world_size: int, timeout: timedelta = DEFAULT_TIMEOUT) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free port (port 0: the OS picks; read it back as store.port)."""
    return dist.TCPStore(STORE_HOST, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)


def join_group(
    rank: int,
    world_size: int,
    device: torch.device,
    store_port: int,
    store: dist.TCPStore | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> TensorParallelGroup:
    """Join the group (blocks until every rank has joined). Rank 0 passes the store it opened."""
    if dist.is_initialized():
        raise RuntimeError(
            "tensor_parallel_size > 1: this process already has a torch.distributed group (started under "
            "torchrun?); the engine starts its own ranks, run it as a plain process"
        )
    if store is None:
        store = dist.TCPStore(STORE_HOST, store_port, world_size, is_master=False, timeout=timeout)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world_size, timeout=timeout)
    return TensorParallelGroup(rank, world_size, device)
