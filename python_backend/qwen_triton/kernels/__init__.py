"""GPU fast-path kernels (Triton language; int4_mma.py in Gluon, Triton's explicit-layout dialect):
paged decode attention, weight-only quantized linears (int8, int4, fp8), dense linears for a few rows
(decode; gate_up with SiLU*up in its epilogue) and the element-wise parts of a decoder layer (add +
RMSNorm, rotary, SiLU*up).

Importing this package never imports ``triton``: CPU-only code (and CI) can import it freely, ask
``kernels_usable(device)`` and fall back to the torch paths. The kernel functions themselves are
loaded on first attribute access (PEP 562), which is when ``triton`` gets imported.

    from qwen_triton import kernels
    if kernels.kernels_usable(q.device):
        out = kernels.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)

On CPU the kernels run only under the Triton interpreter (``TRITON_INTERPRET=1``, set before the
kernel modules are imported), which the tests use for correctness; it is far too slow for serving.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch

# Public name -> the submodule that defines it.
_LAZY_ATTRIBUTES = {
    "paged_decode_attention": "paged_attention",
    "choose_num_splits": "paged_attention",
    "int8_linear": "quant_matmul",
    "fp8_linear": "quant_matmul",
    "int4_linear": "quant_matmul",
    "use_gemv": "quant_matmul",
    "dequantize_int8": "dequantize",
    "dequantize_int4": "dequantize",
    "dense_linear": "dense_gemv",
    "byte_gate_up_silu": "dense_gemv",
    "rms_norm": "elementwise",
    "add_rms_norm": "elementwise",
    "rotary": "elementwise",
    "silu_and_mul": "elementwise",
}


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def kernels_usable(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``.

    CUDA tensors need triton and a CUDA build of torch; CPU tensors need the interpreter.
    """
    if not triton_available():
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and interpreter_enabled()


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (cached: launch heuristics ask on every call)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def __getattr__(name: str):
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, name)


__all__ = ["triton_available", "interpreter_enabled", "kernels_usable", "multiprocessor_count", *_LAZY_ATTRIBUTES]
