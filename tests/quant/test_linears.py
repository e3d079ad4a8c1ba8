"""Quantized linears: packing, error bounds per format, forward, byte accounting, fusing."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qwen_triton.quantization import formats
from qwen_triton.quantization.formats import (
    FP8_WEIGHT_ONLY_MAX_ROWS,
    Fp8Linear,
    GroupwiseLinear,
    Int8Linear,
    QuantizedLinear,
    concat_out_features,
    pack_nibbles,
    unpack_int32_words,
    unpack_nibbles,
)
from qwen_triton.quantization.quantize import quantize_linear
from qwen_triton.quantization.spec import linear_weight_bytes, parse_format


def gaussian_linear(out_features=96, in_features=576, bias=True, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.normal_(0, 0.05)
    return linear


def relative_error(module, linear):
    w = linear.weight.detach()
    return float((module.dequantize_weight() - w).norm() / w.norm())


def test_nibble_packing_roundtrips_and_keeps_each_output_row_contiguous():
    q = torch.randint(0, 16, (5, 12), dtype=torch.uint8)
    packed = pack_nibbles(q)
    assert packed.shape == (5, 6) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed), q)
    assert int(packed[2, 1]) == int(q[2, 2]) | (int(q[2, 3]) << 4)  # even column in the low nibble


def test_odd_input_features_cannot_be_packed():
    with pytest.raises(ValueError, match="even number"):
        pack_nibbles(torch.zeros(2, 3, dtype=torch.uint8))


def test_int32_word_unpacking_reads_nibbles_low_to_high_including_the_sign_bit():
    word = torch.tensor([[0x87654321 - 2**32]], dtype=torch.int32)  # top nibble 8 sets the sign bit
    assert unpack_int32_words(word, 4).tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert unpack_int32_words(word, 8).tolist() == [[0x21, 0x43, 0x65, 0x87]]


# Measured on N(0, 0.05) weights 96 x 576: int8 0.76 %, int8:g128 0.59 %, fp8 2.6 %, int4 g128 9.9 %,
# int4 g64 9.1 %, int4:sym 11.7 %. Bounds leave a little room above those.
@pytest.mark.parametrize(
    "spec, bound",
    [("int8", 0.01), ("int8:g128", 0.01), ("fp8", 0.035), ("int4", 0.105), ("int4:g64", 0.097), ("int4:sym", 0.125)],
)
def test_relative_weight_error_is_bounded_per_format(spec, bound):
    linear = gaussian_linear()
    module = quantize_linear(linear, parse_format(spec, spec))
    assert relative_error(module, linear) < bound


def test_smaller_groups_quantize_more_finely():
    linear = gaussian_linear()
    errors = [relative_error(quantize_linear(linear, parse_format(f"int4:g{g}", "")), linear) for g in (128, 64, 32)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("spec", ["int8", "int8:g64", "int4", "int4:g32", "int4:sym", "fp8"])
def test_forward_is_the_float_linear_of_the_dequantized_weight(spec):
    linear = gaussian_linear()
    module = quantize_linear(linear, parse_format(spec, spec))
    x = torch.randn(2, 3, 576)
    expected = F.linear(x, module.dequantize_weight(), linear.bias)
    torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert module(x.to(torch.bfloat16)).dtype == torch.bfloat16


@pytest.mark.parametrize("spec", ["int8", "int8:g128", "int4", "int4:g64", "fp8"])
def test_weight_bytes_match_the_formula_used_for_big_models(spec):
    linear = gaussian_linear(bias=True)
    fmt = parse_format(spec, spec)
    module = quantize_linear(linear, fmt)
    bias_bytes = 96 * 4
    assert module.weight_bytes() == linear_weight_bytes(576, 96, fmt) + bias_bytes


def test_int4_takes_about_a_quarter_of_bf16_and_int8_about_half():
    fmt4, fmt8 = parse_format("int4", ""), parse_format("int8", "")
    bf16 = linear_weight_bytes(3584, 18944, parse_format("none", ""))
    assert 0.26 < linear_weight_bytes(3584, 18944, fmt4) / bf16 < 0.27  # 0.5 B + 3 B per 128 weights, / 2 B
    assert 0.50 < linear_weight_bytes(3584, 18944, fmt8) / bf16 < 0.501


def test_a_short_last_group_is_supported():
    linear = gaussian_linear(in_features=80)  # 128-groups do not divide 80
    module = quantize_linear(linear, parse_format("int4", ""))
    assert module.scales.shape == (96, 1) and relative_error(module, linear) < 0.105


def test_constant_and_zero_rows_survive_every_format():
    linear = nn.Linear(64, 3, bias=False)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1] = 0.25
        linear.weight[2, :32] = -3.0
    for spec in ["int8", "int4", "int4:sym", "fp8", "int8:g32"]:
        w = quantize_linear(linear, parse_format(spec, spec)).dequantize_weight()
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w, linear.weight.detach(), rtol=0.01, atol=1e-6)


def test_tiny_weights_do_not_underflow_fp16_scales():
    linear = gaussian_linear()
    with torch.no_grad():
        linear.weight.mul_(1e-7)
    module = quantize_linear(linear, parse_format("int4", ""))
    assert torch.isfinite(module.dequantize_weight()).all()


@pytest.mark.parametrize("spec", ["int8", "int4:g32", "fp8", "none"])
def test_fusing_q_k_v_is_exactly_quantizing_them_separately(spec):
    parts = [gaussian_linear(out, 128, seed=out) for out in (64, 32, 32)]
    fmt = parse_format(spec, spec)
    quantized = [quantize_linear(p, fmt) for p in parts]
    fused = concat_out_features(quantized)
    x = torch.randn(4, 128)
    torch.testing.assert_close(fused(x), torch.cat([q(x) for q in quantized], dim=-1), rtol=0, atol=1e-6)


def test_fusing_different_formats_is_refused():
    a = Int8Linear.from_float(torch.randn(8, 16))
    b = Fp8Linear.from_float(torch.randn(8, 16))
    with pytest.raises(ValueError, match="different types"):
        concat_out_features([a, b])


def test_the_gpu_kernel_serves_cuda_inputs_only(monkeypatch):
    calls = []
    monkeypatch.setattr(Int8Linear, "kernel_forward", lambda module, x: calls.append(x) or torch.zeros(1))
    module = Int8Linear.from_float(torch.randn(8, 16))
    module(torch.randn(2, 16))  # CPU input: reference path
    assert calls == []
    assert isinstance(module, QuantizedLinear) and module.format_name == "int8"


def _kernels_usable(monkeypatch, usable: bool):
    monkeypatch.setattr(formats, "_gpu_kernels_usable", lambda x: usable)


@pytest.fixture
def fp8_kernel_usable(monkeypatch):
    _kernels_usable(monkeypatch, True)


# (input shape, _scaled_mm fits, path): the weight-only kernel takes up to 16 rows (counted over every
# leading dimension) and any shape _scaled_mm cannot take; _scaled_mm takes the rest.
@pytest.mark.parametrize(
    "shape, scaled_mm_fits, path",
    [
        ((1, 64), True, "kernel"),
        ((16, 64), True, "kernel"),
        ((2, 8, 64), True, "kernel"),
        ((17, 64), True, "scaled_mm"),
        ((3, 6, 64), True, "scaled_mm"),
        ((512, 64), True, "scaled_mm"),
        ((17, 64), False, "kernel"),
        ((512, 64), False, "kernel"),
    ],
)
def test_fp8_cuda_dispatch_by_rows(monkeypatch, fp8_kernel_usable, shape, scaled_mm_fits, path):
    assert FP8_WEIGHT_ONLY_MAX_ROWS == 16
    monkeypatch.setattr(Fp8Linear, "_scaled_mm_fits", lambda self, x: scaled_mm_fits)
    module = Fp8Linear.from_float(torch.randn(32, 64))
    assert module.cuda_path(torch.zeros(shape)) == path


@pytest.mark.parametrize("scaled_mm_fits, path", [(True, "scaled_mm"), (False, "reference")])
def test_fp8_without_triton_keeps_scaled_mm_at_every_batch(monkeypatch, scaled_mm_fits, path):
    _kernels_usable(monkeypatch, False)
    monkeypatch.setattr(Fp8Linear, "_scaled_mm_fits", lambda self, x: scaled_mm_fits)
    module = Fp8Linear.from_float(torch.randn(32, 64))
    assert module.cuda_path(torch.zeros(1, 64)) == path
    assert module.cuda_path(torch.zeros(64, 64)) == path


def test_fp8_on_cpu_is_the_reference():
    module = Fp8Linear.from_float(torch.randn(32, 64), torch.randn(32))
    x = torch.randn(3, 64)
    torch.testing.assert_close(module(x), module.reference_forward(x), rtol=0, atol=0)


def test_groupwise_rejects_unsupported_bits():
    with pytest.raises(ValueError, match="4 or 8 bits"):
        GroupwiseLinear(torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2, 1), torch.zeros(2, 1), 3, 8)
