"""One choice of an answer, built from the model's chunks: its text or tool calls, logprobs, finish reason.

`ChatChoice` and `CompletionChoice` each turn a chunk into the stream delta OpenAI sends for it, and keep
what the whole (non-streaming) answer needs. `merged_chunks` runs the n requests of one answer at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .tool_calls import ParsedToolCall, ToolCallStreamParser, parse_call_json
from .triton_backend import Chunk, TritonBackend

_STREAM_DONE = object()


async def merged_chunks(backend: TritonBackend, choices: list[dict[str, Any]]) -> AsyncIterator[tuple[int, Chunk]]:
    """(choice index, chunk) from all choices' streams as they arrive. The first error ends the answer;
    leaving early (or failing) cancels every choice's stream, and with it the engine requests."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, inputs: dict[str, Any]) -> None:
        try:
            async for chunk in backend.stream(inputs):
                queue.put_nowait((index, chunk))
            queue.put_nowait((index, _STREAM_DONE))
        except Exception as error:  # handed to the consumer, which raises it
            queue.put_nowait((index, error))

    tasks = [asyncio.ensure_future(pump(i, inputs)) for i, inputs in enumerate(choices)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is _STREAM_DONE:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def openai_finish_reason(engine_reason: str | None, called_tools: bool) -> str:
    if engine_reason == "length":
        return "length"
    return "tool_calls" if called_tools else "stop"


class Usage:
    """Tokens of an answer: the prompt once (all choices share it), the completions summed."""

    def __init__(self, n: int):
        self.prompt_tokens = 0
        self.completion_tokens = [0] * n

    def add(self, index: int, chunk: Chunk) -> None:
        self.prompt_tokens = max(self.prompt_tokens, chunk.prompt_tokens)
        self.completion_tokens[index] = max(self.completion_tokens[index], chunk.completion_tokens)

    def openai(self) -> dict[str, int]:
        completion = sum(self.completion_tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


# ---------------------------------------------------------------- logprobs


def token_texts(chunk: Chunk) -> list[str]:
    """The text of each token of a chunk. The model sends text per delta, not per token: a delta of one token
    is that token's text; when deltas merge (a slow reader) the first token carries the delta's text."""
    if not chunk.token_ids:
        return []
    return [chunk.text] + [""] * (len(chunk.token_ids) - 1)


def _alternatives(entry: Any) -> list[tuple[str, float]]:
    """One token's top alternatives, best first, from the model's `top_logprobs` JSON: a list of
    {"id", "token", "logprob"} objects. A token the model sends without its text is named `token_id:<id>`."""
    if not isinstance(entry, list):
        return []
    return [
        (str(item["token"]) if "token" in item else f"token_id:{item.get('id')}", float(item["logprob"]))
        for item in entry
        if isinstance(item, dict) and "logprob" in item
    ]


def chat_logprob_entries(chunk: Chunk) -> list[dict[str, Any]]:
    entries = []
    for i, text in enumerate(token_texts(chunk)):
        top = chunk.top_logprobs[i] if i < len(chunk.top_logprobs) else None
        entries.append(
            {
                "token": text,
                "logprob": chunk.logprobs[i] if i < len(chunk.logprobs) else None,
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
                    for token, logprob in _alternatives(top)
                ],
            }
        )
    return entries


# ---------------------------------------------------------------- chat


class ChatChoice:
    def __init__(self, index: int, parse_tools: bool, forced_tool: bool, logprobs: bool):
        self.index = index
        self._parser = ToolCallStreamParser() if parse_tools else None
        self._forced_tool = forced_tool
        self._want_logprobs = logprobs
        self.text: list[str] = []
        self.tool_calls: list[ParsedToolCall] = []
        self.logprobs: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.started = False

    def add(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The stream deltas for this chunk (possibly none: text held back to see if a tool call starts)."""
        events = self._text_events(chunk.text)
        if chunk.is_final:
            events += self._final_events()
        deltas = [self._delta(event) for event in events]
        logprobs = chat_logprob_entries(chunk) if self._want_logprobs else []
        self.logprobs += logprobs
        if logprobs and not deltas:
            deltas = [{}]  # the tokens were held back, their logprobs are not
        if chunk.is_final:
            self.finish_reason = openai_finish_reason(chunk.finish_reason, bool(self.tool_calls))
        return [
            self._choice_delta(delta, logprobs if i == 0 else [], chunk.is_final and i == len(deltas) - 1)
            for i, delta in enumerate(deltas)
        ] or ([self._choice_delta({}, [], True)] if chunk.is_final else [])

    def _text_events(self, text: str) -> list[str | ParsedToolCall]:
        if self._forced_tool:
            self.text.append(text)  # one JSON object, parsed whole at the end
            return []
        return self._parser.feed(text) if self._parser else ([text] if text else [])

    def _final_events(self) -> list[str | ParsedToolCall]:
        if self._forced_tool:
            raw = "".join(self.text)
            self.text = []
            call = parse_call_json(raw.strip())
            return [call] if call else [raw]
        return self._parser.finish() if self._parser else []

    def _delta(self, event: str | ParsedToolCall) -> dict[str, Any]:
        if isinstance(event, ParsedToolCall):
            self.tool_calls.append(event)
            return {"tool_calls": [event.openai(index=len(self.tool_calls) - 1)]}
        self.text.append(event)
        return {"content": event}

    def _choice_delta(self, delta: dict[str, Any], logprobs: list, final: bool) -> dict[str, Any]:
        if not self.started:
            delta = {"role": "assistant", **delta}
            self.started = True
        return {
            "index": self.index,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs else None,
            "finish_reason": self.finish_reason if final else None,
        }

    def message(self) -> dict[str, Any]:
        content = "".join(self.text)
        if self.tool_calls:
            content = content.strip()
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if self.tool_calls else "")}
        if self.tool_calls:
            message["tool_calls"] = [call.openai() for call in self.tool_calls]
        return {
            "index": self.index,
            "message": message,
            "logprobs": {"content": self.logprobs} if self._want_logprobs else None,
            "finish_reason": self.finish_reason,
        }


# ---------------------------------------------------------------- completions


class CompletionChoice:
    def __init__(self, index: int, logprobs: bool):
        self.index = index
        self._want_logprobs = logprobs
        self.text: list[str] = []
        self.offset = 0
        self.logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        self.finish_reason: str | None = None

    def add(self, chunk: Chunk) -> dict[str, Any]:
        self.text.append(chunk.text)
        logprobs = self._logprobs(chunk) if self._want_logprobs else None
        if logprobs:
            for key, values in logprobs.items():
                self.logprobs[key] += values
        if chunk.is_final:
            self.finish_reason = openai_finish_reason(chunk.finish_reason, False)
        return {"index": self.index, "text": chunk.text, "logprobs": logprobs, "finish_reason": self.finish_reason}

    def _logprobs(self, chunk: Chunk) -> dict[str, list]:
        part = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for i, text in enumerate(token_texts(chunk)):
            part["tokens"].append(text)
            part["token_logprobs"].append(chunk.logprobs[i] if i < len(chunk.logprobs) else None)
            top = chunk.top_logprobs[i] if i < len(chunk.top_logprobs) else None
            part["top_logprobs"].append(dict(_alternatives(top)) or None)
            part["text_offset"].append(self.offset)
            self.offset += len(text)
        return part

    def whole(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": "".join(self.text),
            "logprobs": self.logprobs if self._want_logprobs else None,
            "finish_reason": self.finish_reason,
        }
