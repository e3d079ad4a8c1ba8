"""Retries on connection errors only.

A server that answered (even with a 400) is never asked again: the same request would fail the same way,
and a generation that already streamed tokens must not be replayed. Only "could not reach the server"
(`ConnectionFailedError` raised by a transport before any response) is retried, with capped backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from .errors import ConnectionFailedError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # attempts = retries + 1
    backoff_s: float = 0.1  # first pause, doubled each retry
    max_backoff_s: float = 2.0

    def __post_init__(self):
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")

    def pause(self, retry_index: int) -> float:
        return min(self.backoff_s * (2**retry_index), self.max_backoff_s)

    def pause_after(self, error: ConnectionFailedError, retry_index: int) -> float:
        """Seconds to wait before the next attempt; raises the final error when none is left."""
        if retry_index == self.retries:
            attempts = retry_index + 1
            raise ConnectionFailedError(f"{error} (gave up after {attempts} attempt{'s' * (attempts > 1)})") from error
        return self.pause(retry_index)


def call(policy: RetryPolicy, attempt: Callable[[], T]) -> T:
    for retry in range(policy.retries + 1):
        try:
            return attempt()
        except ConnectionFailedError as error:
            time.sleep(policy.pause_after(error, retry))
    raise AssertionError("unreachable")


async def acall(policy: RetryPolicy, attempt: Callable[[], Awaitable[T]]) -> T:
    for retry in range(policy.retries + 1):
        try:
            return await attempt()
        except ConnectionFailedError as error:
            await asyncio.sleep(policy.pause_after(error, retry))
    raise AssertionError("unreachable")


def stream(policy: RetryPolicy, open_stream: Callable[[], Iterator[T]]) -> Iterator[T]:
    """Yields from a fresh stream per attempt; retries only while nothing has been yielded yet."""
    for retry in range(policy.retries + 1):
        started = False
        items = open_stream()
        try:
            for item in items:
                started = True
                yield item
            return
        except ConnectionFailedError as error:
            if started:
                raise
            time.sleep(policy.pause_after(error, retry))
        finally:
            items.close()  # a caller that stops early cancels the request on the server


async def astream(policy: RetryPolicy, open_stream: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
    for retry in range(policy.retries + 1):
        started = False
        items = open_stream()
        try:
            async for item in items:
                started = True
                yield item
            return
        except ConnectionFailedError as error:
            if started:
                raise
            await asyncio.sleep(policy.pause_after(error, retry))
        finally:
            await items.aclose()
