"""What the kernel modules share (Triton language and host side): float32 -> 16-bit rounding as torch
rounds, int8 bytes -> float32, the int4 -> bf16 / fp16 conversion's PTX, argument checks, and split-K
bookkeeping (K slices, per-tile counters, the separate sum kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import launch_options, pdl_enabled, wait_for_previous_kernel

# Inline PTX for int4 -> bf16 / fp16, four packed bytes (8 weights) per call, exact: the nibbles are
# masked, PRMT puts each under the exponent byte of MAGIC (bf16 0x43nn = 128 + n, fp16 0x64nn = 1024 + n),
# and one packed FMA per pair adds $5 / $6, the pair's -(MAGIC's offset + zero point): outputs $0..$3 are
# (low nibbles - zero, high nibbles - zero), 11 instructions for 8 weights. Both Triton (quant_matmul) and
# Gluon (int4_mma) kernels pass it to inline_asm_elementwise with pack=4.
_NIBBLES_PTX = """{
.reg .b32 lo, hi, magic, one;
and.b32 lo, $4, 0x0F0F0F0F;
shr.u32 hi, $4, 4;
and.b32 hi, hi, 0x0F0F0F0F;
mov.b32 magic, MAGIC;
mov.b32 one, ONE;
prmt.b32 $0, lo, magic, 0x4140;
prmt.b32 $1, lo, magic, 0x4342;
prmt.b32 $2, hi, magic, 0x4140;
prmt.b32 $3, hi, magic, 0x4342;
fma.rn.TYPE $0, $0, one, $5;
fma.rn.TYPE $1, $1, one, $6;
fma.rn.TYPE $2, $2, one, $5;
fma.rn.TYPE $3, $3, one, $6;
}"""
NIBBLES_PTX_BF16 = _NIBBLES_PTX.replace("MAGIC", "0x43434343").replace("ONE", "0x3F803F80").replace("TYPE", "bf16x2")
NIBBLES_PTX_F16 = _NIBBLES_PTX.replace("MAGIC", "0x64646464").replace("ONE", "0x3C003C00").replace("TYPE", "f16x2")


@triton.jit
def round_to_dtype(x, dtype: tl.constexpr):
    """float32 -> ``dtype``, rounded to nearest even (what torch does on every dtype conversion)."""
    if dtype == tl.bfloat16:
        # torch's c10::BFloat16 formula: add 0x7FFF plus the lowest kept bit, keep the upper half.
        # NaN first becomes the canonical 0x7FC00000, whose rounding cannot carry into the sign.
        bits = x.to(tl.uint32, bitcast=True)
        bits = tl.where(x != x, tl.full(x.shape, 0x7FC00000, tl.uint32), bits)
        bits = bits + (((bits >> 16) & 1) + 0x7FFF)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def int8_bytes_to_float(w_u8):
    """uint8 view of int8 weights -> float32 values -128..127 by the "magic number" trick: u ^ 0x80 is
    q + 128; OR-ing it under the exponent of 2**23 gives the float 2**23 + q + 128, so one logic op and
    one add replace a conversion instruction."""
    bits = w_u8.to(tl.int32) ^ 0x4B000080
    return bits.to(tl.float32, bitcast=True) - 8388736.0


def check_bias(bias, out_features: int):
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias: expected shape [{out_features}], got {tuple(bias.shape)}")


def k_slices(in_features: int, split_k: int, block_k: int) -> tuple[int, int]:
    """(inputs per K slice, number of slices) for about ``split_k`` slices of whole BLOCK_K tiles,
    none of them empty."""
    k_per_split = triton.cdiv(triton.cdiv(in_features, split_k), block_k) * block_k
    return k_per_split, triton.cdiv(in_features, k_per_split)


# int32 counters (one per output tile) for SERIAL split-K, per device; each launch leaves them zero.
# Allocated once and never replaced: CUDA graphs keep the address they were captured with. Shared
# by all streams, so two SERIAL launches must not run at once on one device (one engine per process
# launches on one stream; Triton's Python-backend instances are separate processes).
_SPLIT_COUNTERS: dict = {}
_MAX_COUNTED_TILES = 1 << 16


def split_counters(device: torch.device, tiles: int):
    """Zeroed counters for the launch's output tiles, or None (then _sum_splits_kernel adds up)."""
    counters = _SPLIT_COUNTERS.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None  # not from a graph's memory pool: an eager launch (warm-up) allocates them
        counters = _SPLIT_COUNTERS[device] = torch.zeros(_MAX_COUNTED_TILES, dtype=torch.int32, device=device)
    return counters if tiles <= counters.numel() else None


def split_partials(y: torch.Tensor, split_k: int, tiles: int, serial: bool = True):
    """(float32 partials [split_k, rows, out], per-tile counters) for a launch splitting K into split_k
    slices; (y, None) unsplit. Counters are None where the launch is not SERIAL or they cannot be had
    (split_counters): then sum_splits adds the partials up after the launch."""
    if split_k == 1:
        return y, None
    part = torch.empty(split_k, *y.shape, dtype=torch.float32, device=y.device)
    return part, split_counters(y.device, tiles) if serial else None


@triton.jit
def _sum_splits_kernel(
    part_ptr, bias_ptr, y_ptr, M, N, splits, stride_ym, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr
):
    """y = sum over splits of the float32 partials (+ bias), cast to y's dtype."""
    wait_for_previous_kernel(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    acc = tl.zeros([BLOCK], tl.float32)
    for split in range(0, splits):
        acc += tl.load(part_ptr + split * M * N + offs, mask=ok, other=0.0)
    rows = offs // N
    cols = offs % N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows * stride_ym + cols, acc.to(y_ptr.dtype.element_ty), mask=ok)


def sum_splits(part: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor) -> None:
    """y = the float32 split-K partials part [splits, rows, out] added up (+ bias), in a launch of its
    own: for launches without the per-tile counters (see split_counters)."""
    splits, m, out_features = part.shape
    block = 1024
    pdl = pdl_enabled(y.device)
    _sum_splits_kernel[(triton.cdiv(m * out_features, block),)](
        part,
        bias if bias is not None else part,
        y,
        m,
        out_features,
        splits,
        y.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK=block,
        PDL=pdl,
        num_warps=4,
        **launch_options(pdl),
    )
