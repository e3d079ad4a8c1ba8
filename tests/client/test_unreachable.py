"""A server that is not there: fail fast, after the retries, with an error that says what to check.

These talk to a real closed port (nothing listens on it), so the connection is really refused.
"""

import asyncio
import socket
import time

import pytest

from qwen_client import AsyncQwenClient, ConnectionFailedError, QwenClient


@pytest.fixture
def dead_port():
    # Bind then close: the port is free and nothing listens on it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_generate_fails_fast_after_retries(dead_port, protocol):
    client = QwenClient(f"127.0.0.1:{dead_port}", protocol=protocol, retries=2, timeout=5)
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError) as caught:
        client.generate("hi", max_tokens=4)
    elapsed = time.monotonic() - started
    client.close()
    message = str(caught.value)
    assert f"127.0.0.1:{dead_port}" in message and "Is tritonserver running" in message
    assert "after 3 attempts" in message
    assert 0.25 <= elapsed < 3.0  # two backoff pauses (0.1 s + 0.2 s), no long hang


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_stream_fails_the_same_way(dead_port, protocol):
    with QwenClient(f"127.0.0.1:{dead_port}", protocol=protocol, retries=0) as client:
        with pytest.raises(ConnectionFailedError, match="after 1 attempt\\)"):
            list(client.stream("hi"))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_health_reports_not_live_instead_of_raising(dead_port, protocol):
    with QwenClient(f"127.0.0.1:{dead_port}", protocol=protocol) as client:
        health = client.health()
        assert not health.live and not health.ok
        with pytest.raises(ConnectionFailedError):
            client.models()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_async_client_fails_fast(dead_port, protocol):
    async def attempt():
        async with AsyncQwenClient(f"127.0.0.1:{dead_port}", protocol=protocol, retries=1) as client:
            assert not (await client.health()).live
            with pytest.raises(ConnectionFailedError, match="after 2 attempts"):
                await client.generate("hi")
            with pytest.raises(ConnectionFailedError):
                async for _ in client.stream("hi"):
                    pass

    asyncio.run(asyncio.wait_for(attempt(), timeout=10))
