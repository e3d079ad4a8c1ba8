"""The OpenAI gateway against the real tritonserver and the demo model, through the OpenAI Python SDK.

Everything here is a real process: tritonserver (session fixture), the `qwen-openai` console script, and the
official `openai` client over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
import requests
from openai_gateway_process import SERVED_MODEL_NAME, metric_value, start_gateway, stop_gateway

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 24}


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=120) as sdk:
        yield sdk


# ---------------------------------------------------------------- answers


def test_models_lists_the_served_name(client):
    assert [model.id for model in client.models.list()] == [SERVED_MODEL_NAME]
    assert client.models.retrieve(SERVED_MODEL_NAME).id == SERVED_MODEL_NAME


def test_chat_sync_answers_paris_with_usage(client):
    reply = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=CAPITAL, **GREEDY)
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= GREEDY["max_tokens"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == SERVED_MODEL_NAME and reply.id.startswith("chatcmpl-")


def test_chat_stream_equals_the_whole_answer_and_ends_with_usage(client):
    whole = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=CAPITAL, **GREEDY)
    chunks = list(
        client.chat.completions.create(
            model=SERVED_MODEL_NAME, messages=CAPITAL, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
    assert usage_chunks[0].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_async_with_n_and_seed(gateway):
    async def ask():
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as sdk:
            kwargs = dict(model=SERVED_MODEL_NAME, messages=CAPITAL, n=2, seed=7, temperature=1.0, max_tokens=12)
            return await asyncio.gather(sdk.chat.completions.create(**kwargs), sdk.chat.completions.create(**kwargs))

    first, second = asyncio.run(ask())
    assert [c.index for c in first.choices] == [0, 1]
    assert all(c.message.content for c in first.choices)
    # Choice i runs with seed + i: the same request gives the same choices again.
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert first.usage.completion_tokens >= 2  # summed over the choices


def test_chat_logprobs(client):
    reply = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=CAPITAL, logprobs=True, **GREEDY)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert all(entry.logprob <= 0.0 for entry in entries)
    assert "".join(entry.token for entry in entries) == reply.choices[0].message.content


def test_completions_sync_and_stream(client):
    kwargs = dict(model=SERVED_MODEL_NAME, prompt="The capital of France is", temperature=0.0, max_tokens=8)
    whole = client.completions.create(**kwargs)
    assert whole.choices[0].text.strip() and whole.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole.choices[0].text


def test_stop_string_ends_the_answer(client):
    reply = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=CAPITAL, stop=["Paris"], **GREEDY)
    assert "Paris" not in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_assistant_tool_calls_and_tool_results_are_accepted_back(client):
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "sunny"}'},
    ]
    reply = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=messages, **GREEDY)
    assert reply.choices[0].message.content


# ---------------------------------------------------------------- errors


def test_unknown_field_is_a_400_in_openai_shape(gateway, client):
    reply = requests.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": SERVED_MODEL_NAME, "messages": CAPITAL, "best_of": 3},
        timeout=30,
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "best_of"
    assert "best_of" in error["message"] and error["code"] == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=SERVED_MODEL_NAME, messages=CAPITAL, extra_body={"top_k_typo": 5})
    assert "top_k_typo" in str(raised.value)


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": 5}, "temperature"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0"),
        ({"n": 0}, "n"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"top_logprobs": 2}, None),  # needs logprobs: true
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
    ],
)
def test_bad_values_are_400s_naming_the_field(gateway, body, param):
    payload = {"model": SERVED_MODEL_NAME, "messages": CAPITAL, **body}
    reply = requests.post(f"{gateway.base_url}/chat/completions", json=payload, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"].startswith(param)


def test_not_json_is_a_400(gateway):
    reply = requests.post(f"{gateway.base_url}/chat/completions", data=b"{not json", timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9", messages=CAPITAL)
    assert raised.value.body["code"] == "model_not_found"


def test_an_error_from_the_engine_keeps_its_400_and_names_the_field(gateway):
    """max_tokens past the model length: the engine refuses it; the gateway passes the 400 on."""
    payload = {"model": SERVED_MODEL_NAME, "messages": CAPITAL, "max_tokens": 10_000_000}
    for stream in (False, True):
        reply = requests.post(f"{gateway.base_url}/chat/completions", json={**payload, "stream": stream}, timeout=60)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "max_tokens"


def test_triton_down_is_a_503_with_retry_after(tmp_path):
    dead = start_gateway("127.0.0.1:9", tmp_path / "gateway.log")  # port 9 (discard): nothing listens
    try:
        reply = requests.post(
            f"{dead.base_url}/chat/completions", json={"model": SERVED_MODEL_NAME, "messages": CAPITAL}, timeout=60
        )
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "1"
        assert reply.json()["error"]["type"] == "server_error"
        assert requests.get(f"{dead.url}/health", timeout=30).status_code == 503
    finally:
        stop_gateway(dead)


def test_api_key_from_a_file(triton_server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    locked = start_gateway(triton_server.grpc_url, tmp_path / "gateway.log", "--api-key-file", str(key_file))
    try:
        with openai.OpenAI(base_url=locked.base_url, api_key="wrong", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError):
                sdk.models.list()
        with openai.OpenAI(base_url=locked.base_url, api_key="s3cret", max_retries=0) as sdk:
            assert [m.id for m in sdk.models.list()] == [SERVED_MODEL_NAME]
        assert requests.get(f"{locked.url}/health", timeout=30).status_code == 200  # probes need no key
    finally:
        stop_gateway(locked)


# ---------------------------------------------------------------- cancellation and metrics


def test_client_disconnect_mid_stream_cancels_the_engine_request(gateway, triton_server):
    """Close the HTTP stream after a few chunks: the engine must stop generating for it. Greedy counting runs to
    max_tokens when left alone (the demo model never ends the sequence), so an engine that kept going would
    run well past half of max_tokens before its request stopped running."""
    max_tokens = 1500
    before = metric_value(triton_server.metrics(), "qwen_generation_tokens_total")
    payload = {
        "model": SERVED_MODEL_NAME,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    with requests.post(f"{gateway.base_url}/completions", json=payload, stream=True, timeout=120) as reply:
        assert reply.status_code == 200
        events = (line for line in reply.iter_lines() if line.startswith(b"data: "))
        for _ in range(3):
            assert b'"text"' in next(events)
    # The connection is closed now: the engine aborts the request within a step or two.
    deadline = time.monotonic() + 60
    while metric_value(triton_server.metrics(), "qwen_num_requests_running") > 0:
        assert time.monotonic() < deadline, "the request kept running after its client left"
        time.sleep(0.2)
    generated = metric_value(triton_server.metrics(), "qwen_generation_tokens_total") - before
    assert generated < max_tokens / 2, f"{generated} tokens generated for a client that left after 3"
    deadline = time.monotonic() + 10
    while metric_value(gateway.metrics(), "qwen_openai_cancelled_requests_total", endpoint="completions") < 1:
        assert time.monotonic() < deadline, "the gateway did not count the cancelled stream"
        time.sleep(0.2)


def test_gateway_metrics_count_requests_errors_and_ttft(gateway, client):
    client.chat.completions.create(model=SERVED_MODEL_NAME, messages=CAPITAL, max_tokens=2)
    requests.post(f"{gateway.base_url}/chat/completions", json={"model": SERVED_MODEL_NAME}, timeout=30)
    text = gateway.metrics()
    assert metric_value(text, "qwen_openai_requests_total", endpoint="chat", status="200") >= 1
    assert metric_value(text, "qwen_openai_errors_total", endpoint="chat", status="400") >= 1
    assert metric_value(text, "qwen_openai_time_to_first_token_seconds_count", endpoint="chat") >= 1


def test_health(gateway):
    reply = requests.get(f"{gateway.url}/health", timeout=30)
    assert reply.status_code == 200 and json.loads(reply.text)["status"] == "ok"
