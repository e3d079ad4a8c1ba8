"""int4 weight-only linear for a few rows of x on tensor cores (Gluon, CUDA compute capability >= 8.0).

    int4_mma_linear(x, qweight_packed, scales, zeros, group_size, bias=None)

The same format and result as quant_matmul.int4_linear (its docstring owns the format): y = x @ W^T with
W[n, k] = (q[n, k] - zero[n, g]) * scale[n, g], g = k // group_size; x has 1 to MAX_ROWS rows.

Why its own kernel: at decode a linear only streams its weight once, and int4 halves int8's bytes; but a
GEMV on CUDA cores spends ~4.7 instructions a weight (nibble -> float, multiply-add, x's conversion)
and stops at the instruction rate, near int8's time. Here the weight is the tensor-core operand A (the
output features are the MMA's M, the rows of x its N, padded to 8): each thread loads the packed bytes of
its own A fragments (Gluon's DotOperandLayout with k_width 8: eight consecutive bytes of a row per load),
turns them into 128 + q (bf16) or 1024 + q (fp16) by PRMT, two weights per instruction, and one fused
multiply-add per pair subtracts the row's offset + zero point, so A holds q - zero exactly; mma.sync
m16n8k16 does the multiply-adds, 256 weights an instruction, and the group's scale multiplies the
group's partial. No value goes through shared memory and nothing is summed over x. x is read as 32-bit
words (pairs of inputs), split into even and odd inputs by PRMT: the low nibbles meet the even inputs,
the high ones the odd.

Each program owns BLOCK_N output features and one K slice; a step loads STEP_GROUPS groups' bytes before
converting any (bytes in flight hide DRAM latency), the slice's leftover groups go one at a time. The
weight may be row-major or int4_layout's tiled layout (TILED), where a group of TILE_ROWS rows is one
contiguous run: the H200 streams that near its copy rate, the row-major pieces well below it. Narrow
outputs split K (launch_config); the last program of an output tile to finish adds the float32 partials
up (common.split_counters), as quant_matmul's kernels do. Gluon has no CPU interpreter: elsewhere
quant_matmul's Triton kernels run.
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
from .common import NIBBLES_PTX_BF16, NIBBLES_PTX_F16, k_slices, split_partials, sum_splits
from .int4_layout import GROUP_SIZES, TILE_ROWS
from .pdl import launch_options, pdl_enabled

# Rows of x one launch takes: the MMA's N (8); more rows take quant_matmul's GEMM.
MAX_ROWS = 8
# What int4_linear sends here unasked (path None; path="mma" forces it): up to ROUTED_MAX_ROWS rows of
# x, where the H200 measured it ahead of quant_matmul's kernels (benchmarks/int4_mma_bench.py and
# gpu_bench's batch-1 decode); more rows take the GEMM, which reads either layout.
ROUTED_MAX_ROWS = 1
# Launch settings, from benchmarks/int4_mma_bench.py on the H200 (docs/benchmarks.md, "int4 on tensor
# cores at decode rows"): BLOCK_N outputs a program in NW warps, STEP_GROUPS groups loaded a step; K is
# split until about WARPS_PER_SM warps a multiprocessor stream the weight (launch_config; latency is
# hidden by bytes in flight: narrow layers need more splits).
CONFIG = dict(BLOCK_N=64, num_warps=2, STEP_GROUPS=4)
WARPS_PER_SM = 16
_TILE_ROWS = gl.constexpr(TILE_ROWS)

# Packed bytes -> (q_low - zero, q_high - zero) as bf16 / fp16 pairs, exact (common.py's PTX): one fused
# multiply-add per pair adds the row's -(offset + zero): no sum of x to take the zero point off afterwards.
_NIBBLES_BF16 = gl.constexpr(NIBBLES_PTX_BF16)
_NIBBLES_F16 = gl.constexpr(NIBBLES_PTX_F16)
# x read as 32-bit words (x[2j], x[2j + 1]): two words -> the even inputs' pair and the odd inputs' pair,
# so each thread loads its B fragments' inputs contiguously and no load strides over x.
_EVEN_ODD = gl.constexpr("prmt.b32 $0, $2, $3, 0x5410; prmt.b32 $1, $2, $3, 0x7632;")


@gluon.jit
def _weights(packed, minus_zero, F16: gl.constexpr):
    """uint8 tile, -(offset + zero) per element -> (low nibble - zero, high nibble - zero) in x's dtype."""
    if F16:
        return gl.inline_asm_elementwise(
            _NIBBLES_F16,
            "=r,=r,=r,=r,r,r,r",
            [packed, minus_zero],
            dtype=(gl.float16, gl.float16),
            is_pure=True,
            pack=4,
        )
    else:
        return gl.inline_asm_elementwise(
            _NIBBLES_BF16,
            "=r,=r,=r,=r,r,r,r",
            [packed, minus_zero],
            dtype=(gl.bfloat16, gl.bfloat16),
            is_pure=True,
            pack=4,
        )


