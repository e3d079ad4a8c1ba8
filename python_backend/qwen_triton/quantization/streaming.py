"""Quantized linears built empty on the device and filled a block of output rows at a time.

The loader (models/loader.py) creates each quantized module at its final size before any weight arrives,
then hands it the checkpoint's float rows as they are read: `quantize_rows_into` quantizes them on the
device and writes the result into the module's stored tensors. Every format here quantizes each output row
on its own (per-channel scales; groups run along the input), so filling a module block by block gives
exactly the tensors that quantizing the whole float weight at once gives (`quantize.quantize_linear`).
"""

from __future__ import annotations

import torch

from qwen_triton.quantization.formats import Fp8Linear, GroupwiseLinear, Int8Linear, QuantizedLinear
from qwen_triton.quantization.spec import QuantFormat

# The stored tensors of each class that hold one row per output channel (bias is filled apart: it is float).
_ROW_TENSORS = {
    Int8Linear: ("qweight", "scale"),
    Fp8Linear: ("qweight", "scale"),
    GroupwiseLinear: ("qweight", "scales", "zeros"),
}


def quantized_class(fmt: QuantFormat) -> type[QuantizedLinear]:
    if fmt.kind == "int8" and fmt.group_size is None:
        return Int8Linear
    if fmt.kind == "fp8":
        return Fp8Linear
    if fmt.kind in ("int4", "int8"):
        return GroupwiseLinear
    raise ValueError(f"format {fmt} is not a quantized format")


def empty_quantized_linear(
    fmt: QuantFormat,
    in_features: int,
    out_features: int,
    bias: bool,
    device: torch.device,
    bias_dtype: torch.dtype,
) -> QuantizedLinear:
    """A quantized linear of `fmt` with uninitialised storage on `device`, to be filled by `quantize_rows_into`."""
    empty = lambda *shape, dtype: torch.empty(*shape, dtype=dtype, device=device)
    bias_tensor = empty(out_features, dtype=bias_dtype) if bias else None
    cls = quantized_class(fmt)
    if cls is not GroupwiseLinear:
        return cls(
            empty(out_features, in_features, dtype=cls.storage_dtype),
            empty(out_features, dtype=torch.float32),
            bias_tensor,
        )
    bits = 4 if fmt.kind == "int4" else 8
    groups = -(-in_features // fmt.group_size)
    return GroupwiseLinear(
        empty(out_features, in_features * bits // 8, dtype=torch.uint8),
        empty(out_features, groups, dtype=torch.float16),
        empty(out_features, groups, dtype=torch.uint8),
        bits,
        fmt.group_size,
        bias_tensor,
        in_features,
    )


def quantize_weight(weight: torch.Tensor, fmt: QuantFormat, device_layout: bool = True) -> QuantizedLinear:
    """A float weight [out, in] -> its quantized module in `fmt` (no bias), computed where the weight is;
    ``device_layout=False``: group-wise bytes row-major whatever the device (GroupwiseLinear)."""
    cls = quantized_class(fmt)
    if cls is not GroupwiseLinear:
        return cls.from_float(weight)
    bits = 4 if fmt.kind == "int4" else 8
    return GroupwiseLinear.from_float(
        weight, bits=bits, group_size=fmt.group_size, symmetric=fmt.symmetric, device_layout=device_layout
    )


def quantize_rows_into(module: QuantizedLinear, first_row: int, rows: torch.Tensor, fmt: QuantFormat) -> None:
    """Quantize float weight rows [n, in] and store them as output rows first_row .. first_row + n of `module`."""
    part = quantize_weight(rows, fmt, device_layout=False)  # row-major: its rows go into the module's layout
    for name in _ROW_TENSORS[type(module)]:
        if name == "qweight" and module.qweight.dim() == 4:  # GroupwiseLinear's tiled int4 layout (CUDA)
            from qwen_triton.kernels import int4_layout

            int4_layout.write_rows(module.qweight, first_row, part.qweight)
        else:
            getattr(module, name)[first_row : first_row + rows.shape[0]].copy_(getattr(part, name))
