"""gRPC transport: decoupled streaming over tritonclient.grpc (sync) and tritonclient.grpc.aio (async).

A decoupled model cannot use the unary ModelInfer RPC, so every request, streaming or not, goes through
the bidirectional stream. The request asks for the empty final response so that the end of a request is
always marked by the `triton_final_response` flag, whatever the model sends.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.utils import InferenceServerException

from .errors import BadRequestError, ConnectionFailedError, QwenClientError, RequestTimeoutError, ServerError
from .results import Chunk
from .server_info import Health, ModelInfo, models_from_index
from .target import Target
from .wire import chunk_from_grpc, error_in_response, field_named_in, grpc_inputs

_FINAL_RESPONSE_PARAMETER = {"triton_enable_empty_final_response": True}


def classify_error(status: str | None, message: str, url: str) -> QwenClientError:
    """A gRPC failure -> the client's error type. Only 'cannot reach the server' becomes retryable."""
    if status == "StatusCode.UNAVAILABLE" and "model" not in message.lower():
        return ConnectionFailedError(
            f"cannot reach Triton over gRPC at {url}: {message}. Is tritonserver running, and is this its gRPC port?"
        )
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return RequestTimeoutError(f"Triton at {url} did not answer in time: {message}")
    if status is None:  # an error response inside the stream, for this request only
        return error_in_response(message)
    field = field_named_in(message)
    if status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"):
        return BadRequestError(message, status, field)
    return ServerError(message, status, field)


def _from_triton(error: InferenceServerException, url: str) -> QwenClientError:
    return classify_error(error.status(), error.message() or str(error), url)


def _from_rpc(error: grpc.RpcError, url: str) -> QwenClientError:
    return classify_error(str(error.code()), error.details() or "", url)


class GrpcTransport:
    """Synchronous gRPC. Thread-safe: each stream gets its own tritonclient (one stream per client object)."""

    protocol = "grpc"

    def __init__(self, target: Target):
        self.url, self.model, self.timeout = target.url, target.model, target.timeout
        self._control = grpcclient.InferenceServerClient(self.url)  # unary calls: health, config, index
        self._batched: bool | None = None

    def close(self) -> None:
        self._control.close()

    def _unary(self, method: str, *args, **kwargs) -> Any:
        try:
            return getattr(self._control, method)(*args, client_timeout=self.timeout, **kwargs)
        except InferenceServerException as error:
            raise _from_triton(error, self.url) from None

    def batched(self) -> bool:
        """Whether the model's inputs carry a batch dimension (max_batch_size > 0); asked once."""
        if self._batched is None:
            config = self._unary("get_model_config", self.model, as_json=True)["config"]
            self._batched = int(config.get("max_batch_size", 0)) > 0
        return self._batched

    def health(self) -> Health:
        live = self._unary("is_server_live")
        ready = self._unary("is_server_ready")
        return Health(live=live, ready=ready, model_ready=self._unary("is_model_ready", self.model))

    def models(self) -> list[ModelInfo]:
        return models_from_index(self._unary("get_model_repository_index", as_json=True).get("models", []))

    def stream_chunks(self, inputs: dict[str, Any]) -> Iterator[Chunk]:
        """Sends one request and yields its responses until the final one; cancels it if abandoned early."""
        tensors = grpc_inputs(inputs, self.batched(), grpcclient.InferInput)
        responses: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(self.url)
        finished = False
        try:
            client.start_stream(callback=lambda result, error: responses.put((result, error)))
            client.async_stream_infer(
                self.model, tensors, request_id=uuid.uuid4().hex, enable_empty_final_response=True
            )
            while not finished:
                chunk = chunk_from_grpc(self._next_result(responses))
                finished = chunk.is_final
                yield chunk
        finally:
            # Cancelling the stream makes Triton cancel the request, and the model abort it in the engine.
            client.stop_stream(cancel_requests=not finished)
            client.close()

    def _next_result(self, responses: queue.Queue):
        try:
            result, error = responses.get(timeout=self.timeout)
        except queue.Empty:
            raise RequestTimeoutError(f"no response from Triton at {self.url} within {self.timeout}s") from None
        if error is not None:
            raise _from_triton(error, self.url)
        return result


class AsyncGrpcTransport:
    """asyncio gRPC over tritonclient.grpc.aio; one channel, many concurrent streams."""

    protocol = "grpc"

    def __init__(self, target: Target):
        self.url, self.model, self.timeout = target.url, target.model, target.timeout
        self._client: grpcclient_aio.InferenceServerClient | None = None
        self._batched: bool | None = None

    def _get_client(self) -> grpcclient_aio.InferenceServerClient:
        # Created on first use: a grpc.aio channel belongs to the event loop running when it is made.
        if self._client is None:
            self._client = grpcclient_aio.InferenceServerClient(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _unary(self, method: str, *args, **kwargs) -> Any:
        try:
            return await getattr(self._get_client(), method)(*args, client_timeout=self.timeout, **kwargs)
        except InferenceServerException as error:
            raise _from_triton(error, self.url) from None

    async def batched(self) -> bool:
        if self._batched is None:
            config = (await self._unary("get_model_config", self.model, as_json=True))["config"]
            self._batched = int(config.get("max_batch_size", 0)) > 0
        return self._batched

    async def health(self) -> Health:
        live = await self._unary("is_server_live")
        ready = await self._unary("is_server_ready")
        return Health(live=live, ready=ready, model_ready=await self._unary("is_model_ready", self.model))

    async def models(self) -> list[ModelInfo]:
        index = await self._unary("get_model_repository_index", as_json=True)
        return models_from_index(index.get("models", []))

    async def stream_chunks(self, inputs: dict[str, Any]) -> AsyncIterator[Chunk]:
        tensors = grpc_inputs(inputs, await self.batched(), grpcclient_aio.InferInput)
        request_done = asyncio.Event()

        async def requests():
            yield {
                "model_name": self.model,
                "inputs": tensors,
                "request_id": uuid.uuid4().hex,
                "parameters": dict(_FINAL_RESPONSE_PARAMETER),
            }
            # Keep our half of the stream open until the answer is complete.
            await request_done.wait()

        call = self._get_client().stream_infer(requests())
        finished = False
        try:
            while not finished:
                chunk = chunk_from_grpc(await self._next_result(call))
                finished = chunk.is_final
                yield chunk
        finally:
            request_done.set()
            if not finished:
                call.cancel()  # Triton cancels the request; the model aborts it in the engine

    async def _next_result(self, call):
        try:
            result, error = await _within(self.timeout, call.__anext__())
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"no response from Triton at {self.url} within {self.timeout}s") from None
        except StopAsyncIteration:
            raise ServerError(f"Triton at {self.url} closed the stream before the final response") from None
        except grpc.RpcError as error:
            raise _from_rpc(error, self.url) from None
        if error is not None:
            raise _from_triton(error, self.url)
        return result


if sys.version_info >= (3, 11):

    async def _within(seconds: float, awaitable):
        """`await awaitable`, or asyncio.TimeoutError after `seconds`. It runs for every response of every
        stream: asyncio.timeout does not wrap the awaitable in a new task as wait_for does before 3.12."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:  # Python 3.10

    def _within(seconds: float, awaitable):
        return asyncio.wait_for(awaitable, seconds)
