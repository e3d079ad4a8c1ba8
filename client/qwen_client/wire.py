"""Conversions between Python values and what travels: Triton tensors (gRPC) and generate JSON (HTTP)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .errors import BadRequestError, ServerError
from .params import INPUT_SPECS
from .results import Chunk, Usage

_NUMPY_DTYPES = {
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT64": np.uint64,
    "FP32": np.float32,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}

# Longest names first so that "min_temperature" wins over "temperature".
_FIELD_PATTERN = re.compile(r"\b(" + "|".join(sorted(INPUT_SPECS, key=len, reverse=True)) + r")\b")


def field_named_in(message: str) -> str | None:
    """The first model input a server error message names, so callers can point at the bad field."""
    match = _FIELD_PATTERN.search(message or "")
    return match.group(1) if match else None


def error_in_response(message: str) -> ServerError:
    """An error the model sent for one request (inside a stream, so without a status code).

    One that names an input is the caller's fault (bad input); anything else is the server's.
    """
    field = field_named_in(message)
    return BadRequestError(message, None, field) if field else ServerError(message, None, None)


def _drop_empty_lists(inputs: dict[str, Any]) -> dict[str, Any]:
    # A [0]-shaped tensor means "none" just like an absent input, and some frontends reject it.
    return {name: value for name, value in inputs.items() if not (isinstance(value, list) and not value)}


def to_numpy(name: str, value: Any, batched: bool) -> np.ndarray:
    """One input as the array Triton expects: dims [1] or [n], plus a leading batch dim of 1 if batched."""
    spec = INPUT_SPECS[name]
    values = value if spec.is_list else [value]
    if spec.datatype == "BYTES":
        values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    array = np.array(values, dtype=_NUMPY_DTYPES[spec.datatype])
    return array[np.newaxis, ...] if batched else array


def grpc_inputs(inputs: dict[str, Any], batched: bool, infer_input_cls) -> list:
    """tritonclient InferInput objects (grpc or grpc.aio share the class) for every input to send."""
    tensors = []
    for name, value in _drop_empty_lists(inputs).items():
        array = to_numpy(name, value, batched)
        tensor = infer_input_cls(name, list(array.shape), INPUT_SPECS[name].datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def json_body(inputs: dict[str, Any]) -> dict[str, Any]:
    """The generate-endpoint JSON: one key per input, named like the tensor (Triton maps them)."""
    return _drop_empty_lists(inputs)


# --- responses


def _flat(array: np.ndarray | None) -> list:
    return [] if array is None else array.reshape(-1).tolist()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _first(values: list, default: Any = None) -> Any:
    return values[0] if values else default


def _make_chunk(text, token_ids, finish_reason, prompt_tokens, completion_tokens, logprobs, is_final) -> Chunk:
    finish_reason = _text(finish_reason) or None
    return Chunk(
        text=_text(text),
        token_ids=[int(t) for t in token_ids],
        finish_reason=finish_reason,
        usage=Usage(int(prompt_tokens or 0), int(completion_tokens or 0)),
        logprobs=[float(p) for p in logprobs] if logprobs else None,
        # A finish reason is the last word of a request even where no final flag travels (HTTP).
        is_final=is_final or finish_reason is not None,
    )


def chunk_from_grpc(result) -> Chunk:
    """A tritonclient gRPC InferResult -> Chunk. The empty final response has no outputs at all."""
    response = result.get_response()
    final_flag = response.parameters.get("triton_final_response")
    is_final = bool(final_flag.bool_param) if final_flag is not None else False

    def output(name: str) -> list:
        return _flat(result.as_numpy(name))

    return _make_chunk(
        text=_first(output("text_output"), ""),
        token_ids=output("output_ids"),
        finish_reason=_first(output("finish_reason"), ""),
        prompt_tokens=_first(output("prompt_tokens"), 0),
        completion_tokens=_first(output("completion_tokens"), 0),
        logprobs=output("logprobs"),
        is_final=is_final,
    )


def _as_list(value: Any) -> list[Any]:
    # The generate endpoint writes a one-element tensor as a scalar and longer ones as (nested) lists.
    if value is None:
        return []
    if isinstance(value, list):
        return _flat(np.array(value, dtype=object)) if any(isinstance(v, list) for v in value) else value
    return [value]


def chunk_from_json(payload: dict[str, Any], is_final: bool = False) -> Chunk:
    """One generate / generate_stream JSON response -> Chunk."""
    return _make_chunk(
        text=_first(_as_list(payload.get("text_output")), ""),
        token_ids=_as_list(payload.get("output_ids")),
        finish_reason=_first(_as_list(payload.get("finish_reason")), ""),
        prompt_tokens=_first(_as_list(payload.get("prompt_tokens")), 0),
        completion_tokens=_first(_as_list(payload.get("completion_tokens")), 0),
        logprobs=_as_list(payload.get("logprobs")),
        is_final=is_final,
    )
