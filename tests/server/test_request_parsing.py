"""Unit tests of request_parsing: Triton input arrays -> engine arguments, bad input rejected by field."""

import json

import numpy as np
import pytest

from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.request_parsing import client_error_message, parse_request, refuse_request_parameters

MAX_MODEL_LEN = 2048


def text(value) -> np.ndarray:
    return np.array([[value]], dtype=object)


def scalar(value, dtype) -> np.ndarray:
    return np.array([[value]], dtype=dtype)


def error_field(inputs: dict) -> tuple[str, str]:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request(inputs, MAX_MODEL_LEN)
    return caught.value.field, str(caught.value)


def test_text_prompt_with_sampling_inputs():
    parsed = parse_request(
        {
            "text_input": text(b"Hello"),
            "max_tokens": scalar(7, np.int32),
            "temperature": scalar(0.5, np.float32),
            "top_k": scalar(40, np.int32),
            "seed": scalar(3, np.int64),
            "stream": scalar(True, np.bool_),
            "return_logprobs": scalar(True, np.bool_),
            "stop": np.array([[b"\n\n", b"END"]], dtype=object),
            "stop_token_ids": np.array([[2, 5]], dtype=np.int64),
        },
        MAX_MODEL_LEN,
    )
    assert parsed.prompt == {"prompt": "Hello"}
    assert parsed.stream is True
    params = parsed.params
    assert (params.max_tokens, params.top_k, params.seed) == (7, 40, 3)
    assert params.temperature == pytest.approx(0.5)
    assert params.logprobs is True
    assert params.stop == ["\n\n", "END"]
    assert params.stop_token_ids == [2, 5]


def test_defaults_when_only_a_prompt_is_sent():
    parsed = parse_request({"text_input": text(b"Hi")}, MAX_MODEL_LEN)
    assert parsed.stream is False
    assert parsed.params.max_tokens == 128


def test_input_ids_and_messages_prompts():
    ids = parse_request({"input_ids": np.array([[1, 2, 3]], dtype=np.int64)}, MAX_MODEL_LEN)
    assert ids.prompt == {"prompt_token_ids": [1, 2, 3]}
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    parsed = parse_request({"messages": text(json.dumps(chat).encode())}, MAX_MODEL_LEN)
    assert parsed.prompt == {"messages": json.dumps(chat)}


def test_missing_prompt_names_text_input():
    field, message = error_field({"max_tokens": scalar(4, np.int32)})
    assert field == "text_input"
    assert "input_ids" in message and "messages" in message


def test_two_prompts_are_refused():
    field, _ = error_field({"text_input": text(b"a"), "input_ids": np.array([[1]], dtype=np.int64)})
    assert field == "input_ids"


def test_invalid_utf8_names_the_field_and_offset():
    field, message = error_field({"text_input": text(b"ok \xff\xfe")})
    assert field == "text_input"
    assert "UTF-8" in message and "offset 3" in message


def test_huge_prompt_is_refused_before_tokenizing():
    field, message = error_field({"text_input": text(b"a" * 10 * 1024 * 1024)})
    assert field == "text_input"
    assert "shorten" in message


def test_wrong_dtype_is_named():
    field, message = error_field({"text_input": text(b"x"), "max_tokens": scalar(1.5, np.float32)})
    assert field == "max_tokens"
    assert "integer" in message


def test_batch_of_two_prompts_is_refused():
    field, message = error_field({"text_input": np.array([[b"a"], [b"b"]], dtype=object)})
    assert field == "text_input"
    assert "one request per prompt" in message


def test_negative_token_id_is_refused():
    field, _ = error_field({"input_ids": np.array([[1, -4]], dtype=np.int64)})
    assert field == "input_ids"


def test_engine_field_names_become_triton_input_names():
    assert (
        client_error_message(InvalidRequestError("prompt_token_ids", "7 is not a token id"))
        == "input_ids: 7 is not a token id"
    )
    assert client_error_message(InvalidRequestError("logprobs", "x")) == "return_logprobs: x"
    assert client_error_message(InvalidRequestError("temperature", "must be >= 0")) == "temperature: must be >= 0"


# -- TensorRT-LLM names, new sampler inputs, refused parameters ---------------------------------------


def strings(*values) -> np.ndarray:
    return np.array([[v.encode() for v in values]], dtype=object)


def test_tensorrt_llm_names_map_onto_ours():
    parsed = parse_request(
        {
            "text_input": text(b"Hello"),
            "min_length": scalar(3, np.int32),
            "random_seed": scalar(2**63 - 1, np.uint64),
            "stop_words": strings("END"),
            "bad_words": strings("darn", "heck"),
            "end_id": scalar(2, np.int32),
            "pad_id": scalar(2, np.int32),
            "return_log_probs": scalar(True, np.bool_),
            "beam_width": scalar(1, np.int32),
            "num_return_sequences": scalar(3, np.int32),
            "exclude_input_in_output": scalar(False, np.bool_),
        },
        MAX_MODEL_LEN,
    )
    params = parsed.params
    assert (params.min_tokens, params.seed, params.n) == (3, 2**63 - 1, 3)
    assert params.stop == ["END"] and params.stop_token_ids == [2]
    assert params.bad_words == ["darn", "heck"] and params.logprobs is True
    assert parsed.exclude_input_in_output is False


def test_logit_bias_tools_and_generation_defaults():
    parsed = parse_request(
        {
            "messages": text(b'[{"role": "user", "content": "Weather?"}]'),
            "tools": text(b'[{"type": "function", "function": {"name": "get_weather"}}]'),
            "logit_bias": text(b'{"15": -100, "7": 2.5}'),
            "top_logprobs": scalar(2, np.int32),
            "temperature": scalar(0.2, np.float32),
        },
        MAX_MODEL_LEN,
        defaults={"temperature": 0.7, "top_p": 0.8},
    )
    assert parsed.params.logit_bias == {15: -100.0, 7: 2.5}
    assert parsed.params.top_logprobs == 2
    assert parsed.params.temperature == pytest.approx(0.2)  # the request wins over the defaults
    assert parsed.params.top_p == pytest.approx(0.8)
    assert "get_weather" in parsed.tools


@pytest.mark.parametrize(
    "inputs, field, fix",
    [
        ({"beam_width": scalar(2, np.int32)}, "beam_width", "not supported"),
        ({"seed": scalar(1, np.int64), "random_seed": scalar(1, np.uint64)}, "random_seed", "only one"),
        ({"stop": strings("a"), "stop_words": strings("b")}, "stop_words", "only one"),
        ({"logit_bias": text(b"[1, 2]")}, "logit_bias", "JSON object"),
        ({"logit_bias": text(b'{"x": 1}')}, "logit_bias", "not a token id"),
        ({"logit_bias": text(b'{"1": "big"}')}, "logit_bias", "must be a number"),
        ({"logit_bias": text(b"[" * 100_000)}, "logit_bias", "nested deeper"),
        ({"tools": text(b"[]")}, "tools", "send messages"),
    ],
)
def test_bad_new_inputs_name_the_field(inputs, field, fix):
    name, message = error_field({"text_input": text(b"Hi"), **inputs})
    assert name == field and fix in message


def test_request_parameters_are_refused_by_name():
    refuse_request_parameters({})
    with pytest.raises(InvalidRequestError) as caught:
        refuse_request_parameters({"temprature": 0.5, "sampling_parameters": "{}"})
    assert caught.value.field == "sampling_parameters"
    assert "temprature" in str(caught.value) and "text_input" in str(caught.value)
