"""Qwen2.5 tool calls in generated text -> OpenAI `tool_calls`.

Qwen2.5's chat template tells the model to answer a tool request with one block per call:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Rules (the same for a whole text and for a stream):
- each well-formed block becomes a call; its arguments travel as JSON text, as OpenAI sends them;
- a block whose body is not a JSON object with a string `name` stays in the content verbatim, so nothing
  the model wrote is lost and the client sees why no call came;
- text around the blocks is the content; whitespace between blocks is layout, not content;
- an unclosed block at the end (the model hit max_tokens) is content too.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: str  # a JSON object as text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def openai(self, index: int | None = None) -> dict:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def parse_call_json(body: str) -> ParsedToolCall | None:
    """`{"name": str, "arguments": object}` (arguments may also be a JSON object encoded as a string)."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedToolCall(name=value["name"], arguments=json.dumps(arguments, ensure_ascii=False))


@dataclass
class ParsedOutput:
    content: str | None
    tool_calls: list[ParsedToolCall]


def parse_tool_calls(text: str) -> ParsedOutput:
    """The whole generated text at once (non-streaming answers)."""
    parser = ToolCallStreamParser()
    events = parser.feed(text) + parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls = [e for e in events if isinstance(e, ParsedToolCall)]
    if calls:
        content = content.strip()
    return ParsedOutput(content=content or (None if calls else ""), tool_calls=calls)


class ToolCallStreamParser:
    """Feed text deltas as they arrive; get back content text (str) and complete calls (ParsedToolCall).

    Text that might be the start of `<tool_call>` is held back until the next delta decides; a call is
    emitted whole once its closing tag arrives (its arguments in one delta, which OpenAI's stream allows).
    """

    def __init__(self):
        self._buffer = ""
        self._in_call = False
        self.calls_seen = 0

    def feed(self, delta: str) -> list[str | ParsedToolCall]:
        self._buffer += delta
        events: list[str | ParsedToolCall] = []
        while True:
            event = self._next_call_body() if self._in_call else self._next_text()
            if event is None:
                return events
            if event != "":
                events.append(event)

    def finish(self) -> list[str | ParsedToolCall]:
        """End of the stream: whatever is held back (a partial tag, an unclosed block) is content."""
        rest = (OPEN_TAG + self._buffer) if self._in_call else self._buffer
        self._buffer, self._in_call = "", False
        return [rest] if rest.strip() or (rest and not self.calls_seen) else []

    def _next_text(self) -> str | None:
        start = self._buffer.find(OPEN_TAG)
        if start >= 0:
            text, self._buffer, self._in_call = self._buffer[:start], self._buffer[start + len(OPEN_TAG) :], True
            return self._layout_filtered(text)
        keep = _partial_tag_suffix(self._buffer, OPEN_TAG)
        text = self._buffer[: len(self._buffer) - keep]
        if not text:
            return None
        self._buffer = self._buffer[len(text) :]
        return self._layout_filtered(text)

    def _next_call_body(self) -> str | ParsedToolCall | None:
        end = self._buffer.find(CLOSE_TAG)
        if end < 0:
            return None
        body, self._buffer, self._in_call = self._buffer[:end], self._buffer[end + len(CLOSE_TAG) :], False
        call = parse_call_json(body.strip())
        if call is None:
            return OPEN_TAG + body + CLOSE_TAG  # malformed: the client sees exactly what the model wrote
        self.calls_seen += 1
        return call

    def _layout_filtered(self, text: str) -> str:
        # Newlines between (or after) blocks are the template's layout.
        return "" if self.calls_seen and not text.strip() else text


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0
