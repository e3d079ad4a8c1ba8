"""OpenAI features that ride on the `qwen` model's newer inputs: tools, logit_bias, top_logprobs, and the
guided decoding behind response_format and forced tool calls. Real server, real demo model, OpenAI SDK."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from openai_gateway_process import SERVED_MODEL_NAME

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(gateway):
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=180) as sdk:
        yield sdk


def test_tools_reach_the_chat_template(client):
    """Offered tools are rendered into the prompt (more prompt tokens than without); whatever the small model
    answers comes back as content or as parsed tool calls, never as raw <tool_call> markup."""
    plain = client.chat.completions.create(model=SERVED_MODEL_NAME, messages=ASK_WEATHER, max_tokens=48)
    reply = client.chat.completions.create(
        model=SERVED_MODEL_NAME, messages=ASK_WEATHER, tools=[WEATHER_TOOL], temperature=0.0, max_tokens=48
    )
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    message = reply.choices[0].message
    for call in message.tool_calls or []:
        assert call.function.name and isinstance(json.loads(call.function.arguments), dict)
    if message.tool_calls:
        assert reply.choices[0].finish_reason == "tool_calls"
    else:
        assert message.content is not None


def test_logit_bias_forces_a_token(client):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL)
    (token_id,) = tokenizer.encode(" banana", add_special_tokens=False)[:1]
    reply = client.completions.create(
        model=SERVED_MODEL_NAME, prompt="My favourite", max_tokens=4, temperature=0.0, logit_bias={str(token_id): 100}
    )
    assert reply.choices[0].text == tokenizer.decode([token_id] * 4)


def test_top_logprobs_come_per_token_best_first(client):
    reply = client.chat.completions.create(
        model=SERVED_MODEL_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0.0,
        max_tokens=6,
        logprobs=True,
        top_logprobs=3,
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        ranked = [alt.logprob for alt in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        assert entry.logprob == pytest.approx(ranked[0], abs=1e-4)  # greedy: the chosen token is the best


def test_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=SERVED_MODEL_NAME,
        messages=[{"role": "user", "content": "Name the capital of France and its country as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
        temperature=0.0,
        max_tokens=64,
    )
    value = json.loads(reply.choices[0].message.content)
    assert set(value) == {"city", "country"}


@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_call_is_parsed_from_the_real_output(client, stream):
    """tool_choice names the function: a guide makes the demo model write the call, the gateway parses it."""
    kwargs = dict(
        model=SERVED_MODEL_NAME,
        messages=ASK_WEATHER,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0.0,
        max_tokens=64,
    )
    if stream:
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        name, arguments = calls[0].function.name, calls[0].function.arguments
    else:
        reply = client.chat.completions.create(**kwargs)
        call = reply.choices[0].message.tool_calls[0]
        finish, name, arguments = reply.choices[0].finish_reason, call.function.name, call.function.arguments
    assert name == "get_weather" and finish == "tool_calls"
    parsed = json.loads(arguments)
    assert isinstance(parsed["city"], str) and parsed["unit"] in ("celsius", "fahrenheit")
