"""`build_inputs`: a prompt (text, token ids or chat messages) plus parameters -> Triton input values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidParameterError
from .params import GenerationParams

Prompt = str | Sequence[int]
Messages = Sequence[Mapping[str, str]]


def resolve_params(params: GenerationParams | None, overrides: dict[str, Any]) -> GenerationParams:
    """`params` (or the defaults) with keyword overrides applied, all validated."""
    base = params if params is not None else GenerationParams()
    return base.replace(**overrides) if overrides else base


def prompt_inputs(prompt: Prompt) -> dict[str, Any]:
    """A text prompt goes as `text_input`, a list of token ids as `input_ids`."""
    if isinstance(prompt, str):
        return {"text_input": prompt}
    if isinstance(prompt, (bytes, bytearray)):
        raise InvalidParameterError("prompt", "must be a str (decode bytes first) or a list of token ids")
    try:
        ids = list(prompt)
    except TypeError:
        raise InvalidParameterError(
            "prompt", f"must be a str or a list of token ids, got {type(prompt).__name__}"
        ) from None
    if not ids:
        raise InvalidParameterError("input_ids", "must hold at least one token id")
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidParameterError("input_ids", f"every token id must be an int >= 0, got {token!r}")
    return {"input_ids": ids}


def messages_inputs(messages: Messages) -> dict[str, Any]:
    """Chat messages travel as one JSON string; the server renders them with the chat template."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidParameterError("messages", 'must be a non-empty list of {"role": ..., "content": ...}')
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidParameterError("messages", f"item {i} must be a dict, got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise InvalidParameterError("messages", f"item {i} needs a string '{key}'")
    return {"messages": json.dumps([dict(m) for m in messages], ensure_ascii=False)}


def build_inputs(prompt_part: dict[str, Any], params: GenerationParams, stream: bool) -> dict[str, Any]:
    """Every input to send, by Triton input name."""
    return {**prompt_part, **params.to_inputs(), "stream": stream}
