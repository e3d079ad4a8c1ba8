"""Tensor parallelism on CPU: 2 ranks over gloo (a real spawned worker process), against one process.

What is checked: greedy tokens equal to the single-process engine (chunked prefill and steps launched
ahead included, so the broadcast of rank 0's device tokens is exercised); splits the checkpoint cannot
take refused before any process starts; a SIGKILLed worker fails the request in flight with a message
naming it, fails the engine for good, and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

from qwen_triton.engine.async_engine import AsyncLLMEngine, EngineUnavailableError
from qwen_triton.engine.config import EngineConfig
from qwen_triton.engine.llm_engine import LLMEngine
from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.models.checkpoint import CheckpointReader
from qwen_triton.models.qwen2 import TensorSplit
from qwen_triton.parallel.shard_plan import ShardPlan
from qwen_triton.parallel.workers import WorkerDied

pytestmark = pytest.mark.timeout(400)  # generous: a loaded 2-core machine runs the rank starts slowly


def engine_config(model, **overrides) -> EngineConfig:
    settings = dict(
        model=str(model),
        dtype="float32",
        device="cpu",
        max_model_len=256,
        max_num_seqs=4,
        max_num_batched_tokens=32,  # the 40-token prompt below is prefilled in two chunks
        num_kv_blocks=64,
        cuda_graphs=False,
    )
    settings.update(overrides)
    return EngineConfig(**settings)


REQUESTS = {
    "long": ([1] + list(range(100, 139)), 10),
    "short": ([1, 5, 9, 33, 700], 14),
    "mid": ([1, 2000, 3000, 4000, 17, 18, 19, 20], 6),
}


def greedy_tokens(engine: LLMEngine) -> dict[str, list[int]]:
    for request_id, (ids, max_tokens) in REQUESTS.items():
        engine.add_request(request_id, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    tokens = {request_id: [] for request_id in REQUESTS}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    return tokens


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def live_workers() -> list[psutil.Process]:
    """Our child processes that are tensor-parallel ranks (the session's servers, also our children, are not)."""
    children = psutil.Process().children(recursive=True)
    return [p for p in children if not gone(p.pid) and "qwen_triton.parallel.workers" in " ".join(_cmdline(p))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # ended between the listing and this read
        return []


def test_shard_plan_slices_rebuild_every_tensor(tiny_qwen2_gqa):
    """The ranks' slices of each tensor are disjoint and together exactly the tensor; norms are whole."""
    reader = CheckpointReader(tiny_qwen2_gqa)
    config = __import__("transformers").AutoConfig.from_pretrained(tiny_qwen2_gqa)
    plans = [ShardPlan(config, TensorSplit(rank, 2)) for rank in range(2)]
    import torch
    from safetensors import safe_open

    for name in reader.names():
        whole = reader.read(name)
        with safe_open(str(reader.tensors[name].file), framework="pt") as handle:
            parts = [plan.read(name, handle) for plan in plans]
        piece = plans[0].slice_of(name)
        if piece is None:
            assert all(torch.equal(p, whole) for p in parts), name
        else:
            assert parts[0].shape[piece.dim] == whole.shape[piece.dim] // 2, name
            assert torch.equal(torch.cat(parts, dim=piece.dim), whole), name


def test_two_ranks_give_the_single_process_greedy_tokens(tiny_qwen2_gqa):
    reference = greedy_tokens(LLMEngine(engine_config(tiny_qwen2_gqa)))
    engine = LLMEngine(engine_config(tiny_qwen2_gqa, tensor_parallel_size=2))
    pids = engine.workers.pids
    try:
        assert len(pids) == 1 and all(not gone(pid) for pid in pids)
        assert engine.model.layers[0].self_attn.num_kv_heads == 1  # this rank's share of the 2 KV heads
        assert engine.kv_cache.k[0].shape[2] == 1  # and its KV pool holds only that head
        parallel = greedy_tokens(engine)
    finally:
        engine.shutdown()
    assert parallel == reference
    assert all(len(parallel[rid]) == max_tokens for rid, (_, max_tokens) in REQUESTS.items())
    assert wait_gone(pids), "a worker outlived shutdown"


def test_kv_heads_that_do_not_divide_are_refused_before_any_process_starts(tiny_qwen2_odd_kv):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match=r"num_key_value_heads \(3\).*not replicated.*tensor_parallel_size 1"):
        LLMEngine(engine_config(tiny_qwen2_odd_kv, tensor_parallel_size=2))
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_int4_groups_that_would_straddle_the_row_parallel_split_are_refused(tiny_qwen2_gqa):
    # down_proj has 128 input features: 64 a rank, half of one 128-wide group.
    with pytest.raises(ValueError, match=r"mlp\.down_proj \(int4:g128\).*slices of 64.*group size 128.*int4:g64"):
        LLMEngine(engine_config(tiny_qwen2_gqa, tensor_parallel_size=2, quantization="mlp=int4"))


def test_a_killed_worker_fails_the_request_and_the_engine_stops_cleanly(tiny_qwen2_gqa):
    engine = AsyncLLMEngine(engine_config(tiny_qwen2_gqa, tensor_parallel_size=2))
    pids = engine.engine.workers.pids
    params = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def generate_and_kill():
        received = 0
        async for out in engine.generate("victim", prompt_token_ids=[1, 5, 9], params=params):
            received += len(out.token_ids)
            if received == 1:
                os.kill(pids[0], signal.SIGKILL)
        return received

    try:
        # The instance fails (503, retryable: the server restarts it) with the worker's story.
        with pytest.raises(EngineUnavailableError, match=r"tensor-parallel rank 1 \(pid \d+\) was killed by SIGKILL"):
            asyncio.run(asyncio.wait_for(generate_and_kill(), timeout=60))

        async def next_request():
            return [out async for out in engine.generate("after", prompt_token_ids=[1, 2], params=params)]

        with pytest.raises(EngineUnavailableError, match="killed by SIGKILL"):  # refused at once, never hangs
            asyncio.run(asyncio.wait_for(next_request(), timeout=30))
        assert "killed by SIGKILL" in engine.failure()  # what the instance's health report says
        with pytest.raises(WorkerDied):
            engine.engine.step()
    finally:
        engine.shutdown()  # joins the engine thread and stops what is left of the ranks
    assert wait_gone(pids)
    assert not live_workers()
