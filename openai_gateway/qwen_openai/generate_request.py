"""A generate-extension request body (`/v2/models/<model>/generate`) checked against the model's declared inputs
and turned into what one gRPC request carries: input tensors, request parameters, a request id.

The key rules are Triton's own (its HTTP frontend's generate conversion), so a body that Triton accepts means
the same here:
- a key that names a declared input is that input; a scalar or a flat list fills the input's dims (a -1 dim
  takes the count), with a batch dimension of 1 in front for a batched model;
- the keys of a `parameters` object follow the same rules as top-level keys;
- any other key is a request parameter (a string, number or boolean), which the model may refuse by name;
- `id` is also the request id.

Where Triton's conversion fails without naming the field (a wrong JSON type: its HTTP 500 "Unable to parse
'data'") or silently (an integer wrapped into INT32), each value is checked first: a 400 naming the key.
BYTES inputs that carry JSON text take a JSON array or object too: it is serialized for the tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .protocol import OpenAIError
from .triton_backend import InputSpec, ModelConfig, infer_input, numpy_dtype

NESTED_PARAMETERS_KEY = "parameters"
REQUEST_ID_KEY = "id"
# Inputs whose text the model parses as JSON (chat messages, tools, logit bias, vLLM sampling settings, a
# JSON-schema guide): a client may send the JSON value itself instead of a string holding it.
JSON_TEXT_INPUTS = frozenset({"messages", "tools", "logit_bias", "sampling_parameters", "guided_decoding_guide"})
# Request parameters that Triton's gRPC client sets itself: a body cannot set them.
RESERVED_PARAMETERS = frozenset(
    {
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "binary_data_output",
        "triton_enable_empty_final_response",
    }
)
_INT_RANGES = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in (
        ("INT8", np.int8),
        ("INT16", np.int16),
        ("INT32", np.int32),
        ("INT64", np.int64),
        ("UINT8", np.uint8),
        ("UINT16", np.uint16),
        ("UINT32", np.uint32),
        ("UINT64", np.uint64),
    )
}
_FLOAT_LIMITS = {name: float(np.finfo(dtype).max) for name, dtype in (("FP16", np.float16), ("FP32", np.float32))}
_FLOAT_LIMITS["FP64"] = float(np.finfo(np.float64).max)
_INT64_RANGE = _INT_RANGES["INT64"]


@dataclass
class GenerateRequest:
    model: ModelConfig
    version: str
    inputs: dict[str, np.ndarray]  # name -> array in the input's shape (batch dimension included)
    parameters: dict[str, str | int | float | bool] = field(default_factory=dict)
    request_id: str = ""

    @property
    def asks_for_stream(self) -> bool:
        """`stream: true`: the model answers with one response per delta."""
        array = self.inputs.get("stream")
        return array is not None and array.dtype == np.bool_ and bool(array.any())

    def grpc_request(self) -> dict[str, Any]:
        """The fields of one tritonclient `stream_infer` request."""
        tensors = [infer_input(name, array, self.model.inputs[name].datatype) for name, array in self.inputs.items()]
        return {
            "model_name": self.model.name,
            "model_version": self.version,
            "inputs": tensors,
            "request_id": self.request_id,
            "parameters": dict(self.parameters),
        }

    def client_fields(self) -> set[str]:
        """The names a model's error message may start with when the client is at fault."""
        return set(self.model.inputs) | set(self.parameters)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN and Infinity are not JSON and are refused."""
    try:
        body = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:
        raise bad_request(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the body must be a JSON object of inputs and parameters, got {json_type(body)}")
    return body


def generate_request(body: dict[str, Any], model: ModelConfig, version: str = "") -> GenerateRequest:
    fields = _merged_fields(body, model)
    request = GenerateRequest(model, version, inputs={})
    for name, value in fields.items():
        if name in model.inputs:
            request.inputs[name] = input_array(name, value, model.inputs[name], model.batched)
        else:
            request.parameters[name] = parameter_value(name, value, model.name)
    request.request_id = _request_id(fields)
    _check_required_inputs(request)
    return request


def _merged_fields(body: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """Top-level keys and those of a `parameters` object, one namespace (as Triton reads them)."""
    fields = {key: value for key, value in body.items() if key != NESTED_PARAMETERS_KEY}
    if NESTED_PARAMETERS_KEY not in body:
        return fields
    if NESTED_PARAMETERS_KEY in model.inputs:
        raise bad_request(
            f"{NESTED_PARAMETERS_KEY}: model {model.name!r} declares an input of that name, which the generate "
            "extension reserves for nested parameters; send the model's inputs at the top level"
        )
    nested = body[NESTED_PARAMETERS_KEY]
    if not isinstance(nested, dict):
        raise bad_request(f"{NESTED_PARAMETERS_KEY}: expected a JSON object, got {json_type(nested)}")
    for key, value in nested.items():
        if key in fields:
            raise bad_request(f"{key}: given both at the top level and in {NESTED_PARAMETERS_KEY}; send it once")
        fields[key] = value
    return fields


def _request_id(fields: dict[str, Any]) -> str:
    value = fields.get(REQUEST_ID_KEY, "")
    if not isinstance(value, str):
        raise bad_request(f"{REQUEST_ID_KEY}: expected string (the request id), got {json_type(value)}")
    return value


def _check_required_inputs(request: GenerateRequest) -> None:
    model = request.model
    missing = [name for name, spec in model.inputs.items() if not spec.optional and name not in request.inputs]
    if missing:
        raise bad_request(f"{missing[0]}: missing; model {model.name!r} requires {', '.join(missing)}")
    if not request.inputs:
        raise bad_request(f"the body sets no input of model {model.name!r}; its inputs are: {', '.join(model.inputs)}")


# ---------------------------------------------------------------- one input


def input_array(name: str, value: Any, spec: InputSpec, batched: bool) -> np.ndarray:
    """`value` (a JSON scalar or flat list) as the input's tensor; 400 naming `name` when it does not fit."""
    elements = _elements(name, value, spec)
    converted = [_element(name, item, spec.datatype) for item in elements]
    array = np.array(converted, dtype=numpy_dtype(spec.datatype)).reshape(_shape(name, len(converted), spec.dims))
    return array[np.newaxis, ...] if batched else array


