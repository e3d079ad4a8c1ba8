"""Qwen2.5 tool-call parsing (qwen_openai.tool_calls): whole texts and streams, on the documented format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwen_openai.tool_calls import ToolCallStreamParser, parse_call_json, parse_tool_calls

WEATHER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
TIME = '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>'
DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"


def stream_parse(deltas: list[str]) -> tuple[str, list]:
    parser = ToolCallStreamParser()
    events = [event for delta in deltas for event in parser.feed(delta)] + parser.finish()
    return "".join(e for e in events if isinstance(e, str)), [e for e in events if not isinstance(e, str)]


def test_one_call():
    parsed = parse_tool_calls(WEATHER)
    assert parsed.content is None
    assert [(c.name, json.loads(c.arguments)) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert parsed.tool_calls[0].id.startswith("call_")


def test_several_calls_keep_their_order_and_ids_differ():
    parsed = parse_tool_calls(WEATHER + "\n" + TIME)
    assert [c.name for c in parsed.tool_calls] == ["get_weather", "get_time"]
    assert parsed.tool_calls[0].id != parsed.tool_calls[1].id
    assert parsed.content is None


def test_text_around_calls_is_the_content():
    parsed = parse_tool_calls("Let me check the weather.\n" + WEATHER + "\nOne moment.")
    assert parsed.content == "Let me check the weather.\n\nOne moment."
    assert [c.name for c in parsed.tool_calls] == ["get_weather"]


def test_plain_text_is_untouched():
    text = "The capital of France is Paris. Use <b>bold</b> or a < sign freely."
    assert parse_tool_calls(text).content == text
    assert parse_tool_calls(text).tool_calls == []


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}',  # unbalanced
        '{"arguments": {"city": "Paris"}}',  # no name
        '{"name": "get_weather", "arguments": [1, 2]}',  # arguments not an object
        "get_weather(city='Paris')",  # not JSON at all
    ],
)
def test_malformed_call_stays_in_the_content_verbatim(body):
    text = f"<tool_call>\n{body}\n</tool_call>"
    parsed = parse_tool_calls("Sure. " + text + "\n" + TIME)
    assert text in parsed.content
    assert [c.name for c in parsed.tool_calls] == ["get_time"]


def test_unclosed_call_at_the_end_is_content():
    text = 'Checking. <tool_call>\n{"name": "get_weather", "argu'
    parsed = parse_tool_calls(text)
    assert parsed.tool_calls == []
    assert parsed.content == text


def test_arguments_given_as_a_json_string_are_accepted():
    call = parse_call_json('{"name": "f", "arguments": "{\\"x\\": 1}"}')
    assert call is not None and json.loads(call.arguments) == {"x": 1}


def test_stream_one_character_at_a_time_matches_the_whole_text():
    text = "Let me look.\n" + WEATHER + "\n" + TIME
    content, calls = stream_parse(list(text))
    assert content == "Let me look.\n"
    assert [c.name for c in calls] == ["get_weather", "get_time"]


def test_stream_holds_back_only_what_may_start_a_tag():
    parser = ToolCallStreamParser()
    assert parser.feed("a < b and <tool") == ["a < b and "]
    assert parser.feed("_c") == []  # "<tool_c" may still become "<tool_call>"
    assert parser.feed("hat> is not a tag") == ["<tool_chat> is not a tag"]


def test_stream_of_real_tokens_from_the_demo_tokenizer():
    """The chunks a real tokenizer produces: decode the tokens of Qwen's tool-call text one by one, the way the
    engine's incremental detokenizer streams them, and feed the deltas to the parser."""
    transformers = pytest.importorskip("transformers")
    if not (DEMO_MODEL / "tokenizer.json").exists() and not (DEMO_MODEL / "tokenizer_config.json").exists():
        pytest.fail(f"demo model missing at {DEMO_MODEL}: run `make model`")
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEMO_MODEL)
    text = "I will call two tools.\n" + WEATHER + "\n" + TIME
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas, previous = [], ""
    for end in range(1, len(ids) + 1):
        decoded = tokenizer.decode(ids[:end])
        deltas.append(decoded[len(previous) :])
        previous = decoded
    assert len(deltas) > 20  # really token by token
    content, calls = stream_parse(deltas)
    assert content == "I will call two tools.\n"
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"timezone": "Europe/Paris"}),
    ]
