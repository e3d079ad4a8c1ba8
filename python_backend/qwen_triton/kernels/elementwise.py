"""The element-wise parts of a decoder layer (Triton language kernels): add + RMSNorm, RMSNorm,
rotary embedding (rotate-half / NeoX form), rotary embedding together with the write of the new K
and V into a float paged KV cache, and SiLU(gate) * up. Each is one launch for any number of tokens,
prefill and decode alike.

Why hand-written: in eager torch these parts are about a thousand small kernels per 7B prefill
(RMSNorm alone is seven), and launching them makes a 512-token prefill host-bound; torch.compile
recompiles on new shapes and costs start-up time. The token count reaches these kernels through the
grid only (sizes and strides that are fixed per model are constexprs), so one compiled kernel per
model serves every batch size and prompt length, and every CUDA graph size.

Numerics: each kernel repeats the eager functions in ``qwen_triton.layers.ops`` step by step, in
float32, rounding to the model dtype exactly where the eager code produces a tensor of that dtype
(the ``x + residual`` sum, the normalised rows, cos/sin, each product of the rotation, the SiLU).
What keeps the GPU's code to that rounding order:
- launches pass ``enable_fp_fusion=False``: otherwise the compiler may contract ``a * b + c`` into
  one FMA (one rounding instead of two), which eager torch, one op per kernel, never does;
- divisions use ``tl.math.div_rn`` (IEEE division, as torch's kernels): Triton's ``/`` on float32
  is the approximate ``div.full`` instruction;
- the RMSNorm mean is the sum times float32(1 / n) on CUDA and the sum / n on CPU: torch's own
  mean differs so between the two; SiLU's exp is libdevice's expf on CUDA, the one torch calls.
What cannot match bit for bit: the float32 sum of squares in RMSNorm is added up in another order
than torch's reduction (torch's CPU and CUDA orders differ from each other too), so a row's variance
can differ in its last bit, and then its normalised values by one unit of the dtype now and then.

Rounding float32 -> bfloat16 is done with integer operations (round to nearest even, torch's own
formula) instead of ``.to(tl.bfloat16)``: the GPU's conversion rounds the same way, but Triton's CPU
interpreter, which the tests use, truncates (seen with triton 3.9), and one code path for both keeps
the tests meaningful for the GPU. float16 uses ``.to`` (round to nearest even on both).

Launch cost: see ``_Launcher``.

Requirements on the tensors: the last dimension unit-stride (rows and heads may have any stride:
q and k are column slices of the fused qkv output); zero rows are fine.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import interpreter_enabled
from .common import round_to_dtype
from .pdl import launch_options, pdl_enabled, wait_for_previous_kernel

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# One program normalises a whole row held in registers; 16 warps keep that at <= 32 float32
# values a thread at this size. Qwen2.5 goes up to 8192 (72B).
MAX_HIDDEN = 16384
# Columns of SiLU*up per program: 4 warps, 8 values a thread. With the row index in the grid's first
# axis even one decode token spreads over ~19 programs (Qwen2.5-7B, 18944 columns).
SILU_BLOCK = 1024


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    eps,
    n_float,
    inv_n,
    STRIDE_X: tl.constexpr,
    STRIDE_R: tl.constexpr,
    STRIDE_O: tl.constexpr,
    STRIDE_S: tl.constexpr,
    N_COLS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    MEAN_BY_RECIPROCAL: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N_COLS
    x = tl.load(x_ptr + row * STRIDE_X + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        dtype = sum_ptr.dtype.element_ty
        r = tl.load(res_ptr + row * STRIDE_R + cols, mask=mask, other=0.0).to(tl.float32)
        # The sum in the model dtype, as `x + residual` is in eager torch. Every input of this row
        # is loaded before this store, so `sum_ptr` may be `res_ptr` (the residual updated in place).
        h = round_to_dtype(x + r, dtype)
        tl.store(sum_ptr + row * STRIDE_S + cols, h, mask=mask)
        x = h.to(tl.float32)
    else:
        dtype = x_ptr.dtype.element_ty
    total = tl.sum(x * x, axis=0)  # masked columns are 0 and add nothing
    if MEAN_BY_RECIPROCAL:
        variance = total * inv_n  # torch's CUDA mean: sum * float32(1 / n) (MeanOps)
    else:
        variance = tl.math.div_rn(total, n_float)  # torch's CPU mean: sum / n
    # rsqrt: the GPU's rsqrt.approx, as torch's CUDA rsqrtf; 1 / sqrt in the interpreter, as torch on CPU.
    normed = round_to_dtype(x * tl.math.rsqrt(variance + eps), dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # weight * normed in the output dtype: one rounding of a product that is exact in float32
    # when both are 16-bit floats.
    tl.store(out_ptr + row * STRIDE_O + cols, round_to_dtype(w * normed, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _convert(x, dtype: tl.constexpr, target: tl.constexpr):
    """``x`` (of ``dtype``) as ``target``, as torch's ``.to(target)`` converts it: exactly through
    float32 (which holds every float16 and bfloat16 value), then rounded to nearest even."""
    if dtype == target:
        return x
    else:
        return round_to_dtype(x.to(tl.float32), target)


@triton.jit
def _cos_sin(
    cos_ptr,
    sin_ptr,
    pos_ptr,
    token,
    dims,
    dim_ok,
    STRIDE_COS: tl.constexpr,
    STRIDE_SIN: tl.constexpr,
    HALF: tl.constexpr,
    dtype: tl.constexpr,
):
    """(cos1, sin1, cos2, sin2): the first and second halves of the token's cos/sin rows. The tables
    are float32; eager torch rounds them to the model dtype before multiplying, so these are rounded
    to ``dtype`` (and kept in float32 for the arithmetic)."""
    position = tl.load(pos_ptr + token).to(tl.int64)
    cos_row = cos_ptr + position * STRIDE_COS + dims
    sin_row = sin_ptr + position * STRIDE_SIN + dims
    cos1 = round_to_dtype(tl.load(cos_row, mask=dim_ok, other=0.0).to(tl.float32), dtype).to(tl.float32)
    cos2 = round_to_dtype(tl.load(cos_row + HALF, mask=dim_ok, other=0.0).to(tl.float32), dtype).to(tl.float32)
    sin1 = round_to_dtype(tl.load(sin_row, mask=dim_ok, other=0.0).to(tl.float32), dtype).to(tl.float32)
    sin2 = round_to_dtype(tl.load(sin_row + HALF, mask=dim_ok, other=0.0).to(tl.float32), dtype).to(tl.float32)
    return cos1, sin1, cos2, sin2


@triton.jit
def _heads(dims, dim_ok, NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr):
    """(head index [HEADS_PAD, 1], mask [HEADS_PAD, HALF_PAD]): the first-half columns of a token's
    heads."""
    heads = tl.arange(0, HEADS_PAD)[:, None]
    return heads, (heads < NUM_HEADS) & dim_ok[None, :]


@triton.jit
def _rotated(ptr1, mask, cos1, sin1, cos2, sin2, HALF: tl.constexpr):
    """The heads whose first halves ``ptr1`` points at, rotated: (first, second) halves in their dtype.
    With x = (x1, x2) the eager code computes x * cos + (-x2, x1) * sin, rounding each product and the
    sum to the dtype."""
    x1 = tl.load(ptr1, mask=mask, other=0.0)
    x2 = tl.load(ptr1 + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    x2 = x2.to(tl.float32)
    # round(-a) == -round(a), so round(x1*c) + round(-x2*s) is round(x1*c) - round(x2*s).
    a = round_to_dtype(x1 * cos1[None, :], dtype).to(tl.float32)
    b = round_to_dtype(x2 * sin1[None, :], dtype).to(tl.float32)
    c = round_to_dtype(x2 * cos2[None, :], dtype).to(tl.float32)
    d = round_to_dtype(x1 * sin2[None, :], dtype).to(tl.float32)
    return round_to_dtype(a - b, dtype), round_to_dtype(c + d, dtype)


@triton.jit
def _rotate_heads(
    base,
    cos1,
    sin1,
    cos2,
    sin2,
    dims,
    dim_ok,
    STRIDE_H: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
):
    """Rotate the NUM_HEADS heads of one token in place."""
    heads, mask = _heads(dims, dim_ok, NUM_HEADS, HEADS_PAD)
    ptr1 = base + heads * STRIDE_H + dims[None, :]
    first, second = _rotated(ptr1, mask, cos1, sin1, cos2, sin2, HALF)
    tl.store(ptr1, first, mask=mask)
    tl.store(ptr1 + HALF, second, mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    slot_ptr,
    k_cache_ptr,
    v_cache_ptr,
    STRIDE_QT: tl.constexpr,
    STRIDE_QH: tl.constexpr,
    STRIDE_KT: tl.constexpr,
    STRIDE_KH: tl.constexpr,
    STRIDE_VT: tl.constexpr,
    STRIDE_VH: tl.constexpr,
    STRIDE_COS: tl.constexpr,
    STRIDE_SIN: tl.constexpr,
    STRIDE_KC_SLOT: tl.constexpr,
    STRIDE_KC_HEAD: tl.constexpr,
    STRIDE_VC_SLOT: tl.constexpr,
    STRIDE_VC_HEAD: tl.constexpr,
    NUM_Q_HEADS: tl.constexpr,
    Q_HEADS_PAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    WRITE_KV: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous_kernel(PDL)
    # One program per token: the token's cos/sin row is read once for all its q and k heads. With
    # WRITE_KV, the rotated k and the token's v also go to its slot of the paged cache (the v / slot /
    # cache arguments are read only then).
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, HALF_PAD)
    dim_ok = dims < HALF
    cos1, sin1, cos2, sin2 = _cos_sin(
        cos_ptr, sin_ptr, pos_ptr, token, dims, dim_ok, STRIDE_COS, STRIDE_SIN, HALF, q_ptr.dtype.element_ty
    )
    _rotate_heads(
        q_ptr + token * STRIDE_QT, cos1, sin1, cos2, sin2, dims, dim_ok, STRIDE_QH, NUM_Q_HEADS, Q_HEADS_PAD, HALF
    )
    if WRITE_KV:
        _rotate_k_and_write_kv(
            k_ptr,
            v_ptr,
            slot_ptr,
            k_cache_ptr,
            v_cache_ptr,
            token,
            cos1,
            sin1,
            cos2,
            sin2,
            dims,
            dim_ok,
            STRIDE_KT,
            STRIDE_KH,
            STRIDE_VT,
            STRIDE_VH,
            STRIDE_KC_SLOT,
            STRIDE_KC_HEAD,
            STRIDE_VC_SLOT,
            STRIDE_VC_HEAD,
            NUM_KV_HEADS,
            KV_HEADS_PAD,
            HALF,
        )
    else:
        _rotate_heads(
            k_ptr + token * STRIDE_KT, cos1, sin1, cos2, sin2, dims, dim_ok, STRIDE_KH, NUM_KV_HEADS, KV_HEADS_PAD, HALF
        )


@triton.jit
def _rotate_k_and_write_kv(
    k_ptr,
    v_ptr,
    slot_ptr,
    k_cache_ptr,
    v_cache_ptr,
    token,
    cos1,
    sin1,
    cos2,
    sin2,
    dims,
    dim_ok,
    STRIDE_KT: tl.constexpr,
    STRIDE_KH: tl.constexpr,
    STRIDE_VT: tl.constexpr,
    STRIDE_VH: tl.constexpr,
    STRIDE_KC_SLOT: tl.constexpr,
    STRIDE_KC_HEAD: tl.constexpr,
    STRIDE_VC_SLOT: tl.constexpr,
    STRIDE_VC_HEAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
):
    """Rotate the token's k heads in place and store them, and its v, at the token's cache slot,
    converted to each cache's dtype."""
    dtype = k_ptr.dtype.element_ty
    heads, mask = _heads(dims, dim_ok, NUM_KV_HEADS, KV_HEADS_PAD)
    cols = dims[None, :]
    # int64: a slot times its stride passes 2**31 in caches of a few GiB.
    slot = tl.load(slot_ptr + token).to(tl.int64)
    k1 = k_ptr + token * STRIDE_KT + heads * STRIDE_KH + cols
    k_first, k_second = _rotated(k1, mask, cos1, sin1, cos2, sin2, HALF)
    tl.store(k1, k_first, mask=mask)
    tl.store(k1 + HALF, k_second, mask=mask)
    k_cache_dtype = k_cache_ptr.dtype.element_ty
    kc1 = k_cache_ptr + slot * STRIDE_KC_SLOT + heads * STRIDE_KC_HEAD + cols
    tl.store(kc1, _convert(k_first, dtype, k_cache_dtype), mask=mask)
    tl.store(kc1 + HALF, _convert(k_second, dtype, k_cache_dtype), mask=mask)

    v_cache_dtype = v_cache_ptr.dtype.element_ty
    v1 = v_ptr + token * STRIDE_VT + heads * STRIDE_VH + cols
    vc1 = v_cache_ptr + slot * STRIDE_VC_SLOT + heads * STRIDE_VC_HEAD + cols
    tl.store(vc1, _convert(tl.load(v1, mask=mask, other=0.0), dtype, v_cache_dtype), mask=mask)
    tl.store(vc1 + HALF, _convert(tl.load(v1 + HALF, mask=mask, other=0.0), dtype, v_cache_dtype), mask=mask)


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,
    out_ptr,
    STRIDE_IN: tl.constexpr,
    STRIDE_OUT: tl.constexpr,
    N_COLS: tl.constexpr,
    BLOCK: tl.constexpr,
    LIBDEVICE_EXP: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous_kernel(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N_COLS
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_up_ptr + row * STRIDE_IN + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * STRIDE_IN + N_COLS + cols, mask=mask, other=0.0).to(tl.float32)
    if LIBDEVICE_EXP:
        # libdevice's expf, the one torch's CUDA silu calls; tl.exp would be the faster, less
        # accurate ex2.approx.
        e = libdevice.exp(-gate)
    else:
        # The interpreter has no libdevice, and numpy's float32 exp is off by several units in the
        # last place where torch's CPU exp is nearly always correctly rounded: float64, then round.
        e = tl.exp(-gate.to(tl.float64)).to(tl.float32)
    # F.silu: x / (1 + exp(-x)) in float32, rounded to the dtype; then times up, rounded again.
    silu = round_to_dtype(tl.math.div_rn(gate, 1.0 + e), dtype).to(tl.float32)
    tl.store(out_ptr + row * STRIDE_OUT + cols, round_to_dtype(silu * up, dtype), mask=mask)


