"""Bad input gets a clear error naming the field, and the server keeps serving others afterwards."""

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from serving_helpers import GrpcStream, generate

TEN_MB = 10 * 2**20


@pytest.mark.parametrize(
    "body, field",
    [
        ({"max_tokens": 4}, "text_input"),  # missing prompt
        ({"text_input": "hi", "temperature": -1.0}, "temperature"),
        ({"text_input": "hi", "max_tokens": 100000}, "max_tokens"),  # beyond the model length (2048)
        ({"text_input": "hi", "top_p": 0.0}, "top_p"),
        ({"text_input": "a" * TEN_MB}, "text_input"),  # a 10 MB prompt
        ({"messages": "not json"}, "messages"),
        ({"messages": json.dumps([{"role": "wizard", "content": "x"}])}, "messages"),
        ({"input_ids": [1, 10**9]}, "input_ids"),  # not a token id
        ({"text_input": "hi", "input_ids": [1, 2]}, "input_ids"),  # two prompts
    ],
    ids=[
        "missing-prompt",
        "negative-temperature",
        "max-tokens-too-long",
        "top-p-zero",
        "10MB-prompt",
        "messages-not-json",
        "messages-bad-role",
        "token-id-out-of-vocab",
        "two-prompts",
    ],
)
def test_http_bad_input_names_the_field(triton_server, body, field):
    reply = generate(triton_server, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"{field}: ")


def grpc_error(server, inputs: list) -> str:
    stream = GrpcStream(server)
    try:
        stream.client.async_stream_infer("qwen", inputs)
        result, error = stream.next()
    finally:
        stream.close()
    assert error is not None, "expected an error response"
    return error.message()


def bytes_input(name: str, payload: bytes):
    tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[payload]], dtype=np.object_))
    return tensor


def test_grpc_invalid_utf8_names_the_field(triton_server):
    message = grpc_error(triton_server, [bytes_input("text_input", b"caf\xc3 \xff")])
    assert message.startswith("text_input: is not valid UTF-8")


def test_grpc_wrong_dtype_names_the_field(triton_server):
    max_tokens = grpcclient.InferInput("max_tokens", [1, 1], "FP32")
    max_tokens.set_data_from_numpy(np.array([[1.5]], dtype=np.float32))
    message = grpc_error(triton_server, [bytes_input("text_input", b"hi"), max_tokens])
    assert "'max_tokens'" in message and "INT32" in message


def test_server_keeps_serving_after_bad_input(triton_server):
    for body in ({"max_tokens": 4}, {"text_input": "hi", "temperature": -1.0}, {"text_input": "a" * TEN_MB}):
        assert generate(triton_server, body).status_code == 400
    assert requests.get(f"{triton_server.http_url}/v2/health/ready", timeout=10).status_code == 200
    reply = generate(triton_server, {"text_input": "Hello", "max_tokens": 3, "temperature": 0.0})
    assert reply.status_code == 200 and reply.json()["completion_tokens"] >= 1
