"""The KV-cache tensors: one K and one V pool per layer, [num_blocks, block_size, num_kv_heads, head_dim].

The pool is sized by bytes, so a compressed element type (int8 / fp8, with a float32 scale per token and
KV head, see below) holds about twice the tokens of bf16 in the same budget.

int8 / fp8 (e4m3) KV cache: quantize new tokens into paged blocks, dequantize what attention reads.

Layout (docs/CONTRACTS.md): per layer, ``k_cache`` / ``v_cache`` [num_blocks, block_size, num_kv_heads,
head_dim] of int8 or float8_e4m3fn, with ``k_scale`` / ``v_scale`` float32 [num_blocks, block_size,
num_kv_heads]: value = stored * scale[block, slot, head].

One symmetric scale per (token, KV head), fixed when the token is written. Why per token, not one scale
per (block, head):
- A block fills one token per decode step. A per-block scale either clips later outliers (fixed at the
  first write) or must grow and requantize the block's earlier tokens, which needs data-dependent
  control flow on the host: impossible inside the CUDA graph that runs a decode step. Per-token scales
  make a write two plain index copies, the same in every step, and never round a value twice.
- Each token's range is its own: the attention-sink token, often far larger than the rest, does not
  coarsen its neighbours' steps.
- The cost: 4 bytes per token and head, 3 % of int8 K/V at head_dim 128 (6 % at 64); int8 or fp8 KV
  still holds 1.9x the tokens of bf16 in the same memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": getattr(torch, "float8_e4m3fn", None)}
_QMAX = {torch.int8: 127.0, KV_CACHE_DTYPES["fp8"]: 448.0}


def kv_storage_dtype(kind: str) -> torch.dtype:
    """'int8' / 'fp8' -> the cache element dtype."""
    dtype = KV_CACHE_DTYPES.get(kind)
    if dtype is None:
        raise ValueError(
            f"kv_cache_dtype: {kind!r} is not a quantized KV format (or this torch lacks it); "
            f"use one of {sorted(KV_CACHE_DTYPES)}"
        )
    return dtype


def allocate_quantized_kv(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, kind: str, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One of k_cache / v_cache with its per-(block, slot, head) scale tensor."""
    cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=kv_storage_dtype(kind), device=device)
    scale = torch.zeros(num_blocks, block_size, num_kv_heads, dtype=torch.float32, device=device)
    return cache, scale


def quantize_kv(values: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[tokens, heads, head_dim] -> (values in `dtype`, float32 scales [tokens, heads])."""
    qmax = _QMAX[dtype]
    scale = values.float().abs().amax(dim=-1).clamp(min=1e-8) / qmax
    scaled = (values.float() / scale.unsqueeze(-1)).clamp(-qmax, qmax)
    return (scaled.round() if dtype == torch.int8 else scaled).to(dtype), scale


def write_quantized_kv(cache: torch.Tensor, scale: torch.Tensor, new: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write `new` [num_tokens, num_kv_heads, head_dim] at `slot_mapping` (block * block_size + offset)."""
    values, scales = quantize_kv(new, cache.dtype)
    heads, dim = new.shape[1:]
    # Copy as bytes: index_copy_ has no float8 kernel on every device, and bytes are bytes.
    cache.view(torch.uint8).view(-1, heads, dim).index_copy_(0, slot_mapping, values.view(torch.uint8))
    scale.view(-1, heads).index_copy_(0, slot_mapping, scales)


def dequantize_kv(values: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Stored values [..., heads, head_dim] with scales [..., heads] (None: not quantized) -> `dtype`."""
    if scales is None:
        return values.to(dtype)
    return (values.float() * scales.unsqueeze(-1)).to(dtype)


def gather_blocks(
    cache: torch.Tensor, scale: torch.Tensor | None, tables: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """The blocks that `tables` [..., blocks] name, as tokens [..., blocks * block_size, kv_heads, head_dim]
    in `dtype` (`scale` None: a cache in the model's own dtype)."""
    tables = tables.to(torch.int64)
    return dequantize_kv(cache[tables], None if scale is None else scale[tables], dtype).flatten(-4, -3)


def gather_dequantized(
    cache: torch.Tensor,
    scale: torch.Tensor | None,
    block_table: torch.Tensor,
    context_len: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One sequence's first `context_len` tokens, [context_len, num_kv_heads, head_dim], from its block table."""
    return gather_blocks(cache, scale, block_table[: -(-context_len // cache.shape[1])], dtype)[:context_len]


def kv_bytes_per_token(
    num_layers: int, num_kv_heads: int, head_dim: int, kind: str = "auto", float_bytes: int = 2
) -> float:
    """Bytes of K and V one token occupies across all layers; quantized kinds include their float32 scale
    per head. kind 'auto' = the model's float dtype of `float_bytes` bytes."""
    if kind == "auto":
        return 2 * num_layers * num_kv_heads * head_dim * float_bytes
    element = kv_storage_dtype(kind).itemsize
    return 2 * num_layers * num_kv_heads * (head_dim * element + 4)


@dataclass
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype  # storage element type
    quantized: bool  # int8/fp8 storage with scales

    def bytes_per_block(self) -> int:
        elements = self.block_size * self.num_kv_heads * self.head_dim
        per_layer = 2 * elements * torch.empty((), dtype=self.dtype).element_size()
        if self.quantized:
            per_layer += 2 * self.block_size * self.num_kv_heads * 4  # float32 scale per token and head
        return per_layer * self.num_layers

    def bytes_per_token(self) -> float:
        return self.bytes_per_block() / self.block_size


def storage_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> tuple[torch.dtype, bool]:
    """(element type of the pool, whether it is quantized) for the engine's kv_cache_dtype setting."""
    if kv_cache_dtype == "auto":
        return model_dtype, False
    return kv_storage_dtype(kv_cache_dtype), True


class KVCache:
    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device):
        self.spec = spec
        self.num_blocks = num_blocks
        shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        if spec.quantized:
            kind = next(name for name, dtype in KV_CACHE_DTYPES.items() if dtype == spec.dtype)
            pairs = [allocate_quantized_kv(*shape, kind, device) for _ in range(2 * spec.num_layers)]
            self.k, self.k_scale = map(list, zip(*pairs[: spec.num_layers]))
            self.v, self.v_scale = map(list, zip(*pairs[spec.num_layers :]))
        else:
            self.k = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
            self.v = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
            self.k_scale = self.v_scale = [None] * spec.num_layers

    def layer(self, i: int):
        return self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]
