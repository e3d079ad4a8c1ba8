"""CUDA paths (run on a GPU machine; CI has none, so they skip there): int8 / int4 through the Triton
kernels, fp8 through its weight-only Triton kernel at small
batches and torch._scaled_mm above, KV writes on CUDA."""

import pytest
import torch
from torch import nn

from qwen_triton.layers.kv_cache import allocate_quantized_kv, gather_dequantized, write_quantized_kv
from qwen_triton.quantization.formats import FP8_WEIGHT_ONLY_MAX_ROWS, GroupwiseLinear
from qwen_triton.quantization.quantize import quantize_linear
from qwen_triton.quantization.spec import parse_format

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def kernels_on():
    """The quantized linears take their Triton kernels on CUDA by themselves: this asks that triton is there."""
    from qwen_triton import kernels

    assert kernels.kernels_usable("cuda")


def relative(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def cuda_linear(spec, out_features=1024, in_features=2048):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    nn.init.normal_(linear.weight, std=0.02)
    return quantize_linear(linear, parse_format(spec, spec)).cuda()


@pytest.mark.parametrize("rows", [1, 7, 16, 17, 64])
@pytest.mark.parametrize("spec", ["int8", "int4", "int4:g64", "fp8"])
def test_cuda_forward_matches_the_reference(kernels_on, spec, rows):
    module = cuda_linear(spec)
    x = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16)
    reference = module.reference_forward(x.float())
    y = module(x)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, 1024)
    # bf16 output rounding (~0.4 %); fp8 above FP8_WEIGHT_ONLY_MAX_ROWS goes through _scaled_mm, which
    # also quantizes the activations per token (W8A8): ~3 %
    w8a8 = spec == "fp8" and rows > FP8_WEIGHT_ONLY_MAX_ROWS
    assert relative(y, reference) < (0.05 if w8a8 else 0.01)


@pytest.mark.parametrize("rows", [1, 16, 17])
def test_fp8_small_batches_take_the_weight_only_kernel(kernels_on, rows):
    module = cuda_linear("fp8")
    x = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16)
    assert module.cuda_path(x) == ("kernel" if rows <= FP8_WEIGHT_ONLY_MAX_ROWS else "scaled_mm")


@pytest.mark.parametrize("rows", [1, 5, 40])
def test_fp8_shapes_scaled_mm_cannot_take_run_the_kernel(kernels_on, rows):
    """in 1000 / out 999 (not multiples of 16): the weight-only kernel at every row count."""
    module = cuda_linear("fp8", out_features=999, in_features=1000)
    x = torch.randn(rows, 1000, device="cuda", dtype=torch.bfloat16)
    assert module.cuda_path(x) == "kernel"
    assert relative(module(x), module.reference_forward(x.float())) < 0.01


def test_act_order_int4_through_the_kernel(kernels_on):
    module = cuda_linear("int4:g128")
    perm = torch.randperm(2048, device="cuda")
    permuted = GroupwiseLinear(module.qweight, module.scales, module.zeros, 4, 128, module.bias, 2048, perm)
    x = torch.randn(3, 2048, device="cuda", dtype=torch.bfloat16)
    assert relative(permuted(x), permuted.reference_forward(x.float())) < 0.01


def test_kv_writes_on_cuda_match_cpu():
    values = torch.randn(40, 2, 64)
    for kind in ("int8", "fp8"):
        reads = []
        for device in ("cpu", "cuda"):
            cache, scale = allocate_quantized_kv(4, 16, 2, 64, kind, device)
            for t in range(40):
                write_quantized_kv(cache, scale, values[t : t + 1].to(device), torch.tensor([t], device=device))
            reads.append(gather_dequantized(cache, scale, torch.arange(3, device=device), 40).cpu())
        torch.testing.assert_close(reads[0], reads[1], rtol=0, atol=1e-6)
