"""OpenAI request -> the `qwen` model's Triton inputs (one dict per choice: `n` fans out n requests).

Inputs the model does not declare are never sent: a feature that needs one (tools, logit_bias,
top_logprobs, response_format) gets a 400 naming the OpenAI field and the missing input, so a client learns
that this server cannot honour it instead of getting an answer that ignored it.

Forced tool calls (tool_choice "required" or a named function) are a json_schema guide over Qwen's tool-call
object `{"name": ..., "arguments": {...}}`, without the `<tool_call>` tags: a JSON-schema guide constrains
JSON only, and the gateway, which forced the call, parses the whole output as that object. The arguments
follow the tool's own `parameters` schema, so a forced call always parses and always fits its tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    ToolMessage,
    content_text,
    invalid_request,
)

GUIDE_TYPE_INPUT = "guided_decoding_guide_type"
GUIDE_INPUT = "guided_decoding_guide"


@dataclass
class ChatPlan:
    """What the gateway does with a chat request besides sending it."""

    parse_tool_calls: bool  # tools offered and the model may call them: look for <tool_call> blocks
    forced_tool: bool  # the whole output is one tool-call object (a guide made it so)


def chat_inputs(request: ChatCompletionRequest, accepts) -> tuple[list[dict[str, Any]], ChatPlan]:
    """`accepts(name)` says whether the model declares an input."""
    inputs: dict[str, Any] = {"messages": json.dumps(template_messages(request), ensure_ascii=False)}
    inputs.update(sampling_inputs(request, request.completion_limit, accepts))
    if request.logprobs:
        inputs["return_logprobs"] = True
        if request.top_logprobs:
            _require(accepts, "top_logprobs", "top_logprobs")
            inputs["top_logprobs"] = request.top_logprobs
    tools_offered = bool(request.tools) and request.tool_choice != "none"
    if tools_offered:
        _require(accepts, "tools", "tools")
        inputs["tools"] = json.dumps([tool.model_dump(exclude_none=True) for tool in request.tools], ensure_ascii=False)
    forced = _forced_tool_schema(request)
    guide = forced or _response_format_guide(request)
    if guide is not None:
        _require(accepts, GUIDE_TYPE_INPUT, "tool_choice" if forced else "response_format")
        inputs[GUIDE_TYPE_INPUT], inputs[GUIDE_INPUT] = guide
    plan = ChatPlan(parse_tool_calls=tools_offered and forced is None, forced_tool=forced is not None)
    return fan_out(inputs, request), plan


def completion_inputs(request: CompletionRequest, accepts) -> list[dict[str, Any]]:
    inputs: dict[str, Any] = {"text_input": request.prompt}
    inputs.update(sampling_inputs(request, request.completion_limit, accepts))
    if request.logprobs is not None:
        inputs["return_logprobs"] = True
        if request.logprobs > 0:
            _require(accepts, "top_logprobs", "logprobs")
            inputs["top_logprobs"] = request.logprobs
    return fan_out(inputs, request)


def sampling_inputs(request: SamplingFields, max_tokens: int | None, accepts) -> dict[str, Any]:
    """The fields both endpoints share. Absent fields stay absent: the model's defaults apply."""
    inputs: dict[str, Any] = {"stream": True}
    scalars = {
        "max_tokens": max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }
    inputs.update({name: value for name, value in scalars.items() if value is not None})
    if request.stop:
        inputs["stop"] = list(request.stop)
    if request.logit_bias:
        _require(accepts, "logit_bias", "logit_bias")
        inputs["logit_bias"] = json.dumps(request.logit_bias)
    return inputs


def fan_out(inputs: dict[str, Any], request: SamplingFields) -> list[dict[str, Any]]:
    """n choices are n requests; with a seed, choice i gets seed + i so they differ yet stay reproducible."""
    choices = []
    for index in range(request.n):
        choice = dict(inputs)
        if request.seed is not None:
            choice["seed"] = _wrap_int64(request.seed + index)
        choices.append(choice)
    return choices


def _wrap_int64(value: int) -> int:
    return (value + 2**63) % 2**64 - 2**63


def template_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as the checkpoint's chat template reads them (Qwen2.5's: tool_calls with object arguments)."""
    messages = []
    for message in request.messages:
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
        # An assistant turn that only called tools has no text; the template skips an empty content.
        item["content"] = content_text(message.content)
        if isinstance(message, AssistantMessage) and message.tool_calls:
            item["tool_calls"] = [
                {
                    "type": "function",
                    "id": call.id,
                    "function": {"name": call.function.name, "arguments": _arguments_object(call.function.arguments)},
                }
                for call in message.tool_calls
            ]
        if isinstance(message, ToolMessage):
            item["tool_call_id"] = message.tool_call_id
        messages.append(item)
    return messages


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        raise invalid_request(
            f"tool call arguments must be a JSON object as text, got {arguments[:80]!r}",
            "messages.tool_calls.function.arguments",
        ) from None


def _forced_tool_schema(request: ChatCompletionRequest) -> tuple[str, str] | None:
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        tools = [tool for tool in request.tools if tool.function.name == choice.function.name]
    elif choice == "required":
        tools = list(request.tools)
    else:
        return None
    shapes = [_tool_call_shape(tool.function.name, tool.function.parameters) for tool in tools]
    schema = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return "json_schema", json.dumps(schema)


def _tool_call_shape(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters or {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _response_format_guide(request: ChatCompletionRequest) -> tuple[str, str] | None:
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return "json_object", ""
    schema = response_format.json_schema.schema_
    return "json_schema", json.dumps(schema if schema is not None else {"type": "object"})


def _require(accepts, input_name: str, param: str) -> None:
    if not accepts(input_name):
        raise invalid_request(
            f"{param}: not supported by this server (its Triton model has no `{input_name}` input); leave {param} out",
            param,
        )
