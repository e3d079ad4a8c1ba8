"""Checkpoints that arrive quantized (Qwen's -GPTQ-Int4/-Int8 and -AWQ releases) read into DecoderModel.

The checkpoint stores q/k/v and gate/up as separate packed modules; each is read by `load_quantized_linear`
and stacked into our fused projections by `read_fused_projection` (exact: every format here quantizes per
output row). Which checkpoint modules make which of ours is the loader's table (models/loader.py), which
also streams the float rest (embeddings, norms, an unquantized lm_head).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from qwen_triton.quantization.awq import read_awq_linear
from qwen_triton.quantization.formats import concat_out_features
from qwen_triton.quantization.gptq import read_gptq_linear

SUPPORTED_METHODS = ("gptq", "awq")


def prequantized_config(hf_config) -> dict | None:
    """config.json's quantization_config when it names a packed format we read, else None."""
    config = getattr(hf_config, "quantization_config", None)
    if config is None:
        return None
    config = config if isinstance(config, dict) else config.to_dict()
    method = str(config.get("quant_method", "")).lower()
    if method not in SUPPORTED_METHODS:
        raise ValueError(
            f"quantization_config.quant_method {method!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_METHODS)} (or a float checkpoint)"
        )
    return config


def read_fused_projection(
    tensors: Mapping[str, torch.Tensor], prefixes: Sequence[str], quant_config: Mapping, dtype: torch.dtype
) -> nn.Module:
    """The module made of the checkpoint modules at `prefixes` (q, k, v -> qkv_proj; gate, up ->
    gate_up_proj; or one), stacked along the output rows. `tensors` may read lazily (the loader's view of
    the checkpoint): only these modules' tensors are asked for, so one projection is in memory at a time."""
    parts = [load_quantized_linear(tensors, prefix, quant_config) for prefix in prefixes]
    module = parts[0] if len(parts) == 1 else concat_out_features(parts)
    if isinstance(module, nn.Linear):  # a module the quantizer left in float
        module = module.to(dtype)
    return module


# ----------------------------------------------------------------------------------------------------------
# Pre-quantized checkpoints
# ----------------------------------------------------------------------------------------------------------


def load_quantized_linear(tensors: Mapping[str, torch.Tensor], prefix: str, quant_config: Mapping | None) -> nn.Module:
    """Build the module stored under `prefix` (e.g. ``model.layers.0.self_attn.q_proj``) of a checkpoint.

    `quant_config` is config.json's ``quantization_config`` (None for a float checkpoint). A module the
    quantizer left in float (Qwen's GPTQ/AWQ checkpoints keep lm_head so) comes back as nn.Linear.
    """
    if f"{prefix}.qweight" not in tensors:
        if f"{prefix}.weight" not in tensors:
            raise KeyError(f"checkpoint has neither {prefix}.qweight nor {prefix}.weight")
        weight = tensors[f"{prefix}.weight"]
        bias = tensors.get(f"{prefix}.bias")
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        return linear
    method = str((quant_config or {}).get("quant_method", "")).lower()
    if method == "gptq":
        return read_gptq_linear(tensors, prefix, quant_config)
    if method == "awq":
        return read_awq_linear(tensors, prefix, quant_config)
    raise ValueError(
        f"{prefix}.qweight found but quantization_config.quant_method is {method or 'missing'!r}; supported: gptq, awq"
    )
