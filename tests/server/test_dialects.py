"""The vLLM-backend and TensorRT-LLM-ensemble dialects, the new sampler inputs and strict inputs, against the
real tritonserver: clients written for those backends work unchanged, and bad input is a 400 naming it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serving_helpers import TIMEOUT_S, GrpcStream, generate, is_final

EXAMPLES = Path(__file__).resolve().parents[2] / "client" / "examples"
LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 6  # several full KV blocks of 16 tokens


def run_example(server, script: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EXAMPLES / script), "--url", server.grpc_url, "--max-tokens", "12"]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("script", ["vllm_stream_client.py", "trtllm_stream_client.py"])
def test_example_clients_of_both_backends_stream_text(triton_server, script):
    done = run_example(triton_server, script)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 5, done.stdout
    assert re.search(r"finish_reason: length|cum_log_probs: -\d", done.stderr), done.stderr


def vllm_generate(server, sampling: dict, **extra):
    body = {"text_input": "The capital of France is", "sampling_parameters": json.dumps(sampling), **extra}
    return generate(server, body, model="qwen_vllm")


def test_vllm_dialect_over_http_with_its_outputs(triton_server):
    reply = vllm_generate(
        triton_server,
        {"max_tokens": 4, "temperature": 0, "n": 2, "logprobs": 0},
        exclude_input_in_output=True,
        return_finish_reason=True,
        return_num_input_tokens=True,
        return_num_output_tokens=True,
        return_cumulative_logprob=True,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["text_output"]) == 2 and body["finish_reason"] == ["length", "length"]
    assert body["num_output_tokens"] == [4, 4] and body["num_input_tokens"] == 5
    assert all(value < 0 for value in body["cumulative_logprob"])
    echoed = vllm_generate(triton_server, {"max_tokens": 3, "temperature": 0})
    assert echoed.json()["text_output"].startswith("The capital of France is")  # vLLM's default echoes


@pytest.mark.parametrize(
    "sampling, field",
    [
        ({"max_tokens": 4, "temprature": 0.5}, "sampling_parameters.temprature"),
        ({"max_tokens": 2**32 + 1}, "sampling_parameters.max_tokens"),
        ({"seed": 2**63}, "sampling_parameters.seed"),
        ({"max_tokens": "four"}, "sampling_parameters.max_tokens"),
        ({"n": 1000}, "num_return_sequences"),
    ],
)
def test_vllm_dialect_bad_sampling_parameters_are_400(triton_server, sampling, field):
    reply = vllm_generate(triton_server, sampling)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"{field}: ")


def test_vllm_structured_outputs_choice_answers_one_of_the_choices(triton_server):
    choices = ["Paris", "London", "not sure"]
    sampling = {"max_tokens": 8, "temperature": 0, "structured_outputs": {"choice": choices}}
    reply = vllm_generate(triton_server, sampling, exclude_input_in_output=True, return_finish_reason=True)
    assert reply.status_code == 200, reply.text
    assert reply.json()["text_output"] in choices and reply.json()["finish_reason"] == "stop", reply.text


@pytest.mark.parametrize(
    "body, field",
    [
        ({"text_input": "hi", "max_tokens": 2, "temprature": 0.5}, "temprature"),
        ({"text_input": "hi", "max_tokens": 2, "sampling_parameters": "{}"}, "sampling_parameters"),
        ({"text_input": "hi", "beam_width": 2}, "beam_width"),
        ({"text_input": "hi", "random_seed": 2**63}, "random_seed"),
        ({"text_input": "hi", "seed": -1}, "seed"),
        ({"text_input": "hi", "min_tokens": 50, "max_tokens": 4}, "min_tokens"),
        ({"text_input": "hi", "logit_bias": '{"1": "big"}'}, "logit_bias"),
        ({"messages": "[" * 100_000}, "messages"),  # no RecursionError
        ({"messages": json.dumps([{"role": "user", "content": "x"}]), "tools": '{"a": 1}'}, "tools"),
    ],
    ids=["typo", "vllm-key-on-qwen", "beam", "seed-2^63", "seed-negative", "min-tokens", "bias", "deep", "tools"],
)
def test_qwen_strict_inputs_name_the_field(triton_server, body, field):
    reply = generate(triton_server, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(f"{field}: ")


def test_grpc_request_parameters_are_refused(triton_server):
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    stream = GrpcStream(triton_server)
    try:
        text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
        stream.client.async_stream_infer("qwen", [text], parameters={"temperature": "0.5"})
        _result, error = stream.next()
    finally:
        stream.close()
        client.close()
    assert error is not None and "temperature" in error.message() and "unknown parameter" in error.message()


def test_tools_and_tool_call_turns_reach_the_demo_template(triton_server):
    """The demo model's template (models/demo_template.py) renders tools, assistant tool calls with a null
    content and tool results, as Qwen2.5's does: the prompt grows by the tool list, and the whole
    function-calling exchange is a 200. (A template that renders neither is a 400 naming the field:
    tests/engine/test_engine_sampling.py.)"""
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    plain = generate(triton_server, {"messages": json.dumps(question), "max_tokens": 1})
    offered = generate(triton_server, {"messages": json.dumps(question), "tools": json.dumps(tools), "max_tokens": 1})
    assert plain.status_code == 200 and offered.status_code == 200, offered.text
    assert offered.json()["prompt_tokens"] > plain.json()["prompt_tokens"] + 20
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    turns = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "20 C"},
    ]
    reply = generate(triton_server, {"messages": json.dumps(turns), "tools": json.dumps(tools), "max_tokens": 2})
    assert reply.status_code == 200, reply.text


def test_sampler_inputs_over_http(triton_server):
    biased = generate(triton_server, {"text_input": "Hi", "max_tokens": 3, "logit_bias": '{"42": 100}'}).json()
    assert biased["output_ids"] == [42, 42, 42]
    plain = generate(triton_server, {"text_input": "Hi", "max_tokens": 3, "temperature": 0}).json()
    first = plain["output_ids"][0]
    held = generate(
        triton_server,
        {"text_input": "Hi", "max_tokens": 6, "temperature": 0, "stop_token_ids": [first], "min_tokens": 4},
    ).json()
    assert held["completion_tokens"] >= 4 and first not in held["output_ids"][:3]
    top = generate(triton_server, {"text_input": "Hi", "max_tokens": 2, "temperature": 0, "top_logprobs": 3}).json()
    alternatives = json.loads(top["top_logprobs"])
    assert len(alternatives) == 2 and all(len(best) == 3 for best in alternatives)
    assert alternatives[0][0]["id"] == top["output_ids"][0]


def prefix_cache_hits(server) -> float:
    lines = [line for line in server.metrics().splitlines() if line.startswith("qwen_prefix_cache_hits_total")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def prefix_cache_hits_reaching(server, wanted: float, timeout_s: float = 10.0) -> float:
    """The counter once it reaches `wanted` (or the last value read at the timeout): the model publishes its
    metrics every half second, so a read right after a request may predate it."""
    deadline = time.monotonic() + timeout_s
    while (hits := prefix_cache_hits(server)) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return hits


def test_num_return_sequences_streams_labelled_choices_sharing_the_prompt(triton_server):
    hits_before = prefix_cache_hits(triton_server)
    stream = GrpcStream(triton_server)
    values = {
        "text_input": np.array([[(LONG_PROMPT + " 7").encode()]], dtype=np.object_),
        "max_tokens": np.array([[4]], dtype=np.int32),
        "num_return_sequences": np.array([[3]], dtype=np.int32),
        "random_seed": np.array([[5]], dtype=np.uint64),
        "return_log_probs": np.array([[True]], dtype=np.bool_),
        "stream": np.array([[True]], dtype=np.bool_),
    }
    inputs = []
    for name, array in values.items():
        dtype = "BYTES" if array.dtype == np.object_ else grpcclient.np_to_triton_dtype(array.dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    tokens_by_choice: dict[int, int] = {}
    try:
        stream.client.async_stream_infer("qwen", inputs, request_id="n3", enable_empty_final_response=True)
        while True:
            result, error = stream.next()
            assert error is None, error
            if result.as_numpy("sequence_index") is not None:
                index = int(result.as_numpy("sequence_index")[0][0])
                tokens_by_choice[index] = tokens_by_choice.get(index, 0) + result.as_numpy("output_ids").size
                assert result.as_numpy("cum_log_probs")[0][0] < 0
            if is_final(result):
                break
    finally:
        stream.close()
    assert tokens_by_choice == {0: 4, 1: 4, 2: 4}
    assert prefix_cache_hits_reaching(triton_server, hits_before + 2) >= hits_before + 2  # choices 1, 2 reused it
