"""int8 / fp8 paged KV blocks: writes token by token or all at once, scales, reads, bytes."""

import pytest
import torch

from qwen_triton.layers.kv_cache import (
    allocate_quantized_kv,
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


# Measured on N(0, 1) keys, per-token scales: int8 0.6-0.7 % relative error, fp8 e4m3 2.3-2.6 %.
@pytest.mark.parametrize("kind, bound", [("int8", 0.01), ("fp8", 0.03)])
def test_prefill_write_reads_back_within_the_format_error(kind, bound):
    cache, scale = allocate_quantized_kv(8, BLOCK, HEADS, DIM, kind)
    values = keys(40)
    table = torch.tensor([5, 2, 7])  # a sequence's blocks need not be in order
    slots = table[torch.arange(40) // BLOCK] * BLOCK + torch.arange(40) % BLOCK
    write_quantized_kv(cache, scale, values, slots)
    assert cache.dtype == kv_storage_dtype(kind) and scale.shape == (8, BLOCK, HEADS)
    read = gather_dequantized(cache, scale, table, 40)
    assert read.shape == (40, HEADS, DIM)
    assert relative_error(read, values) < bound
    # each token's scale is its own absmax per head over the format's largest value
    qmax = 127 if kind == "int8" else 448
    torch.testing.assert_close(scale[5], values[:16].abs().amax(dim=2) / qmax)


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
def test_decoding_token_by_token_stores_exactly_what_a_prefill_would(kind):
    values = keys(48, seed=1)
    values[20] *= 8.0  # a large token arriving in a block that already holds small ones
    one_by_one = write_token_by_token(kind, values)
    at_once = write_at_once(kind, values)
    for a, b in zip(one_by_one, at_once):
        assert torch.equal(
            a.view(torch.uint8) if a.dtype != torch.float32 else a,
            b.view(torch.uint8) if b.dtype != torch.float32 else b,
        )
    read = gather_dequantized(*one_by_one, torch.arange(3), 48)
    # the outlier is not clipped, and its neighbours keep their own fine steps
    assert torch.allclose(read[20], values[20], rtol=0, atol=float(values[20].abs().max()) * 0.07)
    assert relative_error(read[16:20], values[16:20]) < (0.01 if kind == "int8" else 0.03)


def test_rewriting_a_slot_replaces_value_and_scale():
    cache, scale = allocate_quantized_kv(2, BLOCK, HEADS, DIM, "int8")
    write_quantized_kv(cache, scale, keys(16) * 100, torch.arange(16))  # a previous, loud occupant
    small = keys(3, seed=3)
    write_quantized_kv(cache, scale, small, torch.arange(3))  # block 0 freed and handed out again
    torch.testing.assert_close(scale[0, :3], small.abs().amax(dim=2) / 127)
    assert relative_error(gather_dequantized(cache, scale, torch.tensor([0]), 3), small) < 0.01


def test_a_batch_of_sequences_writes_each_into_its_own_blocks():
    cache, scale = allocate_quantized_kv(6, BLOCK, HEADS, DIM, "int8")
    a, b = keys(20, seed=4), keys(5, seed=5) * 10
    write_quantized_kv(
        cache,
        scale,
        torch.cat([a, b]),
        torch.cat(
            [
                torch.tensor([0, 1])[torch.arange(20) // BLOCK] * BLOCK + torch.arange(20) % BLOCK,
                4 * BLOCK + torch.arange(5),
            ]
        ),
    )
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
    int8 = kv_bytes_per_token(28, 4, 128, "int8")
    assert bf16 == 57344
    assert int8 == 28 * 2 * 4 * (128 + 4)  # a float32 scale per token and head
    assert 1.9 < bf16 / int8 < 2.0


def test_unknown_kv_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="kv_cache_dtype: 'int4'"):
        allocate_quantized_kv(1, BLOCK, HEADS, DIM, "int4")
