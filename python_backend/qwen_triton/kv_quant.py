"""int8 / fp8 (e4m3) KV cache: quantize new tokens into paged blocks, dequantize gathered blocks.

Layout (docs/CONTRACTS.md): per layer, ``k_cache`` / ``v_cache`` [num_blocks, block_size, num_kv_heads,
head_dim] of int8 or float8_e4m3fn, with ``k_scale`` / ``v_scale`` float32 [num_blocks, num_kv_heads]:
value = stored * scale[block, head].

Scale scheme when a block fills token by token ("grow and requantize"): a block's scale is always the
running absmax of what has been written to it (per head) divided by the format's largest value. A write
whose tokens exceed the current range raises the scale and requantizes that block's stored entries to the
new scale first. Why this and not the alternatives:

- Fixing the scale at the first write and clamping later tokens clips outliers; and the first token of a
  sequence (the attention sink) is often the atypical one, so its scale fits the others badly.
- Per-token scales are exact but cost a [num_blocks, block_size, heads] scale tensor (6 % of int8 K/V at
  head_dim 64) and a contract change for every kernel.
- Grow-and-requantize keeps the contract's per-(block, head) scale and never clips. Its cost: a requantize
  of at most one block per head when the range grows (frequent in the first tokens of a block, rare
  later), and a second rounding of the entries already there (error <= half a step of the old scale plus
  half a step of the new one, per growth: measured on Gaussian keys written one token at a time, int8
  relative error 0.9-1.1 % against 0.8 % for a one-shot write). A prefill writes whole blocks at once
  and rounds only once.
- fp8 scales are powers of two: a floating-point format loses no precision by that (only the top of its
  range goes unused), and requantizing by a power of two only shifts exponents, so a growing fp8 block
  is rescaled exactly (bar values that sink into fp8's subnormals).

A write at offset 0 of a block starts that block afresh (its scale is reset): blocks are filled in order,
so offset 0 is always the first write of a new occupant, whoever held the block before.
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


def kv_storage_dtype(kind: str) -> torch.dtype:
    """'int8' / 'fp8' -> the cache element dtype."""
    try:
        return KV_CACHE_DTYPES[kind]
    except KeyError:
        raise ValueError(f"kv_cache_dtype: {kind!r} is not a quantized KV format; use one of {sorted(KV_CACHE_DTYPES)}")


def allocate_quantized_kv(
    num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, kind: str, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One of k_cache / v_cache with its scale tensor (all scales 0: every block starts empty)."""
    cache = torch.zeros(num_blocks, block_size, num_kv_heads, head_dim, dtype=kv_storage_dtype(kind), device=device)
    scale = torch.zeros(num_blocks, num_kv_heads, dtype=torch.float32, device=device)
    return cache, scale


def _quantize(values: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float values / scale (broadcast) -> dtype, rounded and clamped to the format's range."""
    qmax = _QMAX[dtype]
    scaled = (values.float() / scale.clamp(min=1e-30)).clamp(-qmax, qmax)
    return scaled.round().to(dtype) if dtype == torch.int8 else scaled.to(dtype)


def write_quantized_kv(
    cache: torch.Tensor, scale: torch.Tensor, new: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write `new` [num_tokens, num_kv_heads, head_dim] at `slot_mapping` (block * block_size + offset),
    in place, updating `scale` [num_blocks, num_kv_heads] by the grow-and-requantize scheme above."""
    num_blocks, block_size, num_heads, head_dim = cache.shape
    qmax = _QMAX[cache.dtype]
    slot_mapping = slot_mapping.to(torch.int64)
    blocks = slot_mapping // block_size
    scale[blocks[slot_mapping % block_size == 0]] = 0.0  # new occupants: forget the old scale

    touched, token_block = torch.unique(blocks, return_inverse=True)
    token_amax = new.detach().abs().amax(dim=-1).float()  # [tokens, heads]
    block_amax = torch.zeros(len(touched), num_heads, device=new.device).scatter_reduce(
        0, token_block[:, None].expand(-1, num_heads), token_amax, reduce="amax"
    )
    old_scale = scale[touched]
    needed = block_amax / qmax
    if cache.dtype == torch.float8_e4m3fn:
        needed = torch.exp2(torch.ceil(torch.log2(needed.clamp(min=2.0**-126))))
    new_scale = torch.maximum(old_scale, needed)

    grown = (new_scale > old_scale) & (old_scale > 0)
    regrown_blocks = grown.any(dim=1)
    if regrown_blocks.any():
        ids = touched[regrown_blocks]
        ratio = torch.where(grown, old_scale / new_scale, torch.ones_like(old_scale))[regrown_blocks]
        cache[ids] = _quantize(cache[ids].float() * ratio[:, None, :, None], torch.ones(()), cache.dtype)
    scale[touched] = new_scale

    token_scale = new_scale[token_block]  # [tokens, heads]
    cache.view(-1, num_heads, head_dim)[slot_mapping] = _quantize(new, token_scale[..., None], cache.dtype)


def dequantize_kv_blocks(
    cache: torch.Tensor, scale: torch.Tensor, block_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Blocks `block_ids` [n] -> float [n, block_size, num_kv_heads, head_dim] in `dtype`."""
    block_ids = block_ids.to(torch.int64)
    return (cache[block_ids].float() * scale[block_ids][:, None, :, None]).to(dtype)


def gather_dequantized(
    cache: torch.Tensor, scale: torch.Tensor, block_table: torch.Tensor, context_len: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One sequence's first `context_len` tokens, [context_len, num_kv_heads, head_dim], from its block table."""
    block_size = cache.shape[1]
    used = block_table[: -(-context_len // block_size)]
    blocks = dequantize_kv_blocks(cache, scale, used, dtype)
    return blocks.flatten(0, 1)[:context_len]


def kv_bytes_per_token(
    num_layers: int, num_kv_heads: int, head_dim: int, kind: str = "auto", block_size: int = 16,
    float_bytes: int = 2,
) -> float:
    """Bytes of K and V one token occupies across all layers; quantized kinds include their share of the
    per-(block, head) float32 scales. kind 'auto' = the model's float dtype of `float_bytes` bytes."""
    if kind == "auto":
        return 2 * num_layers * num_kv_heads * head_dim * float_bytes
    element = kv_storage_dtype(kind).itemsize
    return 2 * num_layers * num_kv_heads * (head_dim * element + 4 / block_size)
