"""One gRPC stream to tritonserver per request (tritonclient.grpc.aio `stream_infer`): `call()` carries one
request to any model and hands back its raw responses; `stream()` is the OpenAI routes' request to their
model, as `Chunk`s.

The gateway always asks the decoupled `qwen` model to stream (stream=true), also for non-streaming OpenAI
answers: deltas give the time to first token, per-token text for logprobs, and an early stop. Leaving a
`stream()` iterator before its final response (the HTTP client went away) cancels the gRPC call, which makes
Triton cancel the request and the model abort it in the engine, freeing its KV blocks.

A model's config is read once (the gateway's own model at start, others on their first request) and kept
until Triton is seen down: which inputs it declares (so a feature whose input the server lacks gets a 400
that says so, not Triton's "unexpected inference input"), their dtypes and shapes. The generate front
(generate_front.py) validates request bodies against the same configs.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from .protocol import OpenAIError

# Seconds a client should wait before retrying when Triton is down or full.
RETRY_AFTER_S = 1
_NUMPY = {
    "BYTES": np.object_,
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_REQUEST_ID_PREFIX = re.compile(r"^\[request id: [^\]]*\]\s*")
# The engine's retryable refusals (Triton UNAVAILABLE) end like this; a gRPC stream's error carries no status.
_RETRY_AFTER = re.compile(r"retry after (\d+(?:\.\d+)?) s$")
# Set by Triton's gRPC frontend on every streamed response; not one of the model's response parameters.
FINAL_RESPONSE_PARAMETER = "triton_final_response"


@dataclass(frozen=True)
class InputSpec:
    datatype: str  # tritonclient's name: BYTES, BOOL, INT32, INT64, FP32, ...
    dims: tuple[int, ...]  # per request, without the batch dimension; -1 = any length
    optional: bool

    @property
    def is_list(self) -> bool:  # dims [-1]: a list of values
        return self.dims == (-1,)


@dataclass(frozen=True)
class ModelConfig:
    """What the gateway needs of a Triton model's config.pbtxt."""

    name: str
    inputs: dict[str, InputSpec]
    batched: bool  # max_batch_size > 0: every tensor carries a leading batch dimension of 1
    decoupled: bool  # any number of responses per request

    @classmethod
    def from_json(cls, name: str, config: dict[str, Any]) -> ModelConfig:
        inputs = {
            spec["name"]: InputSpec(
                datatype=spec["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES"),
                dims=tuple(int(d) for d in spec.get("dims", [1])),
                optional=bool(spec.get("optional", False)),
            )
            for spec in config.get("input", [])
        }
        policy = config.get("model_transaction_policy", {})
        return cls(name, inputs, int(config.get("max_batch_size", 0)) > 0, bool(policy.get("decoupled", False)))


@dataclass
class Chunk:
    """One response of the model's stream."""

    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[Any] = field(default_factory=list)  # one entry per token, as the model's JSON has it
    is_final: bool = False


