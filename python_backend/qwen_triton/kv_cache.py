"""The KV-cache tensors: one K and one V pool per layer, [num_blocks, block_size, num_kv_heads, head_dim].

The pool is sized by bytes, so a compressed element type (int8 / fp8, with float32 scales per block and
KV head) holds about twice the tokens of bf16 in the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8 = getattr(torch, "float8_e4m3fn", None)


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
    if kv_cache_dtype == "auto":
        return model_dtype, False
    if kv_cache_dtype == "int8":
        return torch.int8, True
    if kv_cache_dtype == "fp8":
        if FP8 is None:
            raise ValueError("kv_cache_dtype: fp8 needs a torch with float8_e4m3fn")
        return FP8, True
    raise ValueError(f"kv_cache_dtype: {kv_cache_dtype!r} is not one of auto, int8, fp8")


class KVCache:
    def __init__(self, spec: KVCacheSpec, num_blocks: int, device: torch.device):
        self.spec = spec
        self.num_blocks = num_blocks
        shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
        self.k = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
        self.v = [torch.zeros(shape, dtype=spec.dtype, device=device) for _ in range(spec.num_layers)]
        if spec.quantized:
            scale_shape = (num_blocks, spec.block_size, spec.num_kv_heads)
            self.k_scale = [torch.ones(scale_shape, dtype=torch.float32, device=device) for _ in self.k]
            self.v_scale = [torch.ones(scale_shape, dtype=torch.float32, device=device) for _ in self.v]
        else:
            self.k_scale = self.v_scale = [None] * spec.num_layers

    def layer(self, i: int):
        return self.k[i], self.v[i], self.k_scale[i], self.v_scale[i]
