"""The element-wise kernels (kernels/elementwise.py) against the eager functions of fused_ops.py, which
are their reference (tests/engine compares those with transformers bit for bit).

On CPU the kernels run through Triton's interpreter (kernel_env.py sets TRITON_INTERPRET=1), on a GPU
compiled; either way they are compared with the eager functions on the same device.

Bit for bit (torch.equal) wherever the arithmetic allows it:
- rotary, in every dtype: only products and sums, each rounded where the eager code rounds; and
  rotary with the KV-cache write (against rotary then index_copy_), for every pair of q and cache dtypes.
- the ``x + residual`` sum of add_rms_norm, in every dtype.
- RMSNorm on inputs whose float32 sum of squares is exact whatever the order of the additions
  (multiples of 1/8 up to 4 in magnitude, so every square and partial sum fits float32's 24 bits).
- SiLU*up in bfloat16 and float16.
Within a stated tolerance, and why:
- RMSNorm on random inputs: the kernel adds the squares of a row in another order than torch's
  reduction (which itself differs between CPU and CUDA), so a row's variance may differ in its last
  float32 bit. float32 outputs stay within a few units in the last place; in 16 bits the normalised
  value flips by one unit where its float32 value sat next to a rounding boundary (a small fraction of
  the elements), which the multiply by the weight (|w| up to ~1.8 here) can make two units of the output.
- SiLU*up in float32 on CPU: torch's CPU silu uses its own vectorised exp, which the interpreter (numpy)
  cannot reproduce; within 4 units in the last place. On CUDA both call libdevice's expf: exact (seen on
  an H100 with torch 2.11 and triton 3.6, where this whole file passes as written).
"""

import pytest
import torch
from kernel_env import PoisonedTorch, needs_kernels

pytestmark = needs_kernels

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS = 1e-6
# The interpreter runs one program after another (seconds for 512 rows), so 512 rows (a prefill) comes
# with one size each; 1, 3 and 17 rows with all of them.
SMALL_ROWS = [1, 3, 17]
# (rows, hidden): Qwen2.5 0.5B (896), 7B (3584), and 200 (no power of 2, no multiple of 16: masked).
NORM_SHAPES = [(rows, hidden) for rows in SMALL_ROWS for hidden in (896, 3584, 200)] + [(512, 3584)]
# (rows, (q heads, kv heads, head dim)): Qwen2.5 0.5B, 7B, and an odd one (head dim 80: half 40, not a
# power of 2).
ROTARY_SHAPES = [(rows, heads) for rows in SMALL_ROWS for heads in ((14, 2, 64), (28, 4, 128), (5, 1, 80))]
ROTARY_SHAPES += [(512, (14, 2, 64))]
# (rows, intermediate size): 1000 leaves a ragged last block, 2432 is two blocks and a part.
SILU_SHAPES = [(rows, inter) for rows in SMALL_ROWS for inter in (1000, 2432)] + [(512, 1000)]
MAX_POSITIONS = 4096


@pytest.fixture
def poisoned_outputs(monkeypatch):
    from qwen_triton.kernels import elementwise

    monkeypatch.setattr(elementwise, "torch", PoisonedTorch())


