"""The mixed-step attention kernel (prompt chunks and decode rows in one launch) against plain torch."""

import numpy as np
import pytest
import torch
from kernel_env import HAS_CUDA, needs_kernels

pytestmark = needs_kernels


def reference(q, k_cache, v_cache, tables, query_lens, context_lens, scale):
    """Each sequence's new tokens (its last query_len positions) attend causally to its cached context."""
    out = torch.zeros_like(q, dtype=torch.float32)
    heads, kv_heads, page = q.shape[1], k_cache.shape[2], k_cache.shape[1]
    start = 0
    for row, (n, context) in enumerate(zip(query_lens, context_lens)):
        positions = torch.arange(context)
        blocks = tables[row].cpu()[positions // page].long()
        keys = k_cache.cpu()[blocks, positions % page].float().repeat_interleave(heads // kv_heads, dim=1)
        values = v_cache.cpu()[blocks, positions % page].float().repeat_interleave(heads // kv_heads, dim=1)
        for i in range(n):
            visible = context - n + i + 1
            scores = torch.einsum("hd,lhd->hl", q[start + i].cpu().float(), keys[:visible]) * scale
            out[start + i] = torch.einsum("hl,lhd->hd", scores.softmax(-1), values[:visible])
        start += n
    return out


def make_step(generator, device, query_lens, context_lens, *, heads, kv_heads, head_dim, dtype, page=16, padding=3):
    max_blocks = -(-max(context_lens) // page)
    num_blocks = len(query_lens) * max_blocks + 4
    k = torch.randn(num_blocks, page, kv_heads, head_dim, generator=generator).to(dtype)
    v = torch.randn(num_blocks, page, kv_heads, head_dim, generator=generator).to(dtype)
    tables = torch.randperm(num_blocks, generator=generator)[: len(query_lens) * max_blocks]
    tables = tables.view(len(query_lens), max_blocks).int()
    q = torch.randn(sum(query_lens) + padding, heads, head_dim, generator=generator).to(dtype)
    starts = torch.tensor([0, *np.cumsum(query_lens)], dtype=torch.int32)
    contexts = torch.tensor(context_lens, dtype=torch.int32)
    return [t.to(device) for t in (q, k, v, tables, contexts, starts)]


@pytest.mark.parametrize(
    "heads,kv_heads,head_dim,dtype",
    [
        (14, 2, 64, torch.float16),
        # Qwen2.5-7B's heads; bf16 on CUDA only (the CPU interpreter's bf16 dots are not bf16)
        (28, 4, 128, torch.bfloat16 if HAS_CUDA else torch.float16),
        (8, 8, 32, torch.float32),
        (4, 1, 64, torch.float16),
    ],
)
def test_chunks_and_decode_rows_match_reference(generator, device, rel_error, heads, kv_heads, head_dim, dtype):
    from qwen_triton.kernels.chunked_attention import chunked_attention, max_work_items, tokens_per_item, work_items

    # decode rows, a fresh prompt, a chunk continuing after 60 cached tokens, one longer than an item
    query_lens = [1, 5, 1, 40, 17]
    context_lens = [30, 5, 100, 100, 17]
    q, k, v, tables, contexts, starts = make_step(
        generator, device, query_lens, context_lens, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype
    )
    block_q = tokens_per_item(heads, kv_heads)
    capacity = max_work_items(len(q), 8, block_q)
    chunks, decodes = work_items(query_lens, block_q, np.zeros((capacity, 2), np.int32), np.zeros((8, 2), np.int32))
    chunks, decodes = torch.from_numpy(chunks).to(device), torch.from_numpy(decodes).to(device)
    out = chunked_attention(q, k, v, tables, contexts, starts, chunks, decodes, head_dim**-0.5)
    expected = reference(q, k, v, tables, query_lens, context_lens, head_dim**-0.5)
    tokens = sum(query_lens)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_error(out[:tokens], expected[:tokens]) < (1e-3 if dtype == torch.float32 and not HAS_CUDA else 1e-2)
    assert (out[tokens:] == 0).all(), "padding rows, which no work item covers, stay zero"


def test_work_items_cover_every_token_once():
    from qwen_triton.kernels.chunked_attention import max_work_items, work_items

    query_lens = [1, 16, 17, 3, 1]
    capacity = max_work_items(sum(query_lens), len(query_lens), 16)
    chunks, decodes = work_items(query_lens, 16, np.zeros((capacity, 2), np.int32), np.zeros((5, 2), np.int32))
    items = [tuple(row) for row in chunks if row[0] >= 0]
    assert items == [(1, 0), (2, 0), (2, 16), (3, 0)]
    assert (chunks[len(items) :, 0] == -1).all()
    assert [tuple(row) for row in decodes] == [(0, 0), (4, 0), (-1, 0), (-1, 0), (-1, 0)]
    exact_chunks, exact_decodes = work_items(query_lens, 16)
    assert len(exact_chunks) == len(items) and len(exact_decodes) == 2


def test_work_items_refuse_a_table_too_small():
    from qwen_triton.kernels.chunked_attention import work_items

    with pytest.raises(ValueError, match="3 decode items for a table of 2"):
        work_items([1, 1, 1], 16, np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32))


def test_quantized_cache_is_refused(device):
    from qwen_triton.kernels.chunked_attention import chunked_attention

    q = torch.zeros(2, 4, 64, device=device)
    cache = torch.zeros(3, 16, 1, 64, dtype=torch.int8, device=device)
    ints = torch.zeros(2, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="k_cache/v_cache: dtype torch.int8"):
        chunked_attention(q, cache, cache, ints.view(2, 1), ints, ints, ints.view(1, 2), ints.view(1, 2), 0.1)
