"""Paged attention over the KV cache: write new K/V into their slots, then attend.

Two shapes of step:
- decode (every sequence adds one token): a batched read of each sequence's blocks; on CUDA the
  Triton kernel in `kernels.paged_attention` reads the blocks in place, elsewhere a padded gather.
- prefill / mixed (some sequences add a chunk): per sequence, gather its context and run SDPA with a
  causal mask that starts at the chunk's offset.
An optional StreamingLLM window keeps the first `sinks` and the last `window` positions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor            # [num_tokens] int64: where each new token's K/V goes
    block_tables: torch.Tensor            # [batch, max_blocks] int32, padded with a scratch block
    context_lens: torch.Tensor            # [batch] int32: tokens in cache after this step
    is_decode: bool                       # every sequence computes exactly one token
    query_lens: list[int] = field(default_factory=list)     # prefill/mixed: tokens per sequence
    context_lens_cpu: list[int] = field(default_factory=list)
    window: int = 0
    sinks: int = 0


def write_kv(k: torch.Tensor, v: torch.Tensor, cache_layer, slot_mapping: torch.Tensor) -> None:
    k_cache, v_cache, k_scale, v_scale = cache_layer
    if k_scale is None:
        k_cache.view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
        v_cache.view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))
        return
    for src, cache, scale in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        values, scales = quantize_kv(src, cache.dtype)
        # Copy as bytes: index_copy_ has no float8 kernel on every device, and bytes are bytes.
        cache.view(torch.uint8).view(-1, *src.shape[1:]).index_copy_(0, slot_mapping, values.view(torch.uint8))
        scale.view(-1, src.shape[1]).index_copy_(0, slot_mapping, scales)


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-(token, head) quantization: a token's scale never changes after it is written."""
    qmax = 127.0 if dtype == torch.int8 else 448.0
    scale = x.float().abs().amax(dim=-1).clamp(min=1e-8) / qmax
    q = x.float() / scale.unsqueeze(-1)
    q = q.round().clamp(-qmax, qmax) if dtype == torch.int8 else q.clamp(-qmax, qmax)
    return q.to(dtype), scale


def dequantize_kv(values: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if scales is None:
        return values.to(dtype)
    return (values.float() * scales.unsqueeze(-1)).to(dtype)


def paged_attention(q: torch.Tensor, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q: [num_tokens, num_heads, head_dim] -> [num_tokens, num_heads, head_dim]."""
    if meta.is_decode:
        kernel = _cuda_decode_kernel() if q.is_cuda else None
        if kernel is not None:
            k_cache, v_cache, k_scale, v_scale = cache_layer
            return kernel(q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale,
                                                  k_scale=k_scale, v_scale=v_scale,
                                                  window=meta.window, sinks=meta.sinks)
        return _decode_gather(q, cache_layer, meta, scale)
    return _prefill(q, cache_layer, meta, scale)


@functools.cache
def _cuda_decode_kernel():
    """The Triton decode kernel, when the triton package is importable (GPU machines)."""
    try:
        from .kernels.paged_attention import paged_decode_attention
    except ImportError:
        return None
    return paged_decode_attention


def _visible(query_pos: torch.Tensor, key_pos: torch.Tensor, context_len, window: int, sinks: int) -> torch.Tensor:
    mask = (key_pos <= query_pos) & (key_pos < context_len)
    if window:
        mask &= (key_pos > query_pos - window) | (key_pos < sinks)
    return mask


def _decode_gather(q, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Reference decode: gather every sequence's blocks (padded to the longest) and attend."""
    k_cache, v_cache, k_scale, v_scale = cache_layer
    tables = meta.block_tables.long()
    batch, heads, dim = q.shape
    k = _gather(k_cache, k_scale, tables, q.dtype)          # [batch, L, kv_heads, dim]
    v = _gather(v_cache, v_scale, tables, q.dtype)
    kv_heads = k.shape[2]
    key_pos = torch.arange(k.shape[1], device=q.device)
    query_pos = (meta.context_lens.long() - 1).unsqueeze(1)
    mask = _visible(query_pos, key_pos.unsqueeze(0), meta.context_lens.long().unsqueeze(1), meta.window, meta.sinks)
    qg = q.view(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k.float()) * scale
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = torch.einsum("bhgl,blhd->bhgd", scores.softmax(dim=-1), v.float())
    return out.reshape(batch, heads, dim).to(q.dtype)


def _gather(cache: torch.Tensor, scales: torch.Tensor | None, tables: torch.Tensor, dtype) -> torch.Tensor:
    blocks = cache[tables]                                   # [batch, max_blocks, block_size, kv_heads, dim]
    block_scales = scales[tables] if scales is not None else None
    out = dequantize_kv(blocks, block_scales, dtype)
    return out.flatten(1, 2)


def _prefill(q, cache_layer, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    k_cache, v_cache, k_scale, v_scale = cache_layer
    outputs = []
    start = 0
    for i, (query_len, context_len) in enumerate(zip(meta.query_lens, meta.context_lens_cpu)):
        table = meta.block_tables[i, : -(-context_len // k_cache.shape[1])].long()
        k = _gather(k_cache, k_scale, table.unsqueeze(0), q.dtype)[0, :context_len]
        v = _gather(v_cache, v_scale, table.unsqueeze(0), q.dtype)[0, :context_len]
        qs = q[start:start + query_len]
        outputs.append(_sdpa(qs, k, v, context_len, meta, scale))
        start += query_len
    return torch.cat(outputs)


def _sdpa(q, k, v, context_len: int, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    query_len = q.shape[0]
    if query_len == context_len and not meta.window:
        mask, causal = None, True                             # plain causal prompt: flash/efficient kernels
    else:
        query_pos = torch.arange(context_len - query_len, context_len, device=q.device).unsqueeze(1)
        key_pos = torch.arange(context_len, device=q.device).unsqueeze(0)
        mask, causal = _visible(query_pos, key_pos, context_len, meta.window, meta.sinks), False
    out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                                         v.transpose(0, 1).unsqueeze(0), attn_mask=mask, is_causal=causal,
                                         scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)
