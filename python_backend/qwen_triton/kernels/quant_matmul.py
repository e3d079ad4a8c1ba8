"""Weight-only quantized linears (Triton language kernels): y = x @ dequant(W)^T (+ bias).

Formats (those of quantization/formats.py, which owns them):
- int8: ``qweight`` int8 [out, in], ``scale`` float [out] (per output channel, symmetric).
- fp8: ``qweight`` float8_e4m3fn [out, in], ``scale`` float [out] (per output channel). Weight-only:
  x stays in its float dtype, so results are the dequantize-then-matmul reference's up to float
  rounding (torch._scaled_mm, by contrast, needs x quantized to fp8 too). Triton knows e4m3
  (``tl.float8e4nv``) on compute capability >= 8.9 only.
- int4: ``qweight_packed`` uint8 [out, in/2], element 2j in the low nibble and 2j+1 in the high one,
  each output row contiguous; ``scales`` [out, groups] (fp16 or fp32) and ``zeros`` [out, groups]
  (uint8 or float; None = symmetric, zero point 8); w = (q - zero) * scale per group of
  ``group_size`` input features.

Two kernel shapes per format:
- GEMV (few rows of x, decode at small batch; int8 and fp8 at 1 row, int4 at 1 row of short layers,
  INT4_GEMV_MAX_IN_FEATURES): bound by reading the weight once. int8 and fp8 take dense_gemv's kernel
  (dense_gemv.byte_linear), the float weights' GEMV reading bytes: int8 -> float by the float32 "magic
  number" trick (common.int8_bytes_to_float), fp8 by the hardware e4m3 conversion, the per-channel scale
  on the row sums. int4 has a GEMV of its own (_int4_gemv_kernel): 16-byte chunks of packed weights,
  one a thread, x loaded in the same shape, each nibble made the float32 128 + q by one PRMT and the
  zero point taken off per chunk.
- GEMM (more rows, and int4 on longer layers, padded to 16): tensor-core dots on weights
  converted to the activations' dtype (int8, int4 q - zero and e4m3 values are all exact in
  bf16/fp16); scales are applied to the dot's float32 result. int4 on CUDA converts two nibbles per
  instruction with inline PTX (common's `NIBBLES_PTX_*`, ~1.4 instructions per weight against ~7 in
  the float32 path, which left int4 instruction-bound), feeds the low nibbles (even inputs) and high nibbles (odd
  inputs) to two dots against x's even and odd columns, and reads two groups per K step; the
  step's scales and zero points are loaded one step ahead.
  The CPU interpreter (and float32 x, and float zero points) take a pure-Triton conversion.

Narrow outputs split K across programs. int4 adds the float32 partials up in the last program of
each output tile (SERIAL: an atomic count per tile); the int8 and fp8 GEMMs launch common.sum_splits.

int8 and fp8 share every kernel line but the byte -> float conversion (the ``FMT`` constexpr picks
it); quantization.Fp8Linear sends small batches here and prefill to torch._scaled_mm.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import dense_gemv, int4_layout, int4_mma, multiprocessor_count
from .common import (
    NIBBLES_PTX_BF16,
    NIBBLES_PTX_F16,
    check_bias,
    int8_bytes_to_float,
    k_slices,
    split_partials,
    sum_splits,
)
from .int4_layout import packed_pointers
from .pdl import launch_options, pdl_enabled, wait_for_previous_kernel

# Up to this many rows of x the GEMV kernels (one program column per row) run; above, the
# tensor-core GEMM (rows padded to 16). The rule: a GEMV re-reads the weight for every row, so it serves
# one row only; int4 takes its GEMV only on short layers (INT4_GEMV_MAX_IN_FEATURES). Evidence:
# benchmarks/kernel_bench.py times both paths per format, shape and row count.
GEMV_MAX_ROWS = {"int8": 1, "fp8": 1, "int4": 1}
# int4 at one row: the GEMV (_int4_gemv_kernel) where K is too short for the GEMM's pipeline to
# reach a steady state (Qwen2.5-0.5B's 896-input layers); from 3584 inputs on (every 7B layer, 0.5B's
# down_proj) the GEMM is faster (kernel_bench.py --formats int4 --rows 1 --shapes qkv05,o05,qkv,o,...),
# except on long rows that whole steps of 1024 inputs divide (INT4_GEMV_LONG).
INT4_GEMV_MAX_IN_FEATURES = 1024
# The int4 GEMV on narrow layers (out < 2048): 8 rows a program and one step over all of K (<= 1024
# inputs), so that a small layer still has programs for every multiprocessor.
INT4_GEMV_NARROW = dict(max_out_features=2047, BLOCK_N=8, BLOCK_K=1024)
# The int4 GEMV on wide layers with long rows (out >= 16384, K >= 8192 and a multiple of 1024: Qwen2.5-72B's
# gate_up): 8 rows a program in steps of 1024, 4 warps. H200, one row: gate_up 59136x8192 126.6 us against
# the GEMM's 139.5; on narrower 8192-input layers the GEMM stays ahead (o 8192x8192: 25.5 us against 30.8)
# (kernel_bench.py --rows 1 --formats int4 --sweep int4 --shapes gate_up72,qkv72,o72).
INT4_GEMV_LONG = dict(min_out_features=16384, min_in_features=8192, BLOCK_N=8, BLOCK_K=1024)

_ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_PACKED_CVT_DTYPES = (torch.float16, torch.bfloat16)  # see _packed_cvt_applies


@triton.jit
def _byte_tile(
    w_ptr,
    cols,
    col_ok,
    k0,
    K,
    stride_wn,
    FMT: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One-byte weights [BLOCK_N, BLOCK_K] of rows ``cols``, inputs k0..: int8 as float32 integers,
    fp8 as tl.float8e4nv values, which the caller converts once, straight to the type it computes in
    (float32 FMAs or x's dtype for dots; e4m3 is exact in both). The per-channel scale is applied to
    the output."""
    k = k0 + tl.arange(0, BLOCK_K)
    mask = col_ok[:, None] if EVEN_K else col_ok[:, None] & (k < K)[None, :]
    w = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_wn + k[None, :], mask=mask, other=0)
    if FMT == "fp8":
        return w.to(tl.float8e4nv, bitcast=True)  # masked-off bytes are 0x00, which is +0.0
    else:
        return int8_bytes_to_float(w)


