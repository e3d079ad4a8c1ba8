"""The memory plan: what a model will need on its device, counted before anything is allocated.

Three parts: the weights in their target format (counted on the model built on the meta device, so a
quantized layer counts its packed bytes, not its float ones), the KV cache's smallest useful pool (one
sequence at the longest context) and the activations of the largest step. A plan that does not fit the
device's free memory is refused before the first byte is allocated, with the figures and the options
that would fit (a quantization preset, or tensor parallelism).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qwen_triton.quantization.formats import DEQUANTIZED_MATMUL_MIN_ROWS
from qwen_triton.quantization.spec import linear_weight_bytes, parse_spec

log = logging.getLogger(__name__)

GB = 1e9
# The presets a refused plan suggests, smallest savings first.
SUGGESTED_PRESETS = ("int8", "fp8", "layered", "int4")
SUGGESTED_TP_SIZES = (2, 4, 8)


@dataclass(frozen=True)
class StepShape:
    """The largest step the engine runs: token rows through the layers, sampled rows through the head."""

    max_num_batched_tokens: int
    max_num_seqs: int


@dataclass
class MemoryPlan:
    weight_bytes: int  # the model's parameters and buffers in their target formats
    kv_bytes: int  # the KV pool the plan reserves at least (the engine gives it what is free after loading)
    activation_bytes: int  # the largest step's intermediate tensors
    free_bytes: int | None  # the device's free memory; None where not measured (CPU)
    weights_description: str = ""

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    def __str__(self) -> str:
        free = "not measured" if self.free_bytes is None else f"{self.free_bytes / GB:.2f} GB"
        return (
            f"memory plan: weights {self.weight_bytes / GB:.2f} GB{self.weights_description}, "
            f"KV at least {self.kv_bytes / GB:.2f} GB, activations {self.activation_bytes / GB:.2f} GB: "
            f"{self.needed_bytes / GB:.2f} GB needed, device free {free}"
        )


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of `model` (meta tensors included: shapes suffice)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def weight_bytes_as(float_model: nn.Module, spec: str, role_of: Callable[[str], str | None], float_bytes: int) -> int:
    """Bytes of a float model (on meta) were its linears stored per `spec` (`role_of`: a linear's dotted
    name -> its role, None for a linear that stays float): the figures a refusal suggests."""
    formats = parse_spec(spec)
    total = tensor_bytes(float_model)
    # A weight shared with a module that stays (a tied head's embedding) stays too: the quantized copy adds.
    kept = {id(p) for m in float_model.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    for name, module in float_model.named_modules():
        role = role_of(name) if isinstance(module, nn.Linear) else None
        if role is None or formats[role].kind == "none":
            continue
        freed = 0 if id(module.weight) in kept else module.in_features * module.out_features * float_bytes
        total += linear_weight_bytes(module.in_features, module.out_features, formats[role], float_bytes) - freed
    return total


def activation_bytes(
    hf_config, step: StepShape, dtype: torch.dtype, split_world: int = 1, quantized: bool = False
) -> int:
    """The largest step's live tensors: per token row the residual stream and its norm, the fused QKV and
    the attention output, gate_up and its SiLU product; per sampled row the float32 logits and the
    sampler's probabilities. With quantized weights and prefill steps of DEQUANTIZED_MATMUL_MIN_ROWS rows
    or more, also the largest decoder linear dequantized (one at a time). An upper estimate: the layers
    free their tensors one after another."""
    hidden, inter = hf_config.hidden_size, hf_config.intermediate_size // split_world
    heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
    q = heads * head_dim // split_world
    kv = hf_config.num_key_value_heads * head_dim // split_world
    per_token = (3 * hidden + q + 2 * kv + q + 3 * inter) * dtype.itemsize
    per_sampled_row = 2 * hf_config.vocab_size * 4
    scratch = 0
    if quantized and step.max_num_batched_tokens >= DEQUANTIZED_MATMUL_MIN_ROWS:
        scratch = max(2 * inter, q + 2 * kv) * hidden * dtype.itemsize
    return step.max_num_batched_tokens * per_token + step.max_num_seqs * per_sampled_row + scratch


def free_device_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free


def check_fits(plan: MemoryPlan, options: dict[str, int]) -> None:
    """Refuse a plan larger than the free memory. `options`: weight bytes under other settings
    (``quantization=int8``, ``tensor_parallel_size=2``, ...), each suggested when the plan would then fit."""
    if plan.free_bytes is None or plan.needed_bytes <= plan.free_bytes:
        return
    rest = plan.kv_bytes + plan.activation_bytes
    fitting = [
        f"{option} ({weights / GB:.1f} GB of weights)"
        for option, weights in options.items()
        if weights + rest <= plan.free_bytes
    ]
    hint = "; ".join(fitting) if fitting else "none of quantization int4 or tensor_parallel_size 8 fits either"
    raise ValueError(
        f"the model does not fit the device: it needs {plan.needed_bytes / GB:.2f} GB ({plan.weight_bytes / GB:.2f} GB "
        f"of weights{plan.weights_description}, {plan.kv_bytes / GB:.2f} GB of KV cache for one sequence at "
        f"max_model_len, {plan.activation_bytes / GB:.2f} GB of activations) and {plan.free_bytes / GB:.2f} GB are "
        f"free; set one of: {hint} (or lower max_model_len / max_num_batched_tokens)"
    )


def refusal_options(
    float_model: nn.Module, role_of: Callable[[str], str | None], float_bytes: int, current_spec: str
) -> dict[str, int]:
    """Weight bytes per suggestion: each quantization preset smaller than the current one, and tensor
    parallelism over 2, 4, 8 devices at the current format (each rank holds about 1/N of the weights)."""
    current = weight_bytes_as(float_model, current_spec or "none", role_of, float_bytes)
    options = {}
    for preset in SUGGESTED_PRESETS:
        weights = weight_bytes_as(float_model, preset, role_of, float_bytes)
        if weights < current:
            options[f"quantization={preset}"] = weights
    for world in SUGGESTED_TP_SIZES:
        options[f"tensor_parallel_size={world}"] = current // world
    return options
