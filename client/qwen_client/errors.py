"""The exceptions a caller of qwen_client can catch, one per thing that went wrong.

Each message says what failed and what to do about it; `field` names the offending input when there is one.
"""

from __future__ import annotations


class QwenClientError(Exception):
    """Base class: every error raised by qwen_client derives from it."""


class InvalidParameterError(QwenClientError, ValueError):
    """A generation parameter was rejected on the client, before anything was sent."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ServerError(QwenClientError):
    """The server answered, with an error. Never retried: sending it again would fail again.

    `status` is the HTTP status (e.g. 400) or the gRPC status name when the transport gave one;
    `field` is the request input the message names, when it names one.
    """

    _what = "server error"

    def __init__(self, message: str, status: str | None = None, field: str | None = None):
        self.message = message
        self.status = status
        self.field = field
        prefix = f"{self._what} ({status})" if status else self._what
        super().__init__(f"{prefix}: {message}")


class BadRequestError(ServerError):
    """The server rejected the request itself (HTTP 4xx, gRPC INVALID_ARGUMENT, or an error naming an input)."""

    _what = "request rejected"


class ConnectionFailedError(QwenClientError, ConnectionError):
    """No connection to the server, after every retry."""


class RequestTimeoutError(QwenClientError, TimeoutError):
    """The server took longer than the client's timeout."""
