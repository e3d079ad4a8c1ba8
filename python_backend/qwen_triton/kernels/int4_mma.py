"""int4 weight-only linear for a few rows of x on tensor cores (Gluon, CUDA compute capability >= 8.0).

    int4_mma_linear(x, qweight_packed, scales, zeros, group_size, bias=None)

The same format and result as quant_matmul.int4_linear (its docstring owns the format): y = x @ W^T with
W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g], g = k // group_size; x has 1 to MAX_ROWS rows.

Why its own kernel: at decode a linear only streams its weight once, and int4 halves int8's bytes; but a
GEMV on CUDA cores spends ~4.7 instructions a weight (nibble -> float, multiply-add, x's conversion)
and stops at the instruction rate, near int8's time. Here the weight is the tensor-core operand A (the
output features are the MMA's M, the rows of x its N, padded to 8): each thread loads the packed bytes of
its own A fragments (Gluon's DotOperandLayout with k_width 8: eight consecutive bytes of a row per load),
turns them into 128 + q (bf16) or 1024 + q (fp16) by PRMT, two weights per instruction, and mma.sync
m16n8k16 does the multiply-adds, 256 weights an instruction. No value goes through shared memory. The
zero point comes off once per group and row: dot(128 + q, x) - (128 + zero) * sum(x), with sum(x) of
the group formed once per program step, not per weight. About 2 instructions a weight.

Each program owns BLOCK_N output features and one K slice, one group a step (PREFETCH loads the next
step's bytes before converting this step's; slower on the H200, so off). Narrow outputs split K;
the last program of an output tile to finish adds the float32 partials up (common.split_counters), as
quant_matmul's kernels do. Gluon has no CPU interpreter: elsewhere quant_matmul's Triton kernels run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from . import multiprocessor_count
from .common import k_slices, split_counters, sum_splits
from .pdl import launch_options, pdl_enabled

# Rows of x one launch takes: the MMA's N (8); more rows take quant_matmul's GEMM.
MAX_ROWS = 8
# What int4_linear sends here unasked (path None; path="mma" forces it): up to ROUTED_MAX_ROWS rows of
# x on layers of fewer than ROUTED_MAX_IN_FEATURES inputs; long rows (down_proj) stay on quant_matmul's
# kernels, whose K steps the splits here do not beat. Set from benchmarks/int4_mma_bench.py on the H200.
ROUTED_MAX_ROWS = 0
ROUTED_MAX_IN_FEATURES = 16384
# Group sizes the kernel takes (one group a step; a step must hold whole 32-byte fragments per row).
GROUP_SIZES = (64, 128, 256)
# Launch settings; benchmarks/int4_mma_bench.py sweeps them beside quant_matmul's kernels. Not yet the
# sweep's best per layer (docs/benchmarks.md, "int4 on tensor cores at decode rows").
CONFIG = dict(BLOCK_N=128, num_warps=2, PREFETCH=False)
WIDE_CONFIG = dict(min_out_features=16384, BLOCK_N=256, num_warps=4)
# Split K until about this many programs a multiprocessor (at most this many inputs a program).
PROGRAMS_PER_SM = 3

# Packed bytes -> (128 + low nibble, 128 + high nibble) as bf16 pairs: the nibbles masked, PRMT puts
# each under the exponent byte 0x43 (bf16 0x43nn = 128 + n, exact). fp16: 0x64nn = 1024 + n.
_NIBBLES = """{
.reg .b32 lo, hi, magic;
and.b32 lo, $4, 0x0F0F0F0F;
shr.u32 hi, $4, 4;
and.b32 hi, hi, 0x0F0F0F0F;
mov.b32 magic, MAGIC;
prmt.b32 $0, lo, magic, 0x4140;
prmt.b32 $1, lo, magic, 0x4342;
prmt.b32 $2, hi, magic, 0x4140;
prmt.b32 $3, hi, magic, 0x4342;
}"""
_NIBBLES_BF16 = gl.constexpr(_NIBBLES.replace("MAGIC", "0x43434343"))
_NIBBLES_F16 = gl.constexpr(_NIBBLES.replace("MAGIC", "0x64646464"))


@gluon.jit
def _offset_values(packed, F16: gl.constexpr):
    """uint8 tile -> (offset + low nibble, offset + high nibble), offset 128 (bf16) or 1024 (fp16)."""
    if F16:
        return gl.inline_asm_elementwise(
            _NIBBLES_F16, "=r,=r,=r,=r,r", [packed], dtype=(gl.float16, gl.float16), is_pure=True, pack=4
        )
    else:
        return gl.inline_asm_elementwise(
            _NIBBLES_BF16, "=r,=r,=r,=r,r", [packed], dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=4
        )


@gluon.jit
def _int4_mma_kernel(
    x_ptr,
    w_ptr,
    scales_ptr,
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
    GROUP: gl.constexpr,
    HAS_ZEROS: gl.constexpr,
    HAS_BIAS: gl.constexpr,
    SPLIT: gl.constexpr,
    SERIAL: gl.constexpr,
    F16: gl.constexpr,
    BLOCK_N: gl.constexpr,
    NW: gl.constexpr,
    PREFETCH: gl.constexpr,
    PDL: gl.constexpr,
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1], instr_shape=[16, 8])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8)
    b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8)
    x_layout: gl.constexpr = gl.BlockedLayout([1, 4], [1, 32], [1, NW], [1, 0])
    HALF: gl.constexpr = GROUP // 2
    OFFSET: gl.constexpr = 1024.0 if F16 else 128.0
    pid_n = gl.program_id(0)
    split = gl.program_id(1)
    # A: packed bytes of the program's weight rows, in the A fragments' layout.
    a_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, a_layout))
    a_rows = gl.minimum(a_rows, N - 1)  # rows past N read row N - 1 (valid memory); never stored
    w_tile = (
        w_ptr
        + a_rows[:, None].to(gl.int64) * stride_wn
        + gl.arange(0, HALF, layout=gl.SliceLayout(0, a_layout))[None, :]
    )
    # B: x's even and odd inputs of a group as [HALF, 8], columns past M zero.
    b_k = gl.arange(0, HALF, layout=gl.SliceLayout(1, b_layout))
    b_m = gl.arange(0, 8, layout=gl.SliceLayout(0, b_layout))
    x_even = x_ptr + b_m[None, :] * stride_xm + 2 * b_k[:, None]
    b_ok = (b_m < M)[None, :] & (b_k >= 0)[:, None]
    # x's group sums, [8] in the accumulator's column layout.
    s_m = gl.arange(0, 8, layout=gl.SliceLayout(1, x_layout))
    s_k = gl.arange(0, GROUP, layout=gl.SliceLayout(0, x_layout))
    x_group = x_ptr + s_m[:, None] * stride_xm + s_k[None, :]
    s_ok = (s_m < M)[:, None] & (s_k >= 0)[None, :]
    cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    col_ok = cols < N
    acc = gl.zeros([BLOCK_N, 8], gl.float32, layout=mma)
    k_start = split * k_per_split
    k_end = gl.minimum(k_start + k_per_split, K)
    # offsets as whole groups times HALF, so the compiler sees them aligned and loads 8 bytes at a time
    packed = gl.load(w_tile + (k_start // GROUP) * HALF)
    for k0 in range(k_start, k_end, GROUP):
        if PREFETCH:  # the next step's bytes in flight while this step converts (the last reloads its own)
            following = gl.load(w_tile + (gl.minimum(k0 + GROUP, k_end - GROUP) // GROUP) * HALF)
        else:
            packed = gl.load(w_tile + (k0 // GROUP) * HALF)
            following = packed
        low, high = _offset_values(packed, F16)
        part = mma_v2(low, gl.load(x_even + k0, mask=b_ok, other=0.0), gl.zeros([BLOCK_N, 8], gl.float32, layout=mma))
        part = mma_v2(high, gl.load(x_even + k0 + 1, mask=b_ok, other=0.0), part)
        x_sum = gl.sum(gl.load(x_group + k0, mask=s_ok, other=0.0).to(gl.float32), axis=1)
        x_sum = gl.convert_layout(x_sum, gl.SliceLayout(0, mma))
        group = k0 // GROUP
        scale = gl.load(scales_ptr + cols * stride_sn + group, mask=col_ok, other=0.0).to(gl.float32)
        if HAS_ZEROS:
            zero = gl.load(zeros_ptr + cols * stride_zn + group, mask=col_ok, other=0).to(gl.float32)
        else:
            zero = gl.full([BLOCK_N], 8.0, gl.float32, layout=gl.SliceLayout(1, mma))
        acc += (part - (OFFSET + zero)[:, None] * x_sum[None, :]) * scale[:, None]
        packed = following
    rows = gl.arange(0, 8, layout=gl.SliceLayout(0, mma))
    mask = (rows < M)[None, :] & col_ok[:, None]
    if SPLIT:
        parts = part_ptr + rows[None, :] * N + cols[:, None]
        gl.store(parts + split.to(gl.int64) * M * N, acc, mask=mask)
        if SERIAL:
            # every thread's partial is stored before the program counts itself done (tl's barrier:
            # older Gluon releases have none of their own)
            tl.debug_barrier()
            counter = count_ptr + pid_n
            if gl.atomic_add(counter, 1, sem="acq_rel") == gl.num_programs(1) - 1:
                total = gl.zeros([BLOCK_N, 8], gl.float32, layout=mma)
                for other in range(0, gl.num_programs(1)):  # .cg: from L2, where the others' stores are
                    total += gl.load(parts + (other * M).to(gl.int64) * N, mask=mask, other=0.0, cache_modifier=".cg")
                _store_y(total, rows, cols, col_ok, mask, bias_ptr, y_ptr, stride_ym, HAS_BIAS)
                gl.store(counter, 0)  # zero again for the next launch
    else:
        _store_y(acc, rows, cols, col_ok, mask, bias_ptr, y_ptr, stride_ym, HAS_BIAS)


@gluon.jit
def _store_y(acc, rows, cols, col_ok, mask, bias_ptr, y_ptr, stride_ym, HAS_BIAS: gl.constexpr):
    """acc [BLOCK_N, 8] (output features x rows of x) (+ bias) -> y [rows, out] in y's dtype."""
    if HAS_BIAS:
        acc += gl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(gl.float32)[:, None]
    gl.store(y_ptr + rows[None, :] * stride_ym + cols[:, None], acc.to(y_ptr.dtype.element_ty), mask=mask)