class TritonBackend:
    def __init__(self, url: str, model_name: str):
        self.url = url
        self.model_name = model_name  # the model of the OpenAI routes
        self._client: grpcclient.InferenceServerClient | None = None
        self._configs: dict[tuple[str, str], ModelConfig] = {}

    # ------------------------------------------------------------ lifecycle

    def _get_client(self) -> grpcclient.InferenceServerClient:
        # Made on first use: a grpc.aio channel belongs to the event loop that is running when it is made.
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def load_model_config(self) -> ModelConfig:
        """The OpenAI routes' model. Fails with 503 while Triton is not up yet or does not serve it (callers
        retry): the model is the gateway's setting, not the client's, so its absence is no 404."""
        try:
            return await self.model_config(self.model_name)
        except OpenAIError as error:
            if error.status != 404:
                raise
            raise OpenAIError(503, error.message, retry_after_s=RETRY_AFTER_S) from None

    async def model_config(self, model_name: str, version: str = "") -> ModelConfig:
        """A model's config, read from Triton once: 404 for a model Triton does not serve, 503 while it is down."""
        key = (model_name, version)
        if key not in self._configs:
            self._configs[key] = ModelConfig.from_json(model_name, await self._read_config(model_name, version))
        return self._configs[key]

    async def _read_config(self, model_name: str, version: str) -> dict[str, Any]:
        try:
            reply = await self._get_client().get_model_config(model_name, version, as_json=True)
        except InferenceServerException as error:
            if (error.status() or "").endswith("NOT_FOUND"):
                raise OpenAIError(
                    404, f"model {model_name!r} is not served by Triton at {self.url}: {error.message()}"
                ) from None
            raise OpenAIError(
                503,
                f"Triton model {model_name!r} at {self.url} is not available: {error.message()}",
                retry_after_s=RETRY_AFTER_S,
            ) from None
        return reply["config"]

    @property
    def inputs(self) -> dict[str, InputSpec]:
        """The OpenAI routes' model's inputs; empty until its config is read."""
        config = self._configs.get((self.model_name, ""))
        return config.inputs if config is not None else {}

    async def is_ready(self) -> bool:
        try:
            return bool(await self._get_client().is_model_ready(self.model_name))
        except InferenceServerException:
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def accepts(self, name: str) -> bool:
        return name in self.inputs

    # ------------------------------------------------------------ one request

    @asynccontextmanager
    async def call(self, request: dict[str, Any], error_from_message: Callable[[str], OpenAIError]):
        """One gRPC stream carrying one request (`request`: stream_infer's fields: model_name, inputs, ...).
        Leaving the block before the final response cancels the request in Triton."""
        done = asyncio.Event()

        async def requests():
            yield {
                **request,
                "parameters": {**request.get("parameters", {}), "triton_enable_empty_final_response": True},
            }
            await done.wait()  # our half of the stream stays open until the answer is complete

        call = ModelCall(self._get_client().stream_infer(requests()), self, error_from_message)
        try:
            yield call
        finally:
            done.set()
            if not call.complete:
                call.cancel()  # Triton cancels the request; the model aborts it in the engine

    async def stream(self, inputs: dict[str, Any]) -> AsyncIterator[Chunk]:
        """The OpenAI routes' model's responses for one request, up to and including the final one."""
        config = await self.load_model_config()
        tensors = [tensor_of(name, value, config) for name, value in inputs.items()]
        request = {"model_name": self.model_name, "inputs": tensors, "request_id": uuid.uuid4().hex}
        async with self.call(request, self.error_from_response) as call:
            while not call.complete:
                chunk = chunk_from_result(await call.next())
                # The finish reason is the request's last word, whether or not the final flag rides on it.
                call.complete = call.complete or chunk.is_final
                yield chunk

    def forget_configs_if_down(self, error: OpenAIError) -> OpenAIError:
        """A restarted tritonserver may serve newer configs: read them again on the next request."""
        if error.status == 503:
            self._configs.clear()
        return error

    def error_from_response(self, message: str) -> OpenAIError:
        """An error response inside the stream of the OpenAI routes' model (see error_from_model_message)."""
        error = error_from_model_message(message, set(self.inputs))
        if error.status == 400:
            name = error.message.split(":", 1)[0].strip()
            error.param, error.code = OPENAI_PARAM_FOR_INPUT.get(name, name), "invalid_value"
        return error


class ModelCall:
    """The responses of one request on its own gRPC stream; `complete` once the final one has arrived."""

    def __init__(self, call, backend: TritonBackend, error_from_message: Callable[[str], OpenAIError]):
        self._call = call
        self._backend = backend
        self._error_from_message = error_from_message
        self.complete = False

    async def next(self):
        """The next response (a tritonclient InferResult); an error response raises its OpenAIError."""
        try:
            result, error = await self._call.__anext__()
        except StopAsyncIteration:
            raise OpenAIError(502, "Triton closed the stream before the final response") from None
        except grpc.RpcError as rpc_error:
            raise self._backend.forget_configs_if_down(error_from_rpc(rpc_error)) from None
        except InferenceServerException as triton_error:
            status_error = error_from_status(triton_error.status(), triton_error.message() or str(triton_error))
            raise self._backend.forget_configs_if_down(status_error) from None
        if error is not None:
            raise self._error_from_message(error.message() or str(error))
        final_flag = result.get_response().parameters.get(FINAL_RESPONSE_PARAMETER)
        self.complete = bool(final_flag.bool_param) if final_flag is not None else False
        return result

    def cancel(self) -> None:
        self._call.cancel()


