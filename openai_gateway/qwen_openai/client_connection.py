"""Waiting on work for an HTTP client that may leave: the work (and the Triton requests under it) is
cancelled as soon as the client disconnects, instead of running on for nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from .metrics import GatewayMetrics
from .protocol import OpenAIError

DISCONNECT_POLL_S = 0.25
T = TypeVar("T")


async def until_disconnected(
    request: Request, awaitable: Awaitable[T], metrics: GatewayMetrics, endpoint: str, on_cancel=None
) -> T:
    """`await awaitable`, cancelled (with its Triton requests) if the HTTP client disconnects meanwhile;
    `on_cancel` (an async generator the awaitable reads from) is closed then too."""
    work = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
            if done:
                return work.result()
            if await request.is_disconnected():
                metrics.cancelled.labels(endpoint).inc()
                raise OpenAIError(499, "the client closed the connection", code="cancelled")
    finally:
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            if on_cancel is not None:
                await on_cancel.aclose()
