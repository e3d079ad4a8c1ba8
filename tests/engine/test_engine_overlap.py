"""Overlapped steps (step n+1 scheduled and launched before the host reads step n's tokens) change no result.

These tests drive the engine through the transitions around the steady state: sequences finishing by
length, stop token and stop string while a step is on its way, aborts in flight, requests arriving
mid-flight (their prompt chunks ride in steps launched ahead beside decode rows fed from the device),
and penalties (which turn overlap off).
"""

from __future__ import annotations

import pytest
from engine_helpers import greedy, make_engine, run_all
from transformers import AutoTokenizer

from qwen_triton.engine.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def prompts(tiny_qwen2) -> dict[str, list[int]]:
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    texts = [
        "Tell me a story about a dragon.",
        "What is two plus two?",
        "List three fruits.",
        "Translate 'cat' into German.",
        "Why do birds sing?",
    ]
    return {f"p{i}": tok.encode(text) for i, text in enumerate(texts)}


@pytest.fixture(scope="module")
def reference(tiny_qwen2, prompts) -> dict[str, list[int]]:
    """Greedy tokens of every prompt without overlap."""
    engine = make_engine(tiny_qwen2, overlap_steps=False)
    return {
        rid: r["tokens"]
        for rid, r in run_all(engine, {rid: (ids, greedy(24, ignore_eos=True)) for rid, ids in prompts.items()}).items()
    }


def mixed_requests(prompts, reference, tiny_qwen2) -> dict:
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    stop_text = tok.decode(reference["p3"][4:6]).strip() or tok.decode(reference["p3"][4:6])
    return {
        "p0": (prompts["p0"], greedy(24, ignore_eos=True, logprobs=True)),
        "p1": (prompts["p1"], greedy(1, ignore_eos=True)),  # done at its prefill
        "p2": (prompts["p2"], greedy(24, ignore_eos=True, stop_token_ids=[reference["p2"][6]])),
        "p3": (prompts["p3"], greedy(24, ignore_eos=True, stop=[stop_text])),
        "p4": (prompts["p4"], SamplingParams(max_tokens=19, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)),
        "p5": (
            prompts["p0"],
            SamplingParams(max_tokens=7, temperature=1.0, top_k=20, seed=3, ignore_eos=True, logprobs=True),
        ),
    }


def test_overlap_changes_no_token_text_or_reason(tiny_qwen2, prompts, reference):
    requests = mixed_requests(prompts, reference, tiny_qwen2)
    expected = run_all(make_engine(tiny_qwen2, overlap_steps=False), requests)
    engine = make_engine(tiny_qwen2, num_kv_blocks=96)
    assert run_all(engine, requests) == expected
    assert expected["p2"]["reason"] == expected["p3"]["reason"] == "stop"
    assert expected["p1"]["tokens"] == reference["p1"][:1] and len(expected["p0"]["tokens"]) == 24
    assert engine.stats().steps_launched_ahead > 10
    assert engine.block_manager.num_free_blocks == 96 and not engine.requests


def test_abort_while_a_step_is_in_flight_frees_everything(tiny_qwen2, prompts, reference):
    engine = make_engine(tiny_qwen2, num_kv_blocks=64)
    for rid in ("p0", "p1", "p2"):
        engine.add_request(rid, prompts[rid], greedy(24, ignore_eos=True))
    tokens = {rid: [] for rid in ("p0", "p1", "p2")}
    while engine._in_flight is None:
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    final = engine.abort("p1")
    assert final.finished and final.finish_reason == "abort"
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id != "p1", "an aborted request got output from the step in flight"
            tokens[out.request_id] += out.token_ids
    assert tokens["p0"] == reference["p0"] and tokens["p2"] == reference["p2"]
    assert engine.block_manager.num_free_blocks == 64
    assert all(b.ref_count == 0 for b in engine.block_manager.blocks)


def test_request_arriving_mid_flight_is_served(tiny_qwen2, prompts, reference):
    engine = make_engine(tiny_qwen2)
    engine.add_request("p0", prompts["p0"], greedy(24, ignore_eos=True))
    tokens = {"p0": [], "p4": []}
    for _ in range(6):
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    assert engine._in_flight is not None
    engine.add_request("p4", prompts["p4"], greedy(24, ignore_eos=True))
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    assert tokens == {"p0": reference["p0"], "p4": reference["p4"]}


def test_penalties_turn_overlap_off(tiny_qwen2, prompts):
    params = SamplingParams(max_tokens=12, temperature=0.0, repetition_penalty=1.3, ignore_eos=True)
    requests = {"p0": (prompts["p0"], params), "p2": (prompts["p2"], params)}
    expected = run_all(make_engine(tiny_qwen2, overlap_steps=False), requests)
    engine = make_engine(tiny_qwen2)
    assert run_all(engine, requests) == expected
    assert engine.stats().steps_launched_ahead == 0


def test_prompt_chunks_ride_in_steps_launched_ahead(tiny_qwen2, prompts, reference):
    """Requests arriving in waves while others decode, prompts cut into chunks: steps launched ahead mix
    prompt chunks with decode rows whose input tokens are still on the device; the tokens stay the same."""
    engine = make_engine(tiny_qwen2, max_num_batched_tokens=6)
    mixed_ahead = []
    run = engine.runner.run

    def recording_run(scheduled, device_ids=None):
        if device_ids is not None and any(item.num_tokens > 1 for item in scheduled):
            mixed_ahead.append(sum(item.input_on_device for item in scheduled))
        return run(scheduled, device_ids)

    engine.runner.run = recording_run
    tokens = {rid: [] for rid in prompts}
    waves = [["p0"], ["p1", "p2"], ["p3", "p4"]]
    while waves or engine.has_unfinished():
        if waves:
            for rid in waves.pop(0):
                engine.add_request(rid, prompts[rid], greedy(24, ignore_eos=True))
        for _ in range(3):
            for out in engine.step():
                tokens[out.request_id] += out.token_ids
    assert tokens == reference
    assert mixed_ahead and max(mixed_ahead) > 0, "no step launched ahead carried prompt chunks and decode rows"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
