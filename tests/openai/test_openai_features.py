"""OpenAI features that ride on the `qwen` model's newer inputs: tools, logit_bias, top_logprobs, and the
guided decoding behind response_format. Real server, real demo model, OpenAI SDK.

The demo model's chat template renders `tools` as Qwen2.5's does (models/demo_template.py), and a forced
tool (`tool_choice` naming one) constrains the output to that tool's call object, so even the 135M demo
model answers with a parsed call; free-choice (`auto`) parsing is tested on the real token stream in
test_openai_tool_calls.py."""

from __future__ import annotations

import asyncio
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


FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}
FORCED_CALL = dict(
    model=SERVED_MODEL_NAME,
    messages=ASK_WEATHER,
    tools=[WEATHER_TOOL],
    tool_choice=FORCE_WEATHER,
    temperature=0.0,
    max_tokens=64,
)


def assert_weather_call(call) -> None:
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    assert isinstance(arguments["city"], str)


def test_forced_tool_call_sync(client):
    reply = client.chat.completions.create(**FORCED_CALL)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    assert_weather_call(choice.message.tool_calls[0])
    assert reply.usage.prompt_tokens > 60 and reply.usage.completion_tokens > 0  # the tool list is in the prompt


def test_forced_tool_call_async(gateway):
    async def ask():
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=180) as sdk:
            return await sdk.chat.completions.create(**FORCED_CALL)

    reply = asyncio.run(ask())
    assert reply.choices[0].finish_reason == "tool_calls"
    assert_weather_call(reply.choices[0].message.tool_calls[0])


def test_forced_tool_call_streams_as_deltas(client):
    stream = client.chat.completions.create(**FORCED_CALL, stream=True, stream_options={"include_usage": True})
    name, arguments, finish, usage = None, "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                name = call.function.name or name
                arguments += call.function.arguments or ""
    assert finish == "tool_calls" and name == "get_weather" and usage is not None
    parsed = json.loads(arguments)
    assert set(parsed) == {"city", "unit"}
