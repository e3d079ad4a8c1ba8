"""Linears for a few rows of x (Triton language), decode at small batch: float (bf16 / fp16 / float32)
weights, and one-byte weights (int8, fp8 e4m3) with a scale per output channel.

    dense_linear(x, weight, bias=None)                 y = x @ weight^T (+ bias)
    dense_gate_up_silu(x, gate_up_weight)              y = silu(gate) * up of x @ gate_up_weight^T
    byte_linear(x, qweight, scale, bias=None)          y = x @ (qweight * scale[:, None])^T (+ bias)
    byte_gate_up_silu(x, qweight, scale)               the same gated form on a one-byte weight

One kernel per form: the WEIGHT constexpr says how a loaded tile becomes float32 ("float"; "int8" by
common.int8_bytes_to_float; "fp8" by the hardware conversion), and the scale multiplies the row sums.

``weight`` is nn.Linear's [out, in] (row-major), x [..., in] of the weight's dtype (any of the three for
a one-byte weight); float32 accumulation, y in x's dtype. The model's MLP at decode rows takes
``dense_gate_up_silu`` (SiLU*up in the gate_up GEMV's epilogue; ``byte_gate_up_silu`` for int8 / fp8) and
then ``dense_linear`` (``byte_linear``) for down_proj.

Why not cuBLAS: at one row a linear only streams its weight once, so the rule is to read it at the
memory's bandwidth with no extra launch. cuBLAS's decode kernels read below that ceiling, and a narrow
output such as down_proj (18944 inputs, 3584 outputs) also pays a split-K reduce kernel and a memset per
call; these kernels add the split-K sums in the GEMV and form SiLU*up in gate_up's epilogue. The LM head
(model.compute_logits) comes here too at one row. Evidence: ``benchmarks/kernel_bench.py --formats
bf16_gemv`` prints each shape beside cuBLAS and the copy bound.

Kernel shape: each program owns BLOCK_N output features (weight rows) and one slice of the input
dimension, loads [BLOCK_N, BLOCK_K] weight tiles with 16-byte vectors and multiply-adds them into a
float32 accumulator of the same shape per row of x, which is reduced across threads once, at the
end. Up to MAX_ROWS rows share each weight tile (one accumulator each), so 2-4 rows read the weight
once, as one row does. Narrow outputs split K so that the grid fills the GPU; the last program of
each output tile to finish adds the float32 partials up (an atomic count per tile, the counters of
common.split_counters), so a split costs no second launch. Inside a CUDA-graph capture before those counters
exist, the separate sum kernel (common.sum_splits) does it instead (captured, hence replayed, consistently).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import multiprocessor_count
from .common import check_bias, int8_bytes_to_float, k_slices, round_to_dtype, split_partials, sum_splits
from .pdl import launch_options, pdl_enabled, wait_for_previous_kernel

# Rows of x that one launch handles (one float32 accumulator tile per row); more rows are chunked.
MAX_ROWS = 4
# Routing (layers/ops.py): up to this many rows the model's dense linears come here, above to cuBLAS.
# The rule: route a row count here only where every linear of a layer beats cuBLAS at Qwen2.5-7B shapes;
# one row does, two rows already lose in qkv and down_proj (benchmarks/kernel_bench.py --formats bf16_gemv).
ROUTE_MAX_ROWS = 1

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Launch settings by rows per launch (the first entry >= the rows), the fastest of the sweep of
# benchmarks/kernel_bench.py --formats bf16_gemv. At one row, 4 weight rows x 512 inputs at 4 warps: one
# weight row a warp, four 16-byte loads a thread and step. More rows of x hold more accumulators, so the
# tile shrinks.
CONFIG = {
    1: dict(BLOCK_N=4, BLOCK_K=512, num_warps=4),
    2: dict(BLOCK_N=4, BLOCK_K=512, num_warps=4),
    4: dict(BLOCK_N=8, BLOCK_K=256, num_warps=4),
}
# Split K until the grid has about this many programs per multiprocessor, each split at least this
# many K tiles long (so the partials stay small next to the weight bytes).
PROGRAMS_PER_SM = 4
MIN_TILES_PER_SPLIT = 2
# Long rows are split too, each program streaming at most this many inputs: a long down_proj row
# (18944 inputs) has too few output tiles for the rule above to split it, yet reads faster in slices;
# short rows (3584 inputs: o_proj, qkv) stay unsplit, which the sweep of kernel_bench.py favours.
MAX_K_PER_SPLIT = 5120
# gate_up with SiLU*up formed in its epilogue (dense_gate_up_silu): gate rows j..j+BLOCK_N and the
# matching up rows in one program, so 2 x BLOCK_N weight rows a program, the 4 of CONFIG[1].
GATED_CONFIG = dict(BLOCK_N=2, BLOCK_K=512, num_warps=4)
# One-byte weights (int8, fp8: byte_linear, byte_gate_up_silu) at one row, by the layer's size and shape, the
# fastest of kernel_bench.py --rows 1 --sweep int8 on the H200 (us, against the kernel this one replaced):
# - small layers (under BYTE_LARGE_LAYER weights: 7B qkv / o, all of 0.5B): 4 rows a program in steps of
#   1024 bytes, split as the float weights are (7B qkv 8.9 against 10.1, o 6.8 / 7.2);
# - larger layers: 8 rows in steps of 512 (7B gate_up 38.4 / 41.0, 72B gate_up 123.6 / 130.2, o 20.4 /
#   21.7, qkv 28.7 / 30.8);
# - long rows (BYTE_LONG_ROW inputs or more: down_proj) in steps of 1024 and never split: each program
#   streams whole rows, with 8 rows a program where that still gives BYTE_LONG_ROW_PROGRAMS_PER_SM programs a
#   multiprocessor, else 4 (72B down 68.8 / 99.1, 7B down 21.9 / 23.8).
# Two to four rows (a forced path="gemv"; the GEMM is faster there) keep a tile of 2048 bytes per row of x.
BYTE_LARGE_LAYER = 32 * 2**20
BYTE_LONG_ROW = 16384
BYTE_LONG_ROW_PROGRAMS_PER_SM = 6
BYTE_SMALL = dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4)
BYTE_LARGE = dict(BLOCK_N=8, BLOCK_K=512, num_warps=4)
BYTE_FEW_ROWS = dict(BLOCK_N=4, BLOCK_K=512, num_warps=4)
BYTE_GATED_CONFIG = dict(BLOCK_N=4, BLOCK_K=512, num_warps=4)
# The weight kinds of the kernels' WEIGHT constexpr, by the dtype of a one-byte weight.
BYTE_WEIGHTS = {torch.int8: "int8", torch.float8_e4m3fn: "fp8"}


@triton.jit
def _to_dtype(x, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """float32 -> dtype, rounded to nearest even. The GPU's conversion does that; Triton's CPU
    interpreter truncates bf16 (see elementwise.py), so there elementwise's integer rounding stands in."""
    if INTERPRETED:
        return round_to_dtype(x, dtype)
    else:
        return x.to(dtype)


