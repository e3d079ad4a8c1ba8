"""Unit tests of vllm_dialect: vLLM-backend tensors -> `qwen` inputs, and `qwen` outputs -> vLLM's."""

import json

import numpy as np
import pytest

from qwen_triton.errors import InvalidRequestError
from qwen_triton.serving.vllm_dialect import translate_request, translate_response


def one(value, dtype=object) -> np.ndarray:
    return np.array([value.encode() if isinstance(value, str) else value], dtype=dtype)


def request(sampling: dict | None = None, **flags) -> dict:
    arrays = {"text_input": one("Hello")}
    if sampling is not None:
        arrays["sampling_parameters"] = one(json.dumps(sampling))
    arrays.update({name: one(value, np.bool_) for name, value in flags.items()})
    return arrays


def test_sampling_parameters_become_qwen_inputs_with_the_batch_dimension():
    translated = translate_request(
        request(
            {"temperature": 0.5, "top_k": -1, "max_tokens": 7, "stop": "END", "seed": 3, "n": 2, "logprobs": 2},
            stream=True,
            return_cumulative_logprob=True,
        )
    )
    qwen = translated.qwen_inputs
    assert all(array.shape[0] == 1 for array in qwen.values())
    assert qwen["max_tokens"].dtype == np.int32 and qwen["max_tokens"][0, 0] == 7
    assert qwen["top_k"][0, 0] == 0  # vLLM's -1 (off) is our 0
    assert qwen["stop"].tolist() == [[b"END"]]
    assert qwen["num_return_sequences"][0, 0] == 2 and qwen["top_logprobs"][0, 0] == 2
    assert qwen["return_logprobs"][0, 0] and qwen["stream"][0, 0]
    assert not qwen["exclude_input_in_output"][0, 0]  # vLLM's default echoes the prompt
    assert (translated.n, translated.stream, translated.returns) == (2, True, {"return_cumulative_logprob"})


@pytest.mark.parametrize(
    "sampling, field, fix",
    [
        ({"temprature": 1.0}, "sampling_parameters.temprature", "unknown"),
        ({"max_tokens": 2**32 + 1}, "sampling_parameters.max_tokens", "out of range"),
        ({"seed": 2**63}, "sampling_parameters.seed", "out of range"),
        ({"max_tokens": "five"}, "sampling_parameters.max_tokens", "expected an integer"),
        ({"max_tokens": "5.5"}, "sampling_parameters.max_tokens", "expected an integer"),
        ({"temperature": "hot"}, "sampling_parameters.temperature", "finite number"),
        ({"ignore_eos": 1}, "sampling_parameters.ignore_eos", "true or false"),
        ({"stop": [1]}, "sampling_parameters.stop", "strings"),
        ({"logprobs": -1}, "sampling_parameters.logprobs", ">= 0"),
    ],
)
def test_bad_sampling_parameters_name_the_key(sampling, field, fix):
    with pytest.raises(InvalidRequestError) as caught:
        translate_request(request(sampling))
    assert caught.value.field == field and fix in str(caught.value)


def test_bad_json_and_missing_prompt():
    with pytest.raises(InvalidRequestError, match="sampling_parameters"):
        translate_request({"text_input": one("Hi"), "sampling_parameters": one("{not json")})
    with pytest.raises(InvalidRequestError, match="nested deeper"):
        translate_request({"text_input": one("Hi"), "sampling_parameters": one("[" * 50_000)})
    with pytest.raises(InvalidRequestError) as caught:
        translate_request({"sampling_parameters": one("{}")})
    assert caught.value.field == "text_input"


def test_outputs_translate_and_label_streamed_choices():
    translated = translate_request(
        request({"n": 2}, stream=True, return_finish_reason=True, return_num_input_tokens=True)
    )
    delta = translate_response(
        {
            "text_output": np.array([[b"Hi"]], dtype=object),
            "finish_reason": np.array([[b"stop"]], dtype=object),
            "prompt_tokens": np.array([[4]], dtype=np.int32),
            "completion_tokens": np.array([[1]], dtype=np.int32),
            "sequence_index": np.array([[1]], dtype=np.int32),
        },
        translated,
    )
    assert delta["text_output"].tolist() == [b"", b"Hi"]
    assert delta["finish_reason"].tolist() == [b"stop"]
    assert delta["num_input_tokens"].dtype == np.uint32 and delta["num_input_tokens"].tolist() == [4]
    assert "num_output_tokens" not in delta  # not asked for


def test_logprobs_output_in_vllm_shape():
    translated = translate_request(request({"logprobs": 1}, return_logprobs=True, return_cumulative_logprob=True))
    top = json.dumps([[{"id": 5, "token": "a", "logprob": -0.1}], [{"id": 9, "token": "b", "logprob": -0.3}]])
    out = translate_response(
        {
            "text_output": np.array([[b"ab"]], dtype=object),
            "output_ids": np.array([[5, 8]], dtype=np.int64),
            "logprobs": np.array([[-0.1, -0.5]], dtype=np.float32),
            "cum_log_probs": np.array([[-0.6]], dtype=np.float32),
            "top_logprobs": np.array([[top.encode()]], dtype=object),
        },
        translated,
    )
    tokens = json.loads(out["logprobs"][0])
    assert tokens[0]["5"] == {"logprob": -0.1, "rank": 1, "decoded_token": "a"}
    assert set(tokens[1]) == {"9", "8"} and tokens[1]["8"]["logprob"] == pytest.approx(-0.5)
    assert out["cumulative_logprob"].tolist() == pytest.approx([-0.6])


def test_numbers_written_as_strings_are_read_like_the_vllm_backend_does():
    """genai-perf sends {"max_tokens": "8"}; the vLLM backend reads it as 8."""
    qwen = translate_request(request({"max_tokens": "8", "temperature": "0.5", "ignore_eos": "true"})).qwen_inputs
    assert qwen["max_tokens"][0, 0] == 8 and qwen["temperature"][0, 0] == pytest.approx(0.5)
    assert qwen["ignore_eos"][0, 0]


def test_structured_outputs_choice_becomes_the_regex_the_engine_compiles_it_to():
    qwen = translate_request(request({"structured_outputs": {"choice": ["yes", "no", "a.b"]}})).qwen_inputs
    assert qwen["guided_decoding_guide_type"].tolist() == [[b"regex"]]
    assert qwen["guided_decoding_guide"].tolist() == [[b"(yes|no|a\\.b)"]]
    with pytest.raises(InvalidRequestError) as caught:
        translate_request(request({"structured_outputs": {"choice": []}}))
    assert caught.value.field == "sampling_parameters.structured_outputs.choice"