def _elements(name: str, value: Any, spec: InputSpec) -> list[Any]:
    if spec.datatype == "BYTES" and name in JSON_TEXT_INPUTS:
        if isinstance(value, (list, dict)):
            return [json.dumps(value, ensure_ascii=False, separators=(",", ":"))]
        if not isinstance(value, str):
            raise bad_request(
                f"{name}: expected a JSON array or object (or a string holding one), got {json_type(value)}"
            )
        return [value]
    if not isinstance(value, list):
        return [value]
    nested = next((item for item in value if isinstance(item, (list, dict))), None)
    if nested is not None:
        raise bad_request(f"{name}: expected a value or a flat list of values, got a list holding {json_type(nested)}")
    return value


def _shape(name: str, count: int, dims: tuple[int, ...]) -> list[int]:
    """The dims with the count filled in: fixed dims must divide it; the innermost -1 takes what remains and
    any other -1 is 1 (Triton's rule)."""
    fixed = math.prod(d for d in dims if d != -1)
    variable = [i for i, d in enumerate(dims) if d == -1]
    fits = count == fixed if not variable else fixed > 0 and count % fixed == 0
    if not fits:
        wanted = f"{fixed} value(s)" if not variable else f"a multiple of {fixed} value(s)"
        raise bad_request(f"{name}: expected {wanted} for dims {list(dims)}, got {count}")
    shape = list(dims)
    for i in variable:
        shape[i] = 1
    if variable:
        shape[variable[-1]] = count // fixed
    return shape


def _element(name: str, item: Any, datatype: str) -> Any:
    if datatype == "BYTES":
        if not isinstance(item, str):
            raise _wrong_type(name, "string", item)
        return item.encode("utf-8")
    if datatype == "BOOL":
        if not isinstance(item, bool):
            raise _wrong_type(name, "boolean", item)
        return item
    if datatype in _INT_RANGES:
        return _integer(name, item, datatype)
    if datatype in _FLOAT_LIMITS:
        return _number(name, item, datatype)
    raise bad_request(f"{name}: datatype {datatype} cannot be sent through /generate")


def _integer(name: str, item: Any, datatype: str) -> int:
    if isinstance(item, bool) or not isinstance(item, int):
        raise _wrong_type(name, f"integer ({datatype})", item)
    low, high = _INT_RANGES[datatype]
    if not low <= item <= high:
        raise bad_request(f"{name}: {item} is out of the range of {datatype}, [{low}, {high}]")
    return item


def _number(name: str, item: Any, datatype: str) -> float:
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        raise _wrong_type(name, f"number ({datatype})", item)
    limit = _FLOAT_LIMITS[datatype]
    if not -limit <= item <= limit:
        raise bad_request(f"{name}: {item} is out of the range of {datatype}, [{-limit:g}, {limit:g}]")
    return float(item)


def _wrong_type(name: str, expected: str, item: Any) -> OpenAIError:
    return bad_request(f"{name}: expected {expected}, got {json_type(item)}")


# ---------------------------------------------------------------- request parameters


def parameter_value(name: str, value: Any, model_name: str) -> str | int | float | bool:
    """A key that is no input of the model, sent as a request parameter (Triton's rule)."""
    if name in RESERVED_PARAMETERS:
        raise bad_request(f"{name}: not an input of model {model_name!r}, and a reserved Triton request parameter")
    if isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        low, high = _INT64_RANGE
        return value if low <= value <= high else float(value)  # beyond INT64: a double, as Triton reads it
    raise bad_request(
        f"{name}: not an input of model {model_name!r}, so it is a request parameter, which must be a string, "
        f"number or boolean; got {json_type(value)}"
    )


# ---------------------------------------------------------------- helpers


def bad_request(message: str) -> OpenAIError:
    return OpenAIError(400, message)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not a JSON value")
