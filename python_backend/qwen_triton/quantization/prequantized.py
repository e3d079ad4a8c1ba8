"""Checkpoints that arrive quantized (Qwen's -GPTQ-Int4/-Int8 and -AWQ releases) read into DecoderModel.

The checkpoint stores q/k/v and gate/up as separate packed modules; each is read by
`quantization.load_quantized_linear` and stacked into our fused projections (exact: every format here
quantizes per output row). The float rest (embeddings, norms, an unquantized lm_head) loads as usual.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from qwen_triton.quantization.awq import read_awq_linear
from qwen_triton.quantization.formats import concat_out_features
from qwen_triton.quantization.gptq import read_gptq_linear

# Our fused module -> the checkpoint modules it is made of, per decoder layer.
FUSED_SOURCES = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
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


def install_quantized_layers(
    model: nn.Module, tensors: dict[str, torch.Tensor], quant_config: dict, dtype: torch.dtype
) -> set[str]:
    """Replace each layer's linears by the checkpoint's packed ones; consume their tensors from `tensors`.

    Returns the parameter names now loaded, so the float loader does not ask for them again.
    """
    loaded: set[str] = set()
    for i in range(len(model.layers)):
        for target, sources in FUSED_SOURCES.items():
            prefixes = [f"model.layers.{i}.{source}" for source in sources]
            parts = [load_quantized_linear(tensors, prefix, quant_config) for prefix in prefixes]
            module = parts[0] if len(parts) == 1 else concat_out_features(parts)
            if isinstance(module, nn.Linear):  # a module the quantizer left in float
                module = module.to(dtype)
            parent, _, leaf = f"layers.{i}.{target}".rpartition(".")
            setattr(model.get_submodule(parent), leaf, module)
            loaded.update(f"layers.{i}.{target}.{name}" for name, _ in module.named_parameters())
            for prefix in prefixes:
                for name in [n for n in tensors if n.startswith(prefix + ".")]:
                    del tensors[name]
    return loaded


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
