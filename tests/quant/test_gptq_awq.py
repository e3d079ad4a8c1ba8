"""GPTQ / AWQ checkpoints: tensors packed by an independent writer (checkpoint_writers.py) read back
into exactly the weights they encode, and a tiny Qwen2 loaded from such a checkpoint module by module."""

import pytest
import torch
from checkpoint_writers import awq_tensors, gptq_tensors
from torch import nn

from qwen_triton.quantization.formats import GroupwiseLinear, concat_out_features
from qwen_triton.quantization.prequantized import load_quantized_linear
from qwen_triton.quantization.quantize import quantize_linear, quantize_model
from qwen_triton.quantization.spec import parse_format

IN, OUT, GROUP = 256, 48, 64


def random_grid(bits, groups, zero_low=1, seed=0):
    """Random integer weights q [in, out], zeros and fp16 scales [groups, out]."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2**bits, (IN, OUT), generator=gen)
    zeros = torch.randint(zero_low, 2**bits, (groups, OUT), generator=gen)
    scales = (torch.rand(groups, OUT, generator=gen) * 0.01 + 1e-3).to(torch.float16)
    return q, zeros, scales


def expected_weight(q, zeros, scales, g_idx):
    """weight [out, in] = scales[g, o] * (q[i, o] - zeros[g, o]), g = g_idx[i]; the formats' definition."""
    return (scales.float()[g_idx] * (q - zeros[g_idx]).float()).t()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("v1", [True, False])
