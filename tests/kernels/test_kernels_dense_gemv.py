"""The few-row linears (kernels/dense_gemv.py) against float64 references: plain x @ W^T (+ bias) and the
gate_up GEMV that forms SiLU(gate) * up in its epilogue, for float weights and one-byte (int8 / fp8) ones."""

import pytest
import torch
import torch.nn.functional as F
from kernel_env import PoisonedTorch, needs_kernels

pytestmark = needs_kernels

# 37 outputs: a ragged last tile for every BLOCK_N; 1000 inputs: not a multiple of any BLOCK_K.
OUT, IN = 37, 1000
# Output rounding alone is ~1e-3 (bf16, 8 mantissa bits) and ~1.5e-4 (fp16): measured 1.8e-3 and 2.1e-4.
TOLERANCE = {torch.bfloat16: 4e-3, torch.float16: 6e-4, torch.float32: 1e-5}


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Outputs and split-K partials start as NaN: an element the kernel fails to write shows."""
    from qwen_triton.kernels import dense_gemv

    monkeypatch.setattr(dense_gemv, "torch", PoisonedTorch())


def case(generator, rows, dtype, out_f=OUT, in_f=IN, width=None):
    x = torch.randn(rows, width or in_f, generator=generator).to(dtype)
    weight = (torch.randn(out_f, in_f, generator=generator) * in_f**-0.5).to(dtype)
    bias = torch.randn(out_f, generator=generator).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("in_f", [IN, 1024])  # a ragged last K tile, and whole tiles only
def test_dense_linear(generator, device, rel_error, poisoned_outputs, rows, dtype, with_bias, in_f):
    from qwen_triton.kernels import dense_linear

    x, weight, bias = case(generator, rows, dtype, in_f=in_f)
    bias = bias if with_bias else None
    out = dense_linear(x.to(device), weight.to(device), None if bias is None else bias.to(device))
    assert out.shape == (rows, OUT) and out.dtype == dtype
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert rel_error(out, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("rows, split_k", [(1, 3), (4, 2), (6, 3)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dense_linear_split_k(generator, device, rel_error, poisoned_outputs, rows, split_k, with_bias):
    """K split across programs, partials added by the last program of each tile; bias added once;
    6 rows take two launches (4 + 2), each leaving the tile counters at zero for the next."""
    from qwen_triton.kernels import dense_linear

    x, weight, bias = case(generator, rows, torch.float16)
    bias = bias if with_bias else None
    out = dense_linear(
        x.to(device),
        weight.to(device),
        None if bias is None else bias.to(device),
        split_k=split_k,
        config=dict(BLOCK_N=16, BLOCK_K=128, num_warps=4),
    )
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert rel_error(out, expected) < TOLERANCE[torch.float16]


def test_leading_shape_and_strided_rows(generator, device, rel_error):
    """[batch, seq, in] keeps its leading shape; rows with a stride (a column slice) are read in place."""
    from qwen_triton.kernels import dense_linear

    x, weight, _ = case(generator, 4, torch.float16, in_f=256, width=300)
    x = x.to(device)[:, 10:266]
    out = dense_linear(x.reshape(2, 2, 256), weight.to(device))
    assert out.shape == (2, 2, OUT)
    expected = x.double().cpu() @ weight.double().T
    assert rel_error(out.reshape(4, OUT), expected) < TOLERANCE[torch.float16]


def test_zero_rows(device):
    from qwen_triton.kernels import dense_linear

    out = dense_linear(torch.empty(0, 64, dtype=torch.float16, device=device), torch.randn(8, 64).half().to(device))
    assert out.shape == (0, 8)


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(x_width=999), "x"),
        (dict(x_dtype=torch.int32), "x"),
        (dict(w_dtype=torch.float32), "weight"),
        (dict(w_transposed=True), "weight"),
        (dict(bias_len=OUT + 1), "bias"),
    ],
)
def test_bad_input_names_the_argument(device, bad, name):
    from qwen_triton.kernels import dense_linear

    x = torch.randn(2, bad.get("x_width", IN)).to(bad.get("x_dtype", torch.float16)).to(device)
    weight = torch.randn(OUT, IN).to(bad.get("w_dtype", torch.float16)).to(device)
    if bad.get("w_transposed"):
        weight = torch.randn(IN, OUT).half().to(device).t()
    bias = torch.randn(bad.get("bias_len", OUT)).half().to(device)
    with pytest.raises(ValueError, match=f"^{name}:"):
        dense_linear(x, weight, bias)


@pytest.mark.parametrize(
    "rows, in_f, dtype", [(1, IN, torch.bfloat16), (1, 300, torch.float16), (3, IN, torch.float32)]
)
def test_gate_up_silu(generator, device, rel_error, poisoned_outputs, rows, in_f, dtype):
    """silu(gate) * up from the gated GEMV against eager linear + silu_and_mul, ragged K included."""
    from qwen_triton.kernels.dense_gemv import dense_gate_up_silu
    from qwen_triton.layers.ops import silu_and_mul

    x = torch.randn(rows, in_f, generator=generator).to(dtype)
    weight = (torch.randn(2 * 150, in_f, generator=generator) / in_f**0.5).to(dtype)
    out = dense_gate_up_silu(x.to(device), weight.to(device))
    expected = silu_and_mul(F.linear(x.double(), weight.double()))
    assert out.shape == (rows, 150) and out.dtype == dtype
    assert rel_error(out, expected) < (1e-2 if dtype != torch.float32 else 1e-5)


def test_gate_up_silu_needs_an_even_weight(device):
    from qwen_triton.kernels.dense_gemv import dense_gate_up_silu

    with pytest.raises(ValueError, match="^weight:"):
        dense_gate_up_silu(torch.randn(1, 64).to(device), torch.randn(99, 64).to(device))


class Routing:
    """fused_ops' kernel set on this device, with the dense kernels counted."""

    def __init__(self, monkeypatch):
        from qwen_triton.kernels import dense_gemv
        from qwen_triton.layers import ops as fused_ops

        self.calls = []
        for name in ("dense_linear", "dense_gate_up_silu", "byte_gate_up_silu"):
            original = getattr(dense_gemv, name)
            monkeypatch.setattr(dense_gemv, name, self.counted(name, original))
        self.ops = fused_ops.kernel_ops()

    def counted(self, name, fn):
        def call(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)

        return call


