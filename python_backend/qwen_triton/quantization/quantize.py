"""Quantizing a float model in place: each matching nn.Linear swapped for its quantized module."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from qwen_triton.quantization.formats import Fp8Linear, GroupwiseLinear, Int8Linear, QuantizedLinear
from qwen_triton.quantization.spec import DEFAULT_MODULE_ROLES, QuantFormat, parse_spec


def quantize_linear(linear: nn.Linear, fmt: QuantFormat) -> nn.Module:
    """One nn.Linear -> its quantized replacement (the module itself for 'none')."""
    weight, bias = linear.weight, linear.bias
    if fmt.kind == "none":
        return linear
    if fmt.kind == "int8" and fmt.group_size is None:
        return Int8Linear.from_float(weight, bias)
    if fmt.kind == "fp8":
        return Fp8Linear.from_float(weight, bias)
    bits = 4 if fmt.kind == "int4" else 8
    return GroupwiseLinear.from_float(weight, bias, bits=bits, group_size=fmt.group_size, symmetric=fmt.symmetric)


# ----------------------------------------------------------------------------------------------------------
# Swapping a model's modules
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ModuleReport:
    name: str
    role: str
    format: str
    bytes_before: int
    bytes_after: int


@dataclass
class QuantizationReport:
    """What `quantize_model` did. model_bytes_* count every distinct parameter and buffer once (a tied
    lm_head shares the embedding's storage until it is quantized into a copy of its own)."""

    modules: list[ModuleReport] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    @property
    def linear_bytes_before(self) -> int:
        return sum(m.bytes_before for m in self.modules)

    @property
    def linear_bytes_after(self) -> int:
        return sum(m.bytes_after for m in self.modules)

    def __str__(self) -> str:
        saved = 1 - self.model_bytes_after / max(self.model_bytes_before, 1)
        return (
            f"quantized {sum(m.format != 'none' for m in self.modules)} of {len(self.modules)} linears; "
            f"model {self.model_bytes_before / 2**20:.1f} MiB -> {self.model_bytes_after / 2**20:.1f} MiB "
            f"({saved:.1%} less)"
        )


def model_bytes(model: nn.Module) -> int:
    """Bytes of every distinct tensor storage among parameters and buffers."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        key = (tensor.device, tensor.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += tensor.untyped_storage().nbytes()
    return total


def quantize_model(
    model: nn.Module,
    spec: str | Mapping[str, str] | None,
    module_roles: Mapping[str, str] | Callable[[str], str | None] | None = None,
) -> QuantizationReport:
    """Replace, in place, each nn.Linear whose role has a format by its quantized version.

    `module_roles` maps a module's leaf name (``"q_proj"``) to a role, or is a function of the full dotted
    name returning a role or None; the default knows our DecoderModel and Hugging Face Llama/Qwen2 names.
    """
    formats = parse_spec(spec)
    role_of = _role_lookup(module_roles)
    report = QuantizationReport(model_bytes_before=model_bytes(model))
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, linear in targets:
        role = role_of(name)
        if role is None:
            continue
        fmt = formats[role]
        bytes_before = sum(t.numel() * t.element_size() for t in linear.parameters())
        replacement = quantize_linear(linear, fmt)
        if replacement is not linear:
            _set_submodule(model, name, replacement.to(linear.weight.device))
        bytes_after = replacement.weight_bytes() if isinstance(replacement, QuantizedLinear) else bytes_before
        report.modules.append(ModuleReport(name, role, str(fmt), bytes_before, bytes_after))
    report.model_bytes_after = model_bytes(model)
    return report


def _role_lookup(module_roles) -> Callable[[str], str | None]:
    if callable(module_roles):
        return module_roles
    table = DEFAULT_MODULE_ROLES if module_roles is None else dict(module_roles)
    return lambda name: table.get(name.rsplit(".", 1)[-1])


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)
