"""Weights back to floats on the device (Triton language), for the many-row matmuls of prefill.

A weight-only kernel that converts every weight tile inside its matmul (quant_matmul.py) does that work
again for every tile of rows, and runs its dots at the converted tiles' pace; above a few hundred rows the
matmul is bound by compute, where cuBLAS on a float weight is faster. So a step with that many rows
dequantizes each weight once into a scratch float tensor (reading the quantized bytes, writing 2 bytes a
weight) and hands it to cuBLAS. The values are the CPU reference's bit for bit: the same float32 products,
rounded once to the output dtype (quantization/formats.py, ``dequantize_weight``).

- int8 per output channel: w = q * scale[o].
- int4 groups: packed uint8 [out, in/2] (even input in the low nibble), w = (q - zero[o, g]) * scale[o, g].
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .int4_layout import packed_pointers

_OUTPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_ROWS = 16
BLOCK_COLS = 256  # inputs a program column covers (int4: 128 packed bytes of each row)


@triton.jit
def _dequantize_int8_kernel(q_ptr, scale_ptr, w_ptr, N, K, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows < N)[:, None] & (cols < K)[None, :]
    offsets = rows[:, None].to(tl.int64) * K + cols[None, :]
    q = tl.load(q_ptr + offsets, mask=mask, other=0).to(tl.float32)
    scale = tl.load(scale_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)
    tl.store(w_ptr + offsets, (q * scale[:, None]).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequantize_int4_kernel(
    packed_ptr,
    scales_ptr,
    zeros_ptr,
    w_ptr,
    N,
    K,
    stride_sn,
    stride_zn,
    GROUP: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    TILED: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    """One program: BLOCK_ROWS rows by BLOCK_COLS inputs, read as BLOCK_COLS / 2 packed bytes a row (from
    either of int4_layout's layouts); the low and high nibbles are written interleaved back into input order."""
    HALF: tl.constexpr = BLOCK_COLS // 2
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    half = tl.program_id(1) * HALF + tl.arange(0, HALF)  # packed byte j holds inputs 2j and 2j + 1
    row_ok = (rows < N)[:, None]
    in_bytes = row_ok & (2 * half < K)[None, :]
    packed = tl.load(packed_pointers(packed_ptr, rows, half, K // 2, TILED, GROUP), mask=in_bytes, other=0)
    packed = packed.to(tl.int32)
    group = (2 * half) // GROUP  # both inputs of a byte share its group: GROUP is even
    scale = tl.load(scales_ptr + rows[:, None] * stride_sn + group[None, :], mask=in_bytes, other=0.0)
    scale = scale.to(tl.float32)
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + rows[:, None] * stride_zn + group[None, :], mask=in_bytes, other=0)
        zero = zero.to(tl.float32)
    else:
        zero = tl.full(scale.shape, 8.0, tl.float32)
    low = ((packed & 0x0F).to(tl.float32) - zero) * scale
    high = ((packed >> 4).to(tl.float32) - zero) * scale
    values = tl.interleave(low, high)  # [BLOCK_ROWS, BLOCK_COLS]: input 2j then 2j + 1
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    offsets = rows[:, None].to(tl.int64) * K + cols[None, :]
    tl.store(w_ptr + offsets, values.to(w_ptr.dtype.element_ty), mask=row_ok & (cols < K)[None, :])


def _output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    if dtype not in _OUTPUT_DTYPES:
        raise ValueError(f"dtype: {dtype} is not one of float16, bfloat16, float32")
    return torch.empty(shape, dtype=dtype, device=device)


def dequantize_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 [out, in] (row-contiguous) and float scales [out] -> the float weight [out, in] in ``dtype``."""
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or not qweight.is_contiguous():
        raise ValueError(f"qweight: expected a contiguous int8 [out, in], got {qweight.dtype} {tuple(qweight.shape)}")
    n, k = qweight.shape
    if tuple(scale.shape) != (n,):
        raise ValueError(f"scale: expected shape [{n}], got {tuple(scale.shape)}")
    w = _output((n, k), dtype, qweight.device)
    grid = (triton.cdiv(n, BLOCK_ROWS), triton.cdiv(k, BLOCK_COLS))
    _dequantize_int8_kernel[grid](qweight, scale, w, n, k, BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    return w


def dequantize_int4(
    packed: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    group_size: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """uint8 [out, in/2] nibbles (or int4_layout's tiled 4-D layout), scales [out, groups] and zero points
    [out, groups] (None: symmetric, zero 8) -> the float weight [out, in] in ``dtype``, in storage column
    order."""
    tiled = packed.dim() == 4
    if packed.dtype != torch.uint8 or packed.dim() not in (2, 4) or not packed.is_contiguous():
        raise ValueError(
            f"packed: expected a contiguous uint8 [out, in/2] or a tiled [tiles, groups, rows, group/2], got "
            f"{packed.dtype} {tuple(packed.shape)}"
        )
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group_size: {group_size} must be a positive even number (a byte holds two inputs)")
    if tiled and (packed.shape[3] != group_size // 2 or packed.shape[0] * packed.shape[2] < scales.shape[0]):
        raise ValueError(
            f"packed: a tiled weight of {tuple(packed.shape)} does not hold scales' rows in groups of {group_size}"
        )
    n = scales.shape[0] if tiled else packed.shape[0]
    k = packed.shape[1] * packed.shape[3] * 2 if tiled else packed.shape[1] * 2
    groups = -(-k // group_size)
    if tuple(scales.shape) != (n, groups) or (zeros is not None and tuple(zeros.shape) != (n, groups)):
        raise ValueError(f"scales / zeros: expected shape [{n}, {groups}] for {k} inputs in groups of {group_size}")
    w = _output((n, k), dtype, packed.device)
    zeros_arg = zeros if zeros is not None else scales
    grid = (triton.cdiv(n, BLOCK_ROWS), triton.cdiv(k, BLOCK_COLS))
    _dequantize_int4_kernel[grid](
        packed,
        scales,
        zeros_arg,
        w,
        n,
        k,
        scales.stride(0),
        zeros_arg.stride(0),
        GROUP=group_size,
        HAS_ZEROS=zeros is not None,
        TILED=tiled,
        BLOCK_ROWS=BLOCK_ROWS,
        BLOCK_COLS=BLOCK_COLS,
    )
    return w