def mlp(dtype, device, hidden=64, inter=96):
    from types import SimpleNamespace

    from qwen_triton.models.qwen2 import MLP

    torch.manual_seed(3)
    return MLP(SimpleNamespace(hidden_size=hidden, intermediate_size=inter)).to(dtype).to(device)


@pytest.mark.parametrize("rows, routed", [(1, True), (5, False)])
def test_mlp_routes_plain_bf16_linears_at_few_rows(device, rel_error, monkeypatch, rows, routed):
    """fused_ops.kernel_ops: gate_up (SiLU*up in its epilogue) and down take the GEMV up to
    ROUTE_MAX_ROWS rows, cuBLAS (module(x)) above; either way the MLP computes what the eager ops compute."""
    from qwen_triton.kernels import dense_gemv
    from qwen_triton.layers import ops as fused_ops

    monkeypatch.setattr(dense_gemv, "ROUTE_MAX_ROWS", 4)
    routing = Routing(monkeypatch)
    module = mlp(torch.bfloat16, device)
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(5)).bfloat16().to(device)
    with torch.inference_mode():
        out = module(x, routing.ops)
        expected = module(x, fused_ops.EAGER)
    assert routing.calls == (["dense_gate_up_silu", "dense_linear"] if routed else [])
    assert rel_error(out, expected) < 1e-2


def test_mlp_keeps_quantized_and_float32_linears_off_the_gemv(device, rel_error, monkeypatch):
    """A quantized down_proj reads the GEMV's SiLU*up and runs its own forward; an int8 gate_up takes
    byte_gate_up_silu on CUDA (its own forward and the SiLU*up kernel elsewhere); a float32 model never routes."""
    from qwen_triton.layers import ops as fused_ops
    from qwen_triton.quantization.formats import Int8Linear

    routing = Routing(monkeypatch)
    module = mlp(torch.bfloat16, device)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(6)).bfloat16().to(device)

    def routed_calls() -> list[str]:
        """The dense kernels the MLP called, after checking it computed what the eager ops compute."""
        routing.calls.clear()
        with torch.inference_mode():
            out = module(x, routing.ops)
            expected = module(x, fused_ops.EAGER)
        assert rel_error(out, expected) < 1e-2
        return routing.calls

    dense = module.down_proj
    module.down_proj = Int8Linear.from_float(dense.weight).to(device)
    assert routed_calls() == ["dense_gate_up_silu"]  # gate_up only
    module.down_proj, module.gate_up_proj = dense, Int8Linear.from_float(module.gate_up_proj.weight).to(device)
    # an int8 gate_up on CUDA takes the one-byte GEMV's fused form; elsewhere its own forward
    assert routed_calls() == (["byte_gate_up_silu"] if device.type == "cuda" else []) + ["dense_linear"]
    routing.calls.clear()
    with torch.inference_mode():
        mlp(torch.float32, device)(x.float(), routing.ops)
    assert routing.calls == []


