"""ModelRunner's start-up prefill warm-up (run on CUDA before serving, here called on the CPU engine): it
touches nothing but the scratch block, and generation after it is what it is without it."""

import torch
from engine_helpers import greedy, make_engine, run_all


def test_prefill_warm_up_writes_only_the_scratch_block(tiny_qwen2):
    engine = make_engine(tiny_qwen2, max_model_len=256)
    runner = engine.runner
    before = [(k.clone(), v.clone()) for k, v in zip(engine.kv_cache.k, engine.kv_cache.v)]
    runner._warm_up_prefill(64)
    scratch = runner.scratch_block
    for (k_before, v_before), k, v in zip(before, engine.kv_cache.k, engine.kv_cache.v):
        assert not torch.equal(k[scratch], k_before[scratch])  # the warm-up did run through the layers
        outside = [b for b in range(k.shape[0]) if b != scratch]
        assert torch.equal(k[outside], k_before[outside]) and torch.equal(v[outside], v_before[outside])

    prompts = {"a": ([5, 17, 300, 42, 8], greedy(12)), "b": (list(range(100, 140)), greedy(9))}
    warmed = run_all(engine, prompts)
    assert warmed == run_all(make_engine(tiny_qwen2, max_model_len=256), prompts)
