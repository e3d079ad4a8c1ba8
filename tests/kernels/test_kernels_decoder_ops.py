"""model.py's decoder forward with the Triton element-wise kernels (the set ``fused_ops`` picks on CUDA)
against the same forward with the eager functions: a prefill of two prompts, then a decode step, on a
tiny random Qwen2. On CPU the kernels run in Triton's interpreter.

What this adds to the kernel tests: the model's own call sites. With a float KV cache, Attention.forward
must rotate q/k and write the cache through the one ``rotary_and_write_kv`` launch (never the separate
rotary), and attention must then read the K/V that launch wrote.

Within a tolerance, not bit for bit: the RMSNorm kernels add up a row's squares in another order than
torch (see test_kernels_elementwise.py), and that last-bit difference travels through the layers.
"""

import dataclasses

import torch
from kernel_env import needs_kernels

pytestmark = needs_kernels

BLOCK_SIZE = 16
PROMPT_LENS = (7, 20)  # the second spans two blocks


def tiny_model(device):
    from transformers import Qwen2Config

    from qwen_triton.models.qwen2 import DecoderModel

    config = Qwen2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_theta=1e6,
    )
    model = DecoderModel(config, max_positions=256).to(device)
    model.init_random_weights(std=0.2)
    return model.eval()


def new_cache(model, device):
    from qwen_triton.layers.kv_cache import KVCache, KVCacheSpec

    attention = model.layers[0].self_attn
    spec = KVCacheSpec(
        num_layers=len(model.layers),
        num_kv_heads=attention.num_kv_heads,
        head_dim=attention.head_dim,
        block_size=BLOCK_SIZE,
        dtype=torch.float32,
        quantized=False,
    )
    return KVCache(spec, num_blocks=5, device=device)


def steps(device):
    """(input ids, positions, metadata) of a prefill of two prompts (blocks [0, 1] and [2, 3]) and of the
    decode step after it."""
    from qwen_triton.layers.attention import AttentionMetadata

    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=device)
    ids = torch.randint(0, 512, (sum(PROMPT_LENS),), generator=torch.Generator().manual_seed(7)).to(device)
    positions = torch.cat([torch.arange(n) for n in PROMPT_LENS]).to(device)
    slots = torch.cat([torch.arange(n) + 2 * BLOCK_SIZE * row for row, n in enumerate(PROMPT_LENS)]).to(device)
    prefill = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables,
        context_lens=torch.tensor(PROMPT_LENS, dtype=torch.int32, device=device),
        is_decode=False,
        query_lens=list(PROMPT_LENS),
        context_lens_cpu=list(PROMPT_LENS),
    )
    decode_positions = torch.tensor(PROMPT_LENS, device=device)
    decode = AttentionMetadata(
        slot_mapping=decode_positions + torch.tensor([0, 2 * BLOCK_SIZE], device=device),
        block_tables=tables,
        context_lens=(decode_positions + 1).int(),
        is_decode=True,
    )
    decode_ids = torch.tensor([5, 9], device=device)
    return [(ids, positions, prefill), (decode_ids, decode_positions, decode)]


def run(model, ops, device, monkeypatch):
    """The logits of every row of both steps, and the KV cache after them."""
    from qwen_triton.models import qwen2 as model_module

    monkeypatch.setattr(model_module, "fused_ops", lambda _device: ops)
    cache = new_cache(model, device)
    logits = []
    with torch.inference_mode():
        for ids, positions, meta in steps(device):
            logits.append(model.compute_logits(model(ids, positions, meta, cache)))
    return logits, cache


def test_decoder_forward_with_the_kernels_matches_eager(device, monkeypatch):
    from qwen_triton.kernels import elementwise
    from qwen_triton.layers import ops as fused_ops

    model = tiny_model(device)
    calls = []

    def counted(*args):
        calls.append(1)
        return elementwise.rotary_and_write_kv(*args)

    def unexpected(*args):
        raise AssertionError("a float cache must take the fused rotary_and_write_kv, not rotary")

    kernels = dataclasses.replace(fused_ops.kernel_ops(), rotary=unexpected, rotary_and_write_kv=counted)
    expected_logits, expected_cache = run(model, fused_ops.EAGER, device, monkeypatch)
    logits, cache = run(model, kernels, device, monkeypatch)

    assert len(calls) == 2 * len(model.layers), "one fused launch per layer and step"
    for step, (out, expected) in enumerate(zip(logits, expected_logits)):
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, msg=f"logits of step {step}")
    for layer in range(len(model.layers)):
        for name, out, expected in zip(("k", "v"), cache.layer(layer)[:2], expected_cache.layer(layer)[:2]):
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, msg=f"{name} cache of layer {layer}")
        # The slots no step wrote (block 4, the rest of blocks 0 and 2) are still zero.
        assert not cache.layer(layer)[0][4].any() and not cache.layer(layer)[0][0, PROMPT_LENS[0] + 1 :].any()
