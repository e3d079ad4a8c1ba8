"""Continuous batching must not change results: alone, batched, chunked, cached or preempted."""

from __future__ import annotations

import pytest
from engine_helpers import greedy, make_engine, run_all
from transformers import AutoTokenizer

SYSTEM = "You are a careful assistant. Answer briefly and precisely. " * 4


@pytest.fixture(scope="module")
def prompts(tiny_qwen2) -> dict[str, list[int]]:
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    questions = [
        "What is two plus two?",
        "Name a color.",
        "Why is the sky blue?",
        "Count to five.",
        "Say hello in French.",
        "What is a prime number?",
    ]
    return {f"q{i}": tok.encode(SYSTEM + q) for i, q in enumerate(questions)}  # shared prefix: cache hits


@pytest.fixture(scope="module")
def alone(tiny_qwen2, prompts) -> dict[str, list[int]]:
    engine = make_engine(tiny_qwen2, enable_prefix_caching=False)
    return {
        rid: run_all(engine, {rid: (ids, greedy(20, ignore_eos=True))})[rid]["tokens"] for rid, ids in prompts.items()
    }


def batched(engine, prompts):
    results = run_all(engine, {rid: (ids, greedy(20, ignore_eos=True)) for rid, ids in prompts.items()})
    return {rid: r["tokens"] for rid, r in results.items()}


@pytest.mark.parametrize("prefix_caching", [False, True])
def test_batched_equals_alone(tiny_qwen2, prompts, alone, prefix_caching):
    engine = make_engine(tiny_qwen2, enable_prefix_caching=prefix_caching)
    assert batched(engine, prompts) == alone
    if prefix_caching:
        assert batched(engine, prompts) == alone  # second round: prompts' blocks come from the cache
        stats = engine.stats()
        assert stats.prefix_cache_hits > 0 and stats.prefix_cache_hits <= stats.prefix_cache_queries


def test_chunked_prefill_equals_alone(tiny_qwen2, prompts, alone):
    engine = make_engine(tiny_qwen2, max_num_batched_tokens=7)  # every prompt is cut into several chunks
    assert batched(engine, prompts) == alone


def test_prefill_cap_while_decoding_keeps_tokens_and_bounds_each_step(tiny_qwen2, prompts, alone):
    cap = 8
    engine = make_engine(tiny_qwen2, max_prefill_tokens_while_decoding=cap)
    scheduler, prefill_per_step = engine.scheduler, []
    schedule = scheduler.schedule

    def recording_schedule(*args, **kwargs):
        decoding = any(s.num_computed_tokens >= len(s.prompt_token_ids) for s in scheduler.running)
        step = schedule(*args, **kwargs)
        if decoding:
            prefill_per_step.append(
                sum(s.num_tokens for s in step if s.seq.num_computed_tokens < len(s.seq.prompt_token_ids))
            )
        return step

    scheduler.schedule = recording_schedule
    assert batched(engine, prompts) == alone
    assert prefill_per_step and max(prefill_per_step) <= cap < max(len(ids) for ids in prompts.values())


def test_preemption_keeps_tokens_and_frees_blocks(tiny_qwen2, prompts, alone):
    # Each sequence needs up to 4 blocks of 16 tokens; 10 blocks cannot hold six of them at once.
    engine = make_engine(tiny_qwen2, num_kv_blocks=10, enable_prefix_caching=False)
    assert batched(engine, prompts) == alone
    assert engine.stats().num_preemptions > 0
    assert engine.block_manager.num_free_blocks == 10


def test_finished_and_aborted_requests_return_every_block(tiny_qwen2, prompts):
    engine = make_engine(tiny_qwen2, num_kv_blocks=64)
    for rid, ids in prompts.items():
        engine.add_request(rid, ids, greedy(50, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.block_manager.num_free_blocks < 64
    final = engine.abort("q0")
    assert final.finished and final.finish_reason == "abort"
    assert engine.abort("no-such-request") is None
    while engine.has_unfinished():
        engine.step()
    assert engine.block_manager.num_free_blocks == 64
    assert all(b.ref_count == 0 for b in engine.block_manager.blocks)
    assert not engine.requests


def test_attention_window_bounds_memory(tiny_qwen2, prompts):
    engine = make_engine(tiny_qwen2, attention_window=32, attention_sinks=4, enable_prefix_caching=False)
    engine.add_request("long", prompts["q0"], greedy(400, ignore_eos=True))
    used = []
    while engine.has_unfinished():
        engine.step()
        used.append(engine.block_manager.num_blocks - engine.block_manager.num_free_blocks)
    # sink block + window (32 tokens = 2 blocks) + the block being filled, whatever the length
    assert max(used[len(used) // 2 :]) <= 4
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
