"""Weight-only quantized linears (Triton language kernels): y = x @ dequant(W)^T (+ bias).

Formats (those of quantization.py, which owns them):
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
- GEMV (few rows of x, decode at small batch): bound by reading the weight once. Each program owns
  BLOCK_N output rows and streams their weight bytes with wide loads, multiply-adding into a 2-D
  float32 accumulator that is reduced once at the end. The integer -> float conversion uses the
  float32 "magic number" trick (OR the integer into the mantissa of 2**23, subtract 2**23): one
  logic op and one add instead of a conversion instruction, whose throughput would otherwise cap
  int4 at well under the memory bandwidth. fp8 uses the hardware e4m3 conversion.
- GEMM (more rows): tensor-core dots on weights converted to the activations' dtype (int8,
  nibbles and e4m3 values are all exact in bf16/fp16); scales (and zero points) are applied to the
  dot's result, so the dot itself sees the stored values exactly.

int8 and fp8 share every kernel line but the byte -> float conversion (the ``FMT`` constexpr picks
it); quantization.Fp8Linear sends small batches here and prefill to torch._scaled_mm.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import multiprocessor_count

# Up to this many rows of x the GEMV kernels (one program column per row) run; above, the
# tensor-core GEMM (rows padded to 16). Measured on H100 (benchmarks/kernel_bench.py, 2026-11-25):
# at 1 row the two tie within 5 %, at 4 rows GEMV re-reads the weight and is 2-3x slower.
GEMV_MAX_ROWS = 1

_ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
@triton.jit
def _int8_to_float(w_u8, FAST_CVT: tl.constexpr):
    """uint8 view of int8 weights -> float32 values -128..127."""
    if FAST_CVT:
        # u ^ 0x80 is q + 128; OR-ing it under the exponent of 2**23 gives 2**23 + q + 128.
        bits = w_u8.to(tl.int32) ^ 0x4B000080
        return bits.to(tl.float32, bitcast=True) - 8388736.0
    else:
        return w_u8.to(tl.int8, bitcast=True).to(tl.float32)


@triton.jit
def _byte_tile(w_ptr, cols, col_ok, k0, K, stride_wn, FMT: tl.constexpr, EVEN_K: tl.constexpr,
               FAST_CVT: tl.constexpr, BLOCK_K: tl.constexpr):
    """One-byte weights [BLOCK_N, BLOCK_K] of rows ``cols``, inputs k0..: int8 as float32 integers,
    fp8 as tl.float8e4nv values, which the caller converts once, straight to the type it computes in
    (float32 FMAs or x's dtype for dots; e4m3 is exact in both). The per-channel scale is applied to
    the output."""
    k = k0 + tl.arange(0, BLOCK_K)
    mask = col_ok[:, None] if EVEN_K else col_ok[:, None] & (k < K)[None, :]
    w = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_wn + k[None, :], mask=mask, other=0)
    if FMT == "fp8":
        return w.to(tl.float8e4nv, bitcast=True)   # masked-off bytes are 0x00, which is +0.0
    else:
        return _int8_to_float(w, FAST_CVT)


@triton.jit
def _int4_tile(w_ptr, scales_ptr, zeros_ptr, cols, col_ok, k0, K, stride_wn, stride_sn, stride_zn,
               GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, EVEN_K: tl.constexpr, FAST_CVT: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """int4 weights as (q - zero) [BLOCK_N, BLOCK_K] float32 (small exact integers) and the
    group's scale [BLOCK_N]; BLOCK_K divides GROUP, so one scale and zero point per row."""
    half = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    mask = col_ok[:, None] if EVEN_K else col_ok[:, None] & (2 * half < K)[None, :]
    packed = tl.load(w_ptr + cols[:, None].to(tl.int64) * stride_wn + half[None, :], mask=mask, other=0)
    packed = packed.to(tl.int32)
    group = k0 // GROUP
    scale = tl.load(scales_ptr + cols * stride_sn + group, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        zero = tl.load(zeros_ptr + cols * stride_zn + group, mask=col_ok, other=0).to(tl.float32)
    else:
        zero = tl.full(scale.shape, 8.0, tl.float32)
    if FAST_CVT:
        # Nibble OR-ed under the exponent of 2**23 (a logic op), minus 2**23 + zero (one add),
        # instead of an integer -> float conversion (a quarter-rate instruction).
        offset = (8388608.0 + zero)[:, None]
        low = ((packed & 0x0F) | 0x4B000000).to(tl.float32, bitcast=True) - offset
        high = ((packed >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - offset
    else:
        low = (packed & 0x0F).to(tl.float32) - zero[:, None]
        high = (packed >> 4).to(tl.float32) - zero[:, None]
    return tl.interleave(low, high), scale


@triton.jit
def _store_output(y, rows, cols, row_ok, col_ok, M, N, split, scale_ptr, bias_ptr, y_ptr, part_ptr, stride_ym,
                  FMT: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """y [R, BLOCK_N] float32 -> the output, or this split's float32 partial [splits, M, N]."""
    if FMT != "int4":   # per-channel formats scale the output; int4 scaled each group already
        y = y * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if SPLIT:
        tl.store(part_ptr + (split * M + rows[:, None]).to(tl.int64) * N + cols[None, :], y, mask=mask)
    else:
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, scale_ptr, zeros_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, k_per_split,
    stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
    FMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, SPLIT: tl.constexpr, FAST_CVT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One row of x per program column: multiply-add into a [BLOCK_N, BLOCK_K] accumulator,
    reduce once at the end (no per-iteration cross-thread reduction)."""
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    split = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    k_start = split * k_per_split
    for k0 in range(k_start, tl.minimum(k_start + k_per_split, K), BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)      # splits start on tile boundaries: wide, aligned loads
        if EVEN_K:
            x = tl.load(x_row + k0 + ks).to(tl.float32)
        else:
            x = tl.load(x_row + k0 + ks, mask=k0 + ks < K, other=0.0).to(tl.float32)
        if FMT == "int4":
            w, scale = _int4_tile(w_ptr, scale_ptr, zeros_ptr, cols, col_ok, k0, K, stride_wn, stride_sn,
                                  stride_zn, GROUP, HAS_ZEROS, EVEN_K, FAST_CVT, BLOCK_K)
            acc += (w * x[None, :]) * scale[:, None]
        else:
            w = _byte_tile(w_ptr, cols, col_ok, k0, K, stride_wn, FMT, EVEN_K, FAST_CVT, BLOCK_K)
            acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, axis=1)[None, :]
    rows = row + tl.arange(0, 1)
    _store_output(y, rows, cols, rows < M, col_ok, M, N, split, scale_ptr, bias_ptr, y_ptr, part_ptr,
                  stride_ym, FMT, HAS_BIAS, SPLIT)


@triton.jit
def _gemm_kernel(
    x_ptr, w_ptr, scale_ptr, zeros_ptr, bias_ptr, y_ptr, part_ptr, M, N, K, k_per_split,
    stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
    FMT: tl.constexpr, GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, SPLIT: tl.constexpr, FAST_CVT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Tensor-core dots on weight tiles converted to x's dtype (int8 values, int4 q - zero and e4m3
    values are exact in bf16/fp16); scales multiply the dots' float32 results."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    split = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    k_start = split * k_per_split
    for k0 in range(k_start, tl.minimum(k_start + k_per_split, K), BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        if EVEN_K:
            x = tl.load(x_rows + (k0 + ks)[None, :], mask=row_ok[:, None], other=0.0)
        else:
            x = tl.load(x_rows + (k0 + ks)[None, :], mask=row_ok[:, None] & (k0 + ks < K)[None, :], other=0.0)
        if FMT == "int4":
            # (q - zero) is exact in x's dtype; the group scale multiplies the tile's dot.
            w, scale = _int4_tile(w_ptr, scale_ptr, zeros_ptr, cols, col_ok, k0, K, stride_wn, stride_sn,
                                  stride_zn, GROUP, HAS_ZEROS, EVEN_K, FAST_CVT, BLOCK_K)
            acc += tl.dot(x, tl.trans(w.to(x.dtype))) * scale[None, :]
        else:
            w = _byte_tile(w_ptr, cols, col_ok, k0, K, stride_wn, FMT, EVEN_K, FAST_CVT, BLOCK_K)
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    _store_output(acc, rows, cols, row_ok, col_ok, M, N, split, scale_ptr, bias_ptr, y_ptr, part_ptr,
                  stride_ym, FMT, HAS_BIAS, SPLIT)


@triton.jit
def _sum_splits_kernel(part_ptr, bias_ptr, y_ptr, M, N, splits, stride_ym,
                       HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """y = sum over splits of the float32 partials (+ bias), cast to y's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    acc = tl.zeros([BLOCK], tl.float32)
    for split in range(0, splits):
        acc += tl.load(part_ptr + split * M * N + offs, mask=ok, other=0.0)
    rows = offs // N
    cols = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows * stride_ym + cols, acc.to(y_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------------
# Launch configurations (BLOCK sizes, warps) by kernel shape; benchmarks/kernel_bench.py sweeps them.
# ----------------------------------------------------------------------------------------------------

# Best of the sweep on H100 (Qwen2.5-7B shapes) on 2026-11-25; see docs/benchmarks.md "GPU kernels".
# fp8 starts from int8's settings (same bytes per weight, same loads); not swept yet.
GEMV_CONFIG = {"int8": dict(BLOCK_N=8, BLOCK_K=512, num_warps=4),
               "int4": dict(BLOCK_N=64, BLOCK_K=128, num_warps=8),
               "fp8": dict(BLOCK_N=8, BLOCK_K=512, num_warps=4)}
GEMM_CONFIG = {"int8": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3),
               "int4": dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),
               "fp8": dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=3)}
# Split K until about this many programs per multiprocessor, so narrow outputs with long inputs
# (down_proj: 3584 x 18944) still fill the GPU; but keep the float32 partials (written and read
# once more) under an eighth of the weight bytes.
PROGRAMS_PER_SM = 4
MIN_TILES_PER_SPLIT = 4


def choose_split_k(programs: int, rows: int, out_features: int, in_features: int, block_k: int,
                   weight_bytes: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    wanted = PROGRAMS_PER_SM * multiprocessor_count(device.index or 0)
    split = math.ceil(wanted / programs)
    split = min(split, in_features // (block_k * MIN_TILES_PER_SPLIT),
                weight_bytes // (8 * rows * out_features * 4))
    return max(1, split)


def _use_gemv(rows: int, path: str | None) -> bool:
    if path not in (None, "gemv", "gemm"):
        raise ValueError(f"path: {path!r} is not one of None (automatic), 'gemv', 'gemm'")
    return rows <= GEMV_MAX_ROWS if path is None else path == "gemv"


def _as_rows(x: torch.Tensor, in_features: int, name: str) -> torch.Tensor:
    if x.shape[-1] != in_features:
        raise ValueError(f"x: last dimension {x.shape[-1]} differs from the weight's in_features {in_features}")
    if x.dtype not in _ACTIVATION_DTYPES:
        raise ValueError(f"x: dtype {x.dtype} not supported by {name}; use float16, bfloat16 or float32")
    rows = x.reshape(-1, in_features)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _check_bias(bias, out_features: int):
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias: expected shape [{out_features}], got {tuple(bias.shape)}")


def _launch(x, weight, scale, zeros, bias, *, fmt, group_size, out_features, in_features, name,
            config, path, split_k):
    """Shared host side of int8_linear / fp8_linear / int4_linear: pick kernel, tiles and K split;
    launch. ``fmt`` is "int8", "fp8" or "int4"."""
    _check_bias(bias, out_features)
    rows = _as_rows(x, in_features, name)
    m = rows.shape[0]
    y = torch.empty(m, out_features, dtype=x.dtype, device=x.device)
    gemv = _use_gemv(m, path)
    cfg = {**(GEMV_CONFIG if gemv else GEMM_CONFIG)[fmt], "FAST_CVT": True, **(config or {})}
    if not gemv and "BLOCK_M" not in (config or {}):
        cfg["BLOCK_M"] = 16 if m <= 16 else 32 if m <= 32 else 64
    if fmt == "int4":
        cfg["BLOCK_K"] = min(cfg["BLOCK_K"], group_size)   # a tile never straddles two groups
    block_k = cfg["BLOCK_K"]
    grid_n = triton.cdiv(out_features, cfg["BLOCK_N"])
    grid_m = m if gemv else triton.cdiv(m, cfg["BLOCK_M"])
    if split_k is None:
        split_k = choose_split_k(grid_n * grid_m, m, out_features, in_features, block_k,
                                 weight.numel() * weight.element_size(), x.device)
    k_per_split = triton.cdiv(triton.cdiv(in_features, split_k), block_k) * block_k
    split_k = triton.cdiv(in_features, k_per_split)          # no empty splits
    part = torch.empty(split_k, m, out_features, dtype=torch.float32, device=x.device) if split_k > 1 else y
    zeros_arg = zeros if zeros is not None else scale
    kernel = _gemv_kernel if gemv else _gemm_kernel
    kernel[(grid_n, grid_m, split_k)](
        rows, weight, scale, zeros_arg, bias if bias is not None else scale, y, part,
        m, out_features, in_features, k_per_split,
        rows.stride(0), weight.stride(0), scale.stride(0), zeros_arg.stride(0), y.stride(0),
        FMT=fmt, GROUP=group_size, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None,
        EVEN_K=in_features % block_k == 0, SPLIT=split_k > 1, **cfg)
    if split_k > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(m * out_features, block),)](
            part, bias if bias is not None else part, y, m, out_features, split_k, y.stride(0),
            HAS_BIAS=bias is not None, BLOCK=block, num_warps=4)
    return y.view(*x.shape[:-1], out_features)


def _check_per_channel(qweight, scale, dtype, dtype_name):
    if qweight.dtype != dtype or qweight.dim() != 2 or qweight.stride(1) != 1:
        raise ValueError(f"qweight: expected a row-contiguous {dtype_name} [out, in], got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    out_features, in_features = qweight.shape
    if tuple(scale.shape) != (out_features,):
        raise ValueError(f"scale: expected shape [{out_features}] (one per output channel), got {tuple(scale.shape)}")
    return out_features, in_features


def int8_linear(x, qweight, scale, bias=None, *, config=None, path=None, split_k=None):
    """y = x @ (qweight * scale[:, None])^T + bias, x [..., in] -> y [..., out] in x's dtype.

    Keyword-only overrides, for benchmarks: ``config`` (tiles, warps), ``path`` ("gemv" / "gemm"),
    ``split_k`` (programs along the input dimension).
    """
    out_features, in_features = _check_per_channel(qweight, scale, torch.int8, "int8")
    # Kernels read the int8 bytes as uint8: the float conversion trick works on unsigned bytes.
    return _launch(x, qweight.view(torch.uint8), scale, None, bias, fmt="int8", group_size=1,
                   out_features=out_features, in_features=in_features, name="int8_linear",
                   config=config, path=path, split_k=split_k)


def fp8_linear(x, qweight, scale, bias=None, *, config=None, path=None, split_k=None):
    """y = x @ (qweight.float() * scale[:, None])^T + bias with qweight float8_e4m3fn [out, in];
    x [..., in] -> y [..., out] in x's dtype, x never quantized. On CUDA: compute capability >= 8.9.
    Overrides as for `int8_linear`.
    """
    out_features, in_features = _check_per_channel(qweight, scale, torch.float8_e4m3fn, "float8_e4m3fn")
    # Passed as uint8 and bitcast in the kernel, so int8 and fp8 share the byte loads.
    return _launch(x, qweight.view(torch.uint8), scale, None, bias, fmt="fp8", group_size=1,
                   out_features=out_features, in_features=in_features, name="fp8_linear",
                   config=config, path=path, split_k=split_k)


def _check_int4(qweight_packed, scales, zeros, group_size):
    if qweight_packed.dtype != torch.uint8 or qweight_packed.dim() != 2 or qweight_packed.stride(1) != 1:
        raise ValueError(f"qweight_packed: expected a row-contiguous uint8 [out, in/2], got "
                         f"{qweight_packed.dtype} {tuple(qweight_packed.shape)}")
    if group_size < 32 or group_size & (group_size - 1):
        raise ValueError(f"group_size: {group_size} not supported by the int4 kernels; use a power of two >= 32")
    out_features, in_features = qweight_packed.shape[0], qweight_packed.shape[1] * 2
    groups = triton.cdiv(in_features, group_size)
    if tuple(scales.shape) != (out_features, groups) or scales.stride(1) != 1:
        raise ValueError(f"scales: expected a row-contiguous [{out_features}, {groups}] (out, in/group_size), "
                         f"got {tuple(scales.shape)}")
    if zeros is not None and (tuple(zeros.shape) != (out_features, groups) or zeros.stride(1) != 1):
        raise ValueError(f"zeros: expected a row-contiguous [{out_features}, {groups}] like scales, "
                         f"got {tuple(zeros.shape)}")
    return out_features, in_features


def int4_linear(x, qweight_packed, scales, zeros, group_size, bias=None, *, config=None, path=None,
                split_k=None):
    """y = x @ W^T + bias with W[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g].

    ``zeros`` None means symmetric (zero point 8). x [..., in] -> y [..., out] in x's dtype.
    Overrides as for `int8_linear`.
    """
    out_features, in_features = _check_int4(qweight_packed, scales, zeros, group_size)
    return _launch(x, qweight_packed, scales, zeros, bias, fmt="int4", group_size=group_size,
                   out_features=out_features, in_features=in_features, name="int4_linear",
                   config=config, path=path, split_k=split_k)
