"""OpenAI request -> `qwen` model inputs (qwen_openai.request_mapping): no server needed."""

from __future__ import annotations

import json

import pytest
from qwen_openai.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from qwen_openai.request_mapping import chat_inputs, completion_inputs

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
OTHER_TOOL = {"type": "function", "function": {"name": "get_time"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def every_input(_name: str) -> bool:
    return True


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "qwen", "messages": USER, **fields})


def test_sampling_fields_map_by_name_and_absent_ones_stay_absent():
    (inputs,), _plan = chat_inputs(chat(temperature=0.5, max_completion_tokens=9, stop="END"), every_input)
    assert inputs["temperature"] == 0.5 and inputs["max_tokens"] == 9 and inputs["stop"] == ["END"]
    assert inputs["stream"] is True
    assert "top_p" not in inputs and "seed" not in inputs and "tools" not in inputs


def test_n_fans_out_with_consecutive_seeds():
    choices, _plan = chat_inputs(chat(n=3, seed=5), every_input)
    assert [c["seed"] for c in choices] == [5, 6, 7]
    assert len({c["messages"] for c in choices}) == 1


def test_assistant_tool_calls_travel_with_object_arguments():
    messages = USER + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    (inputs,), _plan = chat_inputs(chat(messages=messages), every_input)
    sent = json.loads(inputs["messages"])
    assert sent[1]["content"] == "" and sent[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert sent[2] == {"role": "tool", "content": "42", "tool_call_id": "c1"}


def test_named_tool_choice_is_a_json_schema_guide_of_the_call_object():
    (inputs,), plan = chat_inputs(
        chat(tools=[TOOL, OTHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
        every_input,
    )
    assert plan.forced_tool and not plan.parse_tool_calls
    assert inputs["guided_decoding_guide_type"] == "json_schema"
    schema = json.loads(inputs["guided_decoding_guide"])
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == TOOL["function"]["parameters"]
    assert [t["function"]["name"] for t in json.loads(inputs["tools"])] == ["get_weather", "get_time"]


def test_required_tool_choice_allows_any_offered_tool():
    (inputs,), _plan = chat_inputs(chat(tools=[TOOL, OTHER_TOOL], tool_choice="required"), every_input)
    shapes = json.loads(inputs["guided_decoding_guide"])["anyOf"]
    assert [s["properties"]["name"]["const"] for s in shapes] == ["get_weather", "get_time"]


def test_auto_tools_are_parsed_and_none_sends_no_tools():
    (inputs,), plan = chat_inputs(chat(tools=[TOOL]), every_input)
    assert plan.parse_tool_calls and "guided_decoding_guide" not in inputs
    (inputs,), plan = chat_inputs(chat(tools=[TOOL], tool_choice="none"), every_input)
    assert not plan.parse_tool_calls and "tools" not in inputs


@pytest.mark.parametrize(
    "response_format, guide_type",
    [
        ({"type": "json_object"}, "json_object"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}, "json_schema"),
    ],
)
def test_response_format_becomes_a_guide(response_format, guide_type):
    (inputs,), _plan = chat_inputs(chat(response_format=response_format), every_input)
    assert inputs["guided_decoding_guide_type"] == guide_type


def test_a_feature_the_model_lacks_is_a_400_naming_the_field():
    with pytest.raises(OpenAIError) as raised:
        chat_inputs(chat(tools=[TOOL]), lambda name: name != "tools")
    assert raised.value.status == 400 and raised.value.param == "tools"
    with pytest.raises(OpenAIError) as raised:
        completion_inputs(
            CompletionRequest.model_validate({"model": "qwen", "prompt": "x", "logit_bias": {"5": 1}}),
            lambda name: name != "logit_bias",
        )
    assert raised.value.param == "logit_bias"
