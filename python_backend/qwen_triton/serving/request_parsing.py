"""Turn the input tensors of one Triton request into engine arguments, rejecting bad input by field name.

Works on plain numpy arrays (name -> array) so it needs neither Triton nor the engine to be tested. Triton
already enforces the dtypes declared in config.pbtxt; the checks here catch what it cannot: a missing or
doubled prompt, values that are not one scalar, text that is not UTF-8, prompts far too long to fit the
model. Chat messages stay a JSON string: the engine's tokenizer checks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError

PROMPT_INPUTS = ("text_input", "messages", "input_ids")
# A token rarely spans more than a few bytes; this generous ratio lets the adapter refuse a prompt that can
# never fit the model before spending time tokenizing megabytes of text.
MAX_BYTES_PER_TOKEN = 32

# Triton input name -> (SamplingParams field, kind of scalar)
SCALAR_INPUTS = {
    "max_tokens": ("max_tokens", int),
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "repetition_penalty": ("repetition_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
    "ignore_eos": ("ignore_eos", bool),
    "return_logprobs": ("logprobs", bool),
    "dynamic_temperature": ("dynamic_temperature", bool),
    "min_temperature": ("min_temperature", float),
    "max_temperature": ("max_temperature", float),
}


@dataclass
class ParsedRequest:
    prompt: dict  # exactly one of prompt= / messages= / prompt_token_ids= for engine.generate
    params: SamplingParams
    stream: bool


def parse_request(inputs: dict[str, np.ndarray], max_model_len: int) -> ParsedRequest:
    """`inputs` maps the Triton input names present in the request to their arrays (batch dim included)."""
    arrays = {name: _single_item(name, array) for name, array in inputs.items()}
    prompt = _parse_prompt(arrays, max_prompt_bytes=max_model_len * MAX_BYTES_PER_TOKEN)
    params = {}
    for name, (field, kind) in SCALAR_INPUTS.items():
        if name in arrays:
            params[field] = _scalar(name, arrays[name], kind)
    if "stop" in arrays:
        params["stop"] = [_utf8("stop", item) for item in arrays["stop"].reshape(-1)]
    if "stop_token_ids" in arrays:
        params["stop_token_ids"] = _int_list("stop_token_ids", arrays["stop_token_ids"])
    stream = _scalar("stream", arrays["stream"], bool) if "stream" in arrays else False
    return ParsedRequest(prompt=prompt, params=SamplingParams(**params), stream=stream)


def _single_item(name: str, array: np.ndarray) -> np.ndarray:
    """Drop the batch dimension: one Triton request carries one prompt."""
    if array.ndim == 0 or array.shape[0] != 1:
        raise InvalidRequestError(
            name, f"expected a batch of exactly one item, got shape {list(array.shape)}; send one request per prompt"
        )
    return array[0]


def _parse_prompt(arrays: dict[str, np.ndarray], max_prompt_bytes: int) -> dict:
    given = [name for name in PROMPT_INPUTS if name in arrays]
    if not given:
        raise InvalidRequestError(
            "text_input",
            "missing prompt: send one of text_input (text), messages (JSON chat list) or input_ids (token ids)",
        )
    if len(given) > 1:
        raise InvalidRequestError(given[1], f"send only one of {', '.join(PROMPT_INPUTS)}; got {', '.join(given)}")
    name = given[0]
    if name == "input_ids":
        ids = _int_list(name, arrays[name])
        if not ids:
            raise InvalidRequestError(name, "is empty; send at least one token id")
        if min(ids) < 0:
            raise InvalidRequestError(name, f"token ids must be >= 0, got {min(ids)}")
        return {"prompt_token_ids": ids}
    raw = _one_bytes_item(name, arrays[name])
    if len(raw) > max_prompt_bytes:
        raise InvalidRequestError(
            name,
            f"is {len(raw)} bytes, more than can fit the model length "
            f"({max_prompt_bytes} bytes at most); shorten the prompt",
        )
    text = _utf8(name, raw)
    if name == "text_input":
        if not text:
            raise InvalidRequestError(name, "is empty; send a non-empty prompt")
        return {"prompt": text}
    # The engine's tokenizer parses and checks the JSON chat list (one place for the chat rules).
    return {"messages": text}


def _one_bytes_item(name: str, array: np.ndarray) -> bytes:
    if array.size != 1:
        raise InvalidRequestError(name, f"expected one string, got {array.size}")
    item = array.reshape(-1)[0]
    if isinstance(item, str):
        return item.encode()
    if not isinstance(item, bytes):
        raise InvalidRequestError(name, f"expected BYTES, got {type(item).__name__}")
    return item


def _utf8(name: str, raw) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequestError(
            name, f"is not valid UTF-8 (bad byte at offset {error.start}); send UTF-8 text, or token ids in input_ids"
        ) from None


def _scalar(name: str, array: np.ndarray, kind: type):
    if array.size != 1:
        raise InvalidRequestError(name, f"expected one value, got {array.size}")
    value = array.reshape(-1)[0]
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidRequestError(name, f"expected BOOL, got {array.dtype}")
        return bool(value)
    if kind is int:
        if not np.issubdtype(array.dtype, np.integer):
            raise InvalidRequestError(name, f"expected an integer type, got {array.dtype}")
        return int(value)
    if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
        raise InvalidRequestError(name, f"expected a number, got {array.dtype}")
    return float(value)


def _int_list(name: str, array: np.ndarray) -> list[int]:
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidRequestError(name, f"expected INT64 token ids, got {array.dtype}")
    return [int(v) for v in array.reshape(-1)]


# Engine-side names that differ from the Triton input a client sets.
_INPUT_FOR_ENGINE_FIELD = {
    "prompt": "text_input",
    "prompt_token_ids": "input_ids",
    **{field: name for name, (field, _kind) in SCALAR_INPUTS.items() if field != name},
}


def client_error_message(error: InvalidRequestError) -> str:
    """The engine's message, with its field renamed to the Triton input the client actually sent."""
    name = _INPUT_FOR_ENGINE_FIELD.get(error.field, error.field)
    detail = str(error).removeprefix(f"{error.field}: ")
    return f"{name}: {detail}"