# -- launchers -------------------------------------------------------------------------------------


class _Launcher:
    """``kernel[grid](*args, num_warps=..., enable_fp_fusion=False)`` with less host work on repeats.

    A prefill is paced by the host launching kernels, and ``JITFunction.run`` works out the kernel's
    specialization again at every launch (binding the arguments, formatting the compile options into
    a cache-key string). So the compiled kernel that the first launch returns is kept under a key of
    everything it was specialized on, and later launches call it directly through
    ``CompiledKernel[grid](*args)``, the launcher JITFunction.run itself ends in. Measured on an H100
    host with triton 3.6, one RMSNorm launch: 18.2 us through ``kernel[grid]``, 14.5 us here (the
    whole ``rms_norm`` wrapper 22.8 us; the eager RMSNorm's seven ops 71 us).
    The key: each tensor's dtype, 16-byte alignment (Triton's only pointer specialization) and
    device, and the value of every other argument. The kernels take no runtime integers (Triton would
    specialize those on their value too): sizes and strides are constexprs. ``args`` are every kernel
    parameter in order, constexprs included, as JITFunction.run passes them on. Under the interpreter
    there is no compiled kernel and every launch goes through ``kernel[grid]``; so does every launch
    after a direct one failed (a Triton whose CompiledKernel takes other arguments).
    Every kernel launched here ends in a ``PDL`` constexpr, which this appends (see pdl.py).
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled: dict[tuple, object] = {}
        self.direct = not interpreter_enabled()

    def __call__(self, grid: tuple[int, int, int], args: tuple, num_warps: int) -> None:
        pdl = pdl_enabled(args[0].device)
        args = (*args, pdl)
        key = None
        if self.direct:
            key = (
                num_warps,
                *[
                    (a.dtype, a.data_ptr() % 16 == 0, a.get_device()) if isinstance(a, torch.Tensor) else a
                    for a in args
                ],
            )
            compiled = self.compiled.get(key)
            if compiled is not None:
                try:
                    compiled[grid](*args)
                    return
                except (TypeError, ValueError, AttributeError):
                    # Raised while parsing the arguments, before anything ran: the JIT path below
                    # launches instead, now and from now on.
                    self.direct, key = False, None
        compiled = self.kernel[grid](*args, num_warps=num_warps, enable_fp_fusion=False, **launch_options(pdl))
        if key is not None and hasattr(compiled, "__getitem__"):
            self.compiled[key] = compiled


_launch_rms_norm = _Launcher(_rms_norm_kernel)
_launch_rotary = _Launcher(_rotary_kernel)
_launch_silu_and_mul = _Launcher(_silu_and_mul_kernel)


def _check_dtype(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in _DTYPES:
        raise ValueError(f"{name}: dtype {tensor.dtype} not supported; use float16, bfloat16 or float32")


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a contiguous copy where its last axis is not unit-stride (the kernels index it densely)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """2-D [rows, hidden] view with a unit-stride last dimension (a copy only if there is none)."""
    _check_dtype(name, tensor)
    if tensor.dim() == 2 and tensor.stride(1) == 1:
        return tensor
    if tensor.dim() == 0:
        raise ValueError(f"{name}: expected [..., hidden], got a scalar")
    tensor = _unit_stride(tensor)
    return tensor.reshape(-1, tensor.shape[-1])


@functools.cache
def _norm_constants(hidden: int):
    """(block, warps, float32(1 / hidden)) of a hidden size."""
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} > {MAX_HIDDEN}: one row no longer fits one program")
    block = triton.next_power_of_2(hidden)
    # 1 / n rounded once to float32, as torch's CUDA mean computes its factor (a float division).
    inv_n = (torch.tensor(1.0, dtype=torch.float32) / torch.tensor(float(hidden), dtype=torch.float32)).item()
    return block, (4 if block <= 2048 else 8 if block <= 4096 else 16), inv_n


def _norm(x2, res2, weight, eps, out_dtype, sum2):
    rows, hidden = x2.shape
    if weight.shape != (hidden,):
        raise ValueError(f"weight: expected shape ({hidden},), got {tuple(weight.shape)}")
    _check_dtype("weight", weight)
    weight = _unit_stride(weight)
    out = torch.empty((rows, hidden), dtype=out_dtype, device=x2.device)
    if rows == 0:
        return out
    block, warps, inv_n = _norm_constants(hidden)
    has_residual = res2 is not None
    if not has_residual:
        res2 = sum2 = x2  # placeholders: HAS_RESIDUAL=False never touches them
    _launch_rms_norm(
        (rows, 1, 1),
        (
            x2,
            res2,
            weight,
            out,
            sum2,
            float(eps),
            float(hidden),
            inv_n,
            x2.stride(0),
            res2.stride(0),
            out.stride(0),
            sum2.stride(0),
            hidden,
            has_residual,
            x2.is_cuda,
            block,
        ),
        warps,
    )
    return out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``layers.ops.rms_norm`` in one launch: x [..., hidden] -> a new tensor of the same shape in the
    dtype torch gives ``weight * x`` (the model dtype when the weight has it)."""
    x2 = _rows("x", x)
    out_dtype = x.dtype if weight.dtype == x.dtype else torch.promote_types(weight.dtype, x.dtype)
    out = _norm(x2, None, weight, eps, out_dtype, None)
    return out if x2 is x else out.view(x.shape)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """``layers.ops.add_rms_norm`` in one launch: returns (norm(x + residual), x + residual).

    In place: where ``residual`` is a 2-D tensor with unit-stride rows in the sum's dtype (always so
    in models/qwen2.py), ``x + residual`` is written into ``residual`` itself and that tensor is returned as
    the second value: the residual stream stays one buffer through the layers instead of a new
    allocation per norm (the sum is written once either way). The caller's old residual values are
    gone after the call: pass a residual you will not read again (models/qwen2.py replaces its residual
    with the returned one). Otherwise the sum goes to a new tensor. ``x`` is never written.
    """
    if x.shape != residual.shape:
        raise ValueError(f"x/residual: shapes differ, {tuple(x.shape)} and {tuple(residual.shape)}")
    sum_dtype = x.dtype if residual.dtype == x.dtype else torch.promote_types(x.dtype, residual.dtype)
    x2, res2 = _rows("x", x), _rows("residual", residual)
    if res2 is residual and residual.dtype == sum_dtype:
        new_residual = residual
    else:
        new_residual = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
    out_dtype = sum_dtype if weight.dtype == sum_dtype else torch.promote_types(weight.dtype, sum_dtype)
    out = _norm(x2, res2, weight, eps, out_dtype, new_residual.view(-1, x.shape[-1]))
    return (out if x2 is x else out.view(x.shape)), new_residual


