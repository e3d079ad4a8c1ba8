"""Plain-torch references for the kernels: the definitions the Triton kernels must match.

Slow and simple on purpose (a loop over sequences, float32 or float64 math). The tests and
benchmarks/kernel_bench.py compare the kernels with these; CPU code can also call them.
"""

from __future__ import annotations

import torch


def dequantize_kv(cache: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Float32 view of a KV cache [num_blocks, block_size, kv_heads, head_dim].

    ``scale`` is None (cache already in a float dtype), per (block, kv_head) ``[num_blocks, kv_heads]``
    or per (block, slot, kv_head) ``[num_blocks, block_size, kv_heads]``.
    """
    values = cache.float()
    if scale is None:
        return values
    if scale.dim() == 2:
        return values * scale.float()[:, None, :, None]
    return values * scale.float().reshape(scale.shape[0], scale.shape[1], scale.shape[2], 1)


def attended_positions(context_len: int, window: int, sinks: int) -> torch.Tensor:
    """Positions a decode query at ``context_len - 1`` attends to: all of them, or with a sliding
    window the last ``window`` positions plus the first ``sinks`` (the "attention sink" tokens)."""
    positions = torch.arange(context_len)
    if window <= 0:
        return positions
    keep = (positions >= context_len - window) | (positions < sinks)
    return positions[keep]


def paged_decode_attention_reference(
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
    dtype=torch.float32,
):
    """One decode token per sequence: out[b, h] = softmax(q[b, h] . K_b^T * scale) V_b, GQA-aware."""
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    keys = dequantize_kv(k_cache, k_scale).to(dtype).cpu()
    values = dequantize_kv(v_cache, v_scale).to(dtype).cpu()
    tables = block_tables.long().cpu()
    out = torch.zeros(batch, num_heads, head_dim, dtype=dtype)
    for b in range(batch):
        ctx = int(context_lens[b])
        positions = attended_positions(ctx, window, sinks)
        blocks = tables[b][positions // block_size]
        slots = positions % block_size
        k = keys[blocks, slots].repeat_interleave(group, dim=1)  # [n, heads, dim]
        v = values[blocks, slots].repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].cpu().to(dtype), k) * scale
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v)
    return out


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[out, in/2] uint8, element 2j in the low nibble and 2j+1 in the high one -> [out, in] 0..15."""
    low = packed & 0x0F
    high = packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


def int4_dequantize(packed, scales, zeros, group_size, dtype=torch.float32):
    """w[n, k] = (q[n, k] - zero[n, k // group]) * scale[n, k // group]; no zeros means zero point 8."""
    q = unpack_int4(packed).to(dtype)
    in_features = q.shape[1]  # the last group may be short
    scale = scales.to(dtype).repeat_interleave(group_size, dim=1)[:, :in_features]
    zero = 8.0 if zeros is None else zeros.to(dtype).repeat_interleave(group_size, dim=1)[:, :in_features]
    return (q - zero) * scale


def int8_linear_reference(x, qweight, scale, bias=None, dtype=torch.float32):
    """y = x @ (qweight * scale[:, None])^T + bias."""
    weight = qweight.to(dtype) * scale.to(dtype)[:, None]
    y = x.to(dtype) @ weight.T
    return y if bias is None else y + bias.to(dtype)


# fp8 (float8_e4m3fn qweight, per-channel scale) has the same definition: the stored values times the scale.
fp8_linear_reference = int8_linear_reference


def int4_linear_reference(x, qweight_packed, scales, zeros, group_size, bias=None, dtype=torch.float32):
    weight = int4_dequantize(qweight_packed, scales, zeros, group_size, dtype)
    y = x.to(dtype) @ weight.T
    return y if bias is None else y + bias.to(dtype)