# The int4 -> bf16 / fp16 conversion, the inner loop's cost (common.py owns the PTX): 11 instructions for
# 8 weights, against ~7 per weight for the float32 magic-number path (which leaves int4 instruction-bound).
_NIBBLES_BF16 = tl.constexpr(NIBBLES_PTX_BF16)
_NIBBLES_F16 = tl.constexpr(NIBBLES_PTX_F16)

# The int4 GEMV's conversion, to float32: PRMT puts each nibble in byte 2 under 0x43 in byte 3 (and zero
# bytes below), the bits of the float32 128 + n (one unit of 128.0's mantissa sits at bit 16). 11
# instructions for 8 weights, and the zero point is not subtracted per weight: the GEMV takes
# (128 + zero) * sum(x) off each chunk's dot product instead (see _int4_gemv_kernel).
_NIBBLES_F32 = tl.constexpr("""{
.reg .b32 lo, hi, magic;
and.b32 lo, $8, 0x0F0F0F0F;
shr.u32 hi, $8, 4;
and.b32 hi, hi, 0x0F0F0F0F;
mov.b32 magic, 0x43;
prmt.b32 $0, lo, magic, 0x4055;
prmt.b32 $1, lo, magic, 0x4155;
prmt.b32 $2, lo, magic, 0x4255;
prmt.b32 $3, lo, magic, 0x4355;
prmt.b32 $4, hi, magic, 0x4055;
prmt.b32 $5, hi, magic, 0x4155;
prmt.b32 $6, hi, magic, 0x4255;
prmt.b32 $7, hi, magic, 0x4355;
}""")


@triton.jit
def _int4_values(packed, zero, DTYPE: tl.constexpr, PACKED_CVT: tl.constexpr):
    """uint8 [R, C] and zero points [R] (float32) -> (low nibble - zero, high nibble - zero) [R, C]
    as DTYPE: small integers, exact in bf16 / fp16 / float32."""
    if PACKED_CVT:  # CUDA, bf16 / fp16 only: inline PTX, which the CPU interpreter cannot run
        # Each packed pair of outputs gets the pair of its own elements' zero points (broadcast
        # along the row: in any register layout, element i of a pack meets its own row's value).
        if DTYPE == tl.bfloat16:
            bias = tl.broadcast_to((-128.0 - zero).to(tl.bfloat16)[:, None], packed.shape)
            return tl.inline_asm_elementwise(
                _NIBBLES_BF16,
                "=r,=r,=r,=r,r,r,r",
                [packed, bias],
                dtype=(tl.bfloat16, tl.bfloat16),
                is_pure=True,
                pack=4,
            )
        else:
            bias = tl.broadcast_to((-1024.0 - zero).to(tl.float16)[:, None], packed.shape)
            return tl.inline_asm_elementwise(
                _NIBBLES_F16, "=r,=r,=r,=r,r,r,r", [packed, bias], dtype=(tl.float16, tl.float16), is_pure=True, pack=4
            )
    else:
        packed = packed.to(tl.int32)
        low = (packed & 0x0F).to(tl.float32) - zero[:, None]
        high = (packed >> 4).to(tl.float32) - zero[:, None]
        return low.to(DTYPE), high.to(DTYPE)


@triton.jit
def _int4_groups(
    scales_ptr,
    zeros_ptr,
    cols,
    col_ok,
    k0,
    K,
    stride_sn,
    stride_zn,
    GROUP: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    SUB_K: tl.constexpr,
    NG: tl.constexpr,
):
    """Scales and zero points [BLOCK_N, NG] (float32) of the NG pieces of SUB_K inputs from k0 on (the
    same group twice where SUB_K < GROUP); past K, the last group's (valid memory, unused). Loaded as
    one 2-D tile, a loop-carried value whose layout Triton can fix; per-group 1-D loads carried
    across the loop took a blocked layout that sent every converted weight tile through shared memory
    again (seen in the TTGIR)."""
    group = tl.minimum(k0 + tl.arange(0, NG) * SUB_K, K - 1) // GROUP
    scale = tl.load(scales_ptr + cols[:, None] * stride_sn + group[None, :], mask=col_ok[:, None], other=0.0).to(
        tl.float32
    )
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + cols[:, None] * stride_zn + group[None, :], mask=col_ok[:, None], other=0).to(
            tl.float32
        )
    else:
        zero = tl.full(scale.shape, 8.0, tl.float32)
    return scale, zero


