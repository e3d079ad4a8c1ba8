"""Which slice of each checkpoint tensor a tensor-parallel rank reads.

Megatron-style split, by Hugging Face tensor name:
- column-parallel (output rows split, no communication): q/k/v_proj (weight and bias, by whole heads),
  gate/up_proj (by intermediate rows);
- row-parallel (input columns split, one all-reduce after): o_proj, down_proj;
- vocabulary-parallel (rows split): embed_tokens, lm_head;
- everything else (norms) whole on every rank.
A rank's q, k and v slices concatenated are exactly its fused qkv_proj (DecoderModel.load_weights fuses
them as they arrive), and likewise gate and up: the model's loader needs no change.

Reading goes through safetensors' `get_slice`, so a rank reads only the bytes it keeps: no rank ever holds
a whole tensor it does not own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen_triton.models.checkpoint import safetensors_files
from qwen_triton.models.qwen2 import TensorSplit

_LAYER_TENSOR = re.compile(r"model\.layers\.\d+\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.(weight|bias)$")
_ROW_PARALLEL = {"o", "down"}


@dataclass(frozen=True)
class TensorSlice:
    """Rows (dim 0) or columns (dim 1) start:stop of a checkpoint tensor."""

    dim: int
    start: int
    stop: int


class ShardPlan:
    """The slices of one rank (`split`) for a checkpoint of `hf_config`'s shapes."""

    def __init__(self, hf_config, split: TensorSplit):
        split.check(hf_config)
        self.split = split
        heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
        self.head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
        self._rows_per_rank = {
            "q": heads * self.head_dim // split.world,
            "k": kv_heads * self.head_dim // split.world,
            "v": kv_heads * self.head_dim // split.world,
            "gate": hf_config.intermediate_size // split.world,
            "up": hf_config.intermediate_size // split.world,
            "o": heads * self.head_dim // split.world,
            "down": hf_config.intermediate_size // split.world,
        }
        self.vocab_per_rank = hf_config.vocab_size // split.world

    def slice_of(self, name: str) -> TensorSlice | None:
        """This rank's slice of tensor `name`; None: the whole tensor (replicated on every rank)."""
        if self.split.world == 1:
            return None
        match = _LAYER_TENSOR.match(name)
        if match:
            _, part, kind = match.groups()
            size = self._rows_per_rank[part]
            if part in _ROW_PARALLEL:
                if kind == "bias":
                    return None  # a row-parallel bias is added once, after the all-reduce (linears.py)
                return self._span(1, size)
            return self._span(0, size)
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            return self._span(0, self.vocab_per_rank)
        return None

    def _span(self, dim: int, size: int) -> TensorSlice:
        start = self.split.rank * size
        return TensorSlice(dim, start, start + size)

    def read(self, name: str, handle) -> torch.Tensor:
        """This rank's part of `name` from a safetensors file handle (`safe_open`), reading that part only."""
        piece = self.slice_of(name)
        if piece is None:
            return handle.get_tensor(name)
        view = handle.get_slice(name)
        if piece.dim == 0:
            return view[piece.start : piece.stop]
        return view[:, piece.start : piece.stop]


def iter_shard_tensors(checkpoint: Path, plan: ShardPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint, cut to this rank's slice as it is read; one file open at a time."""
    from safetensors import safe_open

    for file in safetensors_files(checkpoint):
        with safe_open(str(file), framework="pt") as shard:
            for name in shard.keys():
                yield name, plan.read(name, shard)
