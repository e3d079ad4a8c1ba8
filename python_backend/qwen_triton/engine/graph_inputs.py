"""The static inputs of one captured decode graph, in one device buffer that one copy fills each step.

A CUDA graph reads its inputs from fixed addresses, so every step's inputs must be copied into the
tensors it was captured with. Copied one by one (token ids, positions, slots, context lengths, block
tables, then filling the padding rows), that would be about a dozen small copies and fills queued before
each replay: each a few microseconds of GPU time on the critical path and several of host time. So
the five inputs are typed views of one byte buffer, the host writes a step's bytes (padding rows
included) into a pinned image with numpy, and one asynchronous copy moves the whole image.
"""

from __future__ import annotations

import numpy as np
import torch

from qwen_triton.layers.attention import AttentionMetadata

# (name, numpy dtype, torch dtype); block_tables holds max_blocks values a row, the others one.
_FIELDS = (
    ("input_ids", np.int64, torch.int64),
    ("positions", np.int64, torch.int64),
    ("slot_mapping", np.int64, torch.int64),
    ("context_lens", np.int32, torch.int32),
    ("block_tables", np.int32, torch.int32),
)


class GraphInputs:
    """Inputs for `size` decode rows with block tables `max_blocks` wide.

    Padding rows (past a step's batch) read token 0 at position 0 with one token of context, and write
    their K/V into the scratch block (`scratch_block`), which no sequence owns.
    """

    def __init__(
        self,
        size: int,
        max_blocks: int,
        block_size: int,
        scratch_block: int,
        device: torch.device,
        window: int = 0,
        sinks: int = 0,
    ):
        self.size, self.max_blocks, self.scratch_block = size, max_blocks, scratch_block
        self._pinned = device.type == "cuda"
        self._offsets, offset = {}, 0
        for name, np_dtype, _ in _FIELDS:
            count = size * (max_blocks if name == "block_tables" else 1)
            self._offsets[name] = (offset, count)
            # 16-byte aligned views: Triton specializes its kernels on pointers' 16-byte alignment.
            offset += -(-count * np.dtype(np_dtype).itemsize // 16) * 16
        self.nbytes = offset
        self._template = np.zeros(self.nbytes, dtype=np.uint8)
        padding = self._views(self._template)
        padding["slot_mapping"][:] = scratch_block * block_size
        padding["context_lens"][:] = 1
        padding["block_tables"][:] = scratch_block
        self.buffer = torch.from_numpy(self._template.copy()).to(device)
        views = self._views(self.buffer)
        self.input_ids, self.positions = views["input_ids"], views["positions"]
        self.meta = AttentionMetadata(
            slot_mapping=views["slot_mapping"],
            block_tables=views["block_tables"],
            context_lens=views["context_lens"],
            is_decode=True,
            window=window,
            sinks=sinks,
        )

    def _views(self, buffer: np.ndarray | torch.Tensor) -> dict:
        """The five fields as typed views of a byte buffer: the host image (numpy) or the device buffer
        (torch), which both slice and `.view(dtype)` alike."""
        column = 2 if isinstance(buffer, torch.Tensor) else 1
        views = {}
        for field in _FIELDS:
            offset, count = self._offsets[field[0]]
            views[field[0]] = buffer[offset : offset + count * np.dtype(field[1]).itemsize].view(field[column])
        views["block_tables"] = views["block_tables"].reshape(self.size, self.max_blocks)
        return views

    def upload(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
    ) -> None:
        """Queue one copy of a step's inputs (rows 0..len(positions)-1; the rest become padding). Table
        entries < 0 (blocks released by the attention window) point at the scratch block too."""
        batch = len(positions)
        pinned = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=self._pinned)
        image = pinned.numpy()
        image[:] = self._template
        views = self._views(image)
        views["input_ids"][:batch] = input_ids
        views["positions"][:batch] = positions
        views["slot_mapping"][:batch] = slots
        views["context_lens"][:batch] = context_lens
        tables = views["block_tables"]
        for row, table in enumerate(block_tables):
            tables[row, : len(table)] = table
        holes = tables[:batch] < 0
        if holes.any():
            tables[:batch][holes] = self.scratch_block
        # PyTorch's pinned-memory cache keeps `pinned` from reuse until this copy has run.
        self.buffer.copy_(pinned, non_blocking=self._pinned)
