"""Errors a client caused. The server turns them into HTTP 400 / gRPC INVALID_ARGUMENT, never a crash."""


class InvalidRequestError(ValueError):
    """A request parameter is wrong. `field` names it so the client knows what to fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")
