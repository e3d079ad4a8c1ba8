"""Triton's generate extension served by the gateway: `POST /v2/models/<model>[/versions/<v>]/generate` and
`.../generate_stream`, with the request and response JSON of tritonserver's own HTTP frontend.

It exists because Triton 2.51's frontend converts a /generate body to tensors before any model code runs: a
value of the wrong JSON type is its HTTP 500 naming no field, an integer beyond an INT32 input is wrapped
unseen, and JSON inputs must be sent as strings. Here the body is checked against the model's config first
(generate_request.py) and sent over one gRPC stream, cancelled when the HTTP client goes away.

- Models: any model the gateway's tritonserver serves (its config read over gRPC on first use); another
  name is a 404 naming it.
- A response: each output name -> its value (one element as a scalar, more as a flat list), the model's
  response parameters, `model_name`, `model_version`, and `id` when the request set one.
- /generate answers with exactly one response. `stream: true` asks the model for one response per delta,
  so /generate refuses it with a 400 that points to /generate_stream (Triton's own answers 200 with an
  error inside); a model that still sends several responses gets the same 400.
- /generate_stream sends each response as a server-sent event `data: {...}`, as Triton does. The first
  response decides the status (bad input is refused before any token, as a plain JSON error); an error
  after it travels as a `data: {"error": "..."}` event.
- Errors are the extension's `{"error": "..."}` (rendered by app.py for every /v2 path): 400 bad input, 401
  a missing API key (when the gateway has one), 404 unknown model, 503 with Retry-After when Triton is down
  or the server is full, 500 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .client_connection import until_disconnected
from .generate_request import GenerateRequest, bad_request, generate_request, parse_body
from .metrics import GatewayMetrics
from .protocol import OpenAIError
from .triton_backend import FINAL_RESPONSE_PARAMETER, TritonBackend, error_from_model_message

GENERATE = "generate"
GENERATE_STREAM = "generate_stream"
_PATHS = ("/v2/models/{model}", "/v2/models/{model}/versions/{version:int}")


def generate_endpoint(path: str) -> str | None:
    """The metrics' endpoint label of a generate-extension path (None for other paths)."""
    if not path.startswith("/v2/models/"):
        return None
    for endpoint in (GENERATE_STREAM, GENERATE):
        if path.endswith(f"/{endpoint}"):
            return endpoint
    return None


def add_generate_routes(app: FastAPI, backend: TritonBackend, metrics: GatewayMetrics, check_access) -> None:
    async def prepared(request: Request) -> GenerateRequest:
        check_access(request)
        body = parse_body(await request.body())
        model, version = request.path_params["model"], str(request.path_params.get("version", ""))
        return generate_request(body, await backend.model_config(model, version), version)

    async def generate(request: Request) -> Response:
        triton_request = await prepared(request)
        if triton_request.asks_for_stream:
            raise _stream_refused(triton_request)
        responses = model_responses(backend, triton_request)
        answer = await until_disconnected(request, _only_response(triton_request, responses), metrics, GENERATE)
        metrics.answered(GENERATE, 200)
        return JSONResponse(answer)

    async def generate_stream(request: Request) -> Response:
        responses = model_responses(backend, await prepared(request))
        # The first response decides the status: a request the model refuses is a plain 400, not a stream.
        first = await until_disconnected(
            request, _first_response(responses), metrics, GENERATE_STREAM, on_cancel=responses
        )
        metrics.answered(GENERATE_STREAM, 200)
        return StreamingResponse(
            _events(first, responses, metrics),
            media_type="text/event-stream; charset=utf-8",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    for path in _PATHS:
        app.add_api_route(f"{path}/{GENERATE}", generate, methods=["POST"])
        app.add_api_route(f"{path}/{GENERATE_STREAM}", generate_stream, methods=["POST"])


async def model_responses(backend: TritonBackend, generate: GenerateRequest) -> AsyncIterator[dict[str, Any]]:
    """The model's responses as generate-extension JSON, up to the final one (an empty final response, which
    only closes the stream, is not one). Leaving early cancels the request in Triton."""
    client_fields = generate.client_fields()
    async with backend.call(generate.grpc_request(), lambda m: error_from_model_message(m, client_fields)) as call:
        while not call.complete:
            result = await call.next()
            call.complete = call.complete or not generate.model.decoupled  # one request, one response
            response = result.get_response()
            if response.outputs or not call.complete:
                yield response_json(result)


async def _only_response(generate: GenerateRequest, responses: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    answer = None
    async with aclosing(responses):
        async for response in responses:
            if answer is not None:
                raise _stream_refused(generate)
            answer = response
    if answer is None:
        raise OpenAIError(500, f"model {generate.model.name!r} ended the request without a response")
    return answer


async def _first_response(responses: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    return await anext(responses, None)


async def _events(first: dict[str, Any] | None, responses, metrics: GatewayMetrics) -> AsyncIterator[str]:
    completed = False
    try:
        if first is not None:
            yield _event(first)
            async for response in responses:
                yield _event(response)
        completed = True
    except OpenAIError as error:  # after the first response the status is sent: the error rides the stream
        metrics.errors.labels(GENERATE_STREAM, str(error.status)).inc()
        yield _event({"error": error.message})
        completed = True
    finally:
        if not completed:  # the client went away: Starlette cancelled us mid-stream
            metrics.cancelled.labels(GENERATE_STREAM).inc()
        await responses.aclose()  # cancels the gRPC stream if it is still running


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _stream_refused(generate: GenerateRequest) -> OpenAIError:
    model = generate.model.name
    return bad_request(
        f"stream: /generate sends exactly one response; for one response per delta use "
        f"/v2/models/{model}/generate_stream, or send stream: false"
    )


# ---------------------------------------------------------------- one response


def response_json(result) -> dict[str, Any]:
    """One response as Triton's generate extension writes it (keys in name order, as Triton does)."""
    response = result.get_response()
    fields: dict[str, Any] = {output.name: _output_value(result, output.name) for output in response.outputs}
    for name, parameter in response.parameters.items():
        if name != FINAL_RESPONSE_PARAMETER:
            fields[name] = getattr(parameter, parameter.WhichOneof("parameter_choice"))
    fields["model_name"] = response.model_name
    fields["model_version"] = response.model_version
    if response.id:
        fields["id"] = response.id
    return dict(sorted(fields.items()))


def _output_value(result, name: str) -> Any:
    values = [_json_value(item) for item in result.as_numpy(name).reshape(-1).tolist()]
    return values[0] if len(values) == 1 else values


def _json_value(item: Any) -> Any:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else item
