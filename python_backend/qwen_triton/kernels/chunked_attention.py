"""Attention of a mixed step in fixed launches: prompt chunks and decode rows, read in place from the paged cache.

A mixed step holds sequences with one new token (decode) beside sequences with a chunk of prompt
tokens. Every new token's K/V is already in the cache, so each query attends to the cache positions
0..its own position, whatever kind of row it is; one kernel serves them all, and its launches depend on
nothing but buffer sizes, so a CUDA graph can capture the whole step (the point: an eager step of a 7B
model costs ~15 ms of host time whatever its tokens, while its GPU work for 16 decode rows and a
256-token chunk is ~8.5 ms on an H200).

Work split: a *work item* is up to BLOCK_Q consecutive query tokens of one sequence; one program per
(work item, kv head). A program's rows are its tokens x the GROUP query heads that share the kv head
(padded to GROUP_PAD), so each K/V row it loads serves the whole group, and the scores and the weighted
sum are tensor-core dots of BLOCK_Q * GROUP_PAD rows. Two launches of the one kernel: prompt chunks in
items of ROWS_PER_PROGRAM rows, one-token rows (decode) in items of one token (16 rows: the smallest
dot), since a decode row in a 128-row item would compute 16 times the dots it needs, for every key of
its context. The host lists the items (`work_items`) in two int32 tables [items, 2] of (sequence, first
token of the item within the sequence's query); rows of a table past the step's items hold sequence
-1, and their programs return at once, so buffers sized for the largest step serve every smaller one.

No sliding window and float caches only: the callers send other steps down the eager path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

from .paged_attention import cache_rows

# Query rows (tokens x padded group) per program: 128 fills a tensor-core tile without spilling the
# float32 accumulator (128 x head_dim).
ROWS_PER_PROGRAM = 128


@triton.jit
def _chunked_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    query_start_ptr,
    work_ptr,
    out_ptr,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bt,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    item = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(work_ptr + 2 * item)
    if seq < 0:
        return
    first = tl.load(work_ptr + 2 * item + 1)
    q_start = tl.load(query_start_ptr + seq)
    query_len = tl.load(query_start_ptr + seq + 1) - q_start
    context_len = tl.load(context_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)
    token = first + rows // GROUP_PAD  # within the sequence's query
    head_in_group = rows % GROUP_PAD
    row_ok = (token < query_len) & (head_in_group < GROUP)
    heads = kv_head * GROUP + head_in_group
    position = context_len - query_len + token  # of each row's token in the sequence
    dims = tl.arange(0, DIM_PAD)
    dim_ok = dims < HEAD_DIM
    q = tl.load(
        q_ptr + (q_start + token)[:, None].to(tl.int64) * stride_qt + heads[:, None] * stride_qh + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )

    running_max = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, DIM_PAD], tl.float32)
    table_row = block_tables_ptr + seq * stride_bt
    # Keys up to the item's last token (causal); position 0 is in the first tile, so every row has a
    # finite running max after it and later fully masked tiles add exp2(-inf) = 0.
    end = context_len - query_len + tl.minimum(first + BLOCK_Q, query_len)
    for start in range(0, end, BLOCK_N):
        key = start + tl.arange(0, BLOCK_N)
        key_ok = key < end
        block = tl.load(table_row + key // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
        slot = key % PAGE_SIZE
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = cache_rows(k_cache_ptr, block, slot, kv_head, dims, kv_mask, stride_kb, stride_kt, stride_kh)
        v = cache_rows(v_cache_ptr, block, slot, kv_head, dims, kv_mask, stride_vb, stride_vt, stride_vh)
        scores = tl.dot(q, tl.trans(k)) * scale_log2
        visible = key_ok[None, :] & (key[None, :] <= position[:, None])
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        correction = tl.exp2(running_max - new_max)
        probs = tl.exp2(scores - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(probs, axis=1)
        acc = acc * correction[:, None] + tl.dot(probs.to(v.dtype), v)
        running_max = new_max

    out = acc / tl.where(running_sum == 0.0, 1.0, running_sum)[:, None]
    tl.store(
        out_ptr + (q_start + token)[:, None].to(tl.int64) * stride_ot + heads[:, None] * stride_oh + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )


def tokens_per_item(num_heads: int, num_kv_heads: int) -> int:
    """BLOCK_Q of the prompt-chunk launch: query tokens of one work item for a model's head grouping."""
    return max(1, ROWS_PER_PROGRAM // _group_pad(num_heads // num_kv_heads))


def _group_pad(group: int) -> int:
    """The query heads of one kv head, padded to a power of two (the rows of a token in a chunk item)."""
    return triton.next_power_of_2(group)


def work_items(
    query_lens: list[int], block_q: int, chunks: np.ndarray | None = None, decodes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The (sequence, first token) tables of a step whose sequences add ``query_lens`` tokens each: items of
    up to ``block_q`` tokens of the sequences adding several, and one item per sequence adding one. Written
    into ``chunks`` / ``decodes`` ([capacity, 2] int32; rows past the items get sequence -1), or new arrays
    of the exact size."""
    chunk_items = [(seq, first) for seq, n in enumerate(query_lens) if n > 1 for first in range(0, n, block_q)]
    decode_items = [(seq, 0) for seq, n in enumerate(query_lens) if n == 1]
    return _table(chunk_items, chunks, "chunk"), _table(decode_items, decodes, "decode")


def _table(items: list[tuple[int, int]], out: np.ndarray | None, kind: str) -> np.ndarray:
    if out is None:
        out = np.empty((len(items), 2), dtype=np.int32)
    elif len(items) > len(out):
        raise ValueError(f"work_items: {len(items)} {kind} items for a table of {len(out)}")
    if items:
        out[: len(items)] = items
    out[len(items) :, 0] = -1
    return out


def max_work_items(max_tokens: int, max_seqs: int, block_q: int) -> int:
    """Items a step of at most ``max_tokens`` tokens over at most ``max_seqs`` sequences can need: every
    sequence may end one partial item."""
    return -(-max_tokens // block_q) + max_seqs


def chunked_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    query_start: torch.Tensor,
    chunk_items: torch.Tensor,
    decode_items: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    *,
    block_n: int = 64,
) -> torch.Tensor:
    """Causal attention of a step's new tokens over the paged cache; returns [tokens, num_heads, head_dim].

    q [tokens, num_heads, head_dim], the tokens of sequence s at rows query_start[s]..query_start[s+1]-1
    (int32 [sequences + 1]); context_lens int32 [sequences]: tokens in the cache after this step (a
    sequence's new tokens are its last query_len positions, already written); block_tables int32
    [sequences, max_blocks]; chunk_items / decode_items int32 [items, 2] from `work_items` with BLOCK_Q =
    `tokens_per_item`. k_cache / v_cache [num_blocks, block_size, num_kv_heads, head_dim] in q's dtype.
    Rows of q no work item covers (padding) are left as ``out`` holds them (zeros when ``out`` is None).
    """
    _, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"k_cache/v_cache: dtype {k_cache.dtype} must be q's ({q.dtype}); quantized caches go eager")
    if num_heads % num_kv_heads:
        raise ValueError(f"q: num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    for name, tensor in (("block_tables", block_tables), ("context_lens", context_lens), ("query_start", query_start)):
        if tensor.dtype != torch.int32:
            raise ValueError(f"{name}: expected int32, got {tensor.dtype}")
    for name, items in (("chunk_items", chunk_items), ("decode_items", decode_items)):
        if items.dtype != torch.int32 or items.dim() != 2 or items.shape[1] != 2 or not items.is_contiguous():
            raise ValueError(f"{name}: expected contiguous int32 [items, 2], got {items.dtype} {tuple(items.shape)}")
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.zeros_like(q)
    common = (q, k_cache, v_cache, block_tables, context_lens, query_start)
    strides = (
        q.stride(0),
        q.stride(1),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
    )
    shapes = dict(
        GROUP=group,
        HEAD_DIM=head_dim,
        DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        PAGE_SIZE=page_size,
        BLOCK_N=block_n,
    )
    launches = (
        (chunk_items, tokens_per_item(num_heads, num_kv_heads), _group_pad(group), 8),
        (decode_items, 1, max(16, _group_pad(group)), 4),
    )
    for items, block_q, group_pad, warps in launches:
        if items.shape[0]:
            _chunked_attention_kernel[(items.shape[0], num_kv_heads)](
                *common,
                items,
                out,
                float(scale) * math.log2(math.e),
                *strides,
                GROUP_PAD=group_pad,
                BLOCK_Q=block_q,
                **shapes,
                num_warps=warps,
                num_stages=2,
            )
    return out
