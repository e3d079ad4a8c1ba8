"""Writers of GPTQ and AWQ packed tensors, written from the formats' descriptions and independently of
qwen_triton's readers, so that a read-back test checks the readers against the format, not against
themselves."""

from __future__ import annotations

import torch

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # nibble k of a word holds output channel 8j + AWQ_PACK_ORDER[k]


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding unsigned 32-bit words -> int32 with the same bits."""
    words = words & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[n, m] -> int32 [n * bits / 32, m]: row r * p + k goes to bits k*bits of word row r."""
    p = 32 // bits
    v = values.to(torch.int64) & (2**bits - 1)
    words = torch.zeros(v.shape[0] // p, v.shape[1], dtype=torch.int64)
    for k in range(p):
        words |= v[k::p] << (k * bits)
    return _to_int32(words)


def pack_columns(values: torch.Tensor, bits: int, order: list[int] | None = None) -> torch.Tensor:
    """[n, m] -> int32 [n, m * bits / 32]: column c * p + order[k] goes to bits k*bits of word column c."""
    p = 32 // bits
    order = order or list(range(p))
    v = values.to(torch.int64) & (2**bits - 1)
    words = torch.zeros(v.shape[0], v.shape[1] // p, dtype=torch.int64)
    for k in range(p):
        words |= v[:, order[k] :: p] << (k * bits)
    return _to_int32(words)


def gptq_tensors(prefix, q, zeros, scales, g_idx, bits, bias=None, v1=True):
    """q [in, out] ints, zeros/scales [groups, out], g_idx [in] -> the module's GPTQ tensors.
    v1 ("gptq" checkpoint_format) stores zero - 1."""
    stored_zeros = zeros - 1 if v1 else zeros
    tensors = {
        f"{prefix}.qweight": pack_rows(q, bits),
        f"{prefix}.qzeros": pack_columns(stored_zeros, bits),
        f"{prefix}.scales": scales.to(torch.float16),
        f"{prefix}.g_idx": g_idx.to(torch.int32),
    }
    if bias is not None:
        tensors[f"{prefix}.bias"] = bias
    return tensors


def awq_tensors(prefix, q, zeros, scales, bias=None):
    """q [in, out] ints 0..15, zeros/scales [groups, out] -> the module's AWQ (gemm) tensors."""
    tensors = {
        f"{prefix}.qweight": pack_columns(q, 4, AWQ_PACK_ORDER),
        f"{prefix}.qzeros": pack_columns(zeros, 4, AWQ_PACK_ORDER),
        f"{prefix}.scales": scales.to(torch.float16),
    }
    if bias is not None:
        tensors[f"{prefix}.bias"] = bias
    return tensors
