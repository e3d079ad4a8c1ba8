"""Weight-only quantized linears (Triton language kernels): y = x @ dequant(W)^T (+ bias).

Formats (those of quantization.py, which owns them):
- int8: ``qweight`` int8 [out, in], ``scale`` float [out] (per output channel, symmetric).
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
  int4 at well under the memory bandwidth.
- GEMM (more rows): tensor-core dots on weights converted to the activations' dtype (int8 and
  nibbles are exact in bf16/fp16); scales (and zero points) are applied to the dot's result, so
  the dot itself sees small exact integers.

fp8 weights need no kernel here: quantization.Fp8Linear runs them through torch._scaled_mm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Up to this many rows of x, the GEMV kernels (one program column per row) beat the tensor-core
# GEMM, which pads the rows to 16. Measured in benchmarks/kernel_bench.py.
GEMV_MAX_ROWS = 2

_ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAGIC = 8388608.0          # 2**23: float32 whose mantissa holds an integer OR-ed into it exactly


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
def _int8_gemv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, N, K,
    stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, FAST_CVT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn
    x_row = x_ptr + row * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        if EVEN_K:
            w = tl.load(w_rows + k[None, :], mask=col_ok[:, None], other=0)
            x = tl.load(x_row + k)
        else:
            w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & (k < K)[None, :], other=0)
            x = tl.load(x_row + k, mask=k < K, other=0.0)
        acc += _int8_to_float(w, FAST_CVT) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1) * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + cols, y.to(y_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _int8_gemm_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr, M, N, K,
    stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows[:, None] * stride_xm
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        if EVEN_K:
            x = tl.load(x_rows + k[None, :], mask=row_ok[:, None], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=col_ok[:, None], other=0)
        else:
            x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & (k < K)[None, :], other=0.0)
            w = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & (k < K)[None, :], other=0)
        acc += tl.dot(x, tl.trans(_int8_to_float(w, True).to(x.dtype)))
    y = acc * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _nibbles_to_float(packed, zero, FAST_CVT: tl.constexpr):
    """uint8 [n, k/2] and zero points [n] -> (low - zero) and 16 * (high - zero), float32.

    The high nibble is left in place (x16) to save a shift; the caller divides x by 16 instead.
    """
    p = packed.to(tl.int32)
    if FAST_CVT:
        low = ((p & 0x0F) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + zero)[:, None]
        high = ((p & 0xF0) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + 16.0 * zero)[:, None]
    else:
        low = (p & 0x0F).to(tl.float32) - zero[:, None]
        high = (p & 0xF0).to(tl.float32) - 16.0 * zero[:, None]
    return low, high


@triton.jit
def _int4_gemv_kernel(
    x_ptr, w_ptr, scales_ptr, zeros_ptr, bias_ptr, y_ptr, N, K,
    stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    FAST_CVT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # BLOCK_K divides GROUP: one scale and zero point per row and iteration.
    pid_n = tl.program_id(0)
    row = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    half = tl.arange(0, BLOCK_K // 2)
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn
    x_row = x_ptr + row * stride_xm
    acc = tl.zeros([BLOCK_N, BLOCK_K // 2], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        even = k0 + 2 * half
        if EVEN_K:
            packed = tl.load(w_rows + (k0 // 2 + half)[None, :], mask=col_ok[:, None], other=0)
            x_even = tl.load(x_row + even).to(tl.float32)
            x_odd = tl.load(x_row + even + 1).to(tl.float32)
        else:
            packed = tl.load(w_rows + (k0 // 2 + half)[None, :],
                             mask=col_ok[:, None] & (even < K)[None, :], other=0)
            x_even = tl.load(x_row + even, mask=even < K, other=0.0).to(tl.float32)
            x_odd = tl.load(x_row + even + 1, mask=even + 1 < K, other=0.0).to(tl.float32)
        group = k0 // GROUP
        scale = tl.load(scales_ptr + cols * stride_sn + group, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(zeros_ptr + cols * stride_zn + group, mask=col_ok, other=0).to(tl.float32)
        else:
            zero = tl.full([BLOCK_N], 8.0, tl.float32)
        low, high16 = _nibbles_to_float(packed, zero, FAST_CVT)
        acc += (low * x_even[None, :] + high16 * (x_odd * 0.0625)[None, :]) * scale[:, None]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + cols, y.to(y_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _int4_gemm_kernel(
    x_ptr, w_ptr, scales_ptr, zeros_ptr, bias_ptr, y_ptr, M, N, K,
    stride_xm, stride_wn, stride_sn, stride_zn, stride_ym,
    GROUP: tl.constexpr, HAS_ZEROS: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # sum_k x (q - z) s = s * (x_even . low + x_odd . high - z * sum(x)) per group: the dots see
    # exact integers 0..15, the zero point costs one multiply-add per output.
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    half = tl.arange(0, BLOCK_K // 2)
    x_rows = x_ptr + rows[:, None] * stride_xm
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        even = k0 + 2 * half
        if EVEN_K:
            packed = tl.load(w_rows + (k0 // 2 + half)[None, :], mask=col_ok[:, None], other=0)
            x_even = tl.load(x_rows + even[None, :], mask=row_ok[:, None], other=0.0)
            x_odd = tl.load(x_rows + even[None, :] + 1, mask=row_ok[:, None], other=0.0)
        else:
            packed = tl.load(w_rows + (k0 // 2 + half)[None, :],
                             mask=col_ok[:, None] & (even < K)[None, :], other=0)
            x_even = tl.load(x_rows + even[None, :], mask=row_ok[:, None] & (even < K)[None, :], other=0.0)
            x_odd = tl.load(x_rows + even[None, :] + 1, mask=row_ok[:, None] & (even + 1 < K)[None, :],
                            other=0.0)
        low = (packed & 0x0F).to(x_even.dtype)
        high = (packed >> 4).to(x_even.dtype)
        part = tl.dot(x_even, tl.trans(low)) + tl.dot(x_odd, tl.trans(high))
        group = k0 // GROUP
        scale = tl.load(scales_ptr + cols * stride_sn + group, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(zeros_ptr + cols * stride_zn + group, mask=col_ok, other=0).to(tl.float32)
        else:
            zero = tl.full([BLOCK_N], 8.0, tl.float32)
        x_sum = tl.sum(x_even.to(tl.float32) + x_odd.to(tl.float32), axis=1)
        acc += (part - x_sum[:, None] * zero[None, :]) * scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------------
# Launch configurations (BLOCK sizes, warps) by kernel shape; benchmarks/kernel_bench.py sweeps them.
# ----------------------------------------------------------------------------------------------------

INT8_GEMV_CONFIG = dict(BLOCK_N=16, BLOCK_K=256, num_warps=4, FAST_CVT=True)
INT4_GEMV_CONFIG = dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, FAST_CVT=True)
GEMM_CONFIG = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3)


def _gemm_config(rows: int, overrides: dict | None) -> dict:
    config = dict(GEMM_CONFIG)
    config["BLOCK_M"] = 16 if rows <= 16 else 32 if rows <= 32 else 64
    config.update(overrides or {})
    return config


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


def int8_linear(x, qweight, scale, bias=None, *, config=None, path=None):
    """y = x @ (qweight * scale[:, None])^T + bias, x [..., in] -> y [..., out] in x's dtype.

    ``config`` overrides launch settings and ``path`` ("gemv" / "gemm") the kernel choice (benchmarks).
    """
    if qweight.dtype != torch.int8 or qweight.dim() != 2 or qweight.stride(1) != 1:
        raise ValueError(f"qweight: expected a row-contiguous int8 [out, in], got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    out_features, in_features = qweight.shape
    if tuple(scale.shape) != (out_features,):
        raise ValueError(f"scale: expected shape [{out_features}] (one per output channel), got {tuple(scale.shape)}")
    _check_bias(bias, out_features)
    rows = _as_rows(x, in_features, "int8_linear")
    m = rows.shape[0]
    y = torch.empty(m, out_features, dtype=x.dtype, device=x.device)
    weight_u8 = qweight.view(torch.uint8)
    bias_arg = bias if bias is not None else scale
    if _use_gemv(m, path):
        cfg = {**INT8_GEMV_CONFIG, **(config or {})}
        grid = (triton.cdiv(out_features, cfg["BLOCK_N"]), m)
        _int8_gemv_kernel[grid](
            rows, weight_u8, scale, bias_arg, y, out_features, in_features,
            rows.stride(0), qweight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, EVEN_K=in_features % cfg["BLOCK_K"] == 0, **cfg)
    else:
        cfg = _gemm_config(m, config)
        grid = (triton.cdiv(out_features, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]))
        _int8_gemm_kernel[grid](
            rows, weight_u8, scale, bias_arg, y, m, out_features, in_features,
            rows.stride(0), qweight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None, EVEN_K=in_features % cfg["BLOCK_K"] == 0, **cfg)
    return y.view(*x.shape[:-1], out_features)


def _int4_block_k(group_size: int, wanted: int) -> int:
    """The K tile: at most `wanted`, and dividing the group so a tile never straddles two groups."""
    return min(wanted, group_size)


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


def int4_linear(x, qweight_packed, scales, zeros, group_size, bias=None, *, config=None, path=None):
    """y = x @ W^T + bias with W[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g].

    ``zeros`` None means symmetric (zero point 8). x [..., in] -> y [..., out] in x's dtype.
    ``config`` and ``path`` as for `int8_linear`.
    """
    out_features, in_features = _check_int4(qweight_packed, scales, zeros, group_size)
    _check_bias(bias, out_features)
    rows = _as_rows(x, in_features, "int4_linear")
    m = rows.shape[0]
    y = torch.empty(m, out_features, dtype=x.dtype, device=x.device)
    zeros_arg = zeros if zeros is not None else scales
    bias_arg = bias if bias is not None else scales
    common = dict(GROUP=group_size, HAS_ZEROS=zeros is not None, HAS_BIAS=bias is not None)
    strides = (rows.stride(0), qweight_packed.stride(0), scales.stride(0), zeros_arg.stride(0), y.stride(0))
    if _use_gemv(m, path):
        cfg = {**INT4_GEMV_CONFIG, **(config or {})}
        cfg["BLOCK_K"] = _int4_block_k(group_size, cfg["BLOCK_K"])
        grid = (triton.cdiv(out_features, cfg["BLOCK_N"]), m)
        _int4_gemv_kernel[grid](
            rows, qweight_packed, scales, zeros_arg, bias_arg, y, out_features, in_features, *strides,
            EVEN_K=in_features % cfg["BLOCK_K"] == 0, **common, **cfg)
    else:
        cfg = _gemm_config(m, config)
        cfg["BLOCK_K"] = _int4_block_k(group_size, cfg["BLOCK_K"])
        grid = (triton.cdiv(out_features, cfg["BLOCK_N"]), triton.cdiv(m, cfg["BLOCK_M"]))
        _int4_gemm_kernel[grid](
            rows, qweight_packed, scales, zeros_arg, bias_arg, y, m, out_features, in_features, *strides,
            EVEN_K=in_features % cfg["BLOCK_K"] == 0, **common, **cfg)
    return y.view(*x.shape[:-1], out_features)

