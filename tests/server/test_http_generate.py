"""The `qwen` model over HTTP: readiness, generate, generate_stream (SSE), the demo model's answer."""

import requests
from serving_helpers import CAPITAL_QUESTION, generate, generate_stream

GREEDY = {"temperature": 0.0}


def test_server_and_model_ready(triton_server):
    assert requests.get(f"{triton_server.http_url}/v2/health/ready", timeout=10).status_code == 200
    for model in ("qwen", "tokenizer", "detokenizer", "qwen_pipeline"):
        assert requests.get(f"{triton_server.http_url}/v2/models/{model}/ready", timeout=10).status_code == 200


def test_model_config_is_decoupled_with_dynamic_batching(triton_server):
    config = requests.get(f"{triton_server.http_url}/v2/models/qwen/config", timeout=10).json()
    assert config["model_transaction_policy"]["decoupled"] is True
    assert config["max_batch_size"] > 0 and "dynamic_batching" in config
    # serve.py applied the test's overrides to the run copy of config.pbtxt
    assert config["parameters"]["max_model_len"]["string_value"] == "2048"


def test_chat_answers_capital_of_france(triton_server):
    reply = generate(triton_server, {"messages": CAPITAL_QUESTION, "max_tokens": 24, **GREEDY})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "Paris" in body["text_output"]
    assert body["finish_reason"] in ("stop", "length")
    assert body["prompt_tokens"] > 5 and 0 < body["completion_tokens"] <= 24


def test_generate_stream_deltas_add_up_to_the_whole_text(triton_server):
    request = {"text_input": "The three primary colors are", "max_tokens": 12, "ignore_eos": True, **GREEDY}
    whole = generate(triton_server, request).json()
    events = generate_stream(triton_server, {**request, "stream": True})
    # One event per token, except that tokens which piled up while the server was busy come merged.
    assert 2 <= len(events) <= 12
    assert "".join(event["text_output"] for event in events) == whole["text_output"]
    assert [event["finish_reason"] for event in events] == [""] * (len(events) - 1) + ["length"]
    counts = [event["completion_tokens"] for event in events]
    assert counts == sorted(set(counts)) and counts[0] >= 1 and counts[-1] == 12


def test_input_ids_prompt_and_output_ids(triton_server):
    by_text = generate(triton_server, {"text_input": "Hello", "max_tokens": 4, "ignore_eos": True, **GREEDY}).json()
    prompt_ids = requests.post(
        f"{triton_server.http_url}/v2/models/tokenizer/infer",
        timeout=30,
        json={
            "inputs": [{"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["Hello"]}],
        },
    ).json()["outputs"][0]["data"]
    by_ids = generate(triton_server, {"input_ids": prompt_ids, "max_tokens": 4, "ignore_eos": True, **GREEDY}).json()
    assert by_ids["output_ids"] == by_text["output_ids"]
    assert by_ids["text_output"] == by_text["text_output"]


def test_stop_string_and_seeded_sampling(triton_server):
    seeded = {"text_input": "Write a list of fruits:", "max_tokens": 8, "temperature": 0.9, "seed": 7}
    first, second = generate(triton_server, seeded).json(), generate(triton_server, seeded).json()
    assert first["output_ids"] == second["output_ids"]  # same seed, same tokens
    stopped = generate(
        triton_server, {"text_input": "Count: 1, 2, 3,", "max_tokens": 20, "stop": [","], **GREEDY}
    ).json()
    assert stopped["finish_reason"] == "stop" and "," not in stopped["text_output"]