def lm_head_model(head: torch.nn.Module):
    """Just what DecoderModel.compute_logits reads."""
    from types import SimpleNamespace

    return SimpleNamespace(lm_head=head)


@pytest.mark.parametrize("rows, routed", [(1, True), (2, False)])
def test_lm_head_routes_through_the_gemv_at_one_row(device, rel_error, monkeypatch, rows, routed):
    """compute_logits takes fused_ops' linear: a plain bf16 head at ROUTE_MAX_ROWS rows runs the dense
    GEMV, more rows nn.Linear; float32 logits either way, equal to lm_head(hidden).float()."""
    from qwen_triton.models import qwen2 as model_module
    from qwen_triton.models.qwen2 import DecoderModel

    routing = Routing(monkeypatch)
    monkeypatch.setattr(model_module, "fused_ops", lambda _device: routing.ops)
    torch.manual_seed(7)
    head = torch.nn.Linear(64, 300, bias=False).bfloat16().to(device)
    hidden = torch.randn(rows, 64, generator=torch.Generator().manual_seed(8)).bfloat16().to(device)
    with torch.inference_mode():
        logits = DecoderModel.compute_logits(lm_head_model(head), hidden)
        expected = head(hidden).float()
    assert routing.calls == (["dense_linear"] if routed else [])
    assert logits.dtype == torch.float32 and logits.shape == (rows, 300)
    assert rel_error(logits, expected) < 1e-2


def test_quantized_lm_head_keeps_its_own_forward(device, rel_error, monkeypatch):
    from qwen_triton.models import qwen2 as model_module
    from qwen_triton.models.qwen2 import DecoderModel
    from qwen_triton.quantization.formats import Int8Linear

    routing = Routing(monkeypatch)
    monkeypatch.setattr(model_module, "fused_ops", lambda _device: routing.ops)
    weight = torch.randn(300, 64, generator=torch.Generator().manual_seed(9)).bfloat16()
    head = Int8Linear.from_float(weight).to(device)
    hidden = torch.randn(1, 64, generator=torch.Generator().manual_seed(10)).bfloat16().to(device)
    with torch.inference_mode():
        logits = DecoderModel.compute_logits(lm_head_model(head), hidden)
        expected = head(hidden).float()
    assert routing.calls == []
    assert logits.dtype == torch.float32 and torch.equal(logits, expected)


