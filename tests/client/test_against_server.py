"""The client against the real tritonserver serving the demo model (the `triton_server` fixture of
tests/conftest.py starts it once per session on free ports).

Generations are greedy and short (8 tokens): the point is the client's plumbing, not the model.
"""

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qwen_client import AsyncQwenClient, BadRequestError, GenerationParams, QwenClient, RequestTimeoutError
from qwen_client.bench import run_bench

pytestmark = pytest.mark.timeout(300)

GREEDY = GenerationParams(max_tokens=8, temperature=0.0)
PROMPT = "The capital of France is"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(scope="module")
def urls(triton_server):
    # The client takes http://host:port as well as host:port.
    return {"grpc": triton_server.grpc_url, "http": triton_server.http_url, "metrics": triton_server.metrics_url}


@pytest.fixture(params=PROTOCOLS)
def client(request, urls):
    with QwenClient(urls[request.param], protocol=request.param, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(urls):
    """The greedy completion of PROMPT, over gRPC: what every other path must reproduce."""
    with QwenClient(urls["grpc"], timeout=120) as client:
        return client.generate(PROMPT, GREEDY)


def test_health_and_models(client):
    assert client.health().ok
    assert any(m.name == "qwen" and m.state == "READY" for m in client.models())


def test_generate_is_the_same_over_both_protocols(client, reference):
    completion = client.generate(PROMPT, GREEDY)
    assert completion == reference
    assert completion.text.strip() and len(completion.token_ids) == 8
    assert completion.finish_reason == "length"
    assert completion.usage.completion_tokens == 8 and completion.usage.prompt_tokens > 0


def test_one_client_serves_several_threads(client, reference):
    with ThreadPoolExecutor(3) as pool:
        completions = list(pool.map(lambda _: client.generate(PROMPT, GREEDY), range(3)))
    assert all(c == reference for c in completions)


def test_stream_deltas_join_to_the_generate_text(client, reference):
    deltas = list(client.stream(PROMPT, GREEDY))
    assert len(deltas) > 1, "streaming should deliver the answer in several pieces"
    assert "".join(deltas) == reference.text


def test_stream_chunks_carry_tokens_and_a_final_chunk(client, reference):
    chunks = list(client.stream_chunks(PROMPT, GREEDY))
    assert [t for c in chunks for t in c.token_ids] == reference.token_ids
    assert chunks[-1].is_final and chunks[-1].finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_token_ids_in_and_logprobs_out(client, reference):
    completion = client.generate([1, 2, 3, 4], GREEDY.replace(return_logprobs=True, max_tokens=4))
    assert len(completion.token_ids) == 4
    assert completion.logprobs is not None and len(completion.logprobs) == 4
    assert all(p <= 0 for p in completion.logprobs)


def test_seeded_sampling_repeats(client):
    params = GenerationParams(max_tokens=8, temperature=0.9, seed=1234)
    assert client.generate(PROMPT, params).text == client.generate(PROMPT, params).text


def test_chat_says_paris(client):
    assert "Paris" in client.chat(FRANCE, max_tokens=16, temperature=0.0).text
    assert "Paris" in "".join(client.chat(FRANCE, stream=True, max_tokens=16, temperature=0.0))


@pytest.mark.parametrize(
    "bad, field", [({"max_tokens": 10**6}, "max_tokens"), ({"stop_token_ids": [10**9]}, "stop_token_ids")]
)
def test_a_rejected_request_names_the_field_and_is_not_retried(urls, bad, field):
    # Values the client lets through (it does not know the model length or vocabulary); the server refuses.
    for protocol in PROTOCOLS:
        with QwenClient(urls[protocol], protocol=protocol, retries=5) as client:
            attempts = _count_attempts(client)
            for stream in (False, True):
                with pytest.raises(BadRequestError) as caught:
                    request = client.stream(PROMPT, **bad) if stream else client.generate(PROMPT, **bad)
                    list(request) if stream else None
                assert caught.value.field == field and field in str(caught.value)
            assert attempts == [1, 1], f"{protocol}: a rejected request was sent again"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_slow_answer_times_out(urls, protocol):
    # 64 tokens take seconds on this CPU; 50 ms is far too short for the whole (non-streamed) answer.
    with QwenClient(urls[protocol], protocol=protocol, timeout=0.05) as client:
        with pytest.raises(RequestTimeoutError):
            client.generate(PROMPT, max_tokens=64, ignore_eos=True)


def test_a_slow_answer_times_out_in_the_async_client(urls):
    # Every response read of the async gRPC transport is bounded by the timeout; the server goes on serving.
    async def attempt():
        async with AsyncQwenClient(urls["grpc"], timeout=0.05) as client:
            with pytest.raises(RequestTimeoutError):
                await client.generate(PROMPT, max_tokens=64, ignore_eos=True)
        async with AsyncQwenClient(urls["grpc"], timeout=120) as client:
            assert len((await client.generate(PROMPT, GREEDY)).token_ids) == 8

    asyncio.run(attempt())


def _count_attempts(client: QwenClient) -> list:
    """Counts how often the client's transport is asked to send each request (no server-side change)."""
    attempts = []
    send = client._transport.stream_chunks

    def counting(inputs):
        attempts.append(1)
        return send(inputs)

    client._transport.stream_chunks = counting
    return attempts


def _metric(metrics_url: str, name: str) -> float:
    """Sum of a metric over its label sets (one per model instance)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_leaving_a_stream_early_cancels_the_request(client, urls):
    stream = client.stream("Tell me a long story about a dragon.", max_tokens=2000, ignore_eos=True)
    assert next(stream)
    stream.close()
    # 2000 tokens would take minutes here; an aborted request leaves the engine, and its KV blocks return,
    # within a few steps (the gauges are read one scrape apart, so both are polled until they agree).
    deadline = time.monotonic() + 15
    while True:
        running = _metric(urls["metrics"], "qwen_num_requests_running")
        free = _metric(urls["metrics"], "qwen_kv_cache_blocks_free")
        total = _metric(urls["metrics"], "qwen_kv_cache_blocks_total")
        if running == 0 and free == total:
            break
        assert time.monotonic() < deadline, f"abandoned request: {running} running, {free} of {total} KV blocks free"
        time.sleep(0.25)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client(urls, reference, protocol):
    async def use_it():
        async with AsyncQwenClient(urls[protocol], protocol=protocol, timeout=120) as client:
            assert (await client.health()).ok
            assert any(m.name == "qwen" for m in await client.models())
            completions = await asyncio.gather(*(client.generate(PROMPT, GREEDY) for _ in range(3)))
            assert all(c == reference for c in completions)
            deltas = [d async for d in client.stream(PROMPT, GREEDY)]
            assert len(deltas) > 1 and "".join(deltas) == reference.text
            assert "Paris" in (await client.chat(FRANCE, max_tokens=16, temperature=0.0)).text

    asyncio.run(use_it())


def test_bench_with_concurrency_4(urls):
    result = run_bench(urls["grpc"], concurrency=4, num_requests=8, prompt_tokens=16, max_tokens=6)
    assert (result.completed, result.failed, result.errors) == (8, 0, [])
    assert result.output_tokens == 8 * 6  # ignore_eos: every request runs to max_tokens
    assert result.ttft_s.count == 8 and result.inter_token_latency_s.count == 8 * 5
    for summary in (result.ttft_s, result.inter_token_latency_s, result.request_tokens_per_s, result.request_latency_s):
        assert 0 < summary.p50 <= summary.p90 <= summary.p99
    assert result.ttft_s.p99 < result.request_latency_s.p99 <= result.duration_s
    assert result.output_tokens_per_s == pytest.approx(48 / result.duration_s)
    assert result.requests_per_s == pytest.approx(8 / result.duration_s)
    assert json.loads(result.to_json())["completed"] == 8
    assert "TTFT (ms)" in result.format_table()


def _cli(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("qwen-client")  # the console script of the package
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=240)


def test_cli_as_a_subprocess(urls, tmp_path):
    health = _cli("health", "--url", urls["http"], "--protocol", "http")
    assert health.returncode == 0 and "ready: True" in health.stdout

    chat = _cli(
        "chat", "What is the capital of France?", "--url", urls["grpc"], "--temperature", "0", "--max-tokens", "16"
    )
    assert chat.returncode == 0 and "Paris" in chat.stdout

    rejected = _cli("generate", "hi", "--url", urls["grpc"], "--max-tokens", "1000000")
    assert rejected.returncode == 1 and "max_tokens" in rejected.stderr

    invalid = _cli("generate", "hi", "--url", urls["grpc"], "--temperature", "-1")
    assert invalid.returncode == 2 and "temperature" in invalid.stderr

    out = tmp_path / "bench.json"
    bench = _cli(
        "bench",
        "--url",
        urls["grpc"],
        "--concurrency",
        "2",
        "--num-requests",
        "2",
        "--prompt-tokens",
        "8",
        "--max-tokens",
        "4",
        "--json",
        str(out),
    )
    assert bench.returncode == 0 and "inter-token latency" in bench.stdout
    assert json.loads(out.read_text())["completed"] == 2
