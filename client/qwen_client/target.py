"""`Target`: where requests go (server address, model, timeout), shared by every transport."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    url: str  # host:port, no scheme (tritonclient's form)
    model: str
    timeout: float  # seconds to wait for each answer from the server

    @classmethod
    def parse(cls, url: str, model: str, timeout: float) -> Target:
        # People often paste grpc://host:port or http://host:port/; tritonclient wants host:port.
        return cls(url.split("://", 1)[-1].rstrip("/"), model, float(timeout))