def test_split_rule_at_7b_shapes(monkeypatch):
    """choose_split on a 132-SM GPU (the rule alone, no launch): the plain down_proj read (18944
    inputs) in 4 slices of at most MAX_K_PER_SPLIT, the 3584-input linears and the LM head unsplit,
    and a narrow output by its programs-per-SM count, capped so that no split is shorter than
    MIN_TILES_PER_SPLIT tiles of K."""
    from qwen_triton.kernels import dense_gemv

    monkeypatch.setattr(dense_gemv, "multiprocessor_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    assert dense_gemv.choose_split(896, 18944, 512, gpu) == 4
    for tiles in (896, 1152, 9472, 38016):  # o, qkv, gate_up, lm_head at 4 rows a tile
        assert dense_gemv.choose_split(tiles, 3584, 512, gpu) == 1
    assert dense_gemv.choose_split(224, 18944, 512, gpu) == 4  # max(ceil(528 / 224), ceil(18944 / 5120))
    assert dense_gemv.choose_split(100, 4096, 512, gpu) == 4  # 528 / 100 -> 6, capped at 4096 / (512 * 2)
    assert dense_gemv.choose_split(896, 18944, 512, torch.device("cpu")) == 1


# -- one-byte weights (int8, fp8) --------------------------------------------------------------------------


def byte_case(generator, rows, fmt, out_f=OUT, in_f=IN):
    """x (bf16), the quantized module of a random weight, and the float64 weight it stands for."""
    from qwen_triton.quantization.formats import Fp8Linear, Int8Linear

    x = torch.randn(rows, in_f, generator=generator).bfloat16()
    weight = torch.randn(out_f, in_f, generator=generator) * in_f**-0.5
    bias = torch.randn(out_f, generator=generator).bfloat16()
    module = (Int8Linear if fmt == "int8" else Fp8Linear).from_float(weight)
    return x, module, module.dequantize_weight(torch.float64), bias


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("in_f", [IN, 1024])  # a ragged last K tile, and whole tiles only
def test_byte_linear(generator, device, rel_error, poisoned_outputs, fmt, rows, with_bias, in_f):
    """x @ (q * scale)^T (+ bias) from the bytes, the scale applied per output channel."""
    from qwen_triton.kernels.dense_gemv import byte_linear

    x, module, weight, bias = byte_case(generator, rows, fmt, in_f=in_f)
    bias = bias if with_bias else None
    module = module.to(device)
    out = byte_linear(x.to(device), module.qweight, module.scale, None if bias is None else bias.to(device))
    assert out.shape == (rows, OUT) and out.dtype == torch.bfloat16
    expected = F.linear(x.double(), weight, None if bias is None else bias.double())
    assert rel_error(out, expected) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("rows, split_k", [(1, 3), (2, 2)])
def test_byte_linear_split_k(generator, device, rel_error, poisoned_outputs, fmt, rows, split_k):
    """Split partials are unscaled sums: the last program of a tile scales their total once (and adds bias)."""
    from qwen_triton.kernels.dense_gemv import byte_linear

    x, module, weight, bias = byte_case(generator, rows, fmt)
    module = module.to(device)
    config = dict(BLOCK_N=8, BLOCK_K=128, num_warps=4)
    out = byte_linear(x.to(device), module.qweight, module.scale, bias.to(device), config=config, split_k=split_k)
    assert rel_error(out, F.linear(x.double(), weight, bias.double())) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("in_f", [IN, 1024])
def test_byte_gate_up_silu(generator, device, rel_error, poisoned_outputs, fmt, in_f):
    """The fused form against the quantized module's own output then silu_and_mul."""
    from qwen_triton.kernels.dense_gemv import byte_gate_up_silu
    from qwen_triton.layers.ops import silu_and_mul

    x, module, weight, _ = byte_case(generator, 1, fmt, out_f=2 * 150, in_f=in_f)
    module = module.to(device)
    out = byte_gate_up_silu(x.to(device), module.qweight, module.scale)
    assert out.shape == (1, 150) and out.dtype == torch.bfloat16
    assert rel_error(out, silu_and_mul(F.linear(x.double(), weight))) < 1e-2


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(qweight_dtype=torch.float16), "qweight"),
        (dict(scale_len=OUT - 1), "scale"),
        (dict(width=IN - 1), "x"),
    ],
)
def test_byte_linear_names_the_bad_argument(device, bad, name):
    from qwen_triton.kernels.dense_gemv import byte_linear

    x = torch.randn(1, bad.get("width", IN)).bfloat16().to(device)
    qweight = torch.zeros(OUT, IN, dtype=bad.get("qweight_dtype", torch.int8), device=device)
    scale = torch.ones(bad.get("scale_len", OUT), device=device)
    with pytest.raises(ValueError, match=f"^{name}:"):
        byte_linear(x, qweight, scale)


def test_byte_rules_at_7b_and_72b_shapes(monkeypatch):
    """byte_config_for on a 132-SM GPU: small layers 4 rows x 1024 bytes, large ones 8 x 512, long rows
    (down_proj) unsplit in steps of 1024, 8 rows a program only where that still fills the GPU."""
    from qwen_triton.kernels import dense_gemv

    monkeypatch.setattr(dense_gemv, "multiprocessor_count", lambda index: 132)
    gpu = torch.device("cuda", 0)
    small, large = (dense_gemv.BYTE_SMALL, None), (dense_gemv.BYTE_LARGE, None)
    assert dense_gemv.byte_config_for(1, 4608, 3584, gpu) == small  # 7B qkv
    assert dense_gemv.byte_config_for(1, 37888, 3584, gpu) == large  # 7B gate_up
    assert dense_gemv.byte_config_for(1, 10240, 8192, gpu) == large  # 72B qkv
    assert dense_gemv.byte_config_for(1, 3584, 18944, gpu) == (dict(BLOCK_N=4, BLOCK_K=1024, num_warps=4), 1)
    assert dense_gemv.byte_config_for(1, 8192, 29568, gpu) == (dict(BLOCK_N=8, BLOCK_K=1024, num_warps=4), 1)
    assert dense_gemv.byte_config_for(2, 8192, 29568, gpu) == (dense_gemv.BYTE_FEW_ROWS, None)
