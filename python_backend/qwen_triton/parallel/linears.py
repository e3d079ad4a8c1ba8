"""Row-parallel projections, and the check that quantized groups never straddle a rank's split.

In a tensor-parallel decoder layer (Megatron's split) the column-parallel projections (qkv_proj,
gate_up_proj) need no communication: each rank computes its own heads / intermediate rows from the
whole hidden state, so they stay the plain (or quantized) linears the model built at this rank's size,
and keep every fast path of layers/ops.py (the dense GEMV, SiLU*up in its epilogue). The row-parallel
ones (o_proj, down_proj) read this rank's slice of the input features and produce a partial sum of the
whole output: one all-reduce joins them, which `RowParallelLinear` adds after the wrapped linear.

Quantized row-parallel weights are quantized per rank, after the split, along their input dimension: a
group of an int4 / int8:gN format must lie inside one rank's slice, or the rank's groups would differ
from the single-device ones and a pre-quantized checkpoint's could not be cut at all.
`check_row_parallel_groups` refuses such a split before anything is loaded.
"""

from __future__ import annotations

import torch
from torch import nn

from qwen_triton.layers.ops import fused_ops
from qwen_triton.parallel.group import TensorParallelGroup
from qwen_triton.quantization.spec import DEFAULT_MODULE_ROLES, parse_spec

ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")


class RowParallelLinear(nn.Module):
    """`inner` (this rank's input columns of the weight) followed by the sum over ranks."""

    def __init__(self, inner: nn.Module, group: TensorParallelGroup):
        super().__init__()
        self.inner = inner
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Through fused_ops so a plain bf16 inner linear still takes the dense GEMV on CUDA.
        return self.group.all_reduce(fused_ops(x.device).linear(self.inner, x))


def install_row_parallel(model: nn.Module, group: TensorParallelGroup) -> None:
    """Wrap every layer's o_proj and down_proj (after quantization, which swaps the inner linears)."""
    for layer in model.layers:
        layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj, group)
        layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj, group)


def check_row_parallel_groups(hf_config, quantization: str, world_size: int) -> None:
    """Raise ValueError when a group-wise format's groups would straddle a row-parallel split."""
    if world_size == 1:
        return
    formats = parse_spec(quantization if quantization not in ("", "none") else None)
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads
    in_features = {"self_attn.o_proj": heads * head_dim, "mlp.down_proj": hf_config.intermediate_size}
    for name in ROW_PARALLEL:
        fmt = formats[DEFAULT_MODULE_ROLES[name.rsplit(".", 1)[1]]]
        if fmt.kind == "none" or fmt.group_size is None:
            continue  # float or per-output-channel: any column split keeps the format's meaning
        per_rank = in_features[name] // world_size
        if per_rank % fmt.group_size:
            fits = [g for g in (32, 64, 128) if per_rank % g == 0]
            hint = f"a group size that divides {per_rank} (e.g. {fmt.kind}:g{fits[-1]})" if fits else "another format"
            raise ValueError(
                f"quantization: {name} ({fmt}) splits its {in_features[name]} input features into "
                f"{world_size} slices of {per_rank}, not a multiple of the group size {fmt.group_size}: "
                f"groups would straddle the row-parallel split; use {hint} or another tensor_parallel_size"
            )
