"""int4_layout's tiled layout: a lossless re-layout of the packed bytes that every CUDA int4 kernel reads
(the GEMM and the dequantize kernel here on the Triton interpreter too; int4_mma in test_int4_mma.py)."""

import pytest
import torch
from kernel_env import needs_kernels
from test_quant_matmul import int4_case

pytestmark = needs_kernels


def test_tiled_round_trips_and_pads_the_last_block(generator):
    from qwen_triton.kernels import int4_layout

    _, packed, _, _ = int4_case(generator, 100, 512, 1, 128, torch.float16)
    tiled = int4_layout.tiled(packed, 128)
    assert tiled.shape == (2, 4, int4_layout.TILE_ROWS, 64)
    assert torch.equal(tiled[1, 2, 3], packed[int4_layout.TILE_ROWS + 3, 128:192])  # block 1, group 2, row 3
    assert not tiled[1, :, 100 - int4_layout.TILE_ROWS :].any()  # rows past 100 are zero
    assert torch.equal(int4_layout.row_major(tiled, 100), packed)
    with pytest.raises(ValueError, match="group_size"):
        int4_layout.tiled(packed[:, :100], 128)  # 200 inputs: no whole groups of 128


@pytest.mark.parametrize("blocks", [(100,), (30, 70), (64, 36), (10, 118, 2)])
def test_write_rows_fills_a_tiled_weight_block_by_block(generator, blocks):
    """The streaming loader's blocks of rows, ragged or whole tiles, give the same bytes as tiling at once."""
    from qwen_triton.kernels import int4_layout

    rows = sum(blocks)
    _, packed, _, _ = int4_case(generator, rows, 512, 1, 128, torch.float16)
    expected = int4_layout.tiled(packed, 128)
    filled = torch.zeros_like(expected)
    start = 0
    for count in blocks:
        int4_layout.write_rows(filled, start, packed[start : start + count])
        start += count
    assert torch.equal(filled, expected)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("rows", [3, 40])
def test_gemm_reads_the_tiled_layout(generator, device, rel_error, symmetric, rows):
    """100 outputs (a padded last block), 640 inputs in groups of 128 (steps of one and two groups),
    split K; the same result as the row-major weight."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_layout, int4_linear

    x, packed, scales, zeros = int4_case(generator, 100, 640, rows, 128, torch.float16)
    zeros = None if symmetric else zeros
    tiled = int4_layout.tiled(packed, 128).to(device)
    expected = int4_linear_reference(x, packed, scales, zeros, 128, dtype=torch.float64)
    on_device = [t.to(device) if t is not None else None for t in (x, scales, zeros)]
    for config in (dict(BLOCK_N=64, BLOCK_K=128), dict(BLOCK_N=32, BLOCK_K=256)):
        for split_k in (None, 2):
            out = int4_linear(on_device[0], tiled, on_device[1], on_device[2], 128, config=config, split_k=split_k)
            assert out.shape == (rows, 100)
            assert rel_error(out, expected) < 2e-3, f"{config} split_k={split_k}"


def test_tiled_weight_refuses_the_gemv_and_a_wrong_shape(generator, device):
    from qwen_triton.kernels import int4_layout, int4_linear

    x, packed, scales, zeros = int4_case(generator, 64, 256, 1, 64, torch.float16)
    tiled = int4_layout.tiled(packed, 64).to(device)
    x, scales = x.to(device), scales.to(device)
    with pytest.raises(ValueError, match="path: 'gemv'"):
        int4_linear(x, tiled, scales, None, 64, path="gemv")
    with pytest.raises(ValueError, match="qweight_packed: a tiled int4 weight"):
        int4_linear(x, tiled, scales, None, 128)  # the tiles were cut for groups of 64


@pytest.mark.parametrize("symmetric", [False, True])
def test_dequantize_reads_the_tiled_layout(generator, device, symmetric):
    """Bit for bit the row-major weight's dequantization; 100 rows end inside the last block, and a
    program's 256 inputs span two groups of 64."""
    from qwen_triton import kernels
    from qwen_triton.kernels import int4_layout

    _, packed, scales, zeros = int4_case(generator, 100, 640, 1, 64, torch.float16)
    zeros = None if symmetric else zeros.to(device)
    packed, scales = packed.to(device), scales.to(device)
    expected = kernels.dequantize_int4(packed, scales, zeros, 64, torch.bfloat16)
    out = kernels.dequantize_int4(int4_layout.tiled(packed, 64), scales, zeros, 64, torch.bfloat16)
    assert torch.equal(out, expected)


def test_groupwise_linear_keeps_int4_tiled_where_its_kernels_run(generator, device, rel_error, monkeypatch):
    """On CUDA a 4-bit GroupwiseLinear stores the tiled layout (here on CPU too, by the interpreter, with
    the device check lifted): same reference weight, same kernel result, fusable, row-major bytes back."""
    from qwen_triton.kernels import int4_layout
    from qwen_triton.quantization import formats

    weight = torch.randn(100, 384, generator=generator).to(device)
    monkeypatch.setattr(formats, "TILE_INT4_ON_CUDA", False)
    plain = formats.GroupwiseLinear.from_float(weight, group_size=128)
    assert plain.qweight.dim() == 2
    monkeypatch.setattr(formats, "TILE_INT4_ON_CUDA", True)
    if device.type == "cpu":
        monkeypatch.setattr(formats.GroupwiseLinear, "_tiles", staticmethod(lambda *args: True))
    tiled = formats.GroupwiseLinear.from_float(weight, group_size=128)
    assert tiled.qweight.shape == (2, 3, int4_layout.TILE_ROWS, 64)
    assert torch.equal(tiled.row_major_qweight(), plain.qweight)
    assert torch.equal(tiled.dequantize_weight(), plain.dequantize_weight())
    x = torch.randn(5, 384, generator=generator).half().to(device)
    assert rel_error(tiled.kernel_forward(x), plain.reference_forward(x)) < 2e-3
    fused = formats.concat_out_features([tiled, tiled])  # 200 rows: 100 would not fill the first tile
    assert fused.qweight.shape == (4, 3, int4_layout.TILE_ROWS, 64)
    assert torch.equal(fused.row_major_qweight()[100:], plain.qweight)
