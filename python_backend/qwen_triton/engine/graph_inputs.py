"""The static inputs of one captured graph (decode or mixed), in one device buffer that one copy fills each step.

A CUDA graph reads its inputs from fixed addresses, so every step's inputs must be copied into the
tensors it was captured with. Copied one by one (token ids, positions, slots, context lengths, block
tables, then filling the padding rows), that would be about a dozen small copies and fills queued before
each replay: each a few microseconds of GPU time on the critical path and several of host time. So
the inputs are typed views of one byte buffer, the host writes a step's bytes (padding rows
included) into a pinned image with numpy, and one asynchronous copy moves the whole image.
"""

from __future__ import annotations

import numpy as np
import torch

from qwen_triton.layers.attention import AttentionMetadata


class _InputImage:
    """Typed fields of one device byte buffer, filled by one asynchronous copy of a pinned host image.

    `fields`: (name, numpy dtype, torch dtype, shape). Each view is 16-byte aligned: Triton specializes its
    kernels on pointers' 16-byte alignment. `template` (numpy views of the padding values) is written once;
    every upload starts from it.
    """

    def __init__(self, fields: tuple, device: torch.device):
        self._fields = fields
        self._pinned = device.type == "cuda"
        self._offsets, offset = {}, 0
        for name, np_dtype, _, shape in fields:
            self._offsets[name] = offset
            offset += -(-int(np.prod(shape)) * np.dtype(np_dtype).itemsize // 16) * 16
        self.nbytes = offset
        self._template = np.zeros(self.nbytes, dtype=np.uint8)
        self.template = self.views(self._template)
        self.device_bytes: torch.Tensor | None = None  # the device buffer, once `to_device` made it
        self._device = device

    def to_device(self) -> dict:
        """Move the template (padding filled in by now) to the device once; the device views."""
        self.device_bytes = torch.from_numpy(self._template.copy()).to(self._device)
        return self.views(self.device_bytes)

    def views(self, buffer: np.ndarray | torch.Tensor) -> dict:
        """The fields as typed views of a byte buffer: the host image (numpy) or the device buffer (torch),
        which both slice and `.view(dtype)` alike."""
        column = 2 if isinstance(buffer, torch.Tensor) else 1
        views = {}
        for field in self._fields:
            name, np_dtype, _, shape = field
            offset = self._offsets[name]
            flat = buffer[offset : offset + int(np.prod(shape)) * np.dtype(np_dtype).itemsize].view(field[column])
            views[name] = flat.reshape(shape)
        return views

    def new_image(self) -> tuple[torch.Tensor, dict]:
        """A pinned host copy of the template and its numpy views, to fill and then `upload`."""
        pinned = torch.empty(self.nbytes, dtype=torch.uint8, pin_memory=self._pinned)
        image = pinned.numpy()
        image[:] = self._template
        return pinned, self.views(image)

    def upload(self, pinned: torch.Tensor) -> None:
        # PyTorch's pinned-memory cache keeps `pinned` from reuse until this copy has run.
        self.device_bytes.copy_(pinned, non_blocking=self._pinned)


def _step_image(
    tokens: int, seqs: int, max_blocks: int, block_size: int, scratch_block: int, device: torch.device, *extra
) -> _InputImage:
    """The fields every step has (and `extra` ones), padding filled in: padding tokens read token 0 at
    position 0 and write their K/V into the scratch block, which no sequence owns; padding sequences have
    one token of context in the scratch block."""
    image = _InputImage(
        (
            ("input_ids", np.int64, torch.int64, (tokens,)),
            ("positions", np.int64, torch.int64, (tokens,)),
            ("slot_mapping", np.int64, torch.int64, (tokens,)),
            ("context_lens", np.int32, torch.int32, (seqs,)),
            ("block_tables", np.int32, torch.int32, (seqs, max_blocks)),
            *extra,
        ),
        device,
    )
    image.template["slot_mapping"][:] = scratch_block * block_size
    image.template["context_lens"][:] = 1
    image.template["block_tables"][:] = scratch_block
    return image


class _CapturedInputs:
    """What a captured graph reads: the image's device views, as the model's inputs and metadata.
    `meta_views`: metadata fields that are views of the image (beyond the three every step has);
    `meta_values`: fixed ones."""

    def __init__(self, image: _InputImage, meta_views: tuple[str, ...] = (), **meta_values):
        self._image = image
        views = image.to_device()
        self.buffer = image.device_bytes
        self.input_ids, self.positions = views["input_ids"], views["positions"]
        self.meta = AttentionMetadata(
            slot_mapping=views["slot_mapping"],
            block_tables=views["block_tables"],
            context_lens=views["context_lens"],
            **{name: views[name] for name in meta_views},
            **meta_values,
        )


def _write_tables(tables: np.ndarray, block_tables: list[list[int]], scratch_block: int) -> None:
    """Rows of block tables into the image; entries < 0 (blocks released by the attention window) point
    at the scratch block too."""
    for row, table in enumerate(block_tables):
        tables[row, : len(table)] = table
    rows = tables[: len(block_tables)]
    holes = rows < 0
    if holes.any():
        rows[holes] = scratch_block


class GraphInputs(_CapturedInputs):
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
        image = _step_image(size, size, max_blocks, block_size, scratch_block, device)
        super().__init__(image, is_decode=True, window=window, sinks=sinks)

    def upload(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
    ) -> None:
        """Queue one copy of a step's inputs (rows 0..len(positions)-1; the rest become padding)."""
        batch = len(positions)
        pinned, views = self._image.new_image()
        views["input_ids"][:batch] = input_ids
        views["positions"][:batch] = positions
        views["slot_mapping"][:batch] = slots
        views["context_lens"][:batch] = context_lens
        _write_tables(views["block_tables"], block_tables, self.scratch_block)
        self._image.upload(pinned)


class MixedGraphInputs(_CapturedInputs):
    """Inputs for a mixed step of up to `tokens` tokens over up to `max_seqs` sequences (prompt chunks and
    decode rows, attended by kernels.chunked_attention).

    Padding tokens (past a step's tokens) read token 0 at position 0 and write their K/V into the scratch
    block; no work item covers them, so attention leaves their rows zero. Sequences past a step's start
    where its tokens end and own no work item.
    """

    def __init__(
        self,
        tokens: int,
        max_seqs: int,
        max_blocks: int,
        block_size: int,
        scratch_block: int,
        device: torch.device,
        block_q: int,
    ):
        from qwen_triton.kernels.chunked_attention import max_work_items

        self.tokens, self.max_seqs, self.scratch_block, self.block_q = tokens, max_seqs, scratch_block, block_q
        image = _step_image(
            tokens,
            max_seqs,
            max_blocks,
            block_size,
            scratch_block,
            device,
            ("query_start", np.int32, torch.int32, (max_seqs + 1,)),
            ("chunk_items", np.int32, torch.int32, (max_work_items(tokens, max_seqs, block_q), 2)),
            ("decode_items", np.int32, torch.int32, (min(tokens, max_seqs), 2)),
        )
        image.template["chunk_items"][:, 0] = -1
        image.template["decode_items"][:, 0] = -1
        super().__init__(image, ("query_start", "chunk_items", "decode_items"), is_decode=False)

    def fits(self, num_tokens: int, num_seqs: int) -> bool:
        return num_tokens <= self.tokens and num_seqs <= self.max_seqs

    def upload(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
    ) -> None:
        """Queue one copy of a step's inputs: tokens in sequence order, `query_lens` of them per sequence."""
        from qwen_triton.kernels.chunked_attention import work_items

        num_tokens, num_seqs = len(positions), len(query_lens)
        pinned, views = self._image.new_image()
        views["input_ids"][:num_tokens] = input_ids
        views["positions"][:num_tokens] = positions
        views["slot_mapping"][:num_tokens] = slots
        views["context_lens"][:num_seqs] = context_lens
        starts = views["query_start"]
        starts[0] = 0
        np.cumsum(query_lens, out=starts[1 : num_seqs + 1])
        starts[num_seqs + 1 :] = num_tokens
        _write_tables(views["block_tables"], block_tables, self.scratch_block)
        work_items(query_lens, self.block_q, views["chunk_items"], views["decode_items"])
        self._image.upload(pinned)
