"""The gateway's generate front (/v2/models/<model>/generate[_stream]) against the real tritonserver.

Each check sends the same body to the gateway and, where it documents why the front exists, to Triton's own
HTTP port: same answers for what Triton accepts, field-named 400s where Triton 2.51 fails without a name
(its 500 "Unable to parse 'data'") or silently (an integer wrapped into INT32).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from openai_gateway_process import metric_value, start_gateway, stop_gateway

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0.0, "max_tokens": 16}
# Greedy counting runs to max_tokens when left alone (the demo model never ends the sequence).
COUNTING = {"text_input": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "temperature": 0.0, "max_tokens": 1500}


def post(base_url: str, path: str, body, **kwargs) -> requests.Response:
    return requests.post(f"{base_url}/v2/models/{path}", json=body, timeout=kwargs.pop("timeout", 120), **kwargs)


def sse_events(reply: requests.Response) -> list[dict]:
    return [json.loads(line[len(b"data: ") :]) for line in reply.iter_lines() if line.startswith(b"data: ")]


def wait_until_no_request_runs(triton_server, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while metric_value(triton_server.metrics(), "qwen_num_requests_running") > 0:
        assert time.monotonic() < deadline, "the request kept running after its client left"
        time.sleep(0.2)


# ---------------------------------------------------------------- the same answers as Triton's own port


def test_generate_answers_as_tritons_own_generate(gateway, triton_server):
    body = {"text_input": "The capital of France is", **GREEDY}
    ours, tritons = post(gateway.url, "qwen/generate", body), post(triton_server.http_url, "qwen/generate", body)
    assert ours.status_code == tritons.status_code == 200, ours.text
    assert ours.headers["content-type"].startswith("application/json")
    assert ours.json() == tritons.json()  # every output, model_name, model_version
    assert ours.json()["model_name"] == "qwen" and ours.json()["model_version"] == "1"
    assert ours.json()["text_output"] and 0 < ours.json()["completion_tokens"] <= GREEDY["max_tokens"]


def test_generate_stream_events_concatenate_to_the_whole_answer(gateway, triton_server):
    body = {"text_input": "The capital of France is", **GREEDY}
    whole = post(gateway.url, "qwen/generate", body).json()
    with post(gateway.url, "qwen/generate_stream", {**body, "stream": True}, stream=True) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply)
    with post(triton_server.http_url, "qwen/generate_stream", {**body, "stream": True}, stream=True) as reply:
        tritons = sse_events(reply)
    assert len(events) > 1 and all(event["model_name"] == "qwen" for event in events)
    for stream in (events, tritons):
        assert "".join(event["text_output"] for event in stream) == whole["text_output"]
        assert [event["finish_reason"] for event in stream][-1] == whole["finish_reason"]
    ids = [
        i
        for event in events
        for i in (event["output_ids"] if isinstance(event["output_ids"], list) else [event["output_ids"]])
    ]
    assert ids == whole["output_ids"]


def test_messages_as_a_json_array_answer_as_the_string_form(gateway, triton_server):
    as_array = {"messages": CAPITAL, **GREEDY}
    as_string = {"messages": json.dumps(CAPITAL), **GREEDY}
    from_array, from_string = (
        post(gateway.url, "qwen/generate", as_array),
        post(gateway.url, "qwen/generate", as_string),
    )
    assert from_array.status_code == from_string.status_code == 200, from_array.text
    assert from_array.json()["text_output"] == from_string.json()["text_output"]
    assert "Paris" in from_array.json()["text_output"]
    assert post(triton_server.http_url, "qwen/generate", as_string).json() == from_string.json()
    assert post(triton_server.http_url, "qwen/generate", as_array).status_code == 500  # Triton wants a string


def test_qwen_vllm_takes_sampling_parameters_as_an_object(gateway):
    settings = {"temperature": 0.0, "max_tokens": 8}
    as_object = post(
        gateway.url, "qwen_vllm/generate", {"text_input": "Once upon a time", "sampling_parameters": settings}
    )
    as_string = post(
        gateway.url,
        "qwen_vllm/generate",
        {"text_input": "Once upon a time", "sampling_parameters": json.dumps(settings)},
    )
    assert as_object.status_code == as_string.status_code == 200, as_object.text
    assert as_object.json() == as_string.json() and as_object.json()["model_name"] == "qwen_vllm"
    wrong = post(gateway.url, "qwen_vllm/generate", {"text_input": "Hi", "sampling_parameters": {"top_k": "five"}})
    assert wrong.status_code == 400 and wrong.json()["error"].startswith("sampling_parameters.top_k:")


# ---------------------------------------------------------------- field-named 400s where Triton has none


def test_a_wrong_json_type_is_a_400_naming_the_input(gateway, triton_server):
    body = {"text_input": "Hi", "max_tokens": "abc"}
    ours = post(gateway.url, "qwen/generate", body)
    assert ours.status_code == 400
    assert ours.json() == {"error": "max_tokens: expected integer (INT32), got string"}
    # Why the front exists: Triton's own port fails before the model, naming no field.
    tritons = post(triton_server.http_url, "qwen/generate", body)
    assert tritons.status_code == 500
    assert "Unable to parse 'data'" in tritons.json()["error"] and "max_tokens" not in tritons.json()["error"]


@pytest.mark.parametrize(
    "body, message_start",
    [
        ({"temperature": "0"}, "temperature: expected number (FP32), got string"),
        ({"stream": 1}, "stream: expected boolean, got integer"),
        ({"max_tokens": 3.0}, "max_tokens: expected integer (INT32), got number"),
        ({"stop": ["a", 5]}, "stop: expected string, got integer"),
        ({"input_ids": [[1]]}, "input_ids: expected a value or a flat list"),
        ({"parameters": 5}, "parameters: expected a JSON object, got integer"),
    ],
)
def test_each_wrong_value_is_a_400_naming_its_key(gateway, body, message_start):
    reply = post(gateway.url, "qwen/generate", {"text_input": "Hi", **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(message_start)


def test_an_integer_beyond_int32_is_a_400_not_wrapped(gateway, triton_server):
    body = {"text_input": "Hi", "max_tokens": 4294967297, "temperature": 0.0}
    ours = post(gateway.url, "qwen/generate", body)
    assert ours.status_code == 400
    assert ours.json()["error"] == "max_tokens: 4294967297 is out of the range of INT32, [-2147483648, 2147483647]"
    # Triton's own port wraps it to 1 (2**32 + 1) and answers with one token.
    tritons = post(triton_server.http_url, "qwen/generate", body)
    assert tritons.status_code == 200 and tritons.json()["completion_tokens"] == 1


def test_a_key_that_is_no_input_is_refused_by_the_model_as_on_tritons_port(gateway, triton_server):
    body = {"text_input": "Hi", "max_tokens_typo": 5}
    ours, tritons = post(gateway.url, "qwen/generate", body), post(triton_server.http_url, "qwen/generate", body)
    assert ours.status_code == tritons.status_code == 400
    assert ours.json()["error"].startswith("max_tokens_typo: unknown parameter")
    assert ours.json() == tritons.json()  # the model's own message, through the same request parameter
    nested = post(gateway.url, "qwen/generate", {"text_input": "Hi", "parameters": {"max_tokens_typo": 5}})
    assert nested.status_code == 400 and nested.json() == ours.json()


def test_unknown_model_is_a_404_naming_it(gateway):
    reply = post(gateway.url, "no_such_model/generate", {"text_input": "Hi"})
    assert reply.status_code == 404 and "'no_such_model'" in reply.json()["error"]
    stream = post(gateway.url, "no_such_model/generate_stream", {"text_input": "Hi"})
    assert stream.status_code == 404 and "'no_such_model'" in stream.json()["error"]


def test_stream_true_on_generate_is_a_400_pointing_to_generate_stream(gateway):
    reply = post(gateway.url, "qwen/generate", {"text_input": "Hi", "max_tokens": 4, "stream": True})
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("stream:") and "/v2/models/qwen/generate_stream" in reply.json()["error"]


def test_a_bad_value_on_generate_stream_is_a_plain_400_before_any_event(gateway):
    reply = post(gateway.url, "qwen/generate_stream", {"text_input": "Hi", "max_tokens": 10_000_000, "stream": True})
    assert reply.status_code == 400 and reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"].startswith("max_tokens:")


# ---------------------------------------------------------------- cancellation


def test_client_disconnect_mid_stream_frees_the_request(gateway, triton_server):
    before = metric_value(triton_server.metrics(), "qwen_generation_tokens_total")
    with post(gateway.url, "qwen/generate_stream", {**COUNTING, "stream": True}, stream=True) as reply:
        assert reply.status_code == 200
        events = (line for line in reply.iter_lines() if line.startswith(b"data: "))
        for _ in range(3):
            assert b'"text_output"' in next(events)
    # The connection is closed now: the engine aborts the request within a step or two.
    wait_until_no_request_runs(triton_server)
    generated = metric_value(triton_server.metrics(), "qwen_generation_tokens_total") - before
    assert generated < COUNTING["max_tokens"] / 2, f"{generated} tokens generated for a client that left after 3"
    assert metric_value(gateway.metrics(), "qwen_openai_cancelled_requests_total", endpoint="generate_stream") >= 1
    after = post(gateway.url, "qwen/generate", {"text_input": "Hi", "max_tokens": 4})
    assert after.status_code == 200 and after.json()["completion_tokens"] > 0  # the server serves the next one


def test_client_disconnect_during_a_whole_generate_frees_the_request(gateway, triton_server):
    """Triton's own /generate does not see a client that leaves (docs/serving.md); the gateway does."""
    before = metric_value(triton_server.metrics(), "qwen_generation_tokens_total")
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(gateway.url, "qwen/generate", COUNTING, timeout=(10, 2))
    wait_until_no_request_runs(triton_server)
    generated = metric_value(triton_server.metrics(), "qwen_generation_tokens_total") - before
    assert generated < COUNTING["max_tokens"] / 2, f"{generated} tokens generated for a client that left"
    assert metric_value(gateway.metrics(), "qwen_openai_cancelled_requests_total", endpoint="generate") >= 1


# ---------------------------------------------------------------- the gateway's own settings


def test_triton_down_is_a_503_with_retry_after_in_tritons_error_shape(tmp_path):
    dead = start_gateway("127.0.0.1:9", tmp_path / "gateway.log")  # port 9 (discard): nothing listens
    try:
        reply = post(dead.url, "qwen/generate", {"text_input": "Hi"}, timeout=60)
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
        assert list(reply.json()) == ["error"] and "not available" in reply.json()["error"]
    finally:
        stop_gateway(dead)


def test_the_api_key_guards_generate_too(triton_server, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    locked = start_gateway(triton_server.grpc_url, tmp_path / "gateway.log", "--api-key-file", str(key_file))
    try:
        refused = post(locked.url, "qwen/generate", {"text_input": "Hi", "max_tokens": 2})
        assert refused.status_code == 401 and "API key" in refused.json()["error"]
        allowed = post(
            locked.url,
            "qwen/generate",
            {"text_input": "Hi", "max_tokens": 2},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert allowed.status_code == 200 and allowed.json()["completion_tokens"] > 0
    finally:
        stop_gateway(locked)
