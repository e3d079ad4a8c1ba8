"""Decode attention read straight from the paged KV cache (Triton language kernel).

One new query token per sequence. The KV cache is never gathered: each program walks the block
table of its sequence and loads K/V rows in place, so the bytes moved are the KV bytes that are
attended to, once, plus the queries and outputs.

Work split: one program per (sequence, kv head, split). A program handles all ``group`` query
heads that share its kv head (GQA), so each K/V row is read once for the whole group; the group is
padded to 16 rows so the scores and the weighted sum run as tensor-core dots. With few
sequences the kv positions are also split across programs (flash-decoding): every split keeps a
running max / sum / unnormalised output, and a second small kernel combines the splits.

The number of splits depends only on host-side shapes (batch, kv heads, block-table width), never
on the context lengths held on the device: the launch is the same for every step, so a CUDA graph
can capture it, and the splits share out the actual context lengths inside the kernel.

Sliding window: with ``window > 0`` a query attends to the last ``window`` positions plus the first
``sinks`` positions. The kernel walks a "virtual" index over just those positions (sinks first,
then the window), so positions outside them cost nothing.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import multiprocessor_count
from .pdl import launch_options, pdl_enabled, wait_for_previous_kernel

_FLOAT_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_QUANT_CACHE_DTYPES = (torch.int8, torch.float8_e4m3fn)
# A split should cover at least this many kv positions: fewer, and the combine step and the
# per-program setup outweigh the bandwidth the extra programs bring.
MIN_POSITIONS_PER_SPLIT = 128
MAX_SPLITS = 64


@triton.jit
def _dequant_values(x, dtype, INT8: tl.constexpr):
    """int8 / fp8 cache values -> dtype (unscaled). int8 goes through the float32 magic number
    (2**23 + 128 + q, one integer add and one float subtract) rather than a conversion
    instruction: conversions run at a quarter of the rate and made int8 KV compute-bound."""
    if INT8:
        return ((x.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0).to(dtype)
    else:
        return x.to(dtype)


@triton.jit
def cache_rows(cache_ptr, block, slot, kv_head, dims, mask, stride_block, stride_slot, stride_head):
    """Rows [positions, dims] of one kv head from a paged cache, each position at (block, slot)."""
    return tl.load(
        cache_ptr + block[:, None] * stride_block + slot[:, None] * stride_slot + kv_head * stride_head + dims[None, :],
        mask=mask,
        other=0.0,
    )


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    scale_log2,
    window,
    sinks,
    num_splits,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ksb,
    stride_kst,
    stride_ksh,
    stride_vsb,
    stride_vst,
    stride_vsh,
    stride_bt,
    stride_ob,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KV_QUANT: tl.constexpr,
    KV_INT8: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous_kernel(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    context_len = tl.load(context_lens_ptr + seq)
    # Attended positions: [0, sink_end) then [window_start, context_len).
    window_start = tl.where(window > 0, tl.maximum(context_len - window, 0), 0)
    sink_end = tl.where(window > 0, tl.minimum(sinks, window_start), 0)
    total = sink_end + context_len - window_start
    chunk = tl.cdiv(tl.cdiv(total, num_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, total)

    rows = tl.arange(0, GROUP_PAD)  # query heads of this kv head
    dims = tl.arange(0, DIM_PAD)
    row_ok = rows < GROUP
    dim_ok = dims < HEAD_DIM
    heads = kv_head * GROUP + rows
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )

    running_max = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    table_row = block_tables_ptr + seq * stride_bt

    for start in range(lo, hi, BLOCK_N):
        virtual = start + tl.arange(0, BLOCK_N)
        valid = virtual < hi
        position = tl.where(virtual < sink_end, virtual, virtual - sink_end + window_start)
        block = tl.load(table_row + position // PAGE_SIZE, mask=valid, other=0).to(tl.int64)
        slot = position % PAGE_SIZE
        kv_mask = valid[:, None] & dim_ok[None, :]
        k = cache_rows(k_cache_ptr, block, slot, kv_head, dims, kv_mask, stride_kb, stride_kt, stride_kh)
        v = cache_rows(v_cache_ptr, block, slot, kv_head, dims, kv_mask, stride_vb, stride_vt, stride_vh)
        if KV_QUANT:
            # int8 / fp8 values are exact in 16-bit floats; the scales are applied to the
            # scores (K) and to the probabilities (V), one multiply per position.
            k = _dequant_values(k, q.dtype, KV_INT8)
            v = _dequant_values(v, q.dtype, KV_INT8)
        scores = tl.dot(q, tl.trans(k))  # [GROUP_PAD, BLOCK_N]
        if KV_QUANT:
            k_scale = tl.load(
                k_scale_ptr + block * stride_ksb + slot * stride_kst + kv_head * stride_ksh, mask=valid, other=0.0
            )
            scores = scores * k_scale[None, :]
        scores = tl.where(valid[None, :], scores * scale_log2, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp2(running_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        if KV_QUANT:
            v_scale = tl.load(
                v_scale_ptr + block * stride_vsb + slot * stride_vst + kv_head * stride_vsh, mask=valid, other=0.0
            )
            probs = probs * v_scale[None, :]
        acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v)
        running_max = new_max

    if SINGLE_SPLIT:
        out = acc / tl.where(running_sum == 0.0, 1.0, running_sum)[:, None]
        tl.store(
            out_ptr + seq * stride_ob + heads[:, None] * stride_oh + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & dim_ok[None, :],
        )
    else:
        # Partials are [batch, heads, splits(, dim)] float32, contiguous.
        part = (seq * NUM_HEADS + heads) * num_splits + split
        tl.store(part_max_ptr + part, running_max, mask=row_ok)
        tl.store(part_sum_ptr + part, running_sum, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None] & dim_ok[None, :])


@triton.jit
def _combine_splits_kernel(
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    out_ptr,
    stride_ob,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous_kernel(PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, DIM_PAD)
    split_ok = splits < NUM_SPLITS
    part = (seq * NUM_HEADS + head) * NUM_SPLITS + splits
    maxes = tl.load(part_max_ptr + part, mask=split_ok, other=float("-inf"))
    sums = tl.load(part_sum_ptr + part, mask=split_ok, other=0.0)
    accs = tl.load(
        part_acc_ptr + part[:, None] * HEAD_DIM + dims[None, :],
        mask=split_ok[:, None] & (dims < HEAD_DIM)[None, :],
        other=0.0,
    )
    overall = tl.max(maxes, axis=0)
    # Empty splits carry max = -inf: weight 0 (and no inf - inf).
    weights = tl.where(maxes == float("-inf"), 0.0, tl.exp2(maxes - overall))
    numerator = tl.sum(weights[:, None] * accs, axis=0)
    denominator = tl.sum(weights * sums, axis=0)
    out = numerator / tl.where(denominator == 0.0, 1.0, denominator)
    tl.store(
        out_ptr + seq * stride_ob + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM
    )


def choose_num_splits(batch: int, num_kv_heads: int, max_positions: int, device: torch.device) -> int:
    """Splits per (sequence, kv head): enough programs to fill the GPU about twice, but no split
    shorter than MIN_POSITIONS_PER_SPLIT at the longest context the block table can hold."""
    if device.type != "cuda":
        return 1
    wanted_programs = 2 * multiprocessor_count(device.index or 0)
    programs = batch * num_kv_heads
    splits = math.ceil(wanted_programs / programs)
    splits = min(splits, max_positions // MIN_POSITIONS_PER_SPLIT, MAX_SPLITS)
    # A power of two: the combine kernel is compiled per split count, and a batch size or table width
    # never seen before must not stop a running server for a compilation (see warm_up_variants).
    return 1 << (max(1, splits).bit_length() - 1)


def warm_up_variants(
    k_cache, v_cache, k_scale=None, v_scale=None, window=0, sinks=0, *, num_heads: int, dtype: torch.dtype
) -> None:
    """Compile, before serving, every kernel variant a decode step outside a CUDA graph can need: each
    power-of-two split count, with block-table widths that Triton specializes differently (1, a
    multiple of 16, other), for queries of `num_heads` heads in `dtype`. Reads only block 0 of the
    cache; writes nothing in it."""
    head_dim = k_cache.shape[3]
    q = torch.zeros(1, num_heads, head_dim, dtype=dtype, device=k_cache.device)
    context_lens = torch.ones(1, dtype=torch.int32, device=k_cache.device)
    for width in (1, 16, 17):
        tables = torch.zeros(1, width, dtype=torch.int32, device=k_cache.device)
        splits = 1
        while splits <= MAX_SPLITS:
            paged_decode_attention(
                q, k_cache, v_cache, tables, context_lens, 1.0, k_scale, v_scale, window, sinks, num_splits=splits
            )
            splits *= 2


def _scale_strides(scale: torch.Tensor | None, cache: torch.Tensor, name: str):
    """(block, slot, kv_head) strides of a KV scale tensor: one float32 scale per token and KV head, the
    layout layers/kv_cache.py writes."""
    expected = tuple(cache.shape[:3])  # num_blocks, block_size, num_kv_heads
    if scale is None:
        raise ValueError(
            f"{name}: a {cache.dtype} KV cache needs its float32 scales [num_blocks, block_size, num_kv_heads]; "
            f"pass {name}="
        )
    if tuple(scale.shape) != expected:
        raise ValueError(
            f"{name}: shape {tuple(scale.shape)} must be [num_blocks, block_size, num_kv_heads] = {expected}"
        )
    return scale.stride(0), scale.stride(1), scale.stride(2)


def _validate(q, k_cache, v_cache, block_tables, context_lens):
    if q.dim() != 3:
        raise ValueError(f"q: expected [batch, num_heads, head_dim], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            "k_cache/v_cache: expected two tensors of one shape "
            f"[num_blocks, block_size, num_kv_heads, head_dim], got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    batch, num_heads, head_dim = q.shape
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"k_cache: head_dim {k_cache.shape[3]} differs from q's {head_dim}")
    if num_heads % k_cache.shape[2]:
        raise ValueError(f"q: num_heads {num_heads} must be a multiple of num_kv_heads {k_cache.shape[2]}")
    if q.dtype not in _FLOAT_CACHE_DTYPES:
        raise ValueError(f"q: dtype {q.dtype} not supported; use float16, bfloat16 or float32")
    if k_cache.dtype not in (q.dtype, *_QUANT_CACHE_DTYPES) or v_cache.dtype != k_cache.dtype:
        raise ValueError(
            f"k_cache/v_cache: dtype {k_cache.dtype}/{v_cache.dtype} must be q's "
            f"({q.dtype}), int8 or float8_e4m3fn (with scales)"
        )
    for name, tensor in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name}: the head_dim axis must be contiguous; call .contiguous()")
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.shape[0] != batch:
        raise ValueError(
            f"block_tables: expected int32 [batch={batch}, max_blocks_per_seq], got "
            f"{block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if context_lens.dtype != torch.int32 or tuple(context_lens.shape) != (batch,):
        raise ValueError(
            f"context_lens: expected int32 [batch={batch}], got {context_lens.dtype} {tuple(context_lens.shape)}"
        )
    if block_tables.stride(1) != 1 or not context_lens.is_contiguous():
        raise ValueError("block_tables/context_lens: must be contiguous; call .contiguous()")


def _pow2_at_least(value: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(value))


def paged_decode_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    context_lens,
    scale,
    k_scale=None,
    v_scale=None,
    window=0,
    sinks=0,
    *,
    num_splits=None,
    block_n=64,
    num_warps=4,
    num_stages=2,
):
    """Decode attention over the paged cache; returns out [batch, num_heads, head_dim] in q's dtype.

    q [batch, num_heads, head_dim]; k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_dim]
    in q's dtype, or int8 / float8_e4m3fn with float32 ``k_scale``/``v_scale`` of shape
    [num_blocks, block_size, num_kv_heads];
    block_tables int32 [batch, max_blocks_per_seq]; context_lens int32 [batch] (the new token is
    already in the cache at position context_len - 1). ``window`` > 0 keeps the last ``window``
    positions plus the first ``sinks``. The keyword-only arguments tune the launch.
    """
    _validate(q, k_cache, v_cache, block_tables, context_lens)
    batch, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if window < 0 or sinks < 0:
        raise ValueError(f"window/sinks: must be >= 0 (0 = off), got {window}/{sinks}")
    kv_quant = k_cache.dtype in _QUANT_CACHE_DTYPES
    if kv_quant:
        k_strides = _scale_strides(k_scale, k_cache, "k_scale")
        v_strides = _scale_strides(v_scale, v_cache, "v_scale")
    else:
        k_scale = v_scale = k_cache  # placeholders: KV_QUANT=False never reads them
        k_strides = v_strides = (0, 0, 0)
    if num_splits is None:
        num_splits = choose_num_splits(batch, num_kv_heads, block_tables.shape[1] * page_size, q.device)

    out = torch.empty_like(q)
    if num_splits > 1:
        part_acc = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_max = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out  # placeholders: NUM_SPLITS=1 writes out directly
    dim_pad = _pow2_at_least(head_dim, 16)
    pdl = pdl_enabled(q.device)
    _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        block_tables,
        context_lens,
        out,
        part_acc,
        part_max,
        part_sum,
        float(scale) * math.log2(math.e),
        int(window),
        int(sinks),
        num_splits,
        q.stride(0),
        q.stride(1),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        *k_strides,
        *v_strides,
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        NUM_HEADS=num_heads,
        SINGLE_SPLIT=num_splits == 1,
        GROUP=group,
        GROUP_PAD=_pow2_at_least(group, 16),
        HEAD_DIM=head_dim,
        DIM_PAD=dim_pad,
        PAGE_SIZE=page_size,
        BLOCK_N=block_n,
        KV_QUANT=kv_quant,
        KV_INT8=k_cache.dtype == torch.int8,
        PDL=pdl,
        num_warps=num_warps,
        num_stages=num_stages,
        **launch_options(pdl),
    )
    if num_splits > 1:
        _combine_splits_kernel[(batch, num_heads)](
            part_acc,
            part_max,
            part_sum,
            out,
            out.stride(0),
            out.stride(1),
            NUM_HEADS=num_heads,
            NUM_SPLITS=num_splits,
            SPLITS_PAD=_pow2_at_least(num_splits, 2),
            HEAD_DIM=head_dim,
            DIM_PAD=dim_pad,
            PDL=pdl,
            num_warps=4,
            **launch_options(pdl),
        )
    return out
