"""The FastAPI app: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics, and Triton's
generate extension (/v2/models/<model>/generate[_stream], generate_front.py).

Each answer is one or more gRPC streams to tritonserver (see triton_backend). Two rules hold everywhere:
- every error is OpenAI's error shape (on /v2/*, the generate extension's `{"error": "..."}`) with its real
  HTTP status; for a stream, the status is decided by the
  first chunk (bad input fails before any token), so only a failure after that travels inside the stream;
- when the HTTP client goes away, its Triton requests are cancelled (the engine frees their KV blocks):
  streaming answers through Starlette cancelling the body, whole answers through a disconnect watch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .choices import ChatChoice, CompletionChoice, Usage, merged_chunks
from .client_connection import until_disconnected
from .generate_front import add_generate_routes, generate_endpoint
from .metrics import GatewayMetrics
from .protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIError,
    invalid_request,
    new_id,
    now,
    validation_error,
)
from .request_mapping import chat_inputs, completion_inputs
from .triton_backend import TritonBackend

log = logging.getLogger("qwen_openai")


@dataclass
class GatewaySettings:
    triton_grpc: str = "127.0.0.1:8001"
    model_name: str = "qwen"  # the Triton model
    served_model_name: str | None = None  # the name clients send as `model` (default: model_name)
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <api_key>`

    @property
    def public_name(self) -> str:
        return self.served_model_name or self.model_name


def create_app(settings: GatewaySettings) -> FastAPI:
    backend = TritonBackend(settings.triton_grpc, settings.model_name)
    metrics = GatewayMetrics()
    created = now()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            await backend.load_model_config()
        except OpenAIError as error:  # Triton may start after us; the first request retries
            log.warning("qwen-openai: %s (will retry on the first request)", error.message)
        yield
        await backend.close()

    app = FastAPI(title="qwen-triton OpenAI gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.metrics = metrics
    _install_error_handlers(app, metrics)

    def check_access(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != settings.api_key:
            raise OpenAIError(
                401, "invalid or missing API key: send `Authorization: Bearer <key>`", code="invalid_api_key"
            )

    def check_model(model: str) -> None:
        if model not in (settings.public_name, settings.model_name):
            raise OpenAIError(
                404,
                f"The model {model!r} does not exist; this server serves {settings.public_name!r}",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> Response:
        ready = await backend.is_ready()
        return JSONResponse({"status": "ok" if ready else "unavailable"}, status_code=200 if ready else 503)

    @app.get("/health/live")
    async def live() -> Response:
        """The gateway process answers (for liveness probes: /health waits for Triton's model)."""
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        check_access(request)
        cards = ModelList(data=[ModelCard(id=settings.public_name, created=created)])
        return _answer(metrics, "models", cards.model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        check_access(request)
        check_model(model_id)
        return _answer(metrics, "models", ModelCard(id=settings.public_name, created=created).model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        check_access(request)
        body = await _parse(request, ChatCompletionRequest)
        check_model(body.model)
        log.info("chat request user=%s n=%d stream=%s", body.user, body.n, body.stream)
        await _ensure_config(backend)
        choices_inputs, plan = chat_inputs(body, backend.accepts)
        choices = [
            ChatChoice(i, plan.parse_tool_calls, plan.forced_tool, body.logprobs) for i in range(len(choices_inputs))
        ]
        answer = _Answer(backend, metrics, "chat", choices_inputs, settings.public_name, "chat.completion")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await answer.stream(request, lambda i, c: choices[i].add(c), include_usage)
        usage = await until_disconnected(request, answer.collect(lambda i, c: choices[i].add(c)), metrics, "chat")
        return _answer(metrics, "chat", answer.whole([choice.message() for choice in choices], usage))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        check_access(request)
        body = await _parse(request, CompletionRequest)
        check_model(body.model)
        log.info("completion request user=%s n=%d stream=%s", body.user, body.n, body.stream)
        await _ensure_config(backend)
        choices_inputs = completion_inputs(body, backend.accepts)
        choices = [CompletionChoice(i, body.logprobs is not None) for i in range(len(choices_inputs))]
        answer = _Answer(backend, metrics, "completions", choices_inputs, settings.public_name, "text_completion")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await answer.stream(request, lambda i, c: [choices[i].add(c)], include_usage)
        usage = await until_disconnected(
            request, answer.collect(lambda i, c: choices[i].add(c)), metrics, "completions"
        )
        return _answer(metrics, "completions", answer.whole([choice.whole() for choice in choices], usage))

    add_generate_routes(app, backend, metrics, check_access)
    return app


# ---------------------------------------------------------------- one answer


class _Answer:
    """The n engine requests of one OpenAI request, consumed whole or as server-sent events."""

    def __init__(self, backend, metrics: GatewayMetrics, endpoint: str, choices_inputs, model: str, kind: str):
        self.backend, self.metrics, self.endpoint = backend, metrics, endpoint
        self.choices_inputs = choices_inputs
        self.model = model
        self.kind = kind
        self.id = new_id("chatcmpl" if endpoint == "chat" else "cmpl")
        self.created = now()
        self.usage = Usage(len(choices_inputs))
        self._arrival = time.monotonic()
        self._first_token_seen = False

    def _observe(self, index: int, chunk) -> None:
        self.usage.add(index, chunk)
        if chunk.token_ids:
            self.metrics.generation_tokens.inc(len(chunk.token_ids))
            if not self._first_token_seen:
                self._first_token_seen = True
                self.metrics.time_to_first_token.labels(self.endpoint).observe(time.monotonic() - self._arrival)

    async def collect(self, add) -> dict[str, int]:
        async for index, chunk in merged_chunks(self.backend, self.choices_inputs):
            self._observe(index, chunk)
            add(index, chunk)
        return self.usage.openai()

    def whole(self, choices: list[dict[str, Any]], usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    async def stream(self, request: Request, deltas_for, include_usage: bool) -> Response:
        chunks = merged_chunks(self.backend, self.choices_inputs)
        # The first chunk decides the status: a request the model refuses is a plain 400, not a broken stream.
        first = await until_disconnected(request, anext(chunks), self.metrics, self.endpoint, on_cancel=chunks)
        self.metrics.answered(self.endpoint, 200)
        return StreamingResponse(
            self._events(first, chunks, deltas_for, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _events(self, first, chunks: AsyncIterator, deltas_for, include_usage: bool) -> AsyncIterator[str]:
        completed = False
        try:
            for event in self._chunk_events(*first, deltas_for, include_usage):
                yield event
            async for index, chunk in chunks:
                for event in self._chunk_events(index, chunk, deltas_for, include_usage):
                    yield event
            if include_usage:
                yield _sse(self._envelope([], usage=self.usage.openai()))
            completed = True
        except OpenAIError as error:  # after the first token the status is sent: the error rides the stream
            self.metrics.errors.labels(self.endpoint, str(error.status)).inc()
            yield _sse(error.body())
            completed = True
        finally:
            if not completed:  # the client went away: Starlette cancelled us mid-stream
                self.metrics.cancelled.labels(self.endpoint).inc()
            await chunks.aclose()  # cancels the choices' gRPC streams if they are still running
        yield "data: [DONE]\n\n"

    def _chunk_events(self, index: int, chunk, deltas_for, include_usage: bool) -> list[str]:
        self._observe(index, chunk)
        usage = {"usage": None} if include_usage else {}
        return [_sse(self._envelope([delta], **usage)) for delta in deltas_for(index, chunk)]

    def _envelope(self, choices: list[dict[str, Any]], **extra) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.kind == "chat.completion" else self.kind
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _ensure_config(backend: TritonBackend) -> None:
    if not backend.inputs:
        await backend.load_model_config()


async def _parse(request: Request, model: type[pydantic.BaseModel]):
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as error:
        raise validation_error(error.errors(include_url=False)) from None
    except ValueError as error:
        raise invalid_request(f"the body is not valid JSON: {error}") from None


def _answer(metrics: GatewayMetrics, endpoint: str, payload: dict[str, Any]) -> Response:
    metrics.answered(endpoint, 200)
    return JSONResponse(payload)


def _endpoint_of(request: Request) -> str:
    path = request.url.path
    generate = generate_endpoint(path)
    if generate is not None:
        return generate
    for prefix, name in (("/v1/chat", "chat"), ("/v1/completions", "completions"), ("/v1/models", "models")):
        if path.startswith(prefix):
            return name
    return "other"


def _install_error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    def reply(request: Request, error: OpenAIError) -> JSONResponse:
        metrics.answered(_endpoint_of(request), error.status)
        # Triton's own paths answer in Triton's error shape, which its clients parse.
        body = {"error": error.message} if request.url.path.startswith("/v2/") else error.body()
        return JSONResponse(body, status_code=error.status, headers=error.headers())

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, error: OpenAIError):
        return reply(request, error)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, error: RequestValidationError):
        return reply(request, validation_error(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {error.detail}"
        return reply(request, OpenAIError(error.status_code, message))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        log.exception("qwen-openai: unexpected error on %s", request.url.path)
        return reply(request, OpenAIError(500, f"internal error: {error}"))
