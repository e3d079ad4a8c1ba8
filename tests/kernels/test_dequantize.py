"""kernels/dequantize.py against the modules' own dequantize_weight (the CPU reference): equal bit for bit,
and the many-row forward (dequantize on the device, then F.linear) equal to reference_forward."""

import pytest
import torch
from kernel_env import PoisonedTorch, needs_kernels

from qwen_triton import kernels
from qwen_triton.quantization.formats import GroupwiseLinear, Int8Linear

pytestmark = needs_kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """An element the kernels fail to write is NaN, which no comparison here lets through."""
    from qwen_triton.kernels import dequantize

    monkeypatch.setattr(dequantize, "torch", PoisonedTorch())


def float_weight(generator, out_f, in_f):
    return torch.randn(out_f, in_f, generator=generator) * 0.05


def assert_same_weight(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit, except bf16 under the CPU interpreter: it truncates float32 -> bf16 where the GPU's
    conversion rounds to nearest (seen with triton 3.9), so there one bf16 unit in the last place."""
    out, expected = out.cpu(), expected.cpu()
    if out.dtype == torch.bfloat16 and not torch.cuda.is_available():
        torch.testing.assert_close(out.float(), expected.float(), rtol=2**-7, atol=0)
    else:
        assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(40, 300), (16, 256), (7, 33)])  # ragged tiles on both axes
def test_int8_matches_reference(generator, device, dtype, shape):
    module = Int8Linear.from_float(float_weight(generator, *shape)).to(device)
    out = kernels.dequantize_int8(module.qweight, module.scale, dtype)
    assert out.dtype == dtype and out.shape == shape
    assert_same_weight(out, module.dequantize_weight(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,group", [((40, 384), 128), ((16, 512), 64), ((9, 200), 32), ((24, 100), 128)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_matches_reference(generator, device, dtype, shape, group, symmetric):
    module = GroupwiseLinear.from_float(float_weight(generator, *shape), group_size=group, symmetric=symmetric)
    module = module.to(device)
    out = kernels.dequantize_int4(module.qweight, module.scales, module.zeros, group, dtype)
    assert out.shape == (shape[0], module.qweight.shape[1] * 2)
    assert_same_weight(out[:, : shape[1]], module.dequantize_weight(dtype))


def test_int4_without_zero_points_is_symmetric(generator, device):
    module = GroupwiseLinear.from_float(float_weight(generator, 8, 256), symmetric=True).to(device)
    out = kernels.dequantize_int4(module.qweight, module.scales, None, 128, torch.float32)
    assert torch.equal(out.cpu(), module.dequantize_weight(torch.float32).cpu())  # symmetric zero points are 8


@pytest.mark.parametrize("factory", [Int8Linear.from_float, GroupwiseLinear.from_float])
def test_many_row_forward_equals_reference(generator, device, factory):
    module = factory(float_weight(generator, 48, 256), torch.randn(48, generator=generator)).to(device)
    x = torch.randn(3, 5, 256, generator=generator).to(device)
    assert torch.equal(module.dequantized_forward(x).cpu(), module.reference_forward(x).cpu())


def test_bad_inputs_name_the_field(device):
    with pytest.raises(ValueError, match="qweight"):
        kernels.dequantize_int8(torch.zeros(4, 4, dtype=torch.uint8, device=device), torch.ones(4), torch.float16)
    with pytest.raises(ValueError, match="scale"):
        kernels.dequantize_int8(torch.zeros(4, 4, dtype=torch.int8, device=device), torch.ones(3), torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        kernels.dequantize_int8(torch.zeros(4, 4, dtype=torch.int8, device=device), torch.ones(4), torch.int32)
    packed = torch.zeros(4, 64, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match="scales / zeros"):
        kernels.dequantize_int4(packed, torch.ones(4, 3, device=device), None, 64, torch.float16)
    with pytest.raises(ValueError, match="group_size"):
        kernels.dequantize_int4(packed, torch.ones(4, 1, device=device), None, 127, torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the many-row path serves CUDA inputs only (CI has no GPU)")
@pytest.mark.parametrize("factory", [Int8Linear.from_float, GroupwiseLinear.from_float])
def test_prefill_rows_take_the_dequantized_path_on_cuda(generator, factory, monkeypatch):
    """forward() with DEQUANTIZED_MATMUL_MIN_ROWS rows or more dequantizes on the device: the same bits as
    the reference (same weight values, same cuBLAS call); fewer rows keep the weight-only kernel."""
    from qwen_triton.quantization import formats

    module = factory(float_weight(generator, 256, 512)).cuda()
    rows = formats.DEQUANTIZED_MATMUL_MIN_ROWS
    x = torch.randn(rows, 512, generator=generator).to(torch.bfloat16).cuda()
    assert torch.equal(module(x), module.reference_forward(x))
    called = []
    monkeypatch.setattr(type(module), "dequantized_forward", lambda self, x: called.append(x) or x)
    module(x[: rows - 1])
    assert not called