@triton.jit
def _column(t, j: tl.constexpr, NG: tl.constexpr):
    """Column j of t [R, NG] as [R], NG 1 or 2 (tl.split halves a last dimension of 2)."""
    if NG == 1:
        return tl.reshape(t, [t.shape[0]])
    else:
        even, odd = tl.split(t)
        return even if j == 0 else odd


@triton.jit
def _int4_dot(
    x,
    w_ptr,
    cols,
    col_ok,
    k0,
    K,
    stride_wn,
    scale,
    zero,
    EVEN_K: tl.constexpr,
    PACKED_CVT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TILED: tl.constexpr,
    GROUP: tl.constexpr,
):
    """float32 [BLOCK_M, BLOCK_N] = x [BLOCK_M, BLOCK_K] @ ((q - zero) * scale)^T for inputs k0.. of
    one group (BLOCK_K divides GROUP): dots on q - zero (exact in x's dtype), the scale applied to
    their float32 result. Low nibbles hold the even inputs and high nibbles the odd ones; x is split
    the same way instead of interleaving the weights (a dot sums over k in any order)."""
    half = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    mask = col_ok[:, None] if EVEN_K else col_ok[:, None] & (2 * half < K)[None, :]
    packed = tl.load(packed_pointers(w_ptr, cols, half, stride_wn, TILED, GROUP), mask=mask, other=0)
    low, high = _int4_values(packed, zero, x.dtype, PACKED_CVT)
    x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_M, BLOCK_K // 2, 2]))
    # Two independent dots, not one accumulating into the other: half as long a chain of dependent
    # tensor-core instructions per tile.
    return (tl.dot(x_even, tl.trans(low)) + tl.dot(x_odd, tl.trans(high))) * scale[None, :]


@triton.jit
def _store_output(
    y,
    rows,
    cols,
    row_ok,
    col_ok,
    M,
    N,
    scale_ptr,
    bias_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    stride_ym,
    FMT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL: tl.constexpr,
):
    """y [R, BLOCK_N] float32 -> the output, or this split's float32 partial [splits, M, N]. With
    SERIAL, the last split program of the output tile to finish adds the partials up and writes the
    output itself, which saves the launch of common.sum_splits."""
    if FMT != "int4":  # per-channel formats scale the output; int4 scaled each group already
        y = y * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if SPLIT:
        parts = part_ptr + rows[:, None].to(tl.int64) * N + cols[None, :]
        tl.store(parts + tl.program_id(2).to(tl.int64) * M * N, y, mask=mask)
        if SERIAL:
            tl.debug_barrier()  # every thread's partial is stored before the program counts itself done
            counter = count_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
            if tl.atomic_add(counter, 1, sem="acq_rel") == tl.num_programs(2) - 1:
                total = tl.zeros_like(y)
                for split in range(0, tl.num_programs(2)):  # .cg: from L2, where the others' stores are
                    total += tl.load(parts + (split * M).to(tl.int64) * N, mask=mask, other=0.0, cache_modifier=".cg")
                _store_y(total, rows, cols, col_ok, mask, bias_ptr, y_ptr, stride_ym, HAS_BIAS)
                tl.store(counter, 0)  # zero again for the next launch
    else:
        _store_y(y, rows, cols, col_ok, mask, bias_ptr, y_ptr, stride_ym, HAS_BIAS)


