"""`QwenClient`: the synchronous client. Generate, stream, chat, health and model list over gRPC or HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from . import retry
from .client_base import NOT_LIVE, ClientBase
from .errors import ConnectionFailedError, RequestTimeoutError
from .params import GenerationParams
from .request import Messages, Prompt, messages_inputs, prompt_inputs
from .results import Chunk, Completion, CompletionBuilder
from .server_info import Health, ModelInfo


def collect(chunks: Iterator[Chunk]) -> Completion:
    builder = CompletionBuilder()
    for chunk in chunks:
        builder.add(chunk)
    return builder.build()


class QwenClient(ClientBase):
    """Talks to the Triton model `qwen` (or `model`) over gRPC (default) or HTTP.

    QwenClient(url="localhost:8001", protocol="grpc", model="qwen", timeout=60.0, retries=2, params=None)
    """

    _transports = {"grpc": ".grpc_transport:GrpcTransport", "http": ".http_transport:HttpTransport"}

    def __enter__(self) -> QwenClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    # --- inference

    def generate(self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any) -> Completion:
        """The whole answer to a text prompt or a list of token ids, in one response."""
        return collect(self._chunks(prompt_inputs(prompt), params, overrides, stream=False))

    def stream(self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any) -> Iterator[str]:
        """Text deltas as the model produces them. Stop iterating to cancel the request."""
        return _texts(self.stream_chunks(prompt, params, **overrides))

    def stream_chunks(
        self, prompt: Prompt, params: GenerationParams | None = None, **overrides: Any
    ) -> Iterator[Chunk]:
        """Like `stream`, with token ids, finish reason, usage and logprobs of every response."""
        return self._chunks(prompt_inputs(prompt), params, overrides, stream=True)

    def chat(
        self, messages: Messages, stream: bool = False, params: GenerationParams | None = None, **overrides: Any
    ) -> Completion | Iterator[str]:
        """Chat messages ([{"role": "user", "content": ...}]), rendered by the server's chat template.

        Returns a Completion, or an iterator of text deltas when stream=True.
        """
        chunks = self._chunks(messages_inputs(messages), params, overrides, stream=stream)
        return _texts(chunks) if stream else collect(chunks)

    def _chunks(self, prompt_part, params, overrides: dict[str, Any], stream: bool) -> Iterator[Chunk]:
        inputs = self._inputs(prompt_part, params, overrides, stream)
        return retry.stream(self._retry, lambda: self._transport.stream_chunks(inputs))

    # --- server state

    def health(self) -> Health:
        """Live / ready / model ready. An unreachable server is reported as not live, not raised."""
        try:
            return self._transport.health()
        except (ConnectionFailedError, RequestTimeoutError):
            return NOT_LIVE

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.5) -> Health:
        """Polls health until the model is ready; raises RequestTimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health.ok:
                return health
            if time.monotonic() >= deadline:
                raise RequestTimeoutError(self._not_ready_error_message(timeout, health))
            time.sleep(interval)

    def models(self) -> list[ModelInfo]:
        """The models in the server's repository, with their state."""
        return retry.call(self._retry, self._transport.models)


def _texts(chunks: Iterator[Chunk]) -> Iterator[str]:
    try:
        for chunk in chunks:
            if chunk.text:
                yield chunk.text
    finally:
        chunks.close()  # propagate an early stop down to the transport, which cancels the request
