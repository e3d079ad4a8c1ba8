"""The paged decode-attention kernel against the plain-torch reference (kernel_reference.py)."""

import pytest
import torch
from kernel_env import HAS_CUDA, needs_kernels

pytestmark = needs_kernels


def make_case(
    generator,
    device,
    *,
    batch=3,
    heads=8,
    kv_heads=2,
    head_dim=64,
    page=16,
    max_blocks=13,
    dtype=torch.float16,
    lens=(5, 100, 200),
):
    """Random queries and caches; block tables draw distinct blocks in random order (not 0, 1, 2...)."""
    num_blocks = batch * max_blocks + 5
    shape = (num_blocks, page, kv_heads, head_dim)
    q = torch.randn(batch, heads, head_dim, generator=generator).to(dtype)
    k = torch.randn(shape, generator=generator).to(dtype)
    v = torch.randn(shape, generator=generator).to(dtype)
    tables = torch.randperm(num_blocks, generator=generator)[: batch * max_blocks].view(batch, max_blocks)
    lens = torch.tensor(lens, dtype=torch.int32)
    return [t.to(device) for t in (q, k, v, tables.int(), lens)]


def quantize(cache, kind, generator):
    """Random int8 / fp8 values with random positive scales, one per (block, slot, kv_head) as the engine
    writes them."""
    num_blocks, page, kv_heads, _ = cache.shape
    scale = torch.rand(num_blocks, page, kv_heads, generator=generator) * 0.05 + 0.01
    if kind == "int8":
        values = torch.randint(-127, 128, cache.shape, generator=generator, dtype=torch.int8)
    else:
        values = (torch.randn(cache.shape, generator=generator) * 50).to(torch.float8_e4m3fn)
    return values.to(cache.device), scale.to(cache.device)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("num_splits", [None, 1, 3])
def test_matches_reference(generator, device, rel_error, dtype, num_splits):
    from kernel_reference import paged_decode_attention_reference

    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(generator, device, dtype=dtype)
    out = paged_decode_attention(q, k, v, tables, lens, 0.125, num_splits=num_splits)
    expected = paged_decode_attention_reference(q, k, v, tables, lens, 0.125)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel_error(out, expected) < (2e-3 if dtype == torch.float16 else 1e-3)


@pytest.mark.parametrize("window,sinks,num_splits", [(50, 4, 1), (50, 4, 4), (7, 0, 2), (1000, 2, 1)])
def test_sliding_window_with_sinks(generator, device, rel_error, window, sinks, num_splits):
    from kernel_reference import paged_decode_attention_reference

    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(generator, device)
    out = paged_decode_attention(q, k, v, tables, lens, 0.125, window=window, sinks=sinks, num_splits=num_splits)
    expected = paged_decode_attention_reference(q, k, v, tables, lens, 0.125, window=window, sinks=sinks)
    assert rel_error(out, expected) < 2e-3


def test_window_changes_the_result(generator, device):
    """Guards the window test above against a kernel that ignores the window."""
    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(generator, device)
    full = paged_decode_attention(q, k, v, tables, lens, 0.125)
    windowed = paged_decode_attention(q, k, v, tables, lens, 0.125, window=50, sinks=4)
    assert torch.allclose(full[0], windowed[0])  # 5 tokens: all inside the window
    assert not torch.allclose(full[2], windowed[2], atol=1e-2)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantized_cache(generator, device, rel_error, kind):
    from kernel_reference import paged_decode_attention_reference

    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(generator, device)
    kq, k_scale = quantize(k, kind, generator)
    vq, v_scale = quantize(v, kind, generator)
    out = paged_decode_attention(q, kq, vq, tables, lens, 0.125, k_scale, v_scale, num_splits=2)
    expected = paged_decode_attention_reference(q, kq, vq, tables, lens, 0.125, k_scale, v_scale)
    assert rel_error(out, expected) < 2e-3


def test_group_of_one_and_odd_head_dim(generator, device, rel_error):
    """Plain multi-head attention (group 1) and a head_dim that is not a power of two."""
    from kernel_reference import paged_decode_attention_reference

    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(
        generator, device, heads=3, kv_heads=3, head_dim=40, page=8, max_blocks=30, lens=(1, 33, 240)
    )
    out = paged_decode_attention(q, k, v, tables, lens, 40**-0.5, num_splits=2)
    expected = paged_decode_attention_reference(q, k, v, tables, lens, 40**-0.5)
    assert rel_error(out, expected) < 2e-3


def test_strided_query_from_fused_qkv(generator, device, rel_error):
    """q is usually a view into the fused qkv projection: rows strided, head_dim contiguous."""
    from kernel_reference import paged_decode_attention_reference

    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(generator, device)
    qkv = torch.randn(q.shape[0], q.shape[1] + 4, q.shape[2], generator=generator).to(q)
    q_view = qkv[:, : q.shape[1]]
    out = paged_decode_attention(q_view, k, v, tables, lens, 0.125)
    expected = paged_decode_attention_reference(q_view.contiguous(), k, v, tables, lens, 0.125)
    assert rel_error(out, expected) < 2e-3


def test_bad_inputs_name_the_field(generator, device):
    from qwen_triton.kernels import paged_decode_attention

    q, k, v, tables, lens = make_case(generator, device)
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(q, k, v, tables.long(), lens, 0.125)
    with pytest.raises(ValueError, match="context_lens"):
        paged_decode_attention(q, k, v, tables, lens[:2], 0.125)
    with pytest.raises(ValueError, match="num_kv_heads"):
        paged_decode_attention(q[:, :7], k, v, tables, lens, 0.125)
    kq = k.to(torch.int8)
    with pytest.raises(ValueError, match="k_scale"):
        paged_decode_attention(q, kq, kq, tables, lens, 0.125)
    with pytest.raises(ValueError, match="window"):
        paged_decode_attention(q, k, v, tables, lens, 0.125, window=-1)


def test_split_count_depends_on_shapes_only():
    """CUDA graphs replay one launch for every step: the split count must not read context_lens."""
    from qwen_triton.kernels.paged_attention import MAX_SPLITS, choose_num_splits

    assert choose_num_splits(1, 4, 4096, torch.device("cpu")) == 1
    if HAS_CUDA:
        cuda = torch.device("cuda", 0)
        assert choose_num_splits(1, 4, 32768, cuda) <= MAX_SPLITS
        assert choose_num_splits(1, 4, 4096, cuda) > choose_num_splits(256, 4, 4096, cuda) == 1


def test_split_counts_are_powers_of_two(monkeypatch):
    """Each split count compiles its own combine kernel: only powers of two, so few variants exist."""
    from qwen_triton.kernels import paged_attention

    monkeypatch.setattr(paged_attention, "multiprocessor_count", lambda index: 132)
    cuda = torch.device("cuda", 0)  # only its type is read
    counts = {
        paged_attention.choose_num_splits(batch, 4, width * 16, cuda)
        for batch in range(1, 300)
        for width in (1, 8, 33, 128, 2048)
    }
    assert counts <= {2**i for i in range(7)} and len(counts) > 3


@needs_kernels
def test_warm_up_variants_runs_every_split_count_and_leaves_the_cache_alone(device):
    from qwen_triton.kernels.paged_attention import warm_up_variants

    k_cache = torch.randn(4, 16, 2, 32, device=device)
    v_cache = torch.randn(4, 16, 2, 32, device=device)
    before = (k_cache.clone(), v_cache.clone())
    warm_up_variants(k_cache, v_cache, num_heads=4, dtype=torch.float32)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])
