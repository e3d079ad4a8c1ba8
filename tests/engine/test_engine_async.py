"""The async engine a server holds: many concurrent callers, cancellation, errors, and the offline CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from qwen_triton.engine.async_engine import AsyncLLMEngine
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    engine = AsyncLLMEngine(
        EngineConfig(
            model=str(tiny_qwen2),
            device="cpu",
            dtype="float32",
            max_model_len=512,
            max_num_seqs=4,
            num_kv_blocks=64,
            cuda_graphs=False,
        )
    )
    yield engine
    engine.shutdown()


async def collect(engine, request_id, **kwargs):
    text, tokens, final = "", [], None
    async for out in engine.generate(request_id, **kwargs):
        text += out.text
        tokens += out.token_ids
        final = out
    return text, tokens, final


def test_concurrent_callers_each_get_their_own_complete_answer(engine):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

    async def main():
        alone = await collect(engine, "alone", prompt="The weather today", params=params)
        many = await asyncio.gather(
            *(
                collect(engine, f"c{i}", prompt="The weather today" if i % 2 else f"Item {i}", params=params)
                for i in range(10)
            )
        )
        return alone, many

    alone, many = asyncio.run(main())
    for i, (text, tokens, final) in enumerate(many):
        assert final.finished and final.finish_reason == "length" and len(tokens) == 12
        if i % 2:
            assert tokens == alone[1] and text == alone[0]  # more callers than max_num_seqs: same answer
    assert engine.engine.block_manager.num_free_blocks == 64


def test_a_caller_that_goes_away_frees_its_blocks(engine):
    async def main():
        stream = engine.generate(
            "leaver", prompt="Tell me everything", params=SamplingParams(max_tokens=300, ignore_eos=True)
        )
        async for _ in stream:
            break
        await stream.aclose()  # what a cancelled server request does
        for _ in range(100):
            stats = engine.stats()
            if stats.num_running == 0 and stats.kv_blocks_free == stats.kv_blocks_total:
                return stats
            await asyncio.sleep(0.05)
        return engine.stats()

    stats = asyncio.run(main())
    assert stats.num_running == 0 and stats.kv_blocks_free == stats.kv_blocks_total


def test_bad_requests_raise_before_anything_runs_and_the_engine_goes_on(engine):
    async def main():
        with pytest.raises(InvalidRequestError) as info:
            await collect(engine, "bad", prompt="hi", params=SamplingParams(top_p=2.0))
        assert info.value.field == "top_p"
        with pytest.raises(InvalidRequestError) as info:
            await collect(engine, "empty", prompt="")
        assert info.value.field == "prompt"
        return await collect(engine, "good", prompt="hi", params=SamplingParams(max_tokens=3, ignore_eos=True))

    assert len(asyncio.run(main())[1]) == 3


def test_offline_cli_generates_and_benchmarks(tiny_qwen2, demo_model):
    common = ["--model", str(demo_model), "--max-model-len", "256", "--device", "cpu"]
    answer = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_triton.cli",
            "generate",
            *common,
            "--chat",
            "--max-tokens",
            "16",
            "What is the capital of France?",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "Paris" in answer.stdout and "[stop:" in answer.stderr
    bench = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_triton.cli",
            "bench",
            "--model",
            str(tiny_qwen2),
            "--max-model-len",
            "256",
            "--device",
            "cpu",
            "-n",
            "4",
            "--prompt-tokens",
            "16",
            "--max-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "HF generate tok/s" in bench.stdout and "| 4 | 16 | 8 |" in bench.stdout and "bound" in bench.stdout


def test_a_caller_that_falls_behind_gets_the_waiting_deltas_merged(engine):
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, logprobs=True)

    async def slow_reader():
        deltas = []
        async for out in engine.generate("slow", prompt="The weather today", params=params):
            deltas.append(out)
            await asyncio.sleep(0.3)  # a server busy sending: several steps' deltas pile up meanwhile
        return deltas

    async def main():
        return await collect(engine, "fast", prompt="The weather today", params=params), await slow_reader()

    (text, tokens, _), deltas = asyncio.run(main())
    assert len(deltas) < len(tokens), "nothing was merged"
    assert "".join(d.text for d in deltas) == text
    assert [t for d in deltas for t in d.token_ids] == tokens
    assert sum(len(d.logprobs) for d in deltas) == 40
    assert deltas[-1].finished and deltas[-1].completion_tokens == 40


def test_freezing_start_up_objects_takes_them_out_of_full_collections(engine):
    """What the server does once its engine is up (triton_adapter.initialize): the objects alive then stop
    being walked by every full collection; unfreeze (at shutdown) hands them back."""
    import gc

    from qwen_triton.engine.async_engine import freeze_startup_objects

    try:
        frozen = freeze_startup_objects()
        # Frozen objects that other threads (the engine's, earlier tests') free meanwhile leave the count.
        assert frozen > 10_000 and frozen - 1_000 <= gc.get_freeze_count() <= frozen
        assert len(gc.get_objects()) < frozen / 10  # what a full collection still walks
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
