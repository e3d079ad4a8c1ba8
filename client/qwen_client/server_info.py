"""What the server says about itself: `Health` and `ModelInfo`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Health:
    live: bool  # the server process answers
    ready: bool  # the server is ready for inference
    model_ready: bool  # the client's model is loaded (and warmed) and accepts requests

    @property
    def ok(self) -> bool:
        return self.live and self.ready and self.model_ready


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    state: str  # "READY", "UNAVAILABLE", "LOADING", ... ("" when the server does not say)


def models_from_index(entries: Iterable[dict[str, Any]]) -> list[ModelInfo]:
    """Triton's repository index (HTTP list or gRPC JSON 'models') -> ModelInfo list."""
    return [
        ModelInfo(name=e.get("name", ""), version=str(e.get("version", "")), state=e.get("state", "")) for e in entries
    ]