@triton.jit
def _store_y(y, rows, cols, col_ok, mask, bias_ptr, y_ptr, stride_ym, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _int4_plus_128(packed, PACKED_CVT: tl.constexpr):
    """uint8 [...] -> float32 (128 + low nibble, 128 + high nibble): each nibble under the exponent of
    128.0, exact. On CUDA the PRMT PTX (_NIBBLES_F32); the same bits in plain Triton elsewhere."""
    if PACKED_CVT:
        return tl.inline_asm_elementwise(
            _NIBBLES_F32, "=r,=r,=r,=r,=r,=r,=r,=r,r", [packed], dtype=(tl.float32, tl.float32), is_pure=True, pack=4
        )
    else:
        p = packed.to(tl.int32)
        low = (((p & 0x0F) << 16) | 0x43000000).to(tl.float32, bitcast=True)
        high = (((p >> 4) << 16) | 0x43000000).to(tl.float32, bitcast=True)
        return low, high


@triton.jit
def _x_even_odd(x_row, half, K, EVEN_K: tl.constexpr, X_PAIRS: tl.constexpr, X_BF16: tl.constexpr):
    """x's inputs 2 * half and 2 * half + 1 as float32, in the shape (hence the register layout) of
    the weight tile they multiply; zero past K. X_PAIRS: x_row points at x's 16-bit values two by
    two as int32 (one load a pair, the even input in the low half)."""
    if X_PAIRS:
        pairs = _load_x(x_row + half, 2 * half < K, EVEN_K)
        if X_BF16:  # bf16 -> float32 is the bits moved to the top half
            return (pairs << 16).to(tl.float32, bitcast=True), (pairs & -65536).to(tl.float32, bitcast=True)
        else:
            even = (pairs & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
            odd = (pairs >> 16).to(tl.int16).to(tl.float16, bitcast=True)
            return even.to(tl.float32), odd.to(tl.float32)
    else:
        even = _load_x(x_row + 2 * half, 2 * half < K, EVEN_K)
        odd = _load_x(x_row + 2 * half + 1, 2 * half < K, EVEN_K)
        return even.to(tl.float32), odd.to(tl.float32)


@triton.jit
def _load_x(pointers, in_k, EVEN_K: tl.constexpr):
    """x values, zero past K (no predicate when every step is whole)."""
    if EVEN_K:
        return tl.load(pointers)
    else:
        return tl.load(pointers, mask=in_k, other=0)


@triton.jit
def _int4_step_bytes(w_rows, half, col_ok, k_end, EVEN_K: tl.constexpr):
    """The packed weights at byte offsets ``half`` of the GEMV's rows ([BLOCK_N, chunks, 16] uint8),
    zeros past k_end."""
    if EVEN_K:
        mask = col_ok[:, None, None]
    else:
        mask = col_ok[:, None, None] & (2 * half < k_end)
    return tl.load(w_rows + half, mask=mask, other=0)


@triton.jit
def _int4_gemv_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    zeros_ptr,
    bias_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    k_per_split,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_zn,
    stride_ym,
    GROUP: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL: tl.constexpr,
    PACKED_CVT: tl.constexpr,
    X_PAIRS: tl.constexpr,
    X_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """int4 at one row of x per program column. A step covers BLOCK_N weight rows by BLOCK_K inputs,
    as a [BLOCK_N, BLOCK_K / 32, 16] tile of packed bytes: each chunk of 16 bytes (32 inputs, one
    16-byte load, inside one group) is one thread's, and x is loaded in that same shape, so no value
    changes threads during the loop. Per chunk: dot = sum (128 + q) * x in the thread's registers,
    then scale * (dot - (128 + zero) * sum(x)) into a [BLOCK_N, chunks] accumulator, reduced across
    threads once at the end. Two instructions a weight (a PRMT and an FMA) plus a few a chunk."""
    wait_for_previous_kernel(PDL)
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    split = tl.program_id(2)
    CHUNKS: tl.constexpr = BLOCK_K // 32
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    chunk = tl.arange(0, CHUNKS)
    in_step = tl.broadcast_to((chunk[:, None] * 16 + tl.arange(0, 16)[None, :])[None, :, :], [BLOCK_N, CHUNKS, 16])
    w_rows = w_ptr + cols[:, None, None].to(tl.int64) * stride_wn
    x_row = x_ptr + row * stride_xm
    acc = tl.zeros([BLOCK_N, CHUNKS], tl.float32)
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        half = tl.multiple_of(k0 // 2, BLOCK_K // 2) + in_step
        packed = _int4_step_bytes(w_rows, half, col_ok, k_end, EVEN_K)
        x_even, x_odd = _x_even_odd(x_row, half, K, EVEN_K, X_PAIRS, X_BF16)
        scale, zero = _int4_groups(
            scale_ptr, zeros_ptr, cols, col_ok, k0, K, stride_sn, stride_zn, GROUP, HAS_ZEROS, 32, CHUNKS
        )  # one group a chunk: [BLOCK_N, chunks]
        low, high = _int4_plus_128(packed, PACKED_CVT)
        dot = tl.sum(low * x_even + high * x_odd, axis=2)
        x_sum = tl.sum(x_even + x_odd, axis=2)
        acc += scale * (dot - (128.0 + zero) * x_sum)
    y = tl.sum(acc, axis=1)[None, :]
    rows = row + tl.arange(0, 1)
    _store_output(
        y,
        rows,
        cols,
        rows < M,
        col_ok,
        M,
        N,
        scale_ptr,
        bias_ptr,
        y_ptr,
        part_ptr,
        count_ptr,
        stride_ym,
        "int4",
        HAS_BIAS,
        SPLIT,
        SERIAL,
    )


@triton.jit
def _gemm_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    zeros_ptr,
    bias_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    M,
    N,
    K,
    k_per_split,
    stride_xm,
    stride_wn,
    stride_sn,
    stride_zn,
    stride_ym,
    FMT: tl.constexpr,
    GROUP: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL: tl.constexpr,
    PACKED_CVT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
    TILED: tl.constexpr = False,
):
    """Tensor-core dots on weight tiles converted to x's dtype (int8 values, int4 q - zero and e4m3
    values are exact in bf16/fp16); scales multiply the dots' float32 results."""
    wait_for_previous_kernel(PDL)
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    split = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    x_rows = x_ptr + rows[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    k_start = split * k_per_split
    # int4: BLOCK_K spans one or two groups (NG): one dot per group, their loads issued together, so
    # each weight row is read in longer contiguous pieces (see GEMM_CONFIG). The scales and zero points
    # of a step are loaded one step ahead: the pipeliner leaves these small loads in the loop, where
    # each would stall its step for a whole memory round trip.
    SUB_K: tl.constexpr = BLOCK_K if BLOCK_K < GROUP else GROUP
    NG: tl.constexpr = BLOCK_K // SUB_K
    if FMT == "int4":
        scale_next, zero_next = _int4_groups(
            scale_ptr, zeros_ptr, cols, col_ok, k_start, K, stride_sn, stride_zn, GROUP, HAS_ZEROS, SUB_K, NG
        )
    for k0 in range(k_start, tl.minimum(k_start + k_per_split, K), BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        if FMT == "int4":
            scales, zeros = scale_next, zero_next
            scale_next, zero_next = _int4_groups(
                scale_ptr, zeros_ptr, cols, col_ok, k0 + BLOCK_K, K, stride_sn, stride_zn, GROUP, HAS_ZEROS, SUB_K, NG
            )
            for j in tl.static_range(NG):
                kj = k0 + j * SUB_K
                x = _x_tile(x_rows, row_ok, kj, K, EVEN_K, SUB_K)
                acc += _int4_dot(
                    x,
                    w_ptr,
                    cols,
                    col_ok,
                    kj,
                    K,
                    stride_wn,
                    _column(scales, j, NG),
                    _column(zeros, j, NG),
                    EVEN_K,
                    PACKED_CVT,
                    BLOCK_M,
                    SUB_K,
                    TILED,
                    GROUP,
                )
        else:
            x = _x_tile(x_rows, row_ok, k0, K, EVEN_K, BLOCK_K)
            w = _byte_tile(w_ptr, cols, col_ok, k0, K, stride_wn, FMT, EVEN_K, BLOCK_K)
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    _store_output(
        acc,
        rows,
        cols,
        row_ok,
        col_ok,
        M,
        N,
        scale_ptr,
        bias_ptr,
        y_ptr,
        part_ptr,
        count_ptr,
        stride_ym,
        FMT,
        HAS_BIAS,
        SPLIT,
        SERIAL,
    )


@triton.jit
def _x_tile(x_rows, row_ok, k0, K, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """x [BLOCK_M, BLOCK_K] from input k0 on, zeros for rows past M (and inputs past K)."""
    ks = k0 + tl.arange(0, BLOCK_K)
    if EVEN_K:
        return tl.load(x_rows + ks[None, :], mask=row_ok[:, None], other=0.0)
    else:
        return tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0.0)


# ----------------------------------------------------------------------------------------------------
# Launch configurations (BLOCK sizes, warps) by kernel shape; benchmarks/kernel_bench.py sweeps them.
# ----------------------------------------------------------------------------------------------------

# The defaults are the fastest settings of benchmarks/kernel_bench.py's sweep at Qwen2.5-7B and -0.5B
# shapes; re-run the sweep on a new GPU before changing them. The rules behind them:
# - fp8 takes int8's settings: the same bytes per weight and the same loads.
# - int4 GEMM: BLOCK_N 64 over 4 warps; narrow layers (out < 2048, INT4_NARROW) BLOCK_N 32 over 2 warps,
#   for twice the column tiles. BLOCK_K 256 spans two groups of 128, so each weight row is read 128
#   contiguous bytes at a time; longer steps or deeper pipelines cost shared memory, hence programs a
#   multiprocessor.
# - int4 GEMV (one row, K <= 1024): 16 rows a program in steps of 512 inputs, 4 warps; narrow layers
#   INT4_GEMV_NARROW, long rows INT4_GEMV_LONG. Longer steps spill registers.
# - int4 K steps but INT4_GEMV_NARROW's are halved (down to 128) until they divide K (whole_steps).
# - int8 / fp8 GEMV: dense_gemv's kernel, with its own settings (dense_gemv.BYTE_CONFIG).
# SERIAL: split-K partials are added up by the last program of each tile (see _store_output).
GEMV_CONFIG = {"int4": dict(BLOCK_N=16, BLOCK_K=512, num_warps=4, SERIAL=True)}
GEMM_CONFIG = {
    "int8": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3),
    "int4": dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=3, SERIAL=True),
    "fp8": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3),
}
INT4_NARROW = dict(max_out_features=2047, BLOCK_N=32, num_warps=2)
# Overrides of GEMM_CONFIG above 16 rows (BLOCK_M 32 / 64: tiles of 64 rows run on wgmma and need
# more registers); int4 keeps its long BLOCK_K 256 there, where the many rows amortize its shared memory.
GEMM_CONFIG_MANY_ROWS = {"int4": dict(BLOCK_N=64, BLOCK_K=256, num_warps=4)}
# int8 / fp8 above 16 rows on large layers (>= 32 Mi weights): wide tiles over 8 warps, short K steps four
# deep, so each program converts and multiplies more of the weight between loads. H200, 64 rows, us:
# 72B gate_up 252.7 against 314.6, down 133.0 / 165.2, qkv 55.2 / 70.0; 7B gate_up 80.9 / 88.3, down
# 40.4 / 63.7. Smaller layers keep the narrow tiles, whose programs fill the GPU (7B qkv: 21.1 against
# 37.6) (kernel_bench.py --rows 64 --formats int8 --sweep int8 --shapes qkv,gate_up,down,qkv72,gate_up72,down72).
BYTE_GEMM_LARGE_LAYER = dict(min_weights=32 * 2**20, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4)
# Split K until about this many programs per multiprocessor, so narrow outputs with long inputs
# (down_proj: 3584 x 18944) still fill the GPU; but keep the float32 partials (written and read
# once more) under PARTIAL_BYTES times the weight bytes.
PROGRAMS_PER_SM = 4
MIN_TILES_PER_SPLIT = {"int8": 4, "fp8": 4, "int4": 1}
PARTIAL_BYTES = {"int8": 1 / 8, "fp8": 1 / 8, "int4": 1.0}
# int4: about 3 programs a multiprocessor up to 16 rows and 2 above, where the count is a ceiling ("at
# most": a split that starts a second wave of programs costs that wave). One K step a split is enough,
# and the float32 partials (a few MB at 64 rows) stay in L2, hence int4's PARTIAL_BYTES of 1.
INT4_PROGRAMS_PER_SM = ((16, 3, False), (1 << 30, 2, True))  # (up to rows, programs per SM, at most)


def choose_split_k(
    programs: int,
    rows: int,
    out_features: int,
    in_features: int,
    block_k: int,
    weight_bytes: int,
    device: torch.device,
    fmt: str = "int8",
) -> int:
    if device.type != "cuda":
        return 1
    per_sm, at_most = _programs_per_sm(rows, fmt)
    wanted = per_sm * multiprocessor_count(device.index or 0)
    split = wanted // programs if at_most else math.ceil(wanted / programs)
    split = min(
        split,
        triton.cdiv(in_features, block_k * MIN_TILES_PER_SPLIT[fmt]),
        int(PARTIAL_BYTES[fmt] * weight_bytes) // (rows * out_features * 4),
    )
    return max(1, split)


def _programs_per_sm(rows: int, fmt: str) -> tuple[int, bool]:
    """(programs a multiprocessor to aim for, whether as a ceiling) for a launch of ``rows`` rows."""
    if fmt != "int4":
        return PROGRAMS_PER_SM, False
    return next((per_sm, at_most) for max_rows, per_sm, at_most in INT4_PROGRAMS_PER_SM if rows <= max_rows)


def use_gemv(rows: int, path: str | None, fmt: str, out_features: int, in_features: int) -> bool:
    """Whether ``rows`` rows of x take the GEMV (``path`` None: by the rules above) or the GEMM."""
    if path not in (None, "gemv", "gemm"):
        raise ValueError(f"path: {path!r} is not one of None (automatic), 'gemv', 'gemm'")
    if path is not None:
        return path == "gemv"
    if fmt == "int4" and in_features > INT4_GEMV_MAX_IN_FEATURES:
        return rows <= GEMV_MAX_ROWS[fmt] and _int4_long_row(out_features, in_features)
    return rows <= GEMV_MAX_ROWS[fmt]


def _int4_long_row(out_features: int, in_features: int) -> bool:
    long = INT4_GEMV_LONG
    return (
        out_features >= long["min_out_features"]
        and in_features >= long["min_in_features"]
        and in_features % long["BLOCK_K"] == 0
    )


def _as_rows(x: torch.Tensor, in_features: int, name: str) -> torch.Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(f"x: last dimension {x.shape[-1]} differs from the weight's in_features {in_features}")
    if x.dtype not in _ACTIVATION_DTYPES:
        raise ValueError(f"x: dtype {x.dtype} not supported by {name}; use float16, bfloat16 or float32")
    rows = x.reshape(-1, in_features)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _packed_cvt_applies(x: torch.Tensor, zeros) -> bool:
    """int4's inline-PTX conversion: on CUDA, for bf16 / fp16 x, with integer zero points (it adds
    them in x's dtype next to 128 or 1024, exact for integers only; float zeros take the float32 path)."""
    return x.is_cuda and x.dtype in _PACKED_CVT_DTYPES and (zeros is None or not zeros.dtype.is_floating_point)


def _launch(
    x,
    weight,
    scale,
    zeros,
    bias,
    *,
    fmt,
    group_size,
    out_features,
    in_features,
    name,
    config,
    path,
    split_k,
    tiled=False,
):
    """Shared host side of int8_linear / fp8_linear / int4_linear: pick kernel, tiles and K split;
    launch. ``fmt`` is "int8", "fp8" or "int4"; ``tiled``: an int4 weight in int4_layout's tiled layout
    (the GEMM only)."""
    check_bias(bias, out_features)
    rows = _as_rows(x, in_features, name)
    m = rows.shape[0]
    y = torch.empty(m, out_features, dtype=x.dtype, device=x.device)
    gemv = use_gemv(m, path, fmt, out_features, in_features)
    cfg = dict((GEMV_CONFIG if gemv else GEMM_CONFIG)[fmt])
    if not gemv and m > 16:
        cfg.update(GEMM_CONFIG_MANY_ROWS.get(fmt, {}))
        if fmt != "int4" and out_features * in_features >= BYTE_GEMM_LARGE_LAYER["min_weights"]:
            cfg.update({k: v for k, v in BYTE_GEMM_LARGE_LAYER.items() if k != "min_weights"})
    elif not gemv and fmt == "int4" and out_features <= INT4_NARROW["max_out_features"]:
        cfg.update(BLOCK_N=INT4_NARROW["BLOCK_N"], num_warps=INT4_NARROW["num_warps"])
    if gemv and fmt == "int4" and out_features <= INT4_GEMV_NARROW["max_out_features"]:
        # one step over all of K, ragged or not: the layer is too small for more
        cfg.update(BLOCK_N=INT4_GEMV_NARROW["BLOCK_N"], BLOCK_K=INT4_GEMV_NARROW["BLOCK_K"])
    elif fmt == "int4":
        if gemv and _int4_long_row(out_features, in_features):
            cfg.update(BLOCK_N=INT4_GEMV_LONG["BLOCK_N"], BLOCK_K=INT4_GEMV_LONG["BLOCK_K"])
        # int4 steps divide K: a ragged last step masks the loop's loads, which halved the int4 GEMM's
        # speed on 72B's down_proj (29568 = 231 x 128 inputs: 182 us in steps of 256, 93 us in steps of
        # 128; H200, one row). The one-byte GEMV is the other way round (the same layer: 98 us in masked
        # steps of 512, 131 us in steps of 128; 0.5B's 896-input layers 1.8-2.2 us against 3.5-3.8).
        cfg["BLOCK_K"] = whole_steps(in_features, cfg["BLOCK_K"])
    cfg.update(config or {})
    if not gemv:
        if "BLOCK_M" not in (config or {}):
            cfg["BLOCK_M"] = 16 if m <= 16 else 32 if m <= 32 else 64
        if fmt == "int4":  # within one group, or two whole ones
            cfg["BLOCK_K"] = min(cfg["BLOCK_K"], group_size * (1 if cfg["BLOCK_K"] < group_size else 2))
    block_k = cfg["BLOCK_K"]
    grid_n = triton.cdiv(out_features, cfg["BLOCK_N"])
    grid_m = m if gemv else triton.cdiv(m, cfg["BLOCK_M"])
    if split_k is None:
        split_k = choose_split_k(
            grid_n * grid_m,
            m,
            out_features,
            in_features,
            block_k,
            weight.numel() * weight.element_size(),
            x.device,
            fmt,
        )
    k_per_split, split_k = k_slices(in_features, split_k, block_k)
    part, counters = split_partials(y, split_k, grid_n * grid_m, serial=cfg.get("SERIAL", False))
    cfg["SERIAL"] = counters is not None
    zeros_arg = zeros if zeros is not None else scale
    if gemv and fmt == "int4":
        kernel, x_arg, stride_xm = _int4_gemv_kernel, *_as_int32_pairs(rows)
        cfg.setdefault("PACKED_CVT", x.is_cuda)
        cfg.update(X_PAIRS=x_arg is not rows, X_BF16=rows.dtype == torch.bfloat16)
    else:
        kernel, x_arg, stride_xm = _gemm_kernel, rows, rows.stride(0)
        cfg.setdefault("PACKED_CVT", fmt == "int4" and _packed_cvt_applies(x, zeros))
        cfg.update(FMT=fmt, TILED=tiled)
    pdl = pdl_enabled(x.device)
    kernel[(grid_n, grid_m, split_k)](
        x_arg,
        weight,
        scale,
        zeros_arg,
        bias if bias is not None else scale,
        y,
        part,
        counters if counters is not None else part,
        m,
        out_features,
        in_features,
        k_per_split,
        stride_xm,
        in_features // 2 if tiled else weight.stride(0),  # tiled: a row's bytes (packed_pointers' row_bytes)
        scale.stride(0),
        zeros_arg.stride(0),
        y.stride(0),
        GROUP=group_size,
        HAS_ZEROS=zeros is not None,
        HAS_BIAS=bias is not None,
        EVEN_K=in_features % block_k == 0,
        SPLIT=split_k > 1,
        PDL=pdl,
        **cfg,
        **launch_options(pdl),
    )
    if split_k > 1 and counters is None:
        sum_splits(part, bias, y)
    return y.view(*x.shape[:-1], out_features)


def whole_steps(in_features: int, block_k: int) -> int:
    """A K step: ``block_k``, halved (down to 128) until it divides the inputs, so every step loads
    without predicates (0.5B: 896 inputs take steps of 128, 4864 of 256); steps of 128 or less stay."""
    while block_k > 128 and in_features % block_k:
        block_k //= 2
    return block_k


def _as_int32_pairs(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(x, its row stride) for the int4 GEMV: 16-bit rows viewed two values to an int32 (the GEMV
    loads a pair at a time), or the rows themselves where they cannot be (float32, odd offsets)."""
    if rows.element_size() == 2 and rows.stride(0) % 2 == 0 and rows.storage_offset() % 2 == 0:
        return rows.view(torch.int32), rows.stride(0) // 2
    return rows, rows.stride(0)


def _check_per_channel(qweight, scale, dtype):
    if qweight.dtype != dtype or qweight.dim() != 2 or qweight.stride(1) != 1:
        expected = str(dtype).removeprefix("torch.")
        raise ValueError(
            f"qweight: expected a row-contiguous {expected} [out, in], got {qweight.dtype} {tuple(qweight.shape)}"
        )
    out_features, in_features = qweight.shape
    if tuple(scale.shape) != (out_features,):
        raise ValueError(f"scale: expected shape [{out_features}] (one per output channel), got {tuple(scale.shape)}")
    return out_features, in_features


def int8_linear(x, qweight, scale, bias=None, *, config=None, path=None, split_k=None):
    """y = x @ (qweight * scale[:, None])^T + bias, x [..., in] -> y [..., out] in x's dtype.

    Keyword-only overrides, for benchmarks: ``config`` (tiles, warps), ``path`` ("gemv" / "gemm"),
    ``split_k`` (programs along the input dimension).
    """
    return _per_channel_linear("int8", torch.int8, x, qweight, scale, bias, config, path, split_k)


def fp8_linear(x, qweight, scale, bias=None, *, config=None, path=None, split_k=None):
    """y = x @ (qweight.float() * scale[:, None])^T + bias with qweight float8_e4m3fn [out, in];
    x [..., in] -> y [..., out] in x's dtype, x never quantized. On CUDA: compute capability >= 8.9.
    Overrides as for `int8_linear`.
    """
    return _per_channel_linear("fp8", torch.float8_e4m3fn, x, qweight, scale, bias, config, path, split_k)


def _per_channel_linear(fmt, dtype, x, qweight, scale, bias, config, path, split_k):
    """int8 and fp8 share every kernel line but the byte -> float conversion: both weights go in as uint8
    (the int8 conversion trick works on unsigned bytes; fp8 is bitcast back in the kernel). Few rows take
    dense_gemv's GEMV, the float weights' kernel reading bytes."""
    out_features, in_features = _check_per_channel(qweight, scale, dtype)
    if use_gemv(x.numel() // max(in_features, 1), path, fmt, out_features, in_features):
        return dense_gemv.byte_linear(x, qweight, scale, bias, config=config, split_k=split_k)
    return _launch(
        x,
        qweight.view(torch.uint8),
        scale,
        None,
        bias,
        fmt=fmt,
        group_size=1,
        out_features=out_features,
        in_features=in_features,
        name=f"{fmt}_linear",
        config=config,
        path=path,
        split_k=split_k,
    )


def _check_int4(qweight_packed, scales, zeros, group_size):
    """(out_features, in_features) of a valid int4 weight (row-major or tiled) with its scales and zeros."""
    if qweight_packed.dim() == 4:  # int4_layout's tiled layout
        out_features = scales.shape[0] if scales.dim() == 2 else -1
        groups, half = qweight_packed.shape[1], qweight_packed.shape[3]
        expected = (triton.cdiv(out_features, int4_layout.TILE_ROWS), groups, int4_layout.TILE_ROWS, group_size // 2)
        if (
            qweight_packed.dtype != torch.uint8
            or not qweight_packed.is_contiguous()
            or qweight_packed.shape != expected
        ):
            raise ValueError(
                f"qweight_packed: a tiled int4 weight for scales {tuple(scales.shape)} and group_size {group_size} "
                f"is a contiguous uint8 {expected}, got {qweight_packed.dtype} {tuple(qweight_packed.shape)}"
            )
        in_features = groups * half * 2
    elif qweight_packed.dtype != torch.uint8 or qweight_packed.dim() != 2 or qweight_packed.stride(1) != 1:
        raise ValueError(
            f"qweight_packed: expected a row-contiguous uint8 [out, in/2] or int4_layout's tiled "
            f"[tiles, groups, {int4_layout.TILE_ROWS}, group_size/2], got "
            f"{qweight_packed.dtype} {tuple(qweight_packed.shape)}"
        )
    else:
        out_features, in_features = qweight_packed.shape[0], qweight_packed.shape[1] * 2
    if group_size < 32 or group_size & (group_size - 1):
        raise ValueError(f"group_size: {group_size} not supported by the int4 kernels; use a power of two >= 32")
    groups = triton.cdiv(in_features, group_size)
    if tuple(scales.shape) != (out_features, groups) or scales.stride(1) != 1:
        raise ValueError(
            f"scales: expected a row-contiguous [{out_features}, {groups}] (out, in/group_size), "
            f"got {tuple(scales.shape)}"
        )
    if zeros is not None and (tuple(zeros.shape) != (out_features, groups) or zeros.stride(1) != 1):
        raise ValueError(
            f"zeros: expected a row-contiguous [{out_features}, {groups}] like scales, got {tuple(zeros.shape)}"
        )
    return out_features, in_features


def int4_linear(x, qweight_packed, scales, zeros, group_size, bias=None, *, config=None, path=None, split_k=None):
    """y = x @ W^T + bias with W[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g].

    ``zeros`` None means symmetric (zero point 8). x [..., in] -> y [..., out] in x's dtype.
    ``qweight_packed`` is row-major [out, in/2] or int4_layout's tiled layout (4-D; CUDA kernels only: the
    tiled weight takes int4_mma or the GEMM, never the GEMV). On CUDA the few rows of int4_mma.routed take
    the tensor-core kernel of kernels/int4_mma.py (``path`` "mma" forces it, up to int4_mma.MAX_ROWS
    rows), else the kernels here. Overrides as for `int8_linear`.
    """
    out_features, in_features = _check_int4(qweight_packed, scales, zeros, group_size)
    tiled = qweight_packed.dim() == 4
    if tiled and path == "gemv":
        raise ValueError("path: 'gemv' reads row-major weights only; a tiled int4 weight takes 'mma' or 'gemm'")
    if path == "mma" or (path is None and int4_mma.routed(x.numel() // max(in_features, 1))):
        rows = _as_rows(x, in_features, "int4_linear")
        if int4_mma.applies(rows, rows.shape[0], in_features, zeros, group_size):
            check_bias(bias, out_features)
            y = int4_mma.int4_mma_linear(
                rows, qweight_packed, scales, zeros, group_size, bias, config=config, split_k=split_k, tiled=tiled
            )
            return y.view(*x.shape[:-1], out_features)
        if path == "mma":
            raise ValueError(
                f"path: 'mma' needs CUDA, bf16 / fp16 x of at most {int4_mma.MAX_ROWS} rows, integer zero "
                f"points and a group size of {int4_mma.GROUP_SIZES} dividing the inputs"
            )
    return _launch(
        x,
        qweight_packed,
        scales,
        zeros,
        bias,
        fmt="int4",
        group_size=group_size,
        out_features=out_features,
        in_features=in_features,
        name="int4_linear",
        config=config,
        path="gemm" if tiled else path,
        split_k=split_k,
        tiled=tiled,
    )
