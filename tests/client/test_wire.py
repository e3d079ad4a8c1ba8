"""What travels: tensors, generate JSON, SSE events, and the field a server error names."""

import numpy as np
import pytest

from qwen_client import BadRequestError, ServerError
from qwen_client.sse import SseDecoder
from qwen_client.wire import chunk_from_json, error_in_response, field_named_in, json_body, to_numpy


def test_scalars_and_lists_get_a_batch_dim_when_batched():
    assert to_numpy("max_tokens", 8, batched=True).shape == (1, 1)
    assert to_numpy("max_tokens", 8, batched=False).shape == (1,)
    ids = to_numpy("input_ids", [1, 2, 3], batched=True)
    assert ids.shape == (1, 3) and ids.dtype == np.int64
    text = to_numpy("text_input", "héllo", batched=True)
    assert text.dtype == object and text[0, 0] == "héllo".encode()
    assert to_numpy("stream", True, batched=True).dtype == np.bool_
    assert to_numpy("temperature", 0.5, batched=False).dtype == np.float32


def test_json_body_drops_empty_lists():
    assert json_body({"text_input": "a", "stop": [], "max_tokens": 3}) == {"text_input": "a", "max_tokens": 3}


def test_chunk_from_json_accepts_scalars_and_batched_lists():
    flat = chunk_from_json(
        {
            "text_output": "Paris",
            "output_ids": [5, 6],
            "finish_reason": "stop",
            "prompt_tokens": 7,
            "completion_tokens": 2,
        }
    )
    batched = chunk_from_json(
        {
            "text_output": ["Paris"],
            "output_ids": [[5, 6]],
            "finish_reason": ["stop"],
            "prompt_tokens": [7],
            "completion_tokens": [2],
        }
    )
    for chunk in (flat, batched):
        assert chunk.text == "Paris" and chunk.token_ids == [5, 6]
        assert chunk.finish_reason == "stop" and chunk.is_final
        assert chunk.usage.total_tokens == 9 and chunk.logprobs is None
    running = chunk_from_json({"text_output": " Par", "output_ids": 5, "finish_reason": ""})
    assert running.token_ids == [5] and running.finish_reason is None and not running.is_final


def test_sse_decoder_splits_events():
    decoder = SseDecoder()
    lines = ['data: {"a": 1}\n', "\n", ": keep-alive\n", "data: {\"b\":\n", "data: 2}\n", "\r\n", 'data: {"c": 3}']
    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]
    assert events == ['{"a": 1}', '{"b":\n2}']
    assert decoder.flush() == '{"c": 3}' and decoder.flush() is None


@pytest.mark.parametrize(
    "message, field",
    [
        ("temperature: must be >= 0 (0 = greedy), got -1.0", "temperature"),
        ("min_temperature: must be >= 0", "min_temperature"),
        ("in ensemble 'x', input_ids: is empty", "input_ids"),
        ("engine crashed", None),
    ],
)
def test_field_named_in(message, field):
    assert field_named_in(message) == field


def test_error_in_response_blames_the_caller_only_when_a_field_is_named():
    assert isinstance(error_in_response("max_tokens: too many"), BadRequestError)
    error = error_in_response("CUDA out of memory")
    assert type(error) is ServerError and error.field is None
