"""`AsyncQwenClient`: the asyncio twin of QwenClient (tritonclient.grpc.aio / aiohttp)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from . import retry
from .client_base import NOT_LIVE, ClientBase
from .errors import ConnectionFailedError, RequestTimeoutError
from .params import GenerationParams
from .request import Messages, Prompt, messages_inputs, prompt_inputs
from .results import Chunk, Completion, CompletionBuilder
from .server_info import Health, ModelInfo


async def collect(chunks: AsyncIterator[Chunk]) -> Completion:
    builder = CompletionBuilder()
    async for chunk in chunks:
        builder.add(chunk)
    return builder.build()


class AsyncQwenClient(ClientBase):
    """Same arguments and methods as QwenClient, as coroutines and async iterators.

    One instance serves many concurrent requests (one gRPC channel / one HTTP connection pool).
    """

    _transports = {"grpc": ".grpc_transport:AsyncGrpcTransport", "http": ".http_transport:AsyncHttpTransport"}

    async def __aenter__(self) -> AsyncQwenClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    async def generate(self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any) -> Completion:
        return await collect(self._chunks(prompt_inputs(prompt), params, overrides, stream=False))

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any) -> AsyncIterator[str]:
        return _texts(self.stream_chunks(prompt, params, **overrides))

    def stream_chunks(
        self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any
    ) -> AsyncIterator[Chunk]:
        return self._chunks(prompt_inputs(prompt), params, overrides, stream=True)

    def chat(
        self, messages: Messages, stream: bool = False, params: GenerationParams | None = None, **overrides: Any
    ) -> Awaitable[Completion] | AsyncIterator[str]:
        """`await client.chat(msgs)` for a Completion; `async for delta in client.chat(msgs, stream=True)`."""
        chunks = self._chunks(messages_inputs(messages), params, overrides, stream=stream)
        return _texts(chunks) if stream else collect(chunks)

    def _chunks(self, prompt_part, params, overrides: dict[str, Any], stream: bool) -> AsyncIterator[Chunk]:
        inputs = self._inputs(prompt_part, params, overrides, stream)
        return retry.astream(self._retry, lambda: self._transport.stream_chunks(inputs))

    async def health(self) -> Health:
        try:
            return await self._transport.health()
        except (ConnectionFailedError, RequestTimeoutError):
            return NOT_LIVE

    async def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> Health:
        deadline = time.monotonic() + timeout
        while True:
            health = await self.health()
            if health.ok:
                return health
            if time.monotonic() >= deadline:
                raise RequestTimeoutError(self._not_ready_error_message(timeout, health))
            await asyncio.sleep(interval)

    async def models(self) -> list[ModelInfo]:
        return await retry.acall(self._retry, self._transport.models)


async def _texts(chunks: AsyncIterator[Chunk]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            if chunk.text:
                yield chunk.text
    finally:
        await chunks.aclose()
