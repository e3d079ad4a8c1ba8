"""The element-wise parts of a decoder layer: add + RMSNorm, RMSNorm, rotary embedding (alone, or
with the new K/V written into a float paged cache), SiLU*up; and the layer's linears, which on CUDA
take a GEMV kernel at decode-sized row counts.

Two implementations behind one set of names (``FusedOps``; ``fused_ops(device)`` picks):
- on CUDA with Triton, the hand-written kernels of ``kernels/elementwise.py``: one launch each, for
  every step (prefill and decode, any token count, inside CUDA graphs too). In eager torch these parts
  are dozens of small kernels per layer (RMSNorm alone is seven): a 512-token prefill of Qwen2.5-7B
  launched about a thousand of them and the host, not the GPU, set its pace; at batch 1 each added a
  couple of microseconds to a decode step even inside a CUDA graph. (torch.compile is no substitute:
  it recompiles on new shapes and costs compile time at start-up.) ``benchmarks/engine_profile.py prefill``
  counts a prefill step's launches and GPU time.
- elsewhere, the eager functions below. They are the reference: tests compare them with transformers
  bit for bit (float32, CPU), and the kernels with them (tests/kernels/test_kernels_elementwise.py).

The linears: ``linear(module, x)`` is ``module(x)`` and ``gate_up_silu(module, x)`` is
``silu_and_mul(module(x))`` (the MLP's fused gate_up projection). On CUDA, a plain bf16 / fp16
``nn.Linear`` with at most ``dense_gemv.ROUTE_MAX_ROWS`` rows of input runs
``kernels/dense_gemv.py`` instead of cuBLAS (gate_up with SiLU*up in the GEMV's epilogue, so the
down projection reads a ready input); an int8 / fp8 gate_up at the rows its one-byte GEMV serves takes that
kernel's fused form too (``byte_gate_up_silu``); other quantized linears (quantization/formats.py), float32
weights and more rows keep ``module(x)`` (then the SiLU*up kernel). Those kernels add up in another order than cuBLAS,
so their outputs can differ in the last bit.

The kernels round to the model dtype exactly where these functions do; what they cannot repeat is the
order in which torch adds up a row's squares for the RMSNorm variance (see kernels/elementwise.py).

Two differences in side effects, never in returned values, on the kernels' side: ``rotary`` and
``rotary_and_write_kv`` rotate q and k in place (models/qwen2.py passes views into the fresh qkv output and
uses only the returned tensors), and ``add_rms_norm`` writes ``x + residual`` into ``residual`` and
returns that tensor (models/qwen2.py replaces its residual with the returned one and never reads the old
values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qwen_triton import kernels
from qwen_triton.layers.attention import write_kv
from qwen_triton.quantization.formats import PerChannelLinear


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """In float32 like the reference, then back: a bf16 variance loses the small components."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """(norm(x + residual), x + residual): the sum in the model dtype, as the reference computes it."""
    x = x + residual
    return rms_norm(x, weight, eps), x


def rotary(q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor):
    """Rotate q [tokens, heads, dim] and k [tokens, kv_heads, dim] by their positions (rotate-half form)."""
    cos = cos_table[positions].unsqueeze(1).to(q.dtype)
    sin = sin_table[positions].unsqueeze(1).to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def rotary_and_write_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
):
    """``rotary``, then the rotated k and v [tokens, kv_heads, dim] stored at their slots (int64
    [tokens]) of a float paged cache [num_blocks, block_size, kv_heads, dim] (``attention.write_kv``);
    returns the rotated (q, k). One function, not two, so that the kernel side can do both in one
    launch."""
    if not _float_cache(k_cache) or not _float_cache(v_cache):
        # Converting to int8 / fp8 here would store unscaled values: those caches need write_quantized_kv.
        raise ValueError(f"k_cache/v_cache: float caches only, got {k_cache.dtype} and {v_cache.dtype}")
    q, k = rotary(q, k, cos_table, sin_table, positions)
    write_kv(k, v, (k_cache, v_cache, None, None), slot_mapping)
    return q, k


def _float_cache(cache: torch.Tensor) -> bool:
    return cache.dtype in (torch.float16, torch.bfloat16, torch.float32)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer (nn.Linear or a quantized one) applied to x."""
    return module(x)


def gate_up_silu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the MLP's fused gate_up projection: one function, so that the kernel side
    can form it in the matmul's epilogue instead of writing gate_up out and reading it back."""
    return silu_and_mul(linear(module, x))


@dataclass(frozen=True)
class FusedOps:
    """The functions a model calls for the element-wise parts of a layer and its linears (names and
    signatures of the eager functions above)."""

    rms_norm: Callable
    add_rms_norm: Callable
    rotary: Callable
    rotary_and_write_kv: Callable
    silu_and_mul: Callable
    linear: Callable
    gate_up_silu: Callable


EAGER = FusedOps(rms_norm, add_rms_norm, rotary, rotary_and_write_kv, silu_and_mul, linear, gate_up_silu)
_TRITON: FusedOps | None = None


def fused_ops(device: torch.device) -> FusedOps:
    """The Triton kernels for CUDA tensors where Triton is installed, else the eager functions."""
    global _TRITON
    if device.type != "cuda":
        return EAGER
    if _TRITON is None:
        if not kernels.kernels_usable(device):  # asked once: models/qwen2.py calls this every step
            return EAGER
        _TRITON = kernel_ops()
    return _TRITON


def kernel_ops() -> FusedOps:
    """The Triton set (what ``fused_ops`` returns on CUDA; on CPU, tests run it in the interpreter)."""
    from qwen_triton.kernels import dense_gemv, elementwise  # imports triton: only here, never on CPU-only paths

    def gemv_applies(module: nn.Module, x: torch.Tensor) -> bool:
        # type(), not isinstance: a subclass may compute something else. Quantized linears are not
        # nn.Linear at all. Row counts are fixed per CUDA graph, so a graph's choice is its replays'.
        return (
            type(module) is nn.Linear
            and x.dim() == 2
            and x.shape[0] <= dense_gemv.ROUTE_MAX_ROWS
            and x.dtype in (torch.float16, torch.bfloat16)
            and module.weight.dtype == x.dtype
        )

    def kernel_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if gemv_applies(module, x):
            return dense_gemv.dense_linear(x, module.weight, module.bias)
        return module(x)

    def kernel_gate_up_silu(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if gemv_applies(module, x) and module.bias is None:
            return dense_gemv.dense_gate_up_silu(x, module.weight)
        if isinstance(module, PerChannelLinear) and module.bias is None and x.dim() == 2 and module.takes_gemv(x):
            return dense_gemv.byte_gate_up_silu(x, module.qweight, module.scale)
        return elementwise.silu_and_mul(kernel_linear(module, x))

    return FusedOps(
        elementwise.rms_norm,
        elementwise.add_rms_norm,
        elementwise.rotary,
        elementwise.rotary_and_write_kv,
        elementwise.silu_and_mul,
        kernel_linear,
        kernel_gate_up_silu,
    )
