"""The KV-cache tensors: one K and one V pool per layer, [num_blocks, block_size, num_kv_heads, head_dim].

The pool is sized by bytes, so a compressed element type (int8 / fp8, with a float32 scale per token and
KV head, see kv_quant.py) holds about twice the tokens of bf16 in the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kv_quant import KV_CACHE_DTYPES, allocate_quantized_kv, kv_storage_dtype


@dataclass
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype          # storage element type
    quantized: bool             # int8/fp8 storage with scales

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
            self.v, self.v_scale = map(list, zip(*pairs[spec.num_layers:]))
        else:
            self.k = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
            self.v = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
            self.k_scale = self.v_scale = [None] * spec.num_layers

    def layer(self, i: int):
        return self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]
