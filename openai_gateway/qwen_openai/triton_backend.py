"""One gRPC stream to tritonserver per engine request (tritonclient.grpc.aio `stream_infer`).

The gateway always asks the decoupled `qwen` model to stream (stream=true), also for non-streaming OpenAI
answers: deltas give the time to first token, per-token text for logprobs, and an early stop. Leaving a
`stream()` iterator before its final response (the HTTP client went away) cancels the gRPC call, which makes
Triton cancel the request and the model abort it in the engine, freeing its KV blocks.

The model's config is read once at start: which inputs it declares (so a feature whose input the server
lacks gets a 400 that says so, not Triton's "unexpected inference input"), their dtypes and shapes.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
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
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT64": np.uint64,
    "FP32": np.float32,
}
_REQUEST_ID_PREFIX = re.compile(r"^\[request id: [^\]]*\]\s*")


@dataclass(frozen=True)
class InputSpec:
    datatype: str  # tritonclient's name: BYTES, BOOL, INT32, INT64, FP32
    is_list: bool  # dims [-1]: a list of values


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
        self.model_name = model_name
        self._client: grpcclient.InferenceServerClient | None = None
        self.inputs: dict[str, InputSpec] = {}
        self.batched = False

    # ------------------------------------------------------------ lifecycle

    def _get_client(self) -> grpcclient.InferenceServerClient:
        # Made on first use: a grpc.aio channel belongs to the event loop that is running when it is made.
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    async def load_model_config(self) -> None:
        """The model's declared inputs. Fails with 503 while Triton is not up yet (callers retry)."""
        try:
            config = (await self._get_client().get_model_config(self.model_name, as_json=True))["config"]
        except InferenceServerException as error:
            raise OpenAIError(
                503,
                f"Triton model {self.model_name!r} at {self.url} is not available: {error.message()}",
                retry_after_s=RETRY_AFTER_S,
            ) from None
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = {
            spec["name"]: InputSpec(
                datatype=spec["data_type"].removeprefix("TYPE_").replace("STRING", "BYTES"),
                is_list=[int(d) for d in spec.get("dims", [1])] == [-1],
            )
            for spec in config.get("input", [])
        }

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

    async def stream(self, inputs: dict[str, Any]) -> AsyncIterator[Chunk]:
        """The model's responses for one request, up to and including the final one."""
        if not self.inputs:
            await self.load_model_config()
        tensors = [self._tensor(name, value) for name, value in inputs.items()]
        done = asyncio.Event()

        async def requests():
            yield {
                "model_name": self.model_name,
                "inputs": tensors,
                "request_id": uuid.uuid4().hex,
                "parameters": {"triton_enable_empty_final_response": True},
            }
            await done.wait()  # our half of the stream stays open until the answer is complete

        call = self._get_client().stream_infer(requests())
        finished = False
        try:
            while not finished:
                chunk = await self._next_chunk(call)
                finished = chunk.is_final
                yield chunk
        finally:
            done.set()
            if not finished:
                call.cancel()  # Triton cancels the request; the model aborts it in the engine

    def _tensor(self, name: str, value: Any):
        spec = self.inputs[name]
        values = list(value) if spec.is_list else [value]
        if spec.datatype == "BYTES":
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        array = np.array(values, dtype=_NUMPY[spec.datatype])
        if self.batched:
            array = array[np.newaxis, ...]
        tensor = grpcclient.InferInput(name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    async def _next_chunk(self, call) -> Chunk:
        try:
            result, error = await call.__anext__()
        except StopAsyncIteration:
            raise OpenAIError(502, "Triton closed the stream before the final response") from None
        except grpc.RpcError as rpc_error:
            raise self._forget_config_if_down(error_from_rpc(rpc_error)) from None
        except InferenceServerException as triton_error:
            status_error = error_from_status(triton_error.status(), triton_error.message() or str(triton_error))
            raise self._forget_config_if_down(status_error) from None
        if error is not None:
            raise self.error_from_response(error.message() or str(error))
        return chunk_from_result(result)

    def _forget_config_if_down(self, error: OpenAIError) -> OpenAIError:
        """A restarted tritonserver may serve a newer config: read it again on the next request."""
        if error.status == 503:
            self.inputs = {}
        return error

    def error_from_response(self, message: str) -> OpenAIError:
        """An error response inside the stream (it carries no status code): the model names the input at
        fault as `input: detail` for a bad request; anything else is the server's fault."""
        detail = _REQUEST_ID_PREFIX.sub("", message)
        name = detail.split(":", 1)[0].strip()
        if name in self.inputs:
            return OpenAIError(400, detail, param=OPENAI_PARAM_FOR_INPUT.get(name, name), code="invalid_value")
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
    final_flag = result.get_response().parameters.get("triton_final_response")
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
