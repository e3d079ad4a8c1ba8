"""GenerationParams and prompt checks: bad values are refused on the client, naming the field."""

import json

import pytest

from qwen_client import GenerationParams, InvalidParameterError, QwenClient
from qwen_client.params import INPUT_SPECS
from qwen_client.request import build_inputs, messages_inputs, prompt_inputs


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("temperature", "hot"),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("top_k", -1),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("presence_penalty", 2.5),
        ("frequency_penalty", -3),
        ("seed", -1),
        ("seed", 2**63),
        ("stop", [""]),
        ("stop", [1, 2]),
        ("stop", 42),
        ("stop_token_ids", [-1]),
        ("stop_token_ids", "2"),
        ("ignore_eos", 1),
        ("return_logprobs", "yes"),
        ("min_temperature", -1.0),
    ],
)
def test_bad_value_names_its_field(field, value):
    with pytest.raises(InvalidParameterError) as caught:
        GenerationParams(**{field: value})
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_dynamic_temperature_bounds_must_be_ordered():
    with pytest.raises(InvalidParameterError, match="min_temperature: must be <= max_temperature"):
        GenerationParams(min_temperature=2.0, max_temperature=1.0)


def test_unknown_parameter_suggests_the_close_name():
    with pytest.raises(InvalidParameterError) as caught:
        GenerationParams.from_kwargs(max_token=5)
    assert caught.value.field == "max_token"
    assert "did you mean 'max_tokens'" in str(caught.value)


def test_valid_values_are_normalised():
    params = GenerationParams(temperature=1, stop="###", stop_token_ids=(2, 3), seed=7, top_k=0)
    assert params.temperature == 1.0 and isinstance(params.temperature, float)
    assert params.stop == ["###"]
    assert params.stop_token_ids == [2, 3]
    assert params.to_inputs() == {"temperature": 1.0, "stop": ["###"], "stop_token_ids": [2, 3], "seed": 7, "top_k": 0}


def test_replace_validates_and_keeps_the_rest():
    params = GenerationParams(max_tokens=8, temperature=0.0)
    assert params.replace(max_tokens=16) == GenerationParams(max_tokens=16, temperature=0.0)
    with pytest.raises(InvalidParameterError, match="max_tokens"):
        params.replace(max_tokens=-3)


def test_every_field_is_a_model_input():
    for name in GenerationParams.__dataclass_fields__:
        assert name in INPUT_SPECS


def test_prompt_kinds_map_to_their_inputs():
    assert prompt_inputs("hi") == {"text_input": "hi"}
    assert prompt_inputs([1, 2, 3]) == {"input_ids": [1, 2, 3]}
    for bad in ([], [1, -2], [1.5], b"bytes", 3):
        with pytest.raises(InvalidParameterError):
            prompt_inputs(bad)


def test_messages_travel_as_one_json_string():
    sent = messages_inputs([{"role": "user", "content": "Où est Paris ?"}])
    assert json.loads(sent["messages"]) == [{"role": "user", "content": "Où est Paris ?"}]
    for bad in ([], "hello", [{"role": "user"}], ["hello"]):
        with pytest.raises(InvalidParameterError, match="messages"):
            messages_inputs(bad)


def test_build_inputs_adds_stream_flag():
    inputs = build_inputs({"text_input": "x"}, GenerationParams(max_tokens=4), stream=True)
    assert inputs == {"text_input": "x", "max_tokens": 4, "stream": True}


def test_client_settings_are_checked():
    with pytest.raises(InvalidParameterError, match="protocol"):
        QwenClient(protocol="websocket")
    with pytest.raises(InvalidParameterError, match="timeout"):
        QwenClient(timeout=0)
    with pytest.raises(InvalidParameterError, match="retries"):
        QwenClient(retries=-1)


def test_bad_parameter_is_refused_before_any_connection():
    # Port 1 has nothing listening: the error must be about the parameter, not the connection.
    client = QwenClient("localhost:1", protocol="http")
    with pytest.raises(InvalidParameterError, match="temperature"):
        client.generate("hi", temperature=-1)
    client.close()
