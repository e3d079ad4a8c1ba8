"""HTTP transport: Triton's generate extension for inference, tritonclient.http for everything else.

tritonclient.http only speaks /infer, which a decoupled model refuses; /generate (one response) and
/generate_stream (Server-Sent Events) accept it. So requests go there as plain JSON, with keys named like
the model's inputs, through urllib (sync) and aiohttp (async).
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
from tritonclient.utils import InferenceServerException

from .errors import BadRequestError, ConnectionFailedError, QwenClientError, RequestTimeoutError, ServerError
from .results import Chunk
from .server_info import Health, ModelInfo, models_from_index
from .sse import SseDecoder
from .target import Target
from .wire import chunk_from_json, error_in_response, field_named_in, json_body


def classify_status(status: int, message: str) -> QwenClientError:
    """An HTTP error answer -> the client's error type (never retried: the server did answer)."""
    field = field_named_in(message)
    if 400 <= status < 500:
        return BadRequestError(message, str(status), field)
    return ServerError(message, str(status), field)


def _error_message(body: str) -> str:
    """The `error` of an error answer: plain JSON, or (from generate_stream) JSON inside an SSE event."""
    if body.startswith("data:"):
        decoder = SseDecoder()
        events = [decoder.feed(line) for line in body.splitlines()] + [decoder.flush()]
        body = next((event for event in events if event is not None), body)
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body


def _unreachable(url: str, error: BaseException) -> ConnectionFailedError:
    return ConnectionFailedError(
        f"cannot reach Triton over HTTP at {url}: {error}. Is tritonserver running, and is this its HTTP port?"
    )


def _timed_out(url: str, timeout: float) -> RequestTimeoutError:
    return RequestTimeoutError(f"no response from Triton at {url} within {timeout}s")


def _chunk_from_event(data: str) -> Chunk:
    payload = json.loads(data)
    if "error" in payload:
        # generate_stream reports errors after the 200 as an event of their own.
        raise error_in_response(str(payload["error"]))
    return chunk_from_json(payload)


class HttpTransport:
    protocol = "http"

    def __init__(self, target: Target):
        self.url, self.model, self.timeout = target.url, target.model, target.timeout
        import tritonclient.http as httpclient  # control calls only; needs the HTTP extra of tritonclient

        self._control = httpclient.InferenceServerClient(
            self.url, connection_timeout=self.timeout, network_timeout=self.timeout
        )

    def close(self) -> None:
        self._control.close()

    def _unary(self, method: str, *args, **kwargs) -> Any:
        try:
            return getattr(self._control, method)(*args, **kwargs)
        except InferenceServerException as error:
            raise classify_status(int(error.status() or 500), error.message() or str(error)) from None
        except TimeoutError:
            raise _timed_out(self.url, self.timeout) from None
        except OSError as error:  # refused, reset, unknown host
            raise _unreachable(self.url, error) from None

    def health(self) -> Health:
        live = self._unary("is_server_live")
        ready = self._unary("is_server_ready")
        return Health(live=live, ready=ready, model_ready=self._unary("is_model_ready", self.model))

    def models(self) -> list[ModelInfo]:
        return models_from_index(self._unary("get_model_repository_index"))

    def _post(self, endpoint: str, body: dict[str, Any]):
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{self.model}/{endpoint}",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            raise classify_status(error.code, _error_message(error.read().decode("utf-8", "replace"))) from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, socket.timeout):
                raise _timed_out(self.url, self.timeout) from None
            raise _unreachable(self.url, error.reason) from None
        except TimeoutError:
            raise _timed_out(self.url, self.timeout) from None
        except OSError as error:
            raise _unreachable(self.url, error) from None

    def stream_chunks(self, inputs: dict[str, Any]) -> Iterator[Chunk]:
        streaming = bool(inputs.get("stream"))
        response = self._post("generate_stream" if streaming else "generate", json_body(inputs))
        # Closing the response (also when the caller stops early) drops the connection: Triton cancels.
        with response:
            try:
                if not streaming:
                    yield _chunk_from_event(response.read().decode("utf-8"))
                    return
                decoder = SseDecoder()
                for raw_line in response:
                    data = decoder.feed(raw_line.decode("utf-8"))
                    if data is not None:
                        yield _chunk_from_event(data)
                tail = decoder.flush()
                if tail is not None:
                    yield _chunk_from_event(tail)
            except TimeoutError:
                raise _timed_out(self.url, self.timeout) from None


class AsyncHttpTransport:
    protocol = "http"

    def __init__(self, target: Target):
        self.url, self.model, self.timeout = target.url, target.model, target.timeout
        self._control = None  # tritonclient.http.aio client, made on the first control call
        self._session: aiohttp.ClientSession | None = None

    def _get_control(self):
        if self._control is None:  # aiohttp sessions belong to the loop that creates them
            import tritonclient.http.aio as httpclient_aio  # control calls only: health, model list

            self._control = httpclient_aio.InferenceServerClient(self.url, conn_timeout=self.timeout)
        return self._control

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
            # No cap on connections: a streaming request holds its connection until its last token, and
            # aiohttp's default pool of 100 queued the 101st stream until another finished (on an H100,
            # 256 concurrent streams over HTTP gave 67 % of the engine's throughput, gRPC 92 %). The
            # caller bounds concurrency (the bench's workers, the application's own requests).
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._control is not None:
            await self._control.close()
            self._control = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _unary(self, method: str, *args, **kwargs) -> Any:
        try:
            return await getattr(self._get_control(), method)(*args, **kwargs)
        except InferenceServerException as error:
            raise classify_status(int(error.status() or 500), error.message() or str(error)) from None
        except aiohttp.ClientConnectionError as error:
            raise _unreachable(self.url, error) from None
        except (TimeoutError, asyncio.TimeoutError):
            raise _timed_out(self.url, self.timeout) from None

    async def health(self) -> Health:
        live = await self._unary("is_server_live")
        ready = await self._unary("is_server_ready")
        return Health(live=live, ready=ready, model_ready=await self._unary("is_model_ready", self.model))

    async def models(self) -> list[ModelInfo]:
        return models_from_index(await self._unary("get_model_repository_index"))

    async def stream_chunks(self, inputs: dict[str, Any]) -> AsyncIterator[Chunk]:
        streaming = bool(inputs.get("stream"))
        endpoint = "generate_stream" if streaming else "generate"
        url = f"http://{self.url}/v2/models/{self.model}/{endpoint}"
        finished = False
        try:
            async with self._get_session().post(url, json=json_body(inputs)) as response:
                try:
                    if response.status >= 400:
                        raise classify_status(response.status, _error_message(await response.text()))
                    if not streaming:
                        yield _chunk_from_event(await response.text())
                    else:
                        async for chunk in _sse_chunks(response):
                            yield chunk
                    finished = True
                finally:
                    if not finished:
                        response.close()  # drop the connection so Triton cancels the request
        except aiohttp.ClientConnectionError as error:
            raise _unreachable(self.url, error) from None
        except (TimeoutError, asyncio.TimeoutError):  # distinct classes before Python 3.11
            raise _timed_out(self.url, self.timeout) from None


async def _sse_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
    decoder = SseDecoder()
    async for raw_line in response.content:
        data = decoder.feed(raw_line.decode("utf-8"))
        if data is not None:
            yield _chunk_from_event(data)
    tail = decoder.flush()
    if tail is not None:
        yield _chunk_from_event(tail)
