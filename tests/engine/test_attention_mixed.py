"""Attention of a mixed step (decode rows, whole fresh prompts, continuing chunks) against a plain
per-sequence reference: every query attends to its sequence's keys up to its own position.

Runs on CPU (the math backend) and, where there is a GPU, on CUDA in bfloat16, where the prompt rows take
the flash kernel (the fresh prompts in its variable-length form, the chunks with a bottom-right causal
mask)."""

from __future__ import annotations

import pytest
import torch

from qwen_triton.layers.attention import AttentionMetadata, paged_attention, write_kv

BLOCK = 16
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
# (tokens computed before this step, tokens in this step) per sequence. In the first step the fresh
# prompts are scattered among the other rows (their rows are gathered); in the others they come last,
# as the scheduler orders them (one run of rows, taken as a view), of mixed lengths (the variable-length
# flash kernel on CUDA) or of one length (a [prompts, length] grid for the fixed-length kernel).
STEPS = {
    "scattered": [(37, 1), (0, 29), (90, 1), (40, 23), (0, 64), (16, 16), (5, 1)],
    "fresh_last": [(37, 1), (40, 23), (90, 1), (0, 29), (0, 64), (0, 7)],
    "fresh_uniform": [(37, 1), (40, 23), (90, 1), (0, 48), (0, 48), (0, 48)],
}

DEVICES = [("cpu", torch.float32)] + ([("cuda", torch.bfloat16)] if torch.cuda.is_available() else [])


def build_step(sequences, device, dtype, generator):
    """A KV cache already holding each sequence's earlier tokens, and this step's q/k/v and metadata."""
    num_blocks = sum(-(-(done + new) // BLOCK) for done, new in sequences) + 2
    k_cache = torch.zeros(num_blocks, BLOCK, KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    order = torch.randperm(num_blocks - 1, generator=generator).tolist()  # scattered, never block 0 first
    tables, slots, full_k, full_v = [], [], [], []
    for done, new in sequences:
        total = done + new
        table = [order.pop() for _ in range(-(-total // BLOCK))]
        keys = torch.randn(total, KV_HEADS, HEAD_DIM, generator=generator).to(dtype).to(device)
        values = torch.randn(total, KV_HEADS, HEAD_DIM, generator=generator).to(dtype).to(device)
        for pos in range(done):  # the earlier steps' writes
            k_cache[table[pos // BLOCK], pos % BLOCK] = keys[pos]
            v_cache[table[pos // BLOCK], pos % BLOCK] = values[pos]
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(done, total)]
        tables.append(table)
        full_k.append(keys)
        full_v.append(values)
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [num_blocks - 1] * (width - len(t)) for t in tables], dtype=torch.int32)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, device=device),
        block_tables=block_tables.to(device),
        context_lens=torch.tensor([d + n for d, n in sequences], dtype=torch.int32, device=device),
        is_decode=False,
        query_lens=[n for _, n in sequences],
        context_lens_cpu=[d + n for d, n in sequences],
    )
    new_k = torch.cat([keys[done:] for keys, (done, _) in zip(full_k, sequences)])
    new_v = torch.cat([values[done:] for values, (done, _) in zip(full_v, sequences)])
    q = torch.randn(len(slots), HEADS, HEAD_DIM, generator=generator).to(dtype).to(device)
    # As the model passes them: views into one fused QKV output, rows strided by the three together.
    qkv = torch.cat([q.flatten(1), new_k.flatten(1), new_v.flatten(1)], dim=1)
    q, new_k, new_v = (
        part.view(-1, heads, HEAD_DIM)
        for part, heads in zip(
            qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=1), (HEADS, KV_HEADS, KV_HEADS)
        )
    )
    return q, new_k, new_v, (k_cache, v_cache, None, None), meta, full_k, full_v


def reference(sequences, q, full_k, full_v, scale):
    """float32 softmax attention, sequence by sequence, query position p seeing keys 0..p."""
    out, start = [], 0
    group = HEADS // KV_HEADS
    for (done, new), keys, values in zip(sequences, full_k, full_v):
        queries = q[start : start + new].float()
        k = keys.float().repeat_interleave(group, dim=1)
        v = values.float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", queries, k) * scale
        visible = (
            torch.arange(done + new, device=q.device)[None, :]
            <= torch.arange(done, done + new, device=q.device)[:, None]
        )
        scores = scores.masked_fill(~visible, float("-inf"))
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
        start += new
    return torch.cat(out)


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("device,dtype", DEVICES)
def test_mixed_step_matches_per_sequence_reference(device, dtype, step):
    generator = torch.Generator().manual_seed(7)
    sequences = STEPS[step]
    q, k, v, cache_layer, meta, full_k, full_v = build_step(sequences, device, dtype, generator)
    write_kv(k, v, cache_layer, meta.slot_mapping)
    scale = HEAD_DIM**-0.5
    plan = meta.plan()
    assert plan.decode_tokens is not None and plan.fresh and plan.chunks, "the step must exercise all three row groups"
    assert (plan.fresh_range is not None) == (step != "scattered")
    assert plan.fresh_uniform == (step == "fresh_uniform")
    out = paged_attention(q, k, v, cache_layer, meta, scale)
    expected = reference(sequences, q, full_k, full_v, scale)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    error = ((out.float() - expected).norm() / expected.norm()).item()
    assert error < tolerance, f"relative error {error:.2e} on {device}"


# The kernel runs on CPU tensors only through the Triton interpreter, which CUDA machines do not switch on.
KERNEL_DEVICES = [("cuda", torch.bfloat16)] if torch.cuda.is_available() else [("cpu", torch.float16)]


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("device,dtype", KERNEL_DEVICES)
def test_mixed_step_through_the_graph_kernel_matches_reference(device, dtype, step):
    """The same steps as a captured mixed graph runs them: metadata with work items, one kernel launch
    (kernels.chunked_attention; on CPU through the Triton interpreter, whose dots want fp16, not bf16)."""
    import numpy as np

    from qwen_triton.kernels.chunked_attention import tokens_per_item, work_items

    generator = torch.Generator().manual_seed(7)
    sequences = STEPS[step]
    q, k, v, cache_layer, meta, full_k, full_v = build_step(sequences, device, dtype, generator)
    write_kv(k, v, cache_layer, meta.slot_mapping)
    query_lens = [n for _, n in sequences]
    meta.query_start = torch.tensor(np.cumsum([0, *query_lens]), dtype=torch.int32, device=device)
    chunks, decodes = work_items(query_lens, tokens_per_item(HEADS, KV_HEADS))
    meta.chunk_items, meta.decode_items = torch.from_numpy(chunks).to(device), torch.from_numpy(decodes).to(device)
    scale = HEAD_DIM**-0.5
    out = paged_attention(q, k, v, cache_layer, meta, scale)
    assert meta._plan is None, "the host-side plan of the eager path is not built"
    expected = reference(sequences, q, full_k, full_v, scale)
    error = ((out.float() - expected).norm() / expected.norm()).item()
    assert error < 2e-2, f"relative error {error:.2e} on {device}"