def _check_rotary(q, k, cos_table, sin_table, positions) -> None:
    """ValueError naming the argument unless q [tokens, heads, dim], k [tokens, kv_heads, dim] of one
    supported dtype, float [max_positions, dim] tables and positions [tokens]."""
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q/k: expected [tokens, heads, dim] and [tokens, kv_heads, dim], got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    tokens, _, dim = q.shape
    if dim % 2:
        raise ValueError(f"q/k: head dim {dim} must be even for the rotate-half form")
    if q.dtype != k.dtype:
        raise ValueError(f"q/k: dtypes differ, {q.dtype} and {k.dtype}")
    _check_dtype("q", q)
    for name, table in (("cos_table", cos_table), ("sin_table", sin_table)):
        if table.dim() != 2 or table.shape[1] != dim or not table.is_floating_point():
            raise ValueError(
                f"{name}: expected a float [max_positions, {dim}] table, got {table.dtype} {tuple(table.shape)}"
            )
    if positions.shape != (tokens,):
        raise ValueError(f"positions: expected shape ({tokens},), got {tuple(positions.shape)}")


def _rotary_sizes(q, k):
    """The rotary kernel's size constexprs: the head counts and half the head dim, each followed by the
    power of 2 the kernel's blocks are padded to."""
    num_heads, num_kv_heads, half = q.shape[1], k.shape[1], q.shape[2] // 2
    return (
        num_heads,
        triton.next_power_of_2(num_heads),
        num_kv_heads,
        triton.next_power_of_2(num_kv_heads),
        half,
        triton.next_power_of_2(half),
    )