@gluon.jit
def _even_odd(words, F16: gl.constexpr):
    """int32 words of x pairs -> (even inputs, odd inputs) in x's dtype, in the words' layout."""
    if F16:
        return gl.inline_asm_elementwise(
            _EVEN_ODD, "=r,=r,r,r", [words], dtype=(gl.float16, gl.float16), is_pure=True, pack=2
        )
    else:
        return gl.inline_asm_elementwise(
            _EVEN_ODD, "=r,=r,r,r", [words], dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=2
        )


@gluon.jit
def _group_step(
    acc,
    packed,
    group,
    x_words,
    x_ok,
    zero_ptrs,
    scale_ptrs,
    col_ok,
    GROUP: gl.constexpr,
    HAS_ZEROS: gl.constexpr,
    F16: gl.constexpr,
    mma: gl.constexpr,
):
    """acc + (W's group ``group`` of the program's rows) @ (x's group), W from ``packed`` bytes (the A
    fragments' layout); zero_ptrs / scale_ptrs: the rows' zero points (A's rows) and scales (acc's rows)."""
    dtype: gl.constexpr = gl.float16 if F16 else gl.bfloat16
    OFFSET: gl.constexpr = 1024.0 if F16 else 128.0
    if HAS_ZEROS:  # A's rows are clamped to N - 1: always valid memory
        zero = gl.load(zero_ptrs + group).to(gl.float32)
        minus_zero, _ = gl.broadcast((-OFFSET - zero).to(dtype)[:, None], packed)  # one value a row
    else:
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8)
        minus_zero = gl.full(packed.shape, -OFFSET - 8.0, dtype, layout=a_layout)
    low, high = _weights(packed, minus_zero, F16)
    x_even, x_odd = _even_odd(gl.load(x_words + group * (GROUP // 2), mask=x_ok, other=0), F16)
    part = mma_v2(low, x_even, gl.zeros(acc.shape, gl.float32, layout=mma))
    part = mma_v2(high, x_odd, part)
    scale = gl.load(scale_ptrs + group, mask=col_ok, other=0.0).to(gl.float32)
    return acc + part * scale[:, None]


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
    STEP_GROUPS: gl.constexpr,
    TILED: gl.constexpr,
    PDL: gl.constexpr,
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1], instr_shape=[16, 8])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=8)
    b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=8)
    HALF: gl.constexpr = GROUP // 2
    pid_n = gl.program_id(0)
    split = gl.program_id(1)
    # A: packed bytes of the program's weight rows, in the A fragments' layout.
    a_rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, a_layout))
    a_rows = gl.minimum(a_rows, N - 1)  # rows past N read row N - 1 (valid memory); never stored
    a_bytes = gl.arange(0, HALF, layout=gl.SliceLayout(0, a_layout))[None, :]
    if TILED:  # int4_layout's tiled layout: a step's bytes of TILE_ROWS rows contiguous
        GROUP_STRIDE: gl.constexpr = _TILE_ROWS * HALF
        tile_start = (a_rows // _TILE_ROWS).to(gl.int64) * (K // GROUP) * GROUP_STRIDE
        w_tile = w_ptr + (tile_start + (a_rows % _TILE_ROWS) * HALF)[:, None] + a_bytes
    else:
        GROUP_STRIDE: gl.constexpr = HALF
        w_tile = w_ptr + a_rows[:, None].to(gl.int64) * stride_wn + a_bytes
    # B: x's words (pairs of inputs) of a group as [HALF, 8], columns past M zero.
    b_k = gl.arange(0, HALF, layout=gl.SliceLayout(1, b_layout))
    b_m = gl.arange(0, 8, layout=gl.SliceLayout(0, b_layout))
    x_words = x_ptr + b_m[None, :] * stride_xm + b_k[:, None]
    x_ok = (b_m < M)[None, :] & (b_k >= 0)[:, None]
    cols = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    col_ok = cols < N
    zero_ptrs = zeros_ptr + a_rows * stride_zn
    scale_ptrs = scales_ptr + cols * stride_sn
    acc = gl.zeros([BLOCK_N, 8], gl.float32, layout=mma)
    first = split * (k_per_split // GROUP)
    last = gl.minimum(first + k_per_split // GROUP, K // GROUP)
    # STEP_GROUPS groups' bytes are loaded before any is converted: more bytes in flight per warp; the
    # slice's last groups that do not fill a step go one at a time.
    whole_steps_end = first + (last - first) // STEP_GROUPS * STEP_GROUPS
    for g in range(first, whole_steps_end, STEP_GROUPS):
        packed0 = gl.load(w_tile + g * GROUP_STRIDE)
        if STEP_GROUPS >= 2:
            packed1 = gl.load(w_tile + (g + 1) * GROUP_STRIDE)
        if STEP_GROUPS >= 4:
            packed2 = gl.load(w_tile + (g + 2) * GROUP_STRIDE)
            packed3 = gl.load(w_tile + (g + 3) * GROUP_STRIDE)
        acc = _group_step(acc, packed0, g, x_words, x_ok, zero_ptrs, scale_ptrs, col_ok, GROUP, HAS_ZEROS, F16, mma)
        if STEP_GROUPS >= 2:
            acc = _group_step(
                acc, packed1, g + 1, x_words, x_ok, zero_ptrs, scale_ptrs, col_ok, GROUP, HAS_ZEROS, F16, mma
            )
        if STEP_GROUPS >= 4:
            acc = _group_step(
                acc, packed2, g + 2, x_words, x_ok, zero_ptrs, scale_ptrs, col_ok, GROUP, HAS_ZEROS, F16, mma
            )
            acc = _group_step(
                acc, packed3, g + 3, x_words, x_ok, zero_ptrs, scale_ptrs, col_ok, GROUP, HAS_ZEROS, F16, mma
            )
    for g in range(whole_steps_end, last):
        packed = gl.load(w_tile + g * GROUP_STRIDE)
        acc = _group_step(acc, packed, g, x_words, x_ok, zero_ptrs, scale_ptrs, col_ok, GROUP, HAS_ZEROS, F16, mma)
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


def routed(rows: int) -> bool:
    """Whether int4_linear picks this kernel (where it applies) for ``rows`` rows of x."""
    return rows <= ROUTED_MAX_ROWS


def applies(x: torch.Tensor, rows: int, in_features: int, zeros, group_size: int) -> bool:
    """Whether this kernel takes the launch: CUDA >= 8.0, bf16 / fp16 x of at most MAX_ROWS rows,
    integer (or no) zero points, a group size of GROUP_SIZES that divides the inputs."""
    return (
        x.is_cuda
        and torch.cuda.get_device_capability(x.device)[0] >= 8
        and x.dtype in (torch.bfloat16, torch.float16)
        and 1 <= rows <= MAX_ROWS
        and x.storage_offset() % 2 == 0  # x is read as 32-bit words
        and (rows == 1 or x.stride(0) % 2 == 0)
        and group_size in GROUP_SIZES
        and in_features % group_size == 0
        and (zeros is None or not zeros.dtype.is_floating_point)
    )


def launch_config(out_features: int, in_features: int, group_size: int, device: torch.device) -> dict:
    """CONFIG with split_k for a layer: about WARPS_PER_SM warps a multiprocessor stream the weight (the
    output tiles' warps times the K split, rounded to the nearest); where that wants more slices than K
    has steps (short, narrow layers), a step takes half as many groups."""
    cfg = dict(CONFIG)
    tiles = triton.cdiv(out_features, cfg["BLOCK_N"])
    warps = WARPS_PER_SM * multiprocessor_count(device.index or 0)
    wanted = max(1, round(warps / (tiles * cfg["num_warps"])))
    groups = in_features // group_size
    if cfg["STEP_GROUPS"] > 2 and triton.cdiv(groups, cfg["STEP_GROUPS"]) < wanted:
        cfg["STEP_GROUPS"] //= 2
    cfg["split_k"] = min(wanted, triton.cdiv(groups, cfg["STEP_GROUPS"]))
    return cfg


def int4_mma_linear(
    rows, qweight_packed, scales, zeros, group_size, bias=None, *, config=None, split_k=None, tiled=False
):
    """y [M, out] = rows [M, in] @ W^T (+ bias), M <= MAX_ROWS, rows row-contiguous; ``tiled``: the
    weight is in int4_layout's tiled layout. ``config`` and ``split_k`` override the launch settings
    (benchmarks)."""
    m, in_features = rows.shape
    out_features = scales.shape[0]
    cfg = launch_config(out_features, in_features, group_size, rows.device)
    cfg.update(config or {})
    if split_k is not None:
        cfg["split_k"] = split_k
    tiles = triton.cdiv(out_features, cfg["BLOCK_N"])
    step_groups = cfg["STEP_GROUPS"]
    split_k = min(cfg["split_k"], triton.cdiv(in_features // group_size, step_groups))
    k_per_split, split_k = k_slices(in_features, split_k, group_size * step_groups)
    y = torch.empty(m, out_features, dtype=rows.dtype, device=rows.device)
    part, counters = split_partials(y, split_k, tiles)
    pdl = pdl_enabled(rows.device)
    _int4_mma_kernel[(tiles, split_k)](
        rows.view(torch.int32),  # pairs of inputs as words (in_features is even: whole groups)
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
        rows.stride(0) // 2,
        qweight_packed.stride(0) if not tiled else 0,
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
        STEP_GROUPS=step_groups,
        TILED=tiled,
        PDL=pdl,
        num_warps=cfg["num_warps"],
        **launch_options(pdl),
    )
    if split_k > 1 and counters is None:
        sum_splits(part, bias, y)
    return y