def routed(rows: int, in_features: int) -> bool:
    """Whether int4_linear picks this kernel for ``rows`` rows of a layer of ``in_features`` inputs."""
    return rows <= ROUTED_MAX_ROWS and in_features < ROUTED_MAX_IN_FEATURES


def applies(x: torch.Tensor, rows: int, in_features: int, zeros, group_size: int) -> bool:
    """Whether this kernel takes the launch: CUDA >= 8.0, bf16 / fp16 x of at most MAX_ROWS rows,
    integer (or no) zero points, a group size of GROUP_SIZES that divides the inputs."""
    return (
        x.is_cuda
        and torch.cuda.get_device_capability(x.device)[0] >= 8
        and x.dtype in (torch.bfloat16, torch.float16)
        and 1 <= rows <= MAX_ROWS
        and group_size in GROUP_SIZES
        and in_features % group_size == 0
        and (zeros is None or not zeros.dtype.is_floating_point)
    )


def int4_mma_linear(rows, qweight_packed, scales, zeros, group_size, bias=None, *, config=None, split_k=None):
    """y [M, out] = rows [M, in] @ W^T (+ bias), M <= MAX_ROWS, rows row-contiguous. ``config`` and
    ``split_k`` override the launch settings (benchmarks)."""
    m, in_features = rows.shape
    out_features = qweight_packed.shape[0]
    cfg = dict(CONFIG)
    if out_features >= WIDE_CONFIG["min_out_features"]:
        cfg.update(BLOCK_N=WIDE_CONFIG["BLOCK_N"], num_warps=WIDE_CONFIG["num_warps"])
    cfg.update(config or {})
    tiles = triton.cdiv(out_features, cfg["BLOCK_N"])
    if split_k is None:
        split_k = max(1, PROGRAMS_PER_SM * multiprocessor_count(rows.device.index or 0) // tiles)
    k_per_split, split_k = k_slices(in_features, min(split_k, in_features // group_size), group_size)
    y = torch.empty(m, out_features, dtype=rows.dtype, device=rows.device)
    part = torch.empty(split_k, m, out_features, dtype=torch.float32, device=rows.device) if split_k > 1 else y
    counters = split_counters(rows.device, tiles) if split_k > 1 else None
    pdl = pdl_enabled(rows.device)
    _int4_mma_kernel[(tiles, split_k)](
        rows,
        qweight_packed,
        scales,
        zeros if zeros is not None else scales,
        bias if bias is not None else scales,
        y,
        part,
        counters if counters is not None else part,
        m,
        out_features,
        in_features,
        k_per_split,
        rows.stride(0),
        qweight_packed.stride(0),
        scales.stride(0),
        zeros.stride(0) if zeros is not None else 0,
        y.stride(0),
        GROUP=group_size,
        HAS_ZEROS=zeros is not None,
        HAS_BIAS=bias is not None,
        SPLIT=split_k > 1,
        SERIAL=counters is not None,
        F16=rows.dtype == torch.float16,
        BLOCK_N=cfg["BLOCK_N"],
        NW=cfg["num_warps"],
        PREFETCH=cfg["PREFETCH"],
        PDL=pdl,
        num_warps=cfg["num_warps"],
        **launch_options(pdl),
    )
    if split_k > 1 and counters is None:
        sum_splits(part, bias, y)
    return y