def rotary(q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor):
    """``layers.ops.rotary`` in one launch, in place: rotates q [tokens, heads, dim] and
    k [tokens, kv_heads, dim] by the cos/sin rows [max_positions, dim] at each token's position and
    returns (q, k), the same tensors. q and k may be strided views (the column slices of the fused
    qkv output); only their last dimension must be unit-stride, else they are copied first and the
    copies are rotated and returned. Positions must be < max_positions (not checked: that would
    need a device sync)."""
    _check_rotary(q, k, cos_table, sin_table, positions)
    q, k = _unit_stride(q), _unit_stride(k)
    tokens = q.shape[0]
    if tokens == 0:
        return q, k
    cos_table, sin_table, positions = _unit_stride(cos_table), _unit_stride(sin_table), _unit_stride(positions)
    # No cache write: q stands in for the v and cache pointers and positions for the slots, never read.
    _launch_rotary(
        (tokens, 1, 1),
        (
            q,
            k,
            q,
            cos_table,
            sin_table,
            positions,
            positions,
            q,
            q,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            0,
            0,
            cos_table.stride(0),
            sin_table.stride(0),
            0,
            0,
            0,
            0,
            *_rotary_sizes(q, k),
            False,
        ),
        4,
    )
    return q, k


def _cache_slots(name: str, cache: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A float cache [num_blocks, block_size, kv_heads, head_dim] as [slots, kv_heads, head_dim], the
    view the slot numbers index (block * block_size + offset). Never a copy: the writes must land in
    the cache itself, so a cache whose blocks cannot be viewed that way is refused."""
    if cache.dim() != 4 or cache.shape[2:] != k.shape[1:]:
        raise ValueError(
            f"{name}: expected [num_blocks, block_size, {k.shape[1]}, {k.shape[2]}], got {tuple(cache.shape)}"
        )
    if cache.dtype not in _DTYPES:
        raise ValueError(
            f"{name}: dtype {cache.dtype} is not a float cache (float16, bfloat16, float32); "
            f"quantized caches are written by layers.kv_cache.write_quantized_kv"
        )
    try:
        slots = cache.view(-1, *k.shape[1:])
    except RuntimeError:
        slots = None
    if slots is None or slots.stride(-1) != 1:
        raise ValueError(
            f"{name}: strides {cache.stride()} do not make one [slots, heads, dim] view with unit-stride rows"
        )
    return slots


def rotary_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
):
    """``layers.ops.rotary_and_write_kv`` in one launch: ``rotary`` (q and k rotated in place, the same
    contract) and the rotated k and the unchanged v [tokens, kv_heads, dim] stored at each token's slot
    of the float caches [num_blocks, block_size, kv_heads, dim], converted to each cache's dtype as
    ``k.to(k_cache.dtype)`` converts. Returns (q, k). Saves the two ``index_copy_`` launches that
    wrote the cache after the rotary kernel: a couple of microseconds per layer in a batch-1 decode step.

    slot_mapping: int64 [tokens]. Slots must lie in the cache (not checked: a device sync); tokens that
    share a slot (CUDA-graph padding rows all write one scratch slot) leave one of their values there,
    which one unspecified, as ``index_copy_`` does."""
    _check_rotary(q, k, cos_table, sin_table, positions)
    if v.shape != k.shape or v.dtype != k.dtype:
        raise ValueError(
            f"v: expected k's shape {tuple(k.shape)} and dtype {k.dtype}, got {tuple(v.shape)} and {v.dtype}"
        )
    k_slots, v_slots = _cache_slots("k_cache", k_cache, k), _cache_slots("v_cache", v_cache, k)
    tokens = q.shape[0]
    if slot_mapping.shape != (tokens,) or slot_mapping.dtype != torch.int64:
        raise ValueError(
            f"slot_mapping: expected int64 of shape ({tokens},), got {slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        )
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    if tokens == 0:
        return q, k
    cos_table, sin_table, positions = _unit_stride(cos_table), _unit_stride(sin_table), _unit_stride(positions)
    slot_mapping = _unit_stride(slot_mapping)
    _launch_rotary(
        (tokens, 1, 1),
        (
            q,
            k,
            v,
            cos_table,
            sin_table,
            positions,
            slot_mapping,
            k_slots,
            v_slots,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            cos_table.stride(0),
            sin_table.stride(0),
            k_slots.stride(0),
            k_slots.stride(1),
            v_slots.stride(0),
            v_slots.stride(1),
            *_rotary_sizes(q, k),
            True,
        ),
        4,
    )
    return q, k


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``layers.ops.silu_and_mul`` in one launch: gate_up [..., 2 * inter] (gate first, up second)
    -> silu(gate) * up [..., inter], a new tensor."""
    x2 = _rows("gate_up", gate_up)
    rows, width = x2.shape
    if width % 2:
        raise ValueError(f"gate_up: last dimension {width} must be even (gate and up halves)")
    inter = width // 2
    out = torch.empty((rows, inter), dtype=gate_up.dtype, device=gate_up.device)
    if rows and inter:
        block = min(SILU_BLOCK, triton.next_power_of_2(inter))
        _launch_silu_and_mul(
            (rows, triton.cdiv(inter, block), 1), (x2, out, x2.stride(0), out.stride(0), inter, block, x2.is_cuda), 4
        )
    return out if x2 is gate_up else out.view(*gate_up.shape[:-1], inter)
