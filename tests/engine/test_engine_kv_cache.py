"""int8 / fp8 KV cache inside the engine: the same budget holds about twice the tokens, and the real
model still answers correctly."""

from __future__ import annotations

import pytest
from engine_helpers import greedy, make_engine, run_all


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantized_kv_pool_holds_about_twice_the_tokens(demo_model, kind):
    budget = 32 * 2**20
    bf16 = make_engine(demo_model, dtype="bfloat16", kv_cache_bytes=budget)
    quantized = make_engine(demo_model, dtype="bfloat16", kv_cache_bytes=budget, kv_cache_dtype=kind)
    ratio = quantized.block_manager.num_blocks / bf16.block_manager.num_blocks
    assert 1.85 < ratio <= 2.0  # head_dim 64: 128 bytes of bf16 K per head against 64 + a 4-byte scale


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_real_model_answers_with_a_quantized_kv_cache(demo_model, kind):
    engine = make_engine(demo_model, kv_cache_dtype=kind)
    ids = engine.tokenizer.encode(messages=[{"role": "user", "content": "What is the capital of France?"}])
    result = run_all(engine, {"q": (ids, greedy(24))})["q"]
    assert "Paris" in result["text"]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
