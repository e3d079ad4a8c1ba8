"""Turn the input tensors of one Triton request into engine arguments, rejecting bad input by field name.

Works on plain numpy arrays (name -> array) so it needs neither Triton nor the engine to be tested. Triton
already enforces the dtypes declared in config.pbtxt; the checks here catch what it cannot: a missing or
doubled prompt, values that are not one scalar, text that is not UTF-8, prompts far too long to fit the
model. Chat messages stay a JSON string: the engine's tokenizer checks them.

The names are ours plus those of Triton's TensorRT-LLM ensemble (`min_length`, `random_seed`, `end_id`,
`stop_words`, `beam_width`, `num_return_sequences`, `return_log_probs`, ...), so its clients work unchanged.
An input that is not declared never gets here (Triton refuses it); a key of an HTTP /generate body that is
not an input arrives as a request parameter, and `refuse_request_parameters` turns it into a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qwen_triton.engine.sampling_params import SamplingParams
from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.guide import GuidedDecoding
from qwen_triton.tokenizer.prompt import parse_json_field

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
    "min_tokens": ("min_tokens", int),
    "min_length": ("min_tokens", int),  # TensorRT-LLM's older name
    "random_seed": ("seed", int),  # TensorRT-LLM's older name (UINT64)
    "return_log_probs": ("logprobs", bool),  # TensorRT-LLM's name
    "top_logprobs": ("top_logprobs", int),
    "num_return_sequences": ("n", int),  # TensorRT-LLM's name; OpenAI's `n`
}
# Structured output, TensorRT-LLM's names: the guide's type (json, json_schema, regex, ebnf_grammar) and text.
GUIDE_INPUTS = ("guided_decoding_guide_type", "guided_decoding_guide")
# Inputs accepted for the dialects' sake that change no sampling: pad_id only pads batches we never pad.
IGNORED_INPUTS = ("pad_id",)
OTHER_INPUTS = (
    "stream",
    "stop",
    "stop_words",
    "stop_token_ids",
    "end_id",
    "bad_words",
    "logit_bias",
    "tools",
    "beam_width",
    "exclude_input_in_output",
    *GUIDE_INPUTS,
)
# Read by the adapter itself (serving/triton_model.py), not by this parser: the request's deadline.
ADAPTER_INPUTS = ("timeout",)
# Every input name of the `qwen` model (config.pbtxt declares exactly these; a test keeps them in step).
INPUT_NAMES = (*PROMPT_INPUTS, *SCALAR_INPUTS, *OTHER_INPUTS, *IGNORED_INPUTS, *ADAPTER_INPUTS)
MAX_JSON_INPUT_BYTES = 2**20  # logit_bias and tools: far beyond any real use


@dataclass
class ParsedRequest:
    prompt: dict  # exactly one of prompt= / messages= / prompt_token_ids= for engine.generate
    params: SamplingParams
    stream: bool
    tools: str | None = None  # JSON list of OpenAI tools, for the chat template
    exclude_input_in_output: bool = True  # False: a non-streaming text_output starts with the prompt
    sent_as: dict[str, str] = field(default_factory=dict)  # SamplingParams field -> the input name the client used


def parse_request(inputs: dict[str, np.ndarray], max_model_len: int, defaults: dict | None = None) -> ParsedRequest:
    """`inputs` maps the Triton input names present in the request to their arrays (batch dim included).
    `defaults` (SamplingParams fields, e.g. the checkpoint's generation_config) fill what the request omits."""
    arrays = {name: _single_item(name, array) for name, array in inputs.items()}
    prompt = _parse_prompt(arrays, max_prompt_bytes=max_model_len * MAX_BYTES_PER_TOKEN)
    params, sent_as = _scalar_params(arrays)
    params.update(_list_params(arrays))
    guided = _guided_decoding(arrays)
    if guided is not None:
        params["guided_decoding"] = guided
    if "logit_bias" in arrays:
        params["logit_bias"] = _logit_bias(arrays["logit_bias"])
    if "beam_width" in arrays and _scalar("beam_width", arrays["beam_width"], int) != 1:
        raise InvalidRequestError(
            "beam_width", "beam search is not supported: send 1 or leave it out (num_return_sequences samples several)"
        )
    tools = None
    if "tools" in arrays:
        if "messages" not in arrays:
            raise InvalidRequestError("tools", "tools are rendered by the chat template: send messages with them")
        tools = _json_text("tools", arrays["tools"])
    return ParsedRequest(
        prompt=prompt,
        params=SamplingParams(**{**(defaults or {}), **params}),
        stream=_flag(arrays, "stream", False),
        tools=tools,
        exclude_input_in_output=_flag(arrays, "exclude_input_in_output", True),
        sent_as=sent_as,
    )


def refuse_request_parameters(parameters: dict) -> None:
    """Request parameters (gRPC `parameters`, unknown keys of an HTTP /generate body) carry nothing this
    model reads: refuse them by name instead of dropping them (a typo must not pass as accepted)."""
    if parameters:
        names = ", ".join(sorted(parameters))
        raise InvalidRequestError(
            sorted(parameters)[0], f"unknown parameter(s) {names}; the inputs are: {', '.join(INPUT_NAMES)}"
        )


def _scalar_params(arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, str]]:
    """(SamplingParams values, the input name each came in as): an alias and its name together is an error."""
    params: dict = {}
    sent_as: dict[str, str] = {}
    for name, (param, kind) in SCALAR_INPUTS.items():
        if name in arrays:
            if param in params:
                raise InvalidRequestError(name, f"send only one of {sent_as[param]} and {name} (the same setting)")
            params[param] = _scalar(name, arrays[name], kind)
            sent_as[param] = name
    return params, sent_as


