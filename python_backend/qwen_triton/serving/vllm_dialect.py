"""The tensors of Triton's vLLM backend, translated to and from the `qwen` model's.

vLLM-backend clients send `[1]`-shaped tensors to a model with no batch dimension (`max_batch_size: 0`), the
sampling settings as one JSON string `sampling_parameters`, and read `text_output`, `finish_reason`,
`cumulative_logprob`, `logprobs`, `num_input_tokens`, `num_output_tokens`. The `qwen_vllm` model
(vllm_model.py) forwards each request to `qwen`, which holds the one engine, with the inputs built here.

No Triton import: everything is numpy arrays by tensor name, checked here by field, so it is unit-tested.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from qwen_triton.errors import InvalidRequestError
from qwen_triton.structured.guide import GuidedDecoding, choice_regex
from qwen_triton.tokenizer.prompt import parse_json_field

RETURN_FLAGS = (
    "return_finish_reason",
    "return_cumulative_logprob",
    "return_logprobs",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
INPUT_NAMES = ("text_input", "stream", "sampling_parameters", "exclude_input_in_output", *RETURN_FLAGS)
MAX_SAMPLING_PARAMETERS_BYTES = 2**20

# sampling_parameters key -> (qwen input, numpy dtype of a [1, 1] tensor; None: a list of strings)
SCALAR_KEYS = {
    "max_tokens": ("max_tokens", np.int32),
    "temperature": ("temperature", np.float32),
    "top_p": ("top_p", np.float32),
    "top_k": ("top_k", np.int32),
    "min_p": ("min_p", np.float32),
    "seed": ("seed", np.int64),
    "presence_penalty": ("presence_penalty", np.float32),
    "frequency_penalty": ("frequency_penalty", np.float32),
    "repetition_penalty": ("repetition_penalty", np.float32),
    "min_tokens": ("min_tokens", np.int32),
    "n": ("num_return_sequences", np.int32),
    "ignore_eos": ("ignore_eos", np.bool_),
}
LIST_KEYS = {"stop": "stop", "bad_words": "bad_words"}
OTHER_KEYS = ("logprobs", "logit_bias", "stop_token_ids", "structured_outputs")
SAMPLING_KEYS = (*SCALAR_KEYS, *LIST_KEYS, *OTHER_KEYS)
# Our guide kinds -> the TensorRT-LLM guide types `qwen` reads (guided_decoding_guide_type). TensorRT-LLM has
# no choice type: a choice list travels as the regex the engine compiles it to (structured/guide.py).
GUIDE_TYPE_OF_KIND = {
    "json_schema": "json_schema",
    "json_object": "json",
    "regex": "regex",
    "ebnf_grammar": "ebnf_grammar",
    "choice": "regex",
}
INT_RANGES = {np.int32: (-(2**31), 2**31 - 1), np.int64: (-(2**63), 2**63 - 1)}


@dataclass
class VllmRequest:
    qwen_inputs: dict[str, np.ndarray]  # by `qwen` input name, each [1, ...] (batch dimension of 1)
    stream: bool
    n: int
    returns: set[str]  # the RETURN_FLAGS set to true
    top_logprobs: int  # vLLM's `logprobs`: alternatives per token


def translate_request(arrays: dict[str, np.ndarray]) -> VllmRequest:
    """`arrays`: the vLLM-backend inputs present, each shaped [1] (no batch dimension)."""
    flags = {
        name: _flag(name, arrays[name])
        for name in (*RETURN_FLAGS, "stream", "exclude_input_in_output")
        if name in arrays
    }
    if "text_input" not in arrays:
        raise InvalidRequestError("text_input", "missing prompt: send text_input")
    qwen = {"text_input": arrays["text_input"].reshape(1, 1)}
    stream = flags.get("stream", False)
    qwen["stream"] = np.array([[stream]], dtype=np.bool_)
    # vLLM's default echoes the prompt in front of a non-streamed text; a stream never carries it.
    qwen["exclude_input_in_output"] = np.array([[flags.get("exclude_input_in_output", False)]], dtype=np.bool_)
    sampling = _sampling_parameters(arrays.get("sampling_parameters"))
    qwen.update(_sampling_inputs(sampling))
    top_logprobs = _logprobs_count(sampling.get("logprobs"))
    returns = {name for name in RETURN_FLAGS if flags.get(name)}
    if top_logprobs or returns & {"return_logprobs", "return_cumulative_logprob"}:
        qwen["return_logprobs"] = np.array([[True]], dtype=np.bool_)
    if top_logprobs:
        qwen["top_logprobs"] = np.array([[top_logprobs]], dtype=np.int32)
    n = int(qwen["num_return_sequences"][0, 0]) if "num_return_sequences" in qwen else 1
    return VllmRequest(qwen, stream, n, returns, top_logprobs)


def _flag(name: str, array: np.ndarray) -> bool:
    if array.size != 1 or array.dtype != np.bool_:
        raise InvalidRequestError(name, f"expected one BOOL, got {array.dtype} of shape {list(array.shape)}")
    return bool(array.reshape(-1)[0])


def _sampling_parameters(array: np.ndarray | None) -> dict:
    if array is None:
        return {}
    if array.size != 1:
        raise InvalidRequestError("sampling_parameters", f"expected one JSON string, got {array.size} items")
    raw = array.reshape(-1)[0]
    raw = raw if isinstance(raw, bytes) else str(raw).encode()
    if len(raw) > MAX_SAMPLING_PARAMETERS_BYTES:
        raise InvalidRequestError("sampling_parameters", f"over {MAX_SAMPLING_PARAMETERS_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("sampling_parameters", "is not valid UTF-8") from None
    value = parse_json_field("sampling_parameters", text)
    if not isinstance(value, dict):
        raise InvalidRequestError("sampling_parameters", "expected a JSON object of sampling settings")
    unknown = sorted(key for key in value if key not in SAMPLING_KEYS)
    if unknown:
        raise InvalidRequestError(
            f"sampling_parameters.{unknown[0]}",
            f"unknown sampling parameter(s) {', '.join(unknown)}; known: {', '.join(SAMPLING_KEYS)}",
        )
    return value


def _sampling_inputs(sampling: dict) -> dict[str, np.ndarray]:
    """The qwen inputs for the sampling settings; None values mean "not set" (vLLM's JSON allows them)."""
    inputs: dict[str, np.ndarray] = {}
    for key, value in sampling.items():
        if value is None:
            continue
        field = f"sampling_parameters.{key}"
        if key in SCALAR_KEYS:
            name, dtype = SCALAR_KEYS[key]
            if key == "top_k" and value == -1:
                value = 0  # vLLM's "off"
            inputs[name] = np.array([[_typed(field, value, dtype)]], dtype=dtype)
        elif key in LIST_KEYS:
            words = [value] if isinstance(value, str) else value
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise InvalidRequestError(field, "expected a string or a list of strings")
            if words:
                inputs[LIST_KEYS[key]] = np.array([[w.encode() for w in words]], dtype=np.object_)
        elif key == "stop_token_ids":
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise InvalidRequestError(field, "expected a list of token ids")
            if value:
                inputs["stop_token_ids"] = np.array([[_typed(field, v, np.int64) for v in value]], dtype=np.int64)
        elif key == "logit_bias":
            if not isinstance(value, dict):
                raise InvalidRequestError(field, 'expected an object {"token id": bias}')
            inputs["logit_bias"] = np.array([[json.dumps(value).encode()]], dtype=np.object_)
        elif key == "structured_outputs":
            inputs.update(_guide_inputs(value))
    return inputs


def _typed(field: str, value, dtype):
    """A JSON value checked against the tensor type it travels in: no silent wrap or truncation. Numbers
    and booleans written as strings ("8", "0.7", "true") are read as the vLLM backend reads them (genai-perf
    sends `"max_tokens": "8"`); a string that is not one exactly is refused."""
    if isinstance(value, str):
        value = _from_text(field, value, dtype)
    if dtype is np.bool_:
        if not isinstance(value, bool):
            raise InvalidRequestError(field, f"expected true or false, got {value!r}")
        return value
    if dtype is np.float32:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequestError(field, f"expected a finite number, got {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(field, f"expected an integer, got {value!r}")
    low, high = INT_RANGES[dtype]
    if not low <= value <= high:
        raise InvalidRequestError(field, f"{value} is out of range [{low}, {high}]")
    return value


def _from_text(field: str, text: str, dtype):
    stripped = text.strip()
    if dtype is np.bool_:
        if stripped.lower() in ("true", "false"):
            return stripped.lower() == "true"
    elif dtype is np.float32:
        try:
            return float(stripped)
        except ValueError:
            pass
    elif re.fullmatch(r"[+-]?\d{1,20}", stripped):
        return int(stripped)
    raise InvalidRequestError(field, f"expected {_KIND_NAMES[dtype]}, got {text!r}")


_KIND_NAMES = {np.bool_: "true or false", np.float32: "a finite number", np.int32: "an integer", np.int64: "an integer"}


def _logprobs_count(value) -> int:
    """vLLM's `logprobs`: how many alternatives per token (0: only the chosen token's)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequestError("sampling_parameters.logprobs", f"expected an integer >= 0, got {value!r}")
    return value


def _guide_inputs(value) -> dict[str, np.ndarray]:
    field = "sampling_parameters.structured_outputs"
    guide = GuidedDecoding.from_vllm(value, field=field)
    if guide is None:
        return {}
    text = guide.guide
    if guide.kind == "choice":
        # Checked here, under the client's field name, before it becomes `qwen`'s guided_decoding_guide.
        text = GuidedDecoding("regex", choice_regex(guide.choices), f"{field}.choice").guide
    return {
        "guided_decoding_guide_type": np.array([[GUIDE_TYPE_OF_KIND[guide.kind].encode()]], dtype=np.object_),
        "guided_decoding_guide": np.array([[text.encode()]], dtype=np.object_),
    }


def translate_response(outputs: dict[str, np.ndarray], request: VllmRequest) -> dict[str, np.ndarray]:
    """One `qwen` response (arrays with the batch dimension) -> the vLLM-backend outputs asked for.

    With n choices, text_output and the per-choice outputs hold n items: a non-streamed response all of
    them, a streamed delta of choice i the delta at position i and empty strings elsewhere."""
    index = int(outputs["sequence_index"].reshape(-1)[0]) if "sequence_index" in outputs else None
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in outputs["text_output"].reshape(-1)]
    if index is not None:
        texts = ["" if i != index else texts[0] for i in range(request.n)]
    result = {"text_output": np.array([t.encode() for t in texts], dtype=np.object_)}
    if "return_finish_reason" in request.returns and "finish_reason" in outputs:
        result["finish_reason"] = outputs["finish_reason"].reshape(-1).astype(np.object_)
    if "return_cumulative_logprob" in request.returns and "cum_log_probs" in outputs:
        result["cumulative_logprob"] = outputs["cum_log_probs"].reshape(-1).astype(np.float32)
    if "return_logprobs" in request.returns:
        result["logprobs"] = np.array([_logprobs_json(outputs).encode()], dtype=np.object_)
    if "return_num_input_tokens" in request.returns and "prompt_tokens" in outputs:
        result["num_input_tokens"] = outputs["prompt_tokens"].reshape(-1)[:1].astype(np.uint32)
    if "return_num_output_tokens" in request.returns and "completion_tokens" in outputs:
        result["num_output_tokens"] = outputs["completion_tokens"].reshape(-1).astype(np.uint32)
    return result


def _logprobs_json(outputs: dict[str, np.ndarray]) -> str:
    """vLLM's shape: per token, {token id: {"logprob", "rank", "decoded_token"}} for the chosen token and
    the best alternatives ("null" when the response has no per-token values, e.g. several choices)."""
    if "logprobs" not in outputs or "output_ids" not in outputs:
        return "null"
    ids = outputs["output_ids"].reshape(-1).tolist()
    chosen = outputs["logprobs"].reshape(-1).tolist()
    best = json.loads(outputs["top_logprobs"].reshape(-1)[0]) if "top_logprobs" in outputs else [[] for _ in ids]
    tokens = []
    for token, logprob, alternatives in zip(ids, chosen, best):
        entry = {
            str(a["id"]): {"logprob": a["logprob"], "rank": rank, "decoded_token": a["token"]}
            for rank, a in enumerate(alternatives, start=1)
        }
        entry.setdefault(str(token), {"logprob": logprob, "rank": None, "decoded_token": None})
        tokens.append(entry)
    return json.dumps(tokens)
