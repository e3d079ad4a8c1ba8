"""quantize_model on a tiny random Qwen2 (transformers): modules swapped by role, bytes reported, logits
kept close; and the byte formula agrees with the modules it describes."""

import pytest
import torch
from torch import nn

from qwen_triton.errors import InvalidRequestError
from qwen_triton.quantization.formats import Fp8Linear, GroupwiseLinear, Int8Linear, QuantizedLinear
from qwen_triton.quantization.quantize import quantize_model
from qwen_triton.quantization.spec import linear_weight_bytes, parse_spec


def tiny_qwen2(tied=True):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(config).eval()


TOKENS = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))


def relative_logit_error(spec):
    model = tiny_qwen2()
    with torch.no_grad():
        reference = model(TOKENS).logits
        quantize_model(model, spec)
        logits = model(TOKENS).logits
    return float((logits - reference).norm() / reference.norm())


# Measured relative Frobenius error of the logits (random init, so every layer is noise-like):
# int8 0.9 %, fp8 3.7 %, int4 g128 13.6 %, int4 g32 12.3 %, layered 2.7 % (lm_head, tied, stays float).
@pytest.mark.parametrize(
    "spec, bound", [("int8", 0.015), ("fp8", 0.05), ("int4", 0.16), ("int4:g32", 0.15), ("layered", 0.04)]
)
def test_logits_stay_close(spec, bound):
    assert relative_logit_error(spec) < bound


def test_layered_swaps_each_module_by_role_and_leaves_embeddings_alone():
    model = tiny_qwen2()
    report = quantize_model(model, "layered")
    layer = model.model.layers[0]
    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj):
        assert isinstance(proj, Int8Linear)
    for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
        assert isinstance(proj, GroupwiseLinear) and proj.bits == 4
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.model.embed_tokens.weight
    assert isinstance(model.model.embed_tokens, nn.Embedding)
    assert layer.self_attn.q_proj.bias is not None  # Qwen2's QKV bias survives
    assert len(report.modules) == 2 * 7 + 1
    assert report.model_bytes_after < report.model_bytes_before
    assert report.linear_bytes_after < report.linear_bytes_before
    assert "MiB" in str(report)


def test_report_bytes_are_the_modules_bytes():
    model = tiny_qwen2(tied=False)
    report = quantize_model(model, "attention=fp8,mlp=int4:g64,lm_head=int8")
    by_name = dict(model.named_modules())
    for entry in report.modules:
        module = by_name[entry.name]
        assert isinstance(module, QuantizedLinear)
        assert entry.bytes_after == module.weight_bytes()
        bias = 0 if module.bias is None else module.bias.numel() * 4
        fmt = parse_spec("attention=fp8,mlp=int4:g64,lm_head=int8")[entry.role]
        assert entry.bytes_after == linear_weight_bytes(module.in_features, module.out_features, fmt, 4) + bias
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.layers[1].self_attn.o_proj, Fp8Linear)


def test_a_custom_role_mapping_reaches_other_module_names():
    model = nn.Sequential()
    model.add_module("attn_out", nn.Linear(32, 32))
    model.add_module("ffn_in", nn.Linear(32, 64))
    model.add_module("other", nn.Linear(64, 8))
    quantize_model(model, "attention=int8,mlp=int4:g32", module_roles={"attn_out": "attention", "ffn_in": "mlp"})
    assert isinstance(model.attn_out, Int8Linear) and isinstance(model.ffn_in, GroupwiseLinear)
    assert type(model.other) is nn.Linear
    quantize_model(model, "all=fp8", module_roles=lambda name: "lm_head" if name == "other" else None)
    assert isinstance(model.other, Fp8Linear)


def test_none_changes_nothing_and_a_bad_spec_changes_nothing_either():
    model = tiny_qwen2()
    assert quantize_model(model, "none").model_bytes_after == quantize_model(model, None).model_bytes_before
    with pytest.raises(InvalidRequestError, match="mlp=int5"):
        quantize_model(model, "attention=int8,mlp=int5")
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())


def test_quantized_model_runs_in_bfloat16():
    model = tiny_qwen2().to(torch.bfloat16)
    quantize_model(model, "layered")
    with torch.no_grad():
        logits = model(TOKENS).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