def test_gptq_readback_is_exact(bits, v1):
    q, zeros, scales = random_grid(bits, IN // GROUP)
    g_idx = torch.arange(IN) // GROUP
    bias = torch.randn(OUT, dtype=torch.float16)
    tensors = gptq_tensors("layer.q_proj", q, zeros, scales, g_idx, bits, bias, v1=v1)
    config = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": GROUP,
        "sym": False,
        "checkpoint_format": "gptq" if v1 else "gptq_v2",
    }
    module = load_quantized_linear(tensors, "layer.q_proj", config)
    assert isinstance(module, GroupwiseLinear) and module.in_perm is None
    assert torch.equal(module.dequantize_weight(), expected_weight(q, zeros, scales, g_idx))
    assert torch.equal(module.bias, bias)
    if bits == 4:
        assert module.qweight.shape == (OUT, IN // 2)  # repacked into our row-contiguous nibbles


def test_gptq_act_order_readback_is_exact_and_the_forward_agrees():
    q, zeros, scales = random_grid(4, IN // GROUP, seed=1)
    g_idx = torch.randperm(IN, generator=torch.Generator().manual_seed(2)) // GROUP  # desc_act: shuffled groups
    tensors = gptq_tensors("m", q, zeros, scales, g_idx, 4)
    module = load_quantized_linear(
        tensors, "m", {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": True}
    )
    weight = expected_weight(q, zeros, scales, g_idx)
    assert module.in_perm is not None
    assert torch.equal(module.dequantize_weight(), weight)
    x = torch.randn(3, IN)
    torch.testing.assert_close(module(x), x @ weight.t())


def test_gptq_g_idx_with_uneven_groups_is_refused():
    q, zeros, scales = random_grid(4, IN // GROUP)
    g_idx = torch.zeros(IN, dtype=torch.int64)  # every feature in group 0
    tensors = gptq_tensors("m", q, zeros, scales, g_idx, 4)
    with pytest.raises(ValueError, match="m.g_idx"):
        load_quantized_linear(tensors, "m", {"quant_method": "gptq", "bits": 4, "group_size": GROUP})


def test_awq_readback_is_exact():
    q, zeros, scales = random_grid(4, IN // GROUP, zero_low=0, seed=3)
    bias = torch.randn(OUT, dtype=torch.float16)
    tensors = awq_tensors("mlp.down_proj", q, zeros, scales, bias)
    config = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm", "zero_point": True}
    module = load_quantized_linear(tensors, "mlp.down_proj", config)
    assert torch.equal(module.dequantize_weight(), expected_weight(q, zeros, scales, torch.arange(IN) // GROUP))
    assert torch.equal(module.bias, bias)


def test_awq_gemv_and_unknown_methods_are_refused_by_name():
    q, zeros, scales = random_grid(4, IN // GROUP)
    tensors = awq_tensors("m", q, zeros, scales)
    with pytest.raises(ValueError, match="gemv"):
        load_quantized_linear(tensors, "m", {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemv"})
    with pytest.raises(ValueError, match="'bitsandbytes'"):
        load_quantized_linear(tensors, "m", {"quant_method": "bitsandbytes"})


def test_a_module_left_in_float_comes_back_as_nn_linear():
    weight = torch.randn(OUT, IN)
    module = load_quantized_linear({"lm_head.weight": weight}, "lm_head", {"quant_method": "gptq"})
    assert isinstance(module, nn.Linear) and module.bias is None and torch.equal(module.weight, weight)
    with pytest.raises(KeyError, match="nothing.qweight"):
        load_quantized_linear({}, "nothing", {"quant_method": "gptq"})


# ---- a tiny Qwen2 written as a GPTQ / AWQ checkpoint, then loaded back ------------------------------


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config).eval()


def grid_of(linear, group, symmetric):
    """Round-to-nearest quantization of an nn.Linear as (q [in, out], zeros, scales [groups, out])."""
    module = quantize_linear(linear, parse_format(f"int4:g{group}{':sym' if symmetric else ''}", ""))
    return module.unpacked_qweight().t().long(), module.zeros.t().long(), module.scales.t(), module


def write_checkpoint(model, method, group):
    tensors, reference = {}, {}
    for name, linear in model.named_modules():
        if isinstance(linear, nn.Linear) and name != "lm_head":
            q, zeros, scales, module = grid_of(linear, group, symmetric=(method == "gptq"))
            bias = None if linear.bias is None else linear.bias.detach()
            if method == "gptq":  # v1 checkpoints as Qwen publishes them: symmetric, zero stored minus one
                tensors.update(gptq_tensors(name, q, zeros, scales, torch.arange(q.shape[0]) // group, 4, bias))
            else:
                tensors.update(awq_tensors(name, q, zeros, scales, bias))
            reference[name] = module
    return tensors, reference


@pytest.mark.parametrize("method", ["gptq", "awq"])
@torch.no_grad()
def test_tiny_qwen2_loaded_from_its_checkpoint_equals_quantizing_it_in_memory(method):
    model, in_memory = tiny_qwen2(), tiny_qwen2()
    tokens = torch.randint(0, 256, (1, 12))
    float_logits = model(tokens).logits
    tensors, reference = write_checkpoint(model, method, group=32)
    config = {"quant_method": method, "bits": 4, "group_size": 32, "sym": True, "version": "gemm", "zero_point": True}
    for name in reference:
        loaded = load_quantized_linear(tensors, name, config)
        assert torch.equal(loaded.dequantize_weight(), reference[name].dequantize_weight()), name
        parent, leaf = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), leaf, loaded)
    quantize_model(in_memory, "int4:g32:sym,lm_head=none" if method == "gptq" else "int4:g32,lm_head=none")
    logits = model(tokens).logits
    torch.testing.assert_close(logits, in_memory(tokens).logits, rtol=0, atol=1e-5)
    # and it is still the same model: 4-bit g32 of random weights keeps the logits' direction
    cosine = torch.nn.functional.cosine_similarity(logits.flatten(), float_logits.flatten(), dim=0)
    assert cosine > 0.95


def test_q_k_v_from_a_gptq_checkpoint_fuse_into_one_qkv_proj():
    model = tiny_qwen2()
    tensors, _ = write_checkpoint(model, "gptq", group=32)
    config = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    attn = "model.layers.0.self_attn"
    parts = [load_quantized_linear(tensors, f"{attn}.{p}", config) for p in ("q_proj", "k_proj", "v_proj")]
    fused = concat_out_features(parts)
    assert fused.out_features == 64 + 2 * 16 * 2 and fused.bias is not None
    x = torch.randn(5, 64)
    torch.testing.assert_close(fused(x), torch.cat([p(x) for p in parts], -1), rtol=0, atol=1e-6)