def tensor_of(name: str, value: Any, config: ModelConfig):
    """An OpenAI-route value (a scalar, or a list for dims [-1]) as the model's declared input tensor."""
    spec = config.inputs[name]
    values = list(value) if spec.is_list else [value]
    if spec.datatype == "BYTES":
        values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    array = np.array(values, dtype=_NUMPY[spec.datatype])
    if config.batched:
        array = array[np.newaxis, ...]
    return infer_input(name, array, spec.datatype)


def infer_input(name: str, array: np.ndarray, datatype: str):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def numpy_dtype(datatype: str):
    return _NUMPY[datatype]


def error_from_model_message(message: str, client_fields: set[str]) -> OpenAIError:
    """An error response inside a stream carries no status code, only its text. The model names the field at
    fault as `field: detail` (`sampling_parameters.top_k: ...` for a key inside a JSON input): a field the
    client sent or could send makes it a 400. A retryable refusal ends in `retry after N s` (503)."""
    detail = _REQUEST_ID_PREFIX.sub("", message)
    name = detail.split(":", 1)[0].strip()
    if name in client_fields or name.split(".", 1)[0] in client_fields:
        return OpenAIError(400, detail)
    retry = _RETRY_AFTER.search(detail)
    if retry:
        return OpenAIError(503, detail, retry_after_s=max(1, round(float(retry.group(1)))))
    if "cancelled" in detail.lower():
        return OpenAIError(499, detail, code="cancelled")
    return OpenAIError(500, f"the model failed: {detail}")


# Triton input -> the OpenAI field a client set, to name it in a 400.
OPENAI_PARAM_FOR_INPUT = {
    "text_input": "prompt",
    "max_tokens": "max_tokens",
    "return_logprobs": "logprobs",
    "guided_decoding_guide": "response_format",
    "guided_decoding_guide_type": "response_format",
}


def error_from_rpc(rpc_error: grpc.RpcError) -> OpenAIError:
    return error_from_status(str(rpc_error.code()), rpc_error.details() or "")


def error_from_status(status: str | None, message: str) -> OpenAIError:
    """gRPC status -> OpenAI status: bad input 400, overloaded 429, down 503 (both with Retry-After), else 500."""
    status = (status or "").removeprefix("StatusCode.")
    if status == "INVALID_ARGUMENT":
        return OpenAIError(400, message)
    if status == "RESOURCE_EXHAUSTED":
        return OpenAIError(429, f"Triton is overloaded: {message}", retry_after_s=RETRY_AFTER_S)
    if status == "UNAVAILABLE":
        return OpenAIError(503, f"Triton is unavailable: {message}", retry_after_s=RETRY_AFTER_S)
    if status == "CANCELLED":
        return OpenAIError(499, message, code="cancelled")
    return OpenAIError(500, f"Triton error {status or 'unknown'}: {message}")


def chunk_from_result(result) -> Chunk:
    final_flag = result.get_response().parameters.get(FINAL_RESPONSE_PARAMETER)
    is_final = bool(final_flag.bool_param) if final_flag is not None else False

    def values(name: str) -> list:
        array = result.as_numpy(name)
        return [] if array is None else array.reshape(-1).tolist()

    def text(name: str) -> str:
        items = values(name)
        item = items[0] if items else b""
        return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)

    finish_reason = text("finish_reason") or None
    prompt_tokens, completion_tokens = values("prompt_tokens"), values("completion_tokens")
    return Chunk(
        text=text("text_output"),
        token_ids=[int(t) for t in values("output_ids")],
        finish_reason=finish_reason,
        prompt_tokens=int(prompt_tokens[0]) if prompt_tokens else 0,
        completion_tokens=int(completion_tokens[0]) if completion_tokens else 0,
        logprobs=[float(p) for p in values("logprobs")],
        top_logprobs=_top_logprobs(text("top_logprobs")),
        # The finish reason is the request's last word, whether or not the final flag rides on it.
        is_final=is_final or finish_reason is not None,
    )


def _top_logprobs(raw: str) -> list[Any]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return []
    return value if isinstance(value, list) else [value]
