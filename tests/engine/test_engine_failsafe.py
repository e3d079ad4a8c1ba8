"""The async engine's fail-safe rules: bounded waiting queue, deadlines, drain, a dead or stalled thread.

A step of the tiny model takes about a millisecond, faster than any deadline a test can set reliably,
so these engines take SLOW_STEP_S per step (their step is wrapped in a sleep): the rules under test
read the clock, never the model.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from qwen_triton.engine.async_engine import AsyncLLMEngine, EngineUnavailableError
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.sampling_params import SamplingParams

SLOW_STEP_S = 0.02
LONG = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)


def slow_engine(tiny_qwen2, **limits) -> AsyncLLMEngine:
    """An engine whose steps take `engine.step_seconds` (SLOW_STEP_S unless a test changes it)."""
    engine = AsyncLLMEngine(
        EngineConfig(
            model=str(tiny_qwen2),
            device="cpu",
            dtype="float32",
            max_model_len=512,
            num_kv_blocks=128,
            max_num_seqs=1,
            cuda_graphs=False,
            **limits,
        )
    )
    engine.step_seconds = SLOW_STEP_S
    step = engine.engine.step

    def slow_step():
        time.sleep(engine.step_seconds)
        return step()

    engine.engine.step = slow_step
    return engine


@pytest.fixture(scope="module")
def engine(tiny_qwen2):
    """One engine for the tests that leave it alive (building one costs seconds on a loaded CI machine);
    each sets the limits it tests and `limits` puts them back."""
    engine = slow_engine(tiny_qwen2)
    yield engine
    engine.shutdown()


@pytest.fixture
def limits(engine):
    config = engine.engine.config
    saved = (config.max_waiting_requests, config.queue_timeout_s, config.stall_timeout_s, engine.step_seconds)

    def set_limits(step_seconds: float = SLOW_STEP_S, **values):
        engine.step_seconds = step_seconds
        for name, value in values.items():
            setattr(config, name, value)

    yield set_limits
    config.max_waiting_requests, config.queue_timeout_s, config.stall_timeout_s, engine.step_seconds = saved


async def run(engine, request_id, params=LONG, **kwargs):
    """(finish_reason, tokens) of one request."""
    tokens = 0
    async for out in engine.generate(request_id, prompt_token_ids=[5, 6, 7], params=params, **kwargs):
        tokens += len(out.token_ids)
        if out.finished:
            return out.finish_reason, tokens
    raise AssertionError("the stream ended without a final output")


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_full_waiting_queue_refuses_new_requests_retryably(engine, limits):
    limits(max_waiting_requests=2)

    async def main():
        admitted = [asyncio.create_task(run(engine, f"r{i}")) for i in range(3)]  # 1 running + 2 waiting
        await until(lambda: engine.num_in_flight() == 3)
        with pytest.raises(EngineUnavailableError, match="max_waiting_requests") as refused:
            await run(engine, "one-too-many")
        assert refused.value.retry_after_s > 0
        for task in admitted:
            task.cancel()
        await asyncio.gather(*admitted, return_exceptions=True)

    asyncio.run(main())


def test_deadlines_end_requests_with_their_reason_and_free_their_blocks(engine, limits):
    limits(queue_timeout_s=0.3)
    free_before = engine.stats().kv_blocks_free

    async def main():
        first = asyncio.create_task(run(engine, "runs", timeout=1.0))  # ~50 steps, then its deadline
        await until(lambda: engine.stats().num_running == 1)
        queued = await run(engine, "queued")  # behind it for longer than the queue timeout
        return await first, queued

    (first_reason, first_tokens), (queued_reason, queued_tokens) = asyncio.run(main())
    assert first_reason == "timeout" and 0 < first_tokens < LONG.max_tokens
    assert (queued_reason, queued_tokens) == ("queue_timeout", 0)
    time.sleep(0.1)
    assert engine.stats().kv_blocks_free == free_before


def test_a_stalled_engine_thread_is_reported_and_its_callers_released(engine, limits):
    limits(step_seconds=3.0, stall_timeout_s=1.5)

    async def main():
        task = asyncio.create_task(run(engine, "stuck"))
        await until(lambda: engine.failure() is not None)
        assert "stall_timeout_s" in engine.failure()
        assert engine.fail_in_flight(EngineUnavailableError("the engine failed (stalled)", 5.0)) == 1
        with pytest.raises(EngineUnavailableError, match="stalled"):
            await asyncio.wait_for(task, timeout=2)

    asyncio.run(main())
    limits(stall_timeout_s=0)
    asyncio.run(until(lambda: engine.num_in_flight() == 0 and engine.stats().num_running == 0))


def test_draining_refuses_new_requests_and_finishes_admitted_ones(engine, limits):
    """Last of the shared engine's tests: a draining engine stays draining."""
    limits(step_seconds=0.002)
    short = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)

    async def main():
        admitted = [asyncio.create_task(run(engine, f"r{i}", params=short)) for i in range(3)]  # 2 of them queued
        await until(lambda: engine.num_in_flight() == 3)
        engine.start_draining()
        with pytest.raises(EngineUnavailableError, match="shutting down"):
            await run(engine, "late", params=short)
        return await asyncio.gather(*admitted)

    assert asyncio.run(main()) == [("length", 20)] * 3
    assert engine.num_in_flight() == 0


def test_a_dead_engine_thread_fails_requests_in_flight_at_once(tiny_qwen2):
    engine = slow_engine(tiny_qwen2)

    def dying_step():
        raise SystemExit("simulated death of the engine thread")

    async def main():
        task = asyncio.create_task(run(engine, "in-flight"))
        await until(lambda: engine.num_in_flight() == 1)
        engine.engine.step = dying_step
        with pytest.raises(EngineUnavailableError, match="engine failed"):
            await asyncio.wait_for(task, timeout=5)
        with pytest.raises(EngineUnavailableError, match="restarting"):
            await run(engine, "after")

    try:
        asyncio.run(main())
        assert "died" in engine.failure()
    finally:
        engine.shutdown()