def ulps_apart(out: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|out - expected| in units in the last place of ``expected``'s dtype at |expected| (normal range)."""
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert torch.isfinite(out).all(), "kernel output has NaN/inf (unwritten or broken)"
    expected64 = expected.double()
    _, exponent = torch.frexp(expected64.abs().clamp_min(torch.finfo(expected.dtype).tiny))
    spacing = torch.finfo(expected.dtype).eps * torch.pow(2.0, exponent.double() - 1)
    return (out.double() - expected64).abs() / spacing


def assert_equal(out: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert out.dtype == expected.dtype and out.shape == expected.shape, what
    if not torch.equal(out, expected):
        mismatched = (out != expected).sum().item()
        raise AssertionError(
            f"{what}: {mismatched} of {out.numel()} elements differ, up to "
            f"{ulps_apart(out, expected).max().item():g} ulps"
        )


def assert_reduction_order_close(out: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """The RMSNorm tolerance (module docstring): float32 within 8 ulps; 16-bit within 2 ulps, and on at
    most 0.1 % of the elements."""
    ulps = ulps_apart(out, expected)
    if expected.dtype == torch.float32:
        assert ulps.max().item() <= 8, f"{what}: {ulps.max().item():g} ulps"
    else:
        assert ulps.max().item() <= 2, f"{what}: {ulps.max().item():g} ulps"
        assert (ulps > 0).double().mean().item() <= 1e-3, f"{what}: {(ulps > 0).sum().item()} elements differ"


def norm_case(generator, rows, hidden, dtype, exact_sums: bool):
    """x, residual, weight (weight near 1 and never exactly 1, so its multiply is exercised)."""
    if exact_sums:
        x = torch.randint(-32, 33, (rows, hidden), generator=generator) / 8
        residual = torch.randint(-32, 33, (rows, hidden), generator=generator) / 8
    else:
        x = torch.randn(rows, hidden, generator=generator) * 3
        residual = torch.randn(rows, hidden, generator=generator)
    weight = 1 + 0.2 * torch.randn(hidden, generator=generator)
    return x.to(dtype), residual.to(dtype), weight.to(dtype)


@pytest.mark.parametrize("exact_sums", [True, False], ids=["exact_sums", "random"])
@pytest.mark.parametrize("rows,hidden", NORM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm(generator, device, poisoned_outputs, dtype, rows, hidden, exact_sums):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops

    x, residual, weight = (t.to(device) for t in norm_case(generator, rows, hidden, dtype, exact_sums))
    expected_normed, expected_sum = fused_ops.add_rms_norm(x, residual, weight, EPS)
    x_before, residual_arg = x.clone(), residual.clone()
    normed, new_residual = elementwise.add_rms_norm(x, residual_arg, weight, EPS)

    assert new_residual is residual_arg, "the sum goes into the residual tensor, in place"
    assert torch.equal(x, x_before), "x must not be written"
    assert_equal(new_residual, expected_sum, "x + residual")
    if exact_sums:
        assert_equal(normed, expected_normed, "normed")
    else:
        assert_reduction_order_close(normed, expected_normed, "normed")


@pytest.mark.parametrize("exact_sums", [True, False], ids=["exact_sums", "random"])
@pytest.mark.parametrize("rows,hidden", NORM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm(generator, device, poisoned_outputs, dtype, rows, hidden, exact_sums):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops

    x, _, weight = (t.to(device) for t in norm_case(generator, rows, hidden, dtype, exact_sums))
    normed = elementwise.rms_norm(x, weight, EPS)
    expected = fused_ops.rms_norm(x, weight, EPS)
    if exact_sums:
        assert_equal(normed, expected, "normed")
    else:
        assert_reduction_order_close(normed, expected, "normed")


def test_norms_with_a_float32_weight_and_strided_rows(generator, device, poisoned_outputs):
    """Not the model's layout, but the functions' contract: a float32 weight makes a float32 output (as
    ``weight * h`` promotes in torch); rows with a stride, a residual that cannot take the sum in place
    (it gets a new tensor and stays as it was), and leading dimensions are all served."""
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops

    wide = (torch.randint(-32, 33, (6, 2 * 200), generator=generator) / 8).bfloat16().to(device)
    x = wide[:, :200]  # row stride 400
    residual = wide[:, 200:].t().contiguous().t()  # column-major: no unit-stride rows
    weight = (1 + 0.2 * torch.randn(200, generator=generator)).to(device)
    residual_before = residual.clone()
    normed, new_residual = elementwise.add_rms_norm(x, residual, weight, EPS)
    expected_normed, expected_sum = fused_ops.add_rms_norm(x, residual, weight, EPS)
    assert new_residual is not residual and torch.equal(residual, residual_before)
    assert_equal(new_residual, expected_sum, "x + residual")
    assert_equal(normed, expected_normed, "normed (float32 weight)")
    assert_equal(
        elementwise.rms_norm(x.reshape(2, 3, 200), weight, EPS),
        fused_ops.rms_norm(x.reshape(2, 3, 200), weight, EPS),
        "rms_norm [2, 3, hidden]",
    )


def qkv_case(generator, rows, heads, kv_heads, head_dim, dtype):
    """The fused qkv output [rows, (heads + 2 kv_heads) * head_dim] and, as model.py makes them, q and k
    as views into it, plus positions in no order (distinct, anywhere in the table)."""
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=generator).to(dtype)
    positions = torch.randperm(MAX_POSITIONS, generator=generator)[:rows]
    return qkv, positions


def split_qkv(qkv, heads, kv_heads, head_dim):
    """q, k and v as model.py views them: [rows, heads, dim] column slices of the qkv rows."""
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    return q.view(-1, heads, head_dim), k.view(-1, kv_heads, head_dim), v.view(-1, kv_heads, head_dim)


@pytest.mark.parametrize("rows,shape", ROTARY_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary(generator, device, dtype, rows, shape):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops
    from qwen_triton.models.qwen2 import RotaryEmbedding

    heads, kv_heads, head_dim = shape
    tables = RotaryEmbedding(head_dim, MAX_POSITIONS, 1e6).to(device)
    qkv, positions = (t.to(device) for t in qkv_case(generator, rows, heads, kv_heads, head_dim, dtype))
    q, k, v = split_qkv(qkv, heads, kv_heads, head_dim)
    expected_q, expected_k = fused_ops.rotary(q, k, tables.cos, tables.sin, positions)
    v_before = v.clone()

    out_q, out_k = elementwise.rotary(q, k, tables.cos, tables.sin, positions)
    assert out_q is q and out_k is k, "rotated in place, in the qkv buffer"
    assert_equal(out_q, expected_q, "q")
    assert_equal(out_k, expected_k, "k")
    assert torch.equal(v, v_before), "v (the rest of the qkv row) must not be written"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_copies_views_without_unit_stride(generator, device, dtype):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops
    from qwen_triton.models.qwen2 import RotaryEmbedding

    tables = RotaryEmbedding(64, MAX_POSITIONS, 1e4).to(device)
    q = torch.randn(64, 4, 5, generator=generator).to(dtype).to(device).transpose(0, 2)  # [5, 4, 64], dim strided
    k = torch.randn(5, 2, 64, generator=generator).to(dtype).to(device)
    positions = torch.tensor([9, 3, 4000, 0, 3], device=device)  # a repeat too
    expected_q, expected_k = fused_ops.rotary(q, k, tables.cos, tables.sin, positions)
    out_q, out_k = elementwise.rotary(q, k, tables.cos, tables.sin, positions)
    assert_equal(out_q, expected_q, "q (copied)")
    assert_equal(out_k, expected_k, "k")


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# rotary_and_write_kv: (rows, (q heads, kv heads, head dim), q dtype, cache dtype). Every pair of q and
# cache dtypes on decode-sized batches of Qwen2.5 0.5B and 7B heads and an odd head dim; prefill-sized
# chunks (seconds each in the interpreter) on fewer pairs: each dtype with a cache of its own dtype, and
# caches of another.
_DTYPE_PAIRS = [(dtype, cache) for dtype in DTYPES for cache in DTYPES]
ROTARY_KV_CASES = [
    (rows, heads, *pair) for rows in (1, 3, 8) for heads in ((14, 2, 64), (28, 4, 128)) for pair in _DTYPE_PAIRS
]
ROTARY_KV_CASES += [(5, (5, 1, 80), *pair) for pair in _DTYPE_PAIRS]
ROTARY_KV_CASES += [(256, (14, 2, 64), dtype, dtype) for dtype in DTYPES]
ROTARY_KV_CASES += [
    (256, (14, 2, 64), torch.float32, torch.bfloat16),
    (256, (14, 2, 64), torch.bfloat16, torch.float16),
    (256, (28, 4, 128), torch.bfloat16, torch.bfloat16),
    (256, (28, 4, 128), torch.float32, torch.float16),
]
ROTARY_KV_IDS = [
    f"{rows}-{'x'.join(map(str, heads))}-{_short(dtype)}-cache_{_short(cache)}"
    for rows, heads, dtype, cache in ROTARY_KV_CASES
]
BLOCK_SIZE = 16


def kv_cache_case(generator, rows, kv_heads, head_dim, dtype):
    """k_cache and v_cache of ``dtype`` with room for ``rows`` tokens and spare blocks, filled with random
    values (a slot written by mistake shows), and one distinct slot per row, in no order."""
    num_blocks = rows // BLOCK_SIZE + 3
    k_cache, v_cache = (
        torch.randn(num_blocks, BLOCK_SIZE, kv_heads, head_dim, generator=generator).to(dtype) for _ in range(2)
    )
    slots = torch.randperm(num_blocks * BLOCK_SIZE, generator=generator)[:rows]
    return k_cache, v_cache, slots


def unfused_rotary_write_kv(q, k, v, tables, positions, k_cache, v_cache, slots):
    """The two steps the fused op replaces: the eager rotary (the rotary kernel's reference, bit for bit),
    then one index_copy_ into each cache."""
    from qwen_triton.layers import ops as fused_ops

    q, k = fused_ops.rotary(q, k, tables.cos, tables.sin, positions)
    k_cache.view(-1, *k.shape[1:]).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, *v.shape[1:]).index_copy_(0, slots, v.to(v_cache.dtype))
    return q, k


# 7e4 overflows float16 (to inf, as on the GPU and in torch); numpy warns about it in the interpreter.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("rows,shape,dtype,cache_dtype", ROTARY_KV_CASES, ids=ROTARY_KV_IDS)
def test_rotary_and_write_kv(generator, device, rows, shape, dtype, cache_dtype):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops
    from qwen_triton.models.qwen2 import RotaryEmbedding

    heads, kv_heads, head_dim = shape
    tables = RotaryEmbedding(head_dim, MAX_POSITIONS, 1e6).to(device)
    qkv, positions = qkv_case(generator, rows, heads, kv_heads, head_dim, dtype)
    # The edges of a conversion between cache dtypes, in v: beyond float16's range, float16 subnormals.
    qkv[0, -4:] = torch.tensor([7e4, -7e4, 1e-6, 3e-5]).to(dtype)
    k_cache, v_cache, slots = kv_cache_case(generator, rows, kv_heads, head_dim, cache_dtype)
    qkv, positions, k_cache, v_cache, slots = (t.to(device) for t in (qkv, positions, k_cache, v_cache, slots))
    initial_caches = k_cache.clone(), v_cache.clone()
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    expected_q, expected_k = unfused_rotary_write_kv(
        *split_qkv(qkv, heads, kv_heads, head_dim), tables, positions, expected_k_cache, expected_v_cache, slots
    )

    qkv_before = qkv.clone()
    q, k, v = split_qkv(qkv, heads, kv_heads, head_dim)
    out_q, out_k = elementwise.rotary_and_write_kv(q, k, v, tables.cos, tables.sin, positions, k_cache, v_cache, slots)
    assert out_q is q and out_k is k, "rotated in place, in the qkv buffer"
    assert_equal(out_q, expected_q, "q")
    assert_equal(out_k, expected_k, "k")
    assert torch.equal(v, split_qkv(qkv_before, heads, kv_heads, head_dim)[2]), "v must not be written"
    assert_equal(k_cache, expected_k_cache, "k_cache (the written slots and the others)")
    assert_equal(v_cache, expected_v_cache, "v_cache (the written slots and the others)")

    # The eager function, which CPU engines run, is the same two steps.
    eager_k_cache, eager_v_cache = initial_caches
    eager_q, eager_k = fused_ops.rotary_and_write_kv(
        *split_qkv(qkv_before, heads, kv_heads, head_dim),
        tables.cos,
        tables.sin,
        positions,
        eager_k_cache,
        eager_v_cache,
        slots,
    )
    assert_equal(eager_q, expected_q, "eager q")
    assert_equal(eager_k, expected_k, "eager k")
    assert_equal(eager_k_cache, expected_k_cache, "eager k_cache")
    assert_equal(eager_v_cache, expected_v_cache, "eager v_cache")


def test_rotary_and_write_kv_padding_rows_stay_in_the_scratch_block(generator, device):
    """A CUDA-graph decode batch padded up to its captured size: the padding rows have position 0 and all
    write the first slot of the scratch block (model_runner.py). The real rows' slots get their values, no
    other slot changes, and every element of the scratch slot comes from one of the padding rows (which one
    is unspecified: on a GPU the racing programs' stores interleave, so the slot may mix rows)."""
    from qwen_triton.kernels import elementwise
    from qwen_triton.models.qwen2 import RotaryEmbedding

    real, padded, heads, kv_heads, head_dim = 3, 5, 14, 2, 64
    tables = RotaryEmbedding(head_dim, MAX_POSITIONS, 1e6).to(device)
    qkv, positions = qkv_case(generator, real + padded, heads, kv_heads, head_dim, torch.bfloat16)
    k_cache, v_cache, _ = kv_cache_case(generator, real, kv_heads, head_dim, torch.bfloat16)
    scratch_block = k_cache.shape[0] - 1  # the engine's extra block at the end
    slots = torch.cat(
        [
            torch.randperm(scratch_block * BLOCK_SIZE, generator=generator)[:real],
            torch.full((padded,), scratch_block * BLOCK_SIZE, dtype=torch.long),
        ]
    )
    positions[real:] = 0
    qkv, positions, k_cache, v_cache, slots = (t.to(device) for t in (qkv, positions, k_cache, v_cache, slots))
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    q, k, v = split_qkv(qkv.clone(), heads, kv_heads, head_dim)
    _, expected_k = unfused_rotary_write_kv(
        q[:real], k[:real], v[:real], tables, positions[:real], expected_k_cache, expected_v_cache, slots[:real]
    )
    scratch_before = k_cache[scratch_block].clone(), v_cache[scratch_block].clone()

    q, k, v = split_qkv(qkv, heads, kv_heads, head_dim)
    _, out_k = elementwise.rotary_and_write_kv(q, k, v, tables.cos, tables.sin, positions, k_cache, v_cache, slots)
    assert_equal(out_k[:real], expected_k, "k of the real rows")
    assert_equal(k_cache[:scratch_block], expected_k_cache[:scratch_block], "k_cache outside the scratch block")
    assert_equal(v_cache[:scratch_block], expected_v_cache[:scratch_block], "v_cache outside the scratch block")
    for cache, before, new in ((k_cache, scratch_before[0], out_k), (v_cache, scratch_before[1], v)):
        assert torch.equal(cache[scratch_block, 1:], before[1:]), "only the scratch slot itself is written"
        from_a_padding_row = (cache[scratch_block, 0] == new[real:]).any(dim=0)
        assert from_a_padding_row.all(), "scratch slot: an element that no padding row wrote"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_and_write_kv_copies_views_without_unit_stride(generator, device, dtype):
    """q and v whose head dim is strided are copied first (as ``rotary`` does): the returned q is the
    rotated copy, and the cache still gets the rotated k and the values of v."""
    from qwen_triton.kernels import elementwise
    from qwen_triton.models.qwen2 import RotaryEmbedding

    tables = RotaryEmbedding(64, MAX_POSITIONS, 1e4).to(device)
    q = torch.randn(64, 4, 5, generator=generator).to(dtype).to(device).transpose(0, 2)  # [5, 4, 64], dim strided
    k = torch.randn(5, 2, 64, generator=generator).to(dtype).to(device)
    v = torch.randn(64, 2, 5, generator=generator).to(dtype).to(device).transpose(0, 2)
    positions = torch.tensor([9, 3, 4000, 0, 3], device=device)  # a repeat too
    k_cache, v_cache, slots = (t.to(device) for t in kv_cache_case(generator, 5, 2, 64, torch.float32))
    expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
    expected_q, expected_k = unfused_rotary_write_kv(
        q, k, v, tables, positions, expected_k_cache, expected_v_cache, slots
    )
    out_q, out_k = elementwise.rotary_and_write_kv(q, k, v, tables.cos, tables.sin, positions, k_cache, v_cache, slots)
    assert out_q is not q, "a copy of q is rotated and returned"
    assert_equal(out_q, expected_q, "q (copied)")
    assert_equal(out_k, expected_k, "k")
    assert_equal(k_cache, expected_k_cache, "k_cache")
    assert_equal(v_cache, expected_v_cache, "v_cache")


# exp(90) overflows float32 (to inf, as on the GPU); numpy warns about it in the interpreter.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("rows,inter", SILU_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_silu_and_mul(generator, device, poisoned_outputs, dtype, rows, inter):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops

    gate_up = torch.randn(rows, 2 * inter, generator=generator) * 4
    gate_up[:, :8] = torch.tensor([0.0, -0.0, 90.0, -90.0, 1e-30, -1e-30, 20.0, -20.0])  # exp's edges
    gate_up = gate_up.to(dtype).to(device)
    out = elementwise.silu_and_mul(gate_up)
    expected = fused_ops.silu_and_mul(gate_up)
    if dtype == torch.float32 and device.type == "cpu":
        assert out.shape == expected.shape and out.dtype == expected.dtype
        assert ulps_apart(out, expected).max().item() <= 4
    else:
        assert_equal(out, expected, "silu(gate) * up")


def test_repeat_launches(generator, device):
    """The second and later launches of one specialization skip Triton's JIT path on a GPU
    (elementwise._Launcher calls the compiled kernel directly): fresh inputs of the same shapes must
    still give the eager results, and new buffers (other addresses) must be the ones written."""
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops
    from qwen_triton.models.qwen2 import RotaryEmbedding

    tables = RotaryEmbedding(64, MAX_POSITIONS, 1e6).to(device)
    weight = (1 + 0.2 * torch.randn(896, generator=generator)).bfloat16().to(device)
    for _ in range(3):
        x, residual, _ = (t.to(device) for t in norm_case(generator, 5, 896, torch.bfloat16, True))
        expected_normed, expected_sum = fused_ops.add_rms_norm(x, residual, weight, EPS)
        normed, new_residual = elementwise.add_rms_norm(x, residual, weight, EPS)
        assert_equal(normed, expected_normed, "normed")
        assert_equal(new_residual, expected_sum, "x + residual")
        assert_equal(elementwise.rms_norm(x, weight, EPS), fused_ops.rms_norm(x, weight, EPS), "rms_norm")
        qkv, positions = (t.to(device) for t in qkv_case(generator, 5, 14, 2, 64, torch.bfloat16))
        q, k, _ = split_qkv(qkv, 14, 2, 64)
        expected_q, expected_k = fused_ops.rotary(q, k, tables.cos, tables.sin, positions)
        out_q, out_k = elementwise.rotary(q, k, tables.cos, tables.sin, positions)
        assert_equal(out_q, expected_q, "q")
        assert_equal(out_k, expected_k, "k")
        q, k, v = split_qkv(qkv, 14, 2, 64)  # rotated above: rotated again, into a fresh cache
        k_cache, v_cache, slots = (t.to(device) for t in kv_cache_case(generator, 5, 2, 64, torch.bfloat16))
        expected_k_cache, expected_v_cache = k_cache.clone(), v_cache.clone()
        expected_q, expected_k = unfused_rotary_write_kv(
            q, k, v, tables, positions, expected_k_cache, expected_v_cache, slots
        )
        out_q, out_k = elementwise.rotary_and_write_kv(
            q, k, v, tables.cos, tables.sin, positions, k_cache, v_cache, slots
        )
        assert_equal(out_q, expected_q, "q (rotary_and_write_kv)")
        assert_equal(out_k, expected_k, "k (rotary_and_write_kv)")
        assert_equal(k_cache, expected_k_cache, "k_cache")
        assert_equal(v_cache, expected_v_cache, "v_cache")
        gate_up = (torch.randn(5, 2000, generator=generator) * 4).bfloat16().to(device)
        assert_equal(elementwise.silu_and_mul(gate_up), fused_ops.silu_and_mul(gate_up), "silu(gate) * up")


def test_zero_rows(device):
    from qwen_triton.kernels import elementwise

    empty = torch.empty(0, 64, device=device)
    normed, residual = elementwise.add_rms_norm(empty, empty.clone(), torch.ones(64, device=device), EPS)
    assert normed.shape == residual.shape == (0, 64)
    assert elementwise.rms_norm(empty, torch.ones(64, device=device), EPS).shape == (0, 64)
    assert elementwise.silu_and_mul(empty).shape == (0, 32)
    q, k = torch.empty(0, 4, 64, device=device), torch.empty(0, 2, 64, device=device)
    table = torch.zeros(16, 64, device=device)
    out_q, out_k = elementwise.rotary(q, k, table, table, torch.empty(0, dtype=torch.long, device=device))
    assert out_q.shape == q.shape and out_k.shape == k.shape
    cache = torch.zeros(2, 16, 2, 64, device=device)
    no_slots = torch.empty(0, dtype=torch.long, device=device)
    out_q, out_k = elementwise.rotary_and_write_kv(
        q, k, k.clone(), table, table, no_slots, cache, cache.clone(), no_slots
    )
    assert out_q.shape == q.shape and out_k.shape == k.shape and not cache.any()


def test_bad_arguments_are_named(device):
    from qwen_triton.kernels import elementwise

    x = torch.zeros(2, 64, device=device)
    with pytest.raises(ValueError, match="weight"):
        elementwise.rms_norm(x, torch.ones(32, device=device), EPS)
    with pytest.raises(ValueError, match="x/residual"):
        elementwise.add_rms_norm(x, torch.zeros(3, 64, device=device), torch.ones(64, device=device), EPS)
    with pytest.raises(ValueError, match="dtype"):
        elementwise.silu_and_mul(torch.zeros(2, 64, dtype=torch.float64, device=device))
    table = torch.zeros(16, 64, device=device)
    with pytest.raises(ValueError, match="positions"):
        elementwise.rotary(
            torch.zeros(2, 4, 64, device=device),
            torch.zeros(2, 2, 64, device=device),
            table,
            table,
            torch.zeros(3, dtype=torch.long, device=device),
        )
    with pytest.raises(ValueError, match="cos_table"):
        elementwise.rotary(
            torch.zeros(2, 4, 64, device=device),
            torch.zeros(2, 2, 64, device=device),
            table[:, :32],
            table,
            torch.zeros(2, dtype=torch.long, device=device),
        )


def test_rotary_and_write_kv_bad_arguments_are_named(device):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops

    q, k = torch.zeros(2, 4, 64, device=device), torch.zeros(2, 2, 64, device=device)
    table, positions = torch.zeros(16, 64, device=device), torch.zeros(2, dtype=torch.long, device=device)
    cache, slots = torch.zeros(3, 16, 2, 64, device=device), torch.arange(2, device=device)

    def call(v=k, k_cache=cache, v_cache=cache, slot_mapping=slots, q=q, op=elementwise.rotary_and_write_kv):
        op(q, k, v, table, table, positions, k_cache, v_cache, slot_mapping)

    with pytest.raises(ValueError, match="^v:"):
        call(v=torch.zeros(2, 2, 32, device=device))
    with pytest.raises(ValueError, match="^v:"):
        call(v=k.half())
    with pytest.raises(ValueError, match="^k_cache:"):
        call(k_cache=torch.zeros(3, 16, 4, 64, device=device))  # other kv heads
    with pytest.raises(ValueError, match="^k_cache:.*quantized"):
        call(k_cache=cache.to(torch.int8))
    with pytest.raises(ValueError, match="^v_cache:"):
        call(v_cache=torch.zeros(16, 3, 2, 64, device=device).transpose(0, 1))  # no [slots, ...] view
    with pytest.raises(ValueError, match="^v_cache:"):
        call(v_cache=torch.zeros(3, 16, 2, 128, device=device)[..., ::2])  # head dim strided
    with pytest.raises(ValueError, match="^slot_mapping:"):
        call(slot_mapping=slots.int())
    with pytest.raises(ValueError, match="^slot_mapping:"):
        call(slot_mapping=torch.arange(3, device=device))
    with pytest.raises(ValueError, match="q/k"):
        call(q=torch.zeros(3, 4, 64, device=device))
    with pytest.raises(ValueError, match="k_cache/v_cache"):
        # The eager function too: never an unscaled write into an int8 cache.
        call(v_cache=cache.to(torch.int8), op=fused_ops.rotary_and_write_kv)


def test_fused_ops_picks_the_kernels_on_cuda_only():
    from qwen_triton import kernels
    from qwen_triton.layers import ops as fused_ops

    assert fused_ops.fused_ops(torch.device("cpu")) is fused_ops.EAGER
    assert fused_ops.EAGER.rms_norm is fused_ops.rms_norm
    if kernels.kernels_usable("cuda"):
        from qwen_triton.kernels import elementwise

        ops = fused_ops.fused_ops(torch.device("cuda", 0))
        assert (ops.rms_norm, ops.add_rms_norm, ops.rotary, ops.rotary_and_write_kv, ops.silu_and_mul) == (
            elementwise.rms_norm,
            elementwise.add_rms_norm,
            elementwise.rotary,
            elementwise.rotary_and_write_kv,
            elementwise.silu_and_mul,
        )
