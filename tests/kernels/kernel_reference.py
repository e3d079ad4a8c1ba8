"""Plain-torch references for the kernels: the definitions the Triton kernels must match.

Slow and simple on purpose (a loop over sequences, float32 or float64 math). The kernel tests and
benchmarks/kernel_bench.py compare the kernels with these. Each meaning comes from its one home in the
package: KV dequantization from layers/kv_cache.py, the window rule from layers/attention.py, nibble
unpacking from quantization/formats.py.
"""

from __future__ import annotations

import torch

from qwen_triton.layers.attention import visible_keys
from qwen_triton.layers.kv_cache import dequantize_kv
from qwen_triton.quantization.formats import unpack_nibbles


def attended_positions(context_len: int, window: int, sinks: int) -> torch.Tensor:
    """Positions a decode query at ``context_len - 1`` attends to."""
    positions = torch.arange(context_len)
    return positions[visible_keys(torch.tensor(context_len - 1), positions, context_len, window, sinks)]


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
    """One decode token per sequence: out[b, h] = softmax(q[b, h] . K_b^T * scale) V_b, GQA-aware.
    Quantized caches come with scales [num_blocks, block_size, kv_heads], as the engine writes them."""
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    keys = dequantize_kv(k_cache, k_scale, dtype).cpu()
    values = dequantize_kv(v_cache, v_scale, dtype).cpu()
    tables = block_tables.long().cpu()
    out = torch.zeros(batch, num_heads, head_dim, dtype=dtype)
    for b in range(batch):
        positions = attended_positions(int(context_lens[b]), window, sinks)
        blocks = tables[b][positions // block_size]
        slots = positions % block_size
        k = keys[blocks, slots].repeat_interleave(group, dim=1)  # [n, heads, dim]
        v = values[blocks, slots].repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].cpu().to(dtype), k) * scale
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(dim=-1), v)
    return out


def int4_dequantize(packed, scales, zeros, group_size, dtype=torch.float32):
    """w[n, k] = (q[n, k] - zero[n, k // group]) * scale[n, k // group]; no zeros means zero point 8."""
    q = unpack_nibbles(packed).to(dtype)
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