@triton.jit
def _silu_times_up(gate, up, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """silu(gate) * up from float32 gate and up (each already of x's dtype), the SiLU and the product each
    rounded to ``dtype`` as the eager silu_and_mul rounds them."""
    silu = _to_dtype(gate / (1.0 + tl.exp(-gate)), dtype, INTERPRETED).to(tl.float32)
    return _to_dtype(silu * up, dtype, INTERPRETED)


@triton.jit
def _weights(w_rows, k, k_ok, MASKED: tl.constexpr, WEIGHT: tl.constexpr):
    """A weight tile as float32: "float" weights as they are; "int8" and "fp8" come in as bytes (uint8
    views), int8 through common.int8_bytes_to_float, fp8 bitcast to e4m3 and converted by the hardware.
    The per-channel scale is applied to the row sums (_write_row), not here."""
    if MASKED:
        w = tl.load(w_rows + k, mask=k_ok, other=0)
    else:
        w = tl.load(w_rows + k)
    if WEIGHT == "int8":
        return int8_bytes_to_float(w)
    elif WEIGHT == "fp8":
        return w.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # masked-off bytes are 0x00: +0.0
    else:
        return w.to(tl.float32)


@triton.jit
def _x_values(x_row, k, k_ok, MASKED: tl.constexpr):
    """Inputs k [BLOCK_N, BLOCK_K] (the same inputs in every row) of one row of x as float32. Loaded in
    the weight tile's shape, hence its register layout: a [BLOCK_K] load gets a layout of its own and is
    moved into the tile's through shared memory, two barriers a step. The compiler drops the repeated
    loads of a thread's rows, unmasked ones at least."""
    if MASKED:
        return tl.load(x_row + k, mask=k_ok, other=0.0).to(tl.float32)
    else:
        return tl.load(x_row + k).to(tl.float32)


@triton.jit
def _step(
    acc0,
    acc1,
    acc2,
    acc3,
    w_rows,
    x_ptr,
    stride_xm,
    k0,
    K,
    ROWS: tl.constexpr,
    MASKED: tl.constexpr,
    WEIGHT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Inputs k0..k0+BLOCK_K: one weight tile, multiply-added into each row's accumulator. Only the
    last, ragged tile is MASKED: full tiles load without predicates."""
    k = tl.broadcast_to((k0 + tl.arange(0, BLOCK_K))[None, :], [BLOCK_N, BLOCK_K])
    k_ok = k < K
    w = _weights(w_rows, k, k_ok, MASKED, WEIGHT)
    acc0 += w * _x_values(x_ptr, k, k_ok, MASKED)
    if ROWS > 1:
        acc1 += w * _x_values(x_ptr + stride_xm, k, k_ok, MASKED)
    if ROWS > 2:
        acc2 += w * _x_values(x_ptr + 2 * stride_xm, k, k_ok, MASKED)
    if ROWS > 3:
        acc3 += w * _x_values(x_ptr + 3 * stride_xm, k, k_ok, MASKED)
    return acc0, acc1, acc2, acc3


@triton.jit
def _row_result(
    acc,
    row,
    cols,
    col_ok,
    N,
    scale_ptr,
    bias_ptr,
    y_ptr,
    part_ptr,
    stride_ym,
    ROWS: tl.constexpr,
    WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """One row's [BLOCK_N] sums: to y (scaled, + bias), or to this split's float32 partial [splits, ROWS, N]."""
    y = tl.sum(acc, axis=1)
    if SPLIT:
        offset = (tl.program_id(1) * ROWS + row) * N  # splits x rows x N: far below 2**31
        tl.store(part_ptr + offset + cols, y, mask=col_ok)
    else:
        _write_row(y, row, cols, col_ok, scale_ptr, bias_ptr, y_ptr, stride_ym, WEIGHT, HAS_BIAS, INTERPRETED)


@triton.jit
def _write_row(
    y,
    row,
    cols,
    col_ok,
    scale_ptr,
    bias_ptr,
    y_ptr,
    stride_ym,
    WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """y = sums * scale (one-byte weights: per output channel) + bias, in y's dtype."""
    if WEIGHT != "float":
        y = y * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_ym + cols, _to_dtype(y, y_ptr.dtype.element_ty, INTERPRETED), mask=col_ok)


@triton.jit
def _finish_splits(
    count_ptr,
    part_ptr,
    bias_ptr,
    y_ptr,
    cols,
    col_ok,
    N,
    scale_ptr,
    stride_ym,
    ROWS: tl.constexpr,
    WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    """The last split program of this output tile to arrive adds every split's partial up."""
    tl.debug_barrier()  # all of this program's partials are stored before it counts itself done
    counter = count_ptr + tl.program_id(0)
    if tl.atomic_add(counter, 1, sem="acq_rel") == tl.num_programs(1) - 1:
        for row in tl.static_range(ROWS):
            total = tl.zeros(cols.shape, tl.float32)
            for split in range(0, tl.num_programs(1)):
                # .cg: read from L2, where the other programs' stores are, not a stale L1 line.
                total += tl.load(
                    part_ptr + (split * ROWS + row) * N + cols, mask=col_ok, other=0.0, cache_modifier=".cg"
                )
            _write_row(total, row, cols, col_ok, scale_ptr, bias_ptr, y_ptr, stride_ym, WEIGHT, HAS_BIAS, INTERPRETED)
        tl.store(counter, 0)  # zero again for the next launch (or graph replay)


@triton.jit
def _dense_gemv_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    bias_ptr,
    y_ptr,
    part_ptr,
    count_ptr,
    N,
    K,
    k_per_split,
    stride_xm,
    stride_wn,
    stride_ym,
    ROWS: tl.constexpr,
    WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPLIT: tl.constexpr,
    SERIAL: tl.constexpr,
    INTERPRETED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (i, s): outputs i*BLOCK_N.. for ROWS rows of x, over the s-th slice of K."""
    wait_for_previous_kernel(PDL)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    # Rows past N read the last weight row again instead of masking: the loads stay unpredicated
    # 16-byte vectors, and the store drops those outputs.
    w_rows = w_ptr + tl.minimum(cols, N - 1)[:, None].to(tl.int64) * stride_wn
    # One accumulator per row (ROWS is a constexpr: the unused ones are compiled away).
    acc0 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    k_start = tl.program_id(1) * k_per_split  # a multiple of BLOCK_K: aligned vector loads
    k_full = tl.minimum(k_start + k_per_split, K // BLOCK_K * BLOCK_K)
    for k0 in range(k_start, k_full, BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        acc0, acc1, acc2, acc3 = _step(
            acc0, acc1, acc2, acc3, w_rows, x_ptr, stride_xm, k0, K, ROWS, False, WEIGHT, BLOCK_N, BLOCK_K
        )
    if not EVEN_K:
        if k_full < tl.minimum(k_start + k_per_split, K):  # the ragged tile, in the last split
            acc0, acc1, acc2, acc3 = _step(
                acc0,
                acc1,
                acc2,
                acc3,
                w_rows,
                x_ptr,
                stride_xm,
                k_full,
                K,
                ROWS,
                True,
                WEIGHT,
                BLOCK_N,
                BLOCK_K,
            )
    _row_result(
        acc0,
        0,
        cols,
        col_ok,
        N,
        scale_ptr,
        bias_ptr,
        y_ptr,
        part_ptr,
        stride_ym,
        ROWS,
        WEIGHT,
        HAS_BIAS,
        SPLIT,
        INTERPRETED,
    )
    if ROWS > 1:
        _row_result(
            acc1,
            1,
            cols,
            col_ok,
            N,
            scale_ptr,
            bias_ptr,
            y_ptr,
            part_ptr,
            stride_ym,
            ROWS,
            WEIGHT,
            HAS_BIAS,
            SPLIT,
            INTERPRETED,
        )
    if ROWS > 2:
        _row_result(
            acc2,
            2,
            cols,
            col_ok,
            N,
            scale_ptr,
            bias_ptr,
            y_ptr,
            part_ptr,
            stride_ym,
            ROWS,
            WEIGHT,
            HAS_BIAS,
            SPLIT,
            INTERPRETED,
        )
    if ROWS > 3:
        _row_result(
            acc3,
            3,
            cols,
            col_ok,
            N,
            scale_ptr,
            bias_ptr,
            y_ptr,
            part_ptr,
            stride_ym,
            ROWS,
            WEIGHT,
            HAS_BIAS,
            SPLIT,
            INTERPRETED,
        )
    if SERIAL:
        _finish_splits(
            count_ptr,
            part_ptr,
            bias_ptr,
            y_ptr,
            cols,
            col_ok,
            N,
            scale_ptr,
            stride_ym,
            ROWS,
            WEIGHT,
            HAS_BIAS,
            INTERPRETED,
        )


@triton.jit
def _gated_step(
    acc_gate,
    acc_up,
    gate_rows,
    up_rows,
    x_row,
    k0,
    K,
    MASKED: tl.constexpr,
    WEIGHT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Inputs k0..k0+BLOCK_K of one row of x against a tile of gate rows and the matching up rows."""
    k = tl.broadcast_to((k0 + tl.arange(0, BLOCK_K))[None, :], [BLOCK_N, BLOCK_K])
    k_ok = k < K
    x = _x_values(x_row, k, k_ok, MASKED)
    gate = _weights(gate_rows, k, k_ok, MASKED, WEIGHT)
    up = _weights(up_rows, k, k_ok, MASKED, WEIGHT)
    return acc_gate + gate * x, acc_up + up * x


@triton.jit
def _gate_up_silu_kernel(
    x_ptr,
    w_ptr,
    scale_ptr,
    y_ptr,
    I,  # noqa: E741 - the intermediate size, as in the kernel docstring
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    WEIGHT: tl.constexpr,
    EVEN_K: tl.constexpr,
    INTERPRETED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (i, r): silu(gate) * up for outputs i*BLOCK_N.. of row r of x, from gate_up's weight rows
    j (gate) and I + j (up). gate and up are rounded to x's dtype, then the SiLU and the product, as
    the eager linear and silu_and_mul round them. No K split: the epilogue needs whole sums."""
    wait_for_previous_kernel(PDL)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < I
    gate_rows = w_ptr + tl.minimum(cols, I - 1)[:, None].to(tl.int64) * stride_wn  # as _dense_gemv_kernel
    up_rows = gate_rows + I.to(tl.int64) * stride_wn
    x_row = x_ptr + tl.program_id(1) * stride_xm
    acc_gate = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    k_full = K // BLOCK_K * BLOCK_K
    for k0 in range(0, k_full, BLOCK_K):
        k0 = tl.multiple_of(k0, BLOCK_K)
        acc_gate, acc_up = _gated_step(
            acc_gate, acc_up, gate_rows, up_rows, x_row, k0, K, False, WEIGHT, BLOCK_N, BLOCK_K
        )
    if not EVEN_K:
        acc_gate, acc_up = _gated_step(
            acc_gate, acc_up, gate_rows, up_rows, x_row, k_full, K, True, WEIGHT, BLOCK_N, BLOCK_K
        )
    gate = tl.sum(acc_gate, axis=1)
    up = tl.sum(acc_up, axis=1)
    if WEIGHT != "float":  # per-channel scales of the gate rows and of the matching up rows
        gate = gate * tl.load(scale_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        up = up * tl.load(scale_ptr + I + cols, mask=col_ok, other=0.0).to(tl.float32)
    dtype = y_ptr.dtype.element_ty
    gate = _to_dtype(gate, dtype, INTERPRETED).to(tl.float32)
    up = _to_dtype(up, dtype, INTERPRETED).to(tl.float32)
    tl.store(y_ptr + tl.program_id(1) * stride_ym + cols, _silu_times_up(gate, up, dtype, INTERPRETED), mask=col_ok)


# -- host side ---------------------------------------------------------------------------------------


def config_for(rows: int) -> dict:
    """The launch settings for a launch of ``rows`` (1..MAX_ROWS) rows of a float weight."""
    return dict(CONFIG[min(r for r in CONFIG if r >= rows)])


def byte_config_for(rows: int, out_features: int, in_features: int, device: torch.device) -> tuple[dict, int | None]:
    """(launch settings, K split or None for choose_split's) of a one-byte weight, by the rules of BYTE_SMALL."""
    if rows > 1:
        return dict(BYTE_FEW_ROWS), None
    if in_features >= BYTE_LONG_ROW:
        sms = multiprocessor_count(device.index or 0) if device.type == "cuda" else 1
        wide = out_features // 8 >= BYTE_LONG_ROW_PROGRAMS_PER_SM * sms
        return dict(BLOCK_N=8 if wide else 4, BLOCK_K=1024, num_warps=4), 1
    if out_features * in_features < BYTE_LARGE_LAYER:
        return dict(BYTE_SMALL), None
    return dict(BYTE_LARGE), None


def choose_split(tiles: int, in_features: int, block_k: int, device: torch.device) -> int:
    """K slices per output tile: enough programs for every multiprocessor (narrow outputs such as
    o_proj and down_proj have a few hundred tiles for 132 SMs), none shorter than MIN_TILES_PER_SPLIT,
    none longer than MAX_K_PER_SPLIT."""
    if device.type != "cuda":
        return 1
    wanted = PROGRAMS_PER_SM * multiprocessor_count(device.index or 0)
    split = max(math.ceil(wanted / tiles), math.ceil(in_features / MAX_K_PER_SPLIT))
    return max(1, min(split, in_features // (block_k * MIN_TILES_PER_SPLIT)))


def _check_weight(weight: torch.Tensor, dtype: torch.dtype) -> tuple[int, int]:
    if weight.dim() != 2 or weight.stride(1) != 1:
        raise ValueError(
            f"weight: expected a row-contiguous [out, in] matrix, got shape {tuple(weight.shape)} "
            f"strides {tuple(weight.stride())}"
        )
    if weight.dtype != dtype:
        raise ValueError(f"weight: dtype {weight.dtype} differs from the input's {dtype}")
    return weight.shape


def _check_input(name: str, x: torch.Tensor, width: int) -> torch.Tensor:
    """x [..., width] -> 2-D rows with a unit-stride last dimension."""
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name}: dtype {x.dtype} not supported; use float16, bfloat16 or float32")
    if x.dim() == 0 or x.shape[-1] != width:
        raise ValueError(f"{name}: last dimension {tuple(x.shape)[-1:]} must be {width} (the weight's in_features)")
    rows = x.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(rows, weight, scale, bias, y, *, weight_kind, config, split_k):
    """One launch for up to MAX_ROWS rows (rows and y are matching row slices); ``weight`` float, or the
    bytes (uint8 view) of a one-byte weight with its per-channel ``scale``."""
    m = rows.shape[0]
    out_features, in_features = weight.shape
    if weight_kind == "float":
        cfg, rule_split = config_for(m), None
    else:
        cfg, rule_split = byte_config_for(m, out_features, in_features, rows.device)
    if config:  # a benchmark's settings: the split rule of the float weights unless it names one
        cfg, rule_split = {**cfg, **config}, None
    block_n, block_k = cfg["BLOCK_N"], cfg["BLOCK_K"]
    tiles = triton.cdiv(out_features, block_n)
    if split_k is None:
        split_k = rule_split or choose_split(tiles, in_features, block_k, rows.device)
    k_per_split, split_k = k_slices(in_features, split_k, block_k)
    part, counters = split_partials(y, split_k, tiles)
    bias_arg = bias if bias is not None else weight
    pdl = pdl_enabled(rows.device)
    _dense_gemv_kernel[(tiles, split_k)](
        rows,
        weight,
        scale if scale is not None else weight,
        bias_arg,
        y,
        part,
        counters if counters is not None else y,
        out_features,
        in_features,
        k_per_split,
        rows.stride(0),
        weight.stride(0),
        y.stride(0),
        ROWS=m,
        WEIGHT=weight_kind,
        HAS_BIAS=bias is not None,
        EVEN_K=in_features % block_k == 0,
        SPLIT=split_k > 1,
        SERIAL=counters is not None,
        INTERPRETED=not rows.is_cuda,
        PDL=pdl,
        **cfg,
        **launch_options(pdl),
    )
    if split_k > 1 and counters is None:  # captured before the counters existed: a second launch
        sum_splits(part, bias, y)


def _run(rows, weight, scale, bias, leading_shape, *, weight_kind, config, split_k):
    out_features = weight.shape[0]
    check_bias(bias, out_features)
    y = torch.empty(rows.shape[0], out_features, dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], MAX_ROWS):
        stop = start + MAX_ROWS
        _launch(
            rows[start:stop],
            weight,
            scale,
            bias,
            y[start:stop],
            weight_kind=weight_kind,
            config=config,
            split_k=split_k,
        )
    return y.view(*leading_shape, out_features)


def dense_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: dict | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    """F.linear(x, weight, bias) for a few rows: x [..., in] -> [..., out] in x's dtype.

    Keyword-only overrides, for benchmarks: ``config`` (BLOCK_N, BLOCK_K, num_warps), ``split_k``.
    """
    rows = _check_input("x", x, weight.shape[-1])
    _check_weight(weight, x.dtype)
    return _run(rows, weight, None, bias, x.shape[:-1], weight_kind="float", config=config, split_k=split_k)


def byte_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: dict | None = None,
    split_k: int | None = None,
) -> torch.Tensor:
    """x @ (qweight * scale[:, None])^T (+ bias) for a few rows, qweight int8 or float8_e4m3fn [out, in] with
    one float scale per output channel (quantization/formats.py's int8 and fp8): x [..., in] -> [..., out]
    in x's dtype, x never quantized. Overrides as for `dense_linear`."""
    rows = _check_input("x", x, qweight.shape[-1])
    kind = _check_byte_weight(qweight, scale)
    return _run(
        rows, qweight.view(torch.uint8), scale, bias, x.shape[:-1], weight_kind=kind, config=config, split_k=split_k
    )


def _check_byte_weight(qweight: torch.Tensor, scale: torch.Tensor) -> str:
    if qweight.dtype not in BYTE_WEIGHTS:
        raise ValueError(f"qweight: dtype {qweight.dtype} is not a one-byte weight; use int8 or float8_e4m3fn")
    _check_weight(qweight, qweight.dtype)
    if tuple(scale.shape) != (qweight.shape[0],) or scale.stride(0) != 1:
        raise ValueError(
            f"scale: expected a contiguous [{qweight.shape[0]}] (one per output), got {tuple(scale.shape)}"
        )
    return BYTE_WEIGHTS[qweight.dtype]


def dense_gate_up_silu(x: torch.Tensor, weight: torch.Tensor, *, config: dict | None = None) -> torch.Tensor:
    """silu(gate) * up of F.linear(x, weight) with weight [2 * inter, in] (gate rows first, as the
    MLP's fused gate_up_proj): x [..., in] -> [..., inter], without writing gate_up out. Every row of x
    re-reads the weight (a program column per row): meant for decode's one row. ``config`` overrides
    GATED_CONFIG, for benchmarks."""
    rows = _check_input("x", x, weight.shape[-1])
    _check_weight(weight, x.dtype)
    return _gated(rows, weight, None, x.shape[:-1], "float", {**GATED_CONFIG, **(config or {})})


def byte_gate_up_silu(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, *, config: dict | None = None
) -> torch.Tensor:
    """`dense_gate_up_silu` of a one-byte weight (as `byte_linear`'s): the gate and up sums scaled per channel,
    then rounded to x's dtype as the quantized linear's output is. ``config`` overrides BYTE_GATED_CONFIG."""
    rows = _check_input("x", x, qweight.shape[-1])
    kind = _check_byte_weight(qweight, scale)
    cfg = {**BYTE_GATED_CONFIG, **(config or {})}
    return _gated(rows, qweight.view(torch.uint8), scale, x.shape[:-1], kind, cfg)


def _gated(rows, weight, scale, leading_shape, weight_kind, cfg):
    if weight.shape[0] % 2:
        raise ValueError(f"weight: {weight.shape[0]} rows; gate_up needs an even count (gate then up)")
    inter, in_features = weight.shape[0] // 2, weight.shape[1]
    y = torch.empty(rows.shape[0], inter, dtype=rows.dtype, device=rows.device)
    if rows.shape[0]:
        pdl = pdl_enabled(rows.device)
        _gate_up_silu_kernel[(triton.cdiv(inter, cfg["BLOCK_N"]), rows.shape[0])](
            rows,
            weight,
            scale if scale is not None else weight,
            y,
            inter,
            in_features,
            rows.stride(0),
            weight.stride(0),
            y.stride(0),
            WEIGHT=weight_kind,
            EVEN_K=in_features % cfg["BLOCK_K"] == 0,
            INTERPRETED=not rows.is_cuda,
            PDL=pdl,
            **cfg,
            **launch_options(pdl),
        )
    return y.view(*leading_shape, inter)
