"""int8 / fp8 paged KV blocks: writes token by token or all at once, scales, reads, bytes."""

import pytest
import torch

from qwen_triton.kv_quant import (
    allocate_quantized_kv,
    dequantize_kv_blocks,
    gather_dequantized,
    kv_bytes_per_token,
    kv_storage_dtype,
    write_quantized_kv,
)

BLOCK, HEADS, DIM = 16, 2, 64


def keys(tokens, seed=0):
    torch.manual_seed(seed)
    return torch.randn(tokens, HEADS, DIM)


def relative_error(read, exact):
    return float((read - exact).norm() / exact.norm())


# Measured on N(0, 1) keys: int8 0.6-0.8 % relative error, fp8 e4m3 2.3-2.6 %.
@pytest.mark.parametrize("kind, bound", [("int8", 0.01), ("fp8", 0.03)])
def test_prefill_write_reads_back_within_the_format_error(kind, bound):
    cache, scale = allocate_quantized_kv(8, BLOCK, HEADS, DIM, kind)
    values = keys(40)
    table = torch.tensor([5, 2, 7])  # a sequence's blocks need not be in order
    slots = table[torch.arange(40) // BLOCK] * BLOCK + torch.arange(40) % BLOCK
    write_quantized_kv(cache, scale, values, slots)
    assert cache.dtype == kv_storage_dtype(kind) and scale.shape == (8, HEADS)
    read = gather_dequantized(cache, scale, table, 40)
    assert read.shape == (40, HEADS, DIM)
    assert relative_error(read, values) < bound
    # each block's scale is its absmax per head over the format's largest value (fp8: rounded up to a
    # power of two)
    amax = values[:16].abs().amax(dim=(0, 2))
    if kind == "int8":
        torch.testing.assert_close(scale[5], amax / 127)
    else:
        assert torch.equal(torch.exp2(torch.log2(scale[5]).round()), scale[5])
        assert bool(((amax / 448 <= scale[5]) & (scale[5] < 2 * amax / 448)).all())


def write_token_by_token(kind, values):
    cache, scale = allocate_quantized_kv(4, BLOCK, HEADS, DIM, kind)
    for t in range(len(values)):
        write_quantized_kv(cache, scale, values[t : t + 1], torch.tensor([t]))
    return cache, scale


def write_at_once(kind, values):
    cache, scale = allocate_quantized_kv(4, BLOCK, HEADS, DIM, kind)
    write_quantized_kv(cache, scale, values, torch.arange(len(values)))
    return cache, scale


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_token_by_token_writes_never_clip_a_later_outlier(kind):
    values = keys(48, seed=1)
    values[20] *= 8.0  # a large token arrives after its block already holds four small ones
    cache, scale = write_token_by_token(kind, values)
    read = gather_dequantized(cache, scale, torch.arange(3), 48)
    assert torch.allclose(read[20], values[20], rtol=0, atol=float(values[20].abs().max()) * 0.07)
    # the final scale is the block's absmax, as one write of the whole block would give
    _, prefill_scale = write_at_once(kind, values)
    torch.testing.assert_close(scale[:3], prefill_scale[:3])


def test_token_by_token_int8_costs_little_more_than_one_write():
    # Measured relative error on N(0, 1) keys, seeds 0-2: token by token 0.88-1.06 %, at once 0.77-0.83 %.
    for seed in range(3):
        values = keys(48, seed=seed)
        one_by_one = gather_dequantized(*write_token_by_token("int8", values), torch.arange(3), 48)
        at_once = gather_dequantized(*write_at_once("int8", values), torch.arange(3), 48)
        assert relative_error(one_by_one, values) < 1.4 * relative_error(at_once, values)


def test_token_by_token_fp8_is_bit_identical_to_one_write():
    values = keys(48, seed=3)
    values[30] *= 20
    one_by_one = gather_dequantized(*write_token_by_token("fp8", values), torch.arange(3), 48)
    at_once = gather_dequantized(*write_at_once("fp8", values), torch.arange(3), 48)
    assert torch.equal(one_by_one, at_once)  # power-of-two rescaling is exact


def test_one_growth_of_an_int8_block_adds_at_most_half_a_step():
    cache, scale = allocate_quantized_kv(1, BLOCK, HEADS, DIM, "int8")
    values = keys(16, seed=2)
    values[8:] *= 3
    write_quantized_kv(cache, scale, values[:8], torch.arange(8))
    write_quantized_kv(cache, scale, values[8:], torch.arange(8, 16))  # the range grows: requantize once
    read = dequantize_kv_blocks(cache, scale, torch.tensor([0]))[0]
    step = scale[0][None, :, None]  # final quantization step per head
    old_step = values[:8].abs().amax(dim=(0, 2))[None, :, None] / 127
    assert bool(((read - values).abs() <= 0.5 * step + 0.5 * old_step + 1e-6).all())


def test_a_write_at_offset_zero_starts_the_block_afresh():
    cache, scale = allocate_quantized_kv(2, BLOCK, HEADS, DIM, "int8")
    write_quantized_kv(cache, scale, keys(16) * 100, torch.arange(16))  # a previous, loud occupant
    small = keys(3, seed=3)
    write_quantized_kv(cache, scale, small, torch.arange(3))  # block 0 freed and handed out again
    torch.testing.assert_close(scale[0], small.abs().amax(dim=(0, 2)) / 127)
    assert relative_error(gather_dequantized(cache, scale, torch.tensor([0]), 3), small) < 0.01


def test_a_batch_of_sequences_writes_each_into_its_own_blocks():
    cache, scale = allocate_quantized_kv(6, BLOCK, HEADS, DIM, "int8")
    a, b = keys(20, seed=4), keys(5, seed=5) * 10
    write_quantized_kv(cache, scale, torch.cat([a, b]), torch.cat([
        torch.tensor([0, 1])[torch.arange(20) // BLOCK] * BLOCK + torch.arange(20) % BLOCK,
        4 * BLOCK + torch.arange(5),
    ]))
    # decode step: one new token for each sequence
    na, nb = keys(1, seed=6), keys(1, seed=7) * 10
    write_quantized_kv(cache, scale, torch.cat([na, nb]), torch.tensor([1 * BLOCK + 4, 4 * BLOCK + 5]))
    assert relative_error(gather_dequantized(cache, scale, torch.tensor([0, 1]), 21), torch.cat([a, na])) < 0.01
    assert relative_error(gather_dequantized(cache, scale, torch.tensor([4]), 6), torch.cat([b, nb])) < 0.01


def test_bf16_values_are_written_and_read_in_bf16():
    cache, scale = allocate_quantized_kv(1, BLOCK, HEADS, DIM, "fp8")
    values = keys(4).to(torch.bfloat16)
    write_quantized_kv(cache, scale, values, torch.arange(4))
    read = gather_dequantized(cache, scale, torch.tensor([0]), 4, dtype=torch.bfloat16)
    assert read.dtype == torch.bfloat16 and relative_error(read.float(), values.float()) < 0.04


def test_int8_kv_holds_about_twice_the_tokens_of_bf16():
    # Qwen2.5-7B: 28 layers, 4 KV heads, head_dim 128
    bf16 = kv_bytes_per_token(28, 4, 128)
    int8 = kv_bytes_per_token(28, 4, 128, "int8", block_size=16)
    assert bf16 == 57344
    assert int8 == 28 * 2 * 4 * (128 + 4 / 16)
    assert 1.99 < bf16 / int8 < 2.0


def test_unknown_kv_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="kv_cache_dtype: 'int4'"):
        allocate_quantized_kv(1, BLOCK, HEADS, DIM, "int4")