def _list_params(arrays: dict[str, np.ndarray]) -> dict:
    """stop / stop_words, stop_token_ids (+ end_id), bad_words."""
    params: dict = {}
    if "stop" in arrays and "stop_words" in arrays:
        raise InvalidRequestError("stop_words", "send only one of stop and stop_words (the same setting)")
    for name in ("stop", "stop_words"):
        if name in arrays:
            params["stop"] = [_utf8(name, item) for item in arrays[name].reshape(-1)]
    stop_ids = _int_list("stop_token_ids", arrays["stop_token_ids"]) if "stop_token_ids" in arrays else []
    if "end_id" in arrays:
        stop_ids.append(_scalar("end_id", arrays["end_id"], int))
    if stop_ids:
        params["stop_token_ids"] = stop_ids
    if "bad_words" in arrays:
        params["bad_words"] = [_utf8("bad_words", item) for item in arrays["bad_words"].reshape(-1)]
    return params


def _guided_decoding(arrays: dict[str, np.ndarray]) -> GuidedDecoding | None:
    guide_type, guide = (_json_text(name, arrays[name]) if name in arrays else None for name in GUIDE_INPUTS)
    return GuidedDecoding.from_trtllm(guide_type, guide)


def _flag(arrays: dict[str, np.ndarray], name: str, default: bool) -> bool:
    return _scalar(name, arrays[name], bool) if name in arrays else default


def _json_text(name: str, array: np.ndarray) -> str:
    raw = _one_bytes_item(name, array)
    if len(raw) > MAX_JSON_INPUT_BYTES:
        raise InvalidRequestError(name, f"is {len(raw)} bytes, over the limit of {MAX_JSON_INPUT_BYTES}")
    return _utf8(name, raw)


def _logit_bias(array: np.ndarray) -> dict[int, float]:
    """A JSON object of token id (a decimal string, as JSON keys are) -> bias."""
    value = parse_json_field("logit_bias", _json_text("logit_bias", array))
    if not isinstance(value, dict):
        raise InvalidRequestError("logit_bias", 'expected a JSON object {"token id": bias}')
    bias = {}
    for key, number in value.items():
        if not str(key).isdigit():
            raise InvalidRequestError("logit_bias", f"key {key!r} is not a token id (a non-negative integer)")
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise InvalidRequestError("logit_bias", f"the bias of token {key} must be a number, got {number!r}")
        bias[int(key)] = float(number)
    return bias


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


def _input_for_engine_field() -> dict[str, str]:
    """Engine-side names that differ from the Triton input a client sets; of aliases, the first listed."""
    renames = {"prompt": "text_input", "prompt_token_ids": "input_ids"}
    for name, (param, _kind) in SCALAR_INPUTS.items():
        if param not in SCALAR_INPUTS:
            renames.setdefault(param, name)
    return renames


_INPUT_FOR_ENGINE_FIELD = _input_for_engine_field()


def client_error_message(error: InvalidRequestError, sent_as: dict[str, str] | None = None) -> str:
    """The engine's message, with its field renamed to the Triton input the client actually sent."""
    name = (sent_as or {}).get(error.field) or _INPUT_FOR_ENGINE_FIELD.get(error.field, error.field)
    detail = str(error).removeprefix(f"{error.field}: ")
    return f"{name}: {detail}"
