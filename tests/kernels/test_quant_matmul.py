"""int8 / int4 / fp8 weight-only linear kernels against plain torch, and against quantization.py's modules
(whose storage format the kernels read)."""

import pytest
import torch
from kernel_env import PoisonedTorch, needs_kernels

pytestmark = needs_kernels


def int8_case(generator, out_f, in_f, rows, dtype):
    x = torch.randn(rows, in_f, generator=generator).to(dtype)
    qweight = torch.randint(-127, 128, (out_f, in_f), generator=generator, dtype=torch.int8)
    scale = torch.rand(out_f, generator=generator) * 0.01 + 1e-3
    bias = torch.randn(out_f, generator=generator)
    return x, qweight, scale, bias


def int4_case(generator, out_f, in_f, rows, group, dtype):
    groups = -(-in_f // group)
    x = torch.randn(rows, in_f, generator=generator).to(dtype)
    packed = torch.randint(0, 256, (out_f, in_f // 2), generator=generator, dtype=torch.uint8)
    scales = (torch.rand(out_f, groups, generator=generator) * 0.01 + 1e-3).half()
    zeros = torch.randint(0, 16, (out_f, groups), generator=generator, dtype=torch.uint8)
    return x, packed, scales, zeros


def fp8_case(generator, out_f, in_f, rows, dtype):
    x = torch.randn(rows, in_f, generator=generator).to(dtype)
    # Magnitudes from e4m3 subnormals (< 2**-6) up to the 448 clamp, both signs; no NaN bytes, as
    # Fp8Linear.from_float never stores one either.
    magnitude = 2.0 ** torch.randint(-12, 8, (out_f, in_f), generator=generator)
    w = (torch.randn(out_f, in_f, generator=generator) * magnitude).clamp(-448, 448)
    qweight = w.to(torch.float8_e4m3fn)
    scale = torch.rand(out_f, generator=generator) * 0.01 + 1e-3
    bias = torch.randn(out_f, generator=generator)
    return x, qweight, scale, bias


def skip_interpreted_bf16_dot(device, dtype, path):
    if device.type == "cpu" and dtype == torch.bfloat16 and path == "gemm":
        pytest.skip(
            "bf16 GEMM needs a CUDA GPU: Triton's CPU interpreter keeps bf16 as uint16 and its tl.dot "
            "multiplies those raw bits (seen with triton 3.9; int8's bf16 GEMM is off the same way)"
        )


@pytest.fixture
def poisoned_outputs(monkeypatch):
    from qwen_triton.kernels import quant_matmul

    monkeypatch.setattr(quant_matmul, "torch", PoisonedTorch())


@pytest.mark.parametrize("path", ["gemv", "gemm"])
@pytest.mark.parametrize("rows", [1, 3, 20])
@pytest.mark.parametrize("split_k", [None, 1, 3])
def test_int8_linear(generator, device, rel_error, path, rows, split_k):
    from kernel_reference import int8_linear_reference

    from qwen_triton.kernels import int8_linear

    x, qweight, scale, bias = int8_case(generator, 48, 1000, rows, torch.float16)  # 1000: ragged K tile
    out = int8_linear(x.to(device), qweight.to(device), scale.to(device), bias.to(device), path=path, split_k=split_k)
    assert out.shape == (rows, 48) and out.dtype == torch.float16
    assert rel_error(out, int8_linear_reference(x, qweight, scale, bias, torch.float64)) < 2e-3


@pytest.mark.parametrize("path", ["gemv", "gemm"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("split_k", [None, 2])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_linear(generator, device, rel_error, path, symmetric, split_k, group):
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    x, packed, scales, zeros = int4_case(generator, 40, 320, 5, group, torch.float16)
    zeros = None if symmetric else zeros
    out = int4_linear(
        x.to(device),
        packed.to(device),
        scales.to(device),
        None if zeros is None else zeros.to(device),
        group,
        path=path,
        split_k=split_k,
    )
    expected = int4_linear_reference(x, packed, scales, zeros, group, dtype=torch.float64)
    assert rel_error(out, expected) < 2e-3


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 6e-3), (torch.float16, 2e-3)])
@pytest.mark.parametrize("split_k", [None, 3])
def test_int4_linear_rows_and_dtypes(generator, device, rel_error, poisoned_outputs, rows, dtype, tolerance, split_k):
    """The default path (the GEMM at every row count) in both 16-bit activation dtypes, which the
    CUDA kernel converts nibbles to with different inline PTX; 17 rows need a second row tile; 37
    outputs leave a ragged column tile; bias added once after the split-K sum."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    skip_interpreted_bf16_dot(device, dtype, "gemm")
    x, packed, scales, zeros = int4_case(generator, 37, 384, rows, 64, dtype)
    bias = torch.randn(37, generator=generator)
    out = int4_linear(
        x.to(device),
        packed.to(device),
        scales.to(device),
        zeros.to(device),
        64,
        bias.to(dtype).to(device),
        split_k=split_k,
    )
    assert out.shape == (rows, 37) and out.dtype == dtype
    expected = int4_linear_reference(x, packed, scales, zeros, 64, bias.to(dtype), dtype=torch.float64)
    assert rel_error(out, expected) < tolerance


def test_int4_linear_float_zero_points(generator, device, rel_error):
    """Fractional zero points are allowed; the packed conversion (integers only) must not round them."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    x, packed, scales, _ = int4_case(generator, 32, 256, 4, 128, torch.float16)
    zeros = torch.rand(32, 2, generator=generator) * 15
    out = int4_linear(x.to(device), packed.to(device), scales.to(device), zeros.to(device), 128)
    assert rel_error(out, int4_linear_reference(x, packed, scales, zeros, 128, dtype=torch.float64)) < 2e-3


@pytest.mark.parametrize("path", [None, "gemv", "gemm"])
@pytest.mark.parametrize("rows", [1, 3, 16, 17])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("split_k", [None, 3])
def test_fp8_linear(generator, device, rel_error, poisoned_outputs, path, rows, with_bias, split_k):
    """37 outputs (not a multiple of any BLOCK_N), 999 inputs (odd: every K tile is ragged); 17 rows
    need a second GEMM row tile."""
    from kernel_reference import fp8_linear_reference

    from qwen_triton.kernels import fp8_linear

    x, qweight, scale, bias = fp8_case(generator, 37, 999, rows, torch.float16)
    bias = bias if with_bias else None
    out = fp8_linear(
        x.to(device),
        qweight.to(device),
        scale.to(device),
        None if bias is None else bias.to(device),
        path=path,
        split_k=split_k,
    )
    assert out.shape == (rows, 37) and out.dtype == torch.float16
    assert rel_error(out, fp8_linear_reference(x, qweight, scale, bias, torch.float64)) < 2e-3


@pytest.mark.parametrize("path", ["gemv", "gemm"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 6e-3), (torch.float32, None)])
def test_fp8_linear_other_activation_dtypes(generator, device, rel_error, poisoned_outputs, path, dtype, tolerance):
    """bf16 (what serving uses; its 8-bit mantissa bounds the error) and float32 (tf32 dots on GPU),
    [batch, seq, in] input."""
    from kernel_reference import fp8_linear_reference

    from qwen_triton.kernels import fp8_linear

    skip_interpreted_bf16_dot(device, dtype, path)
    x, qweight, scale, bias = fp8_case(generator, 50, 640, 6, dtype)
    out = fp8_linear(x.view(2, 3, 640).to(device), qweight.to(device), scale.to(device), bias.to(device), path=path)
    assert out.shape == (2, 3, 50) and out.dtype == dtype
    if tolerance is None:
        tolerance = 5e-3 if device.type == "cuda" else 1e-5
    expected = fp8_linear_reference(x, qweight, scale, bias, torch.float64)
    assert rel_error(out.reshape(6, 50), expected) < tolerance


def test_float32_activations_and_3d_input(generator, device, rel_error):
    """[batch, seq, in] inputs keep their leading shape; float32 works (tf32 dots on GPU)."""
    from kernel_reference import int8_linear_reference

    from qwen_triton.kernels import int8_linear

    x, qweight, scale, _ = int8_case(generator, 32, 256, 6, torch.float32)
    out = int8_linear(x.view(2, 3, 256).to(device), qweight.to(device), scale.to(device))
    assert out.shape == (2, 3, 32)
    tolerance = 5e-3 if device.type == "cuda" else 1e-5
    assert rel_error(out.reshape(6, 32), int8_linear_reference(x, qweight, scale, dtype=torch.float64)) < tolerance


def test_reads_the_quantization_modules_format(generator, device, rel_error):
    """The kernels consume Int8Linear / GroupwiseLinear buffers as they are stored (no repacking)."""
    from qwen_triton.kernels import int4_linear, int8_linear
    from qwen_triton.quantization import formats as quant

    weight = torch.randn(64, 256, generator=generator) * 0.05
    bias = torch.randn(64, generator=generator)
    x = torch.randn(2, 256, generator=generator).half()
    int8 = quant.Int8Linear.from_float(weight, bias)
    int4 = quant.GroupwiseLinear.from_float(weight, bias, bits=4, group_size=64)
    out8 = int8_linear(x.to(device), int8.qweight.to(device), int8.scale.to(device), int8.bias.to(device))
    out4 = int4_linear(
        x.to(device),
        int4.qweight.to(device),
        int4.scales.to(device),
        int4.zeros.to(device),
        int4.group_size,
        int4.bias.to(device),
    )
    assert rel_error(out8, int8.reference_forward(x.double())) < 2e-3
    assert rel_error(out4, int4.reference_forward(x.double())) < 2e-3


@pytest.mark.parametrize("rows", [1, 16])
def test_fp8_kernel_is_weight_only_like_the_cpu_path(generator, device, rel_error, rows):
    """On Fp8Linear's buffers the kernel agrees with dequantize-then-matmul to bf16 rounding: x is
    never quantized (torch._scaled_mm's W8A8 path is ~3 % off; see tests/quant/test_gpu.py)."""
    from qwen_triton.kernels import fp8_linear
    from qwen_triton.quantization import formats as quant

    skip_interpreted_bf16_dot(device, torch.bfloat16, "gemv" if rows == 1 else "gemm")
    weight = torch.randn(96, 320, generator=generator) * 0.05
    module = quant.Fp8Linear.from_float(weight, torch.randn(96, generator=generator))
    x = torch.randn(rows, 320, generator=generator).bfloat16()
    out = fp8_linear(
        x.to(device), module.qweight.to(device), module.scale.to(device), module.bias.bfloat16().to(device)
    )
    assert rel_error(out, module.reference_forward(x.double())) < 6e-3


def test_bad_inputs_name_the_field(generator, device):
    from qwen_triton.kernels import fp8_linear, int4_linear, int8_linear

    x, qweight, scale, _ = int8_case(generator, 16, 64, 1, torch.float16)
    with pytest.raises(ValueError, match="qweight"):
        int8_linear(x, qweight.float(), scale)
    with pytest.raises(ValueError, match="scale"):
        int8_linear(x, qweight, scale[:3])
    with pytest.raises(ValueError, match="x: last dimension"):
        int8_linear(x[:, :32], qweight, scale)
    with pytest.raises(ValueError, match="bias"):
        int8_linear(x, qweight, scale, torch.zeros(3))
    with pytest.raises(ValueError, match="path"):
        int8_linear(x, qweight, scale, path="fast")
    _, fp8_weight, fp8_scale, _ = fp8_case(generator, 16, 64, 1, torch.float16)
    with pytest.raises(ValueError, match="qweight: expected a row-contiguous float8_e4m3fn"):
        fp8_linear(x, qweight, scale)
    with pytest.raises(ValueError, match="qweight"):
        fp8_linear(x, fp8_weight.t(), fp8_scale)
    with pytest.raises(ValueError, match="scale"):
        fp8_linear(x, fp8_weight, fp8_scale[:3])
    with pytest.raises(ValueError, match="bias"):
        fp8_linear(x, fp8_weight, fp8_scale, torch.zeros(3))
    x4, packed, scales, zeros = int4_case(generator, 16, 128, 1, 32, torch.float16)
    with pytest.raises(ValueError, match="group_size"):
        int4_linear(x4, packed, scales, zeros, 48)
    with pytest.raises(ValueError, match="scales"):
        int4_linear(x4, packed, scales[:, :2], zeros, 32)
    with pytest.raises(ValueError, match="zeros"):
        int4_linear(x4, packed, scales, zeros[:8], 32)


@pytest.mark.parametrize(
    "config",
    [
        dict(BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),  # one group a step
        dict(BLOCK_N=32, BLOCK_K=512, num_warps=4, num_stages=3),
    ],
)  # capped to two
def test_int4_gemm_group_steps(generator, device, rel_error, config):
    """The GEMM's K step spans one or two groups (scales and zero points loaded a step ahead, picked by
    column); 40 outputs leave a ragged column tile, 640 inputs an odd number of groups of 128."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    x, packed, scales, zeros = int4_case(generator, 40, 640, 3, 128, torch.float16)
    for split_k in (None, 2):
        out = int4_linear(
            x.to(device),
            packed.to(device),
            scales.to(device),
            zeros.to(device),
            128,
            config=config,
            path="gemm",
            split_k=split_k,
        )
        assert rel_error(out, int4_linear_reference(x, packed, scales, zeros, 128, dtype=torch.float64)) < 2e-3


@pytest.mark.parametrize("out_f, in_f", [(24, 8192), (40, 8320)])
def test_int4_default_launch_on_long_rows(generator, device, rel_error, monkeypatch, out_f, in_f):
    """The automatic settings at one row of long layers: 8192 inputs take the long-row GEMV (steps of
    1024), 8320 (= 65 x 128) the GEMM in whole steps of 128; both against the float64 reference. The
    narrow-layer settings are switched off so that a small (fast to interpret) layer takes the wide path."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear
    from qwen_triton.kernels import quant_matmul as qm

    monkeypatch.setitem(qm.INT4_GEMV_NARROW, "max_out_features", 0)
    monkeypatch.setitem(qm.INT4_NARROW, "max_out_features", 0)
    monkeypatch.setitem(qm.INT4_GEMV_LONG, "min_out_features", 0)

    x, packed, scales, zeros = int4_case(generator, out_f, in_f, 1, 128, torch.float16)
    out = int4_linear(x.to(device), packed.to(device), scales.to(device), zeros.to(device), 128)
    assert rel_error(out, int4_linear_reference(x, packed, scales, zeros, 128, dtype=torch.float64)) < 2e-3


def test_int8_large_layer_settings_at_many_rows(generator, device, rel_error, monkeypatch):
    """Above 16 rows large int8 layers take BYTE_GEMM_LARGE_LAYER's wide tiles; its threshold is lowered
    here so a small (fast to interpret) layer with ragged rows, columns and K steps runs them."""
    from kernel_reference import int8_linear_reference

    from qwen_triton.kernels import int8_linear
    from qwen_triton.kernels import quant_matmul as qm

    monkeypatch.setitem(qm.BYTE_GEMM_LARGE_LAYER, "min_weights", 0)
    x, qweight, scale, bias = int8_case(generator, 136, 200, 20, torch.float16)
    out = int8_linear(x.to(device), qweight.to(device), scale.to(device), bias.to(device))
    assert rel_error(out, int8_linear_reference(x, qweight, scale, bias, dtype=torch.float64)) < 2e-3


def test_int4_path_by_measured_shape():
    """int4 takes its GEMV at one row of short layers (0.5B qkv / o / gate_up) and of wide layers with long
    rows that steps of 1024 divide (72B's gate_up), the GEMM elsewhere (7B, 72B's o and down_proj)."""
    from qwen_triton.kernels import quant_matmul as qm

    for out_f, in_f in ((1152, 896), (896, 896), (9728, 896), (59136, 8192)):
        assert qm.use_gemv(1, None, "int4", out_f, in_f) and not qm.use_gemv(2, None, "int4", out_f, in_f)
    for out_f, in_f in ((896, 4864), (4608, 3584), (37888, 3584), (3584, 18944), (8192, 8192), (8192, 29568)):
        assert not qm.use_gemv(1, None, "int4", out_f, in_f)
    assert qm.use_gemv(1, None, "int8", 4608, 3584) and qm.use_gemv(64, "gemv", "int4", 4608, 3584)


def test_int4_gemv_steps_divide_k():
    """A K step is halved until it divides the inputs (no masked loads), not below 128."""
    from qwen_triton.kernels import quant_matmul as qm

    assert [qm.whole_steps(k, 512) for k in (3584, 896, 4864, 1088)] == [512, 128, 256, 128]
    assert [qm.whole_steps(k, 256) for k in (3584, 29568, 18944)] == [256, 128, 256]


def test_int4_split_k_choice(monkeypatch):
    """The measured split choices on a 132-multiprocessor H100: 64-row layers split (the old cap on the
    partials' bytes kept them at 1), short-K 0.5B layers split down to one K step a program."""
    from qwen_triton.kernels import quant_matmul as qm

    monkeypatch.setattr(qm, "multiprocessor_count", lambda index: 132)
    cuda = torch.device("cuda", 0)

    def split(rows, out_f, in_f, block_n, block_m=16):
        tiles = -(-out_f // block_n) * -(-rows // block_m)
        return qm.choose_split_k(tiles, rows, out_f, in_f, 256, out_f * in_f // 2, cuda, "int4")

    assert split(64, 4608, 3584, 64, block_m=64) == 3
    assert split(64, 3584, 18944, 64, block_m=64) == 4  # 5 (past one wave) measured 80 us against 58
    assert split(1, 3584, 18944, 64) == 8
    assert split(1, 37888, 3584, 64) == 1
    assert split(1, 1152, 896, 32) == 4  # K 896: four steps of 256, one a split


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 6e-3), (torch.float16, 2e-3), (torch.float32, 1e-5)])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("split_k", [None, 3])
@pytest.mark.parametrize("in_f, group", [(1024, 128), (1088, 32), (896, 128)])
def test_int4_gemv_activation_dtypes(
    generator, device, rel_error, poisoned_outputs, dtype, tolerance, rows, split_k, in_f, group
):
    """The int4 GEMV reads 16-bit x two values to an int32 (bf16 and fp16 unpack differently) and
    float32 x value by value; 1088 inputs leave a ragged last step of its 512 (masked loads), 896 take
    steps of 128; 37 outputs a ragged tile of rows; bias added once after the split-K sum."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    x, packed, scales, zeros = int4_case(generator, 37, in_f, rows, group, dtype)
    bias = torch.randn(37, generator=generator).to(dtype)
    out = int4_linear(
        x.to(device),
        packed.to(device),
        scales.to(device),
        zeros.to(device),
        group,
        bias.to(device),
        path="gemv",
        split_k=split_k,
    )
    assert out.shape == (rows, 37) and out.dtype == dtype
    expected = int4_linear_reference(x, packed, scales, zeros, group, bias, dtype=torch.float64)
    assert rel_error(out, expected) < tolerance


def test_int4_gemv_reads_x_at_an_odd_offset(generator, device, rel_error):
    """A row of x that starts on an odd element cannot be viewed as int32 pairs: the GEMV then reads
    it value by value."""
    from kernel_reference import int4_linear_reference

    from qwen_triton.kernels import int4_linear

    x, packed, scales, zeros = int4_case(generator, 16, 256, 1, 64, torch.float16)
    shifted = torch.cat([torch.zeros(1, dtype=x.dtype), x.flatten()]).to(device)[1:].view(1, 256)
    assert shifted.storage_offset() == 1
    out = int4_linear(shifted, packed.to(device), scales.to(device), zeros.to(device), 64, path="gemv")
    assert rel_error(out, int4_linear_reference(x, packed, scales, zeros, 64, dtype=torch.float64)) < 2e-3
