"""Where int4 weights' packed bytes live: row-major [out, in / 2] (byte j of a row holds inputs 2j, 2j + 1)
or tiled, [ceil(out / TILE_ROWS), groups, TILE_ROWS, group / 2]: TILE_ROWS rows of one group are one
contiguous block (rows past out zero).

Why tiled: a decode-row kernel (int4_mma.py) reads a group of many rows at a time; row-major, that is
group / 2 bytes from each row, TILE_ROWS scattered 64-byte pieces, which DRAM serves well below its copy
rate; tiled, one 4 KB run. Kernels that read the weight (int4_mma, quant_matmul's GEMM, the dequantize
kernel) address either layout through `packed_pointers`; CPU code reads row-major (`row_major`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE_ROWS = 64
# Group sizes of the tiled layout: those int4_mma's steps take (a step holds whole 32-byte fragments a row).
GROUP_SIZES = (64, 128, 256)
_TILE_ROWS = tl.constexpr(TILE_ROWS)


def tiled(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """Row-major packed bytes [out, in / 2] -> the tiled layout (a new tensor)."""
    out_features, half_in = packed.shape
    half = group_size // 2
    if half_in % half:
        raise ValueError(f"group_size: {group_size} must divide the {half_in * 2} inputs for the tiled layout")
    tiles = triton.cdiv(out_features, TILE_ROWS)
    padded = torch.zeros(tiles * TILE_ROWS, half_in, dtype=packed.dtype, device=packed.device)
    padded[:out_features] = packed
    return padded.view(tiles, TILE_ROWS, half_in // half, half).transpose(1, 2).contiguous()


def row_major(tiled_bytes: torch.Tensor, out_features: int) -> torch.Tensor:
    """The tiled layout [tiles, groups, TILE_ROWS, group / 2] -> row-major [out, in / 2] (a new tensor)."""
    tiles, groups, rows, half = tiled_bytes.shape
    return tiled_bytes.transpose(1, 2).reshape(tiles * rows, groups * half)[:out_features].contiguous()


def write_rows(tiled_bytes: torch.Tensor, first_row: int, packed_rows: torch.Tensor) -> None:
    """Store row-major packed bytes [n, in / 2] as rows first_row .. first_row + n of a tiled weight (the
    streaming loader fills a layer a block of rows at a time)."""
    tiles, groups, rows_per_tile, half = tiled_bytes.shape
    by_row = tiled_bytes.transpose(1, 2)  # a view [tiles, TILE_ROWS, groups, half]
    source = packed_rows.reshape(packed_rows.shape[0], groups, half)
    row, end = first_row, first_row + packed_rows.shape[0]
    while row < end:
        tile, offset = divmod(row, rows_per_tile)
        if offset == 0 and end - row >= rows_per_tile:  # whole tiles: one copy
            count = (end - row) // rows_per_tile
            block = source[row - first_row : row - first_row + count * rows_per_tile]
            by_row[tile : tile + count].copy_(block.view(count, rows_per_tile, groups, half))
            row += count * rows_per_tile
        else:  # the ragged start or end of the block, inside one tile
            count = min(rows_per_tile - offset, end - row)
            by_row[tile, offset : offset + count].copy_(source[row - first_row : row - first_row + count])
            row += count


@triton.jit
def packed_pointers(w_ptr, rows, half, row_bytes, TILED: tl.constexpr, GROUP: tl.constexpr):
    """Pointers [len(rows), len(half)] to packed bytes ``half`` of weight rows ``rows`` (row_bytes: in / 2)
    in the row-major or (TILED) the tiled layout."""
    if TILED:
        HALF: tl.constexpr = GROUP // 2
        row_start = (rows // _TILE_ROWS).to(tl.int64) * _TILE_ROWS * row_bytes + (rows % _TILE_ROWS) * HALF
        return w_ptr + row_start[:, None] + ((half // HALF) * (_TILE_ROWS * HALF) + half % HALF)[None, :]
    else:
        return w_ptr + rows[:, None].to(tl.int64) * row_bytes + half[None, :]
