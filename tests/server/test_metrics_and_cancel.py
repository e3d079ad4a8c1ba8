"""Metrics on Triton's metrics port, and a cancelled stream giving its KV blocks back."""

import re
import time

import pytest
import requests
from serving_helpers import GrpcStream, generate

CONTRACT_METRICS = [
    "qwen_prompt_tokens_total",
    "qwen_generation_tokens_total",
    "qwen_time_to_first_token_seconds_bucket",
    "qwen_inter_token_latency_seconds_bucket",
    "qwen_num_requests_running",
    "qwen_num_requests_waiting",
    "qwen_kv_cache_blocks_total",
    "qwen_kv_cache_blocks_free",
    "qwen_kv_cache_usage_ratio",
    "qwen_prefix_cache_queries_total",
    "qwen_prefix_cache_hits_total",
    "qwen_preemptions_total",
]
SCRAPE_LAG_S = 5  # metrics refresh every 0.5 s; leave room on a loaded CI machine


def metric(server, name: str) -> float:
    found = re.search(rf'^{name}{{[^}}]*model="qwen"[^}}]*}} (\S+)$', server.metrics(), re.MULTILINE)
    assert found, f"{name} missing from {server.metrics_url}"
    return float(found.group(1))


def wait_for(condition, timeout: float = SCRAPE_LAG_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_contract_metrics_and_triton_metrics_are_exported(triton_server):
    generate(triton_server, {"text_input": "Hi", "max_tokens": 3, "temperature": 0.0})
    text = triton_server.metrics()
    for name in CONTRACT_METRICS:
        assert re.search(rf'^{name}{{.*model="qwen"', text, re.MULTILINE), f"{name} missing"
    assert "nv_inference_request_success" in text
    assert wait_for(lambda: metric(triton_server, "qwen_generation_tokens_total") >= 3)
    assert metric(triton_server, "qwen_kv_cache_blocks_total") > 0


def test_cancelled_stream_frees_its_kv_blocks(triton_server):
    assert wait_for(lambda: metric(triton_server, "qwen_num_requests_running") == 0)
    free_before = metric(triton_server, "qwen_kv_cache_blocks_free")
    stream = GrpcStream(triton_server)
    try:
        # A long greedy generation that only a cancel ends early (1500 tokens would take minutes on CPU).
        stream.send(
            text_input="Tell me a very long story about a dragon.",
            max_tokens=1500,
            ignore_eos=True,
            temperature=0.0,
            stream=True,
        )
        for _ in range(40):  # 40 tokens in: a few KV blocks of 16 tokens each are held
            _result, error = stream.next()
            assert error is None, error
        assert wait_for(lambda: metric(triton_server, "qwen_kv_cache_blocks_free") < free_before)
        assert metric(triton_server, "qwen_num_requests_running") == 1
    finally:
        stream.close(cancel=True)
    assert wait_for(lambda: metric(triton_server, "qwen_num_requests_running") == 0), "request not aborted"
    assert wait_for(lambda: metric(triton_server, "qwen_kv_cache_blocks_free") == free_before), (
        f"blocks not freed: {metric(triton_server, 'qwen_kv_cache_blocks_free')} != {free_before}"
    )


@pytest.mark.parametrize("name", ["qwen_time_to_first_token_seconds", "qwen_inter_token_latency_seconds"])
def test_latency_histograms_observe_requests(triton_server, name):
    generate(triton_server, {"text_input": "One two", "max_tokens": 4, "ignore_eos": True, "temperature": 0.0})
    assert metric(triton_server, f"{name}_count") >= 1


def test_http_client_disconnect_aborts_the_request(triton_server):
    assert wait_for(lambda: metric(triton_server, "qwen_num_requests_running") == 0)
    free_before = metric(triton_server, "qwen_kv_cache_blocks_free")
    reply = requests.post(
        f"{triton_server.http_url}/v2/models/qwen/generate_stream",
        stream=True,
        timeout=60,
        json={"text_input": "Tell me a long story.", "max_tokens": 1500, "ignore_eos": True, "stream": True},
    )
    events = reply.iter_lines()
    for _ in range(10):
        next(events)
    reply.close()  # drop the connection mid-stream
    assert wait_for(lambda: metric(triton_server, "qwen_num_requests_running") == 0), "request not aborted"
    assert wait_for(lambda: metric(triton_server, "qwen_kv_cache_blocks_free") == free_before)
