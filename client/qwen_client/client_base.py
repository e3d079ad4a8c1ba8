"""What QwenClient and AsyncQwenClient share: settings, their checks, and turning a call into model inputs."""

from __future__ import annotations

import importlib
from typing import Any

from . import retry
from .errors import InvalidParameterError
from .params import GenerationParams
from .request import build_inputs, resolve_params
from .server_info import Health
from .target import Target

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}
NOT_LIVE = Health(live=False, ready=False, model_ready=False)


def check_settings(protocol: str, timeout: float, retries: int) -> None:
    """Client settings, checked with the same care as generation parameters."""
    if protocol not in DEFAULT_URLS:
        raise InvalidParameterError("protocol", f"must be 'grpc' or 'http', got {protocol!r}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise InvalidParameterError("timeout", f"must be a number of seconds > 0, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidParameterError("retries", f"must be an integer >= 0, got {retries!r}")


class ClientBase:
    """Holds the settings; subclasses pick the transport classes (sync or async) in `_transports`.

    timeout: seconds to wait for the server's next answer (connection, first token, next token).
    retries: extra attempts when the server cannot be reached; an answered request is never retried.
    params: default GenerationParams for every call; keyword arguments of a call override them.
    """

    # protocol -> "module:Class", imported on first use: a gRPC-only install needs no HTTP stack.
    _transports: dict[str, str] = {}

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = "qwen",
        timeout: float = 60.0,
        retries: int = 2,
        params: GenerationParams | None = None,
    ):
        check_settings(protocol, timeout, retries)
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.model = model
        module_name, _, class_name = self._transports[protocol].partition(":")
        transport = getattr(importlib.import_module(module_name, __package__), class_name)
        self._transport = transport(Target.parse(self.url, model, timeout))
        self._retry = retry.RetryPolicy(retries=retries)
        self._params = params

    def _inputs(
        self, prompt_part: dict[str, Any], params: GenerationParams | None, overrides: dict[str, Any], stream: bool
    ) -> dict[str, Any]:
        # Validated here, in the caller's frame, rather than at the first next() of a generator.
        return build_inputs(prompt_part, resolve_params(params or self._params, overrides), stream)

    def _not_ready_error_message(self, timeout: float, health: Health) -> str:
        return f"model {self.model!r} at {self.url} not ready after {timeout}s: {health}"
