"""The session's OpenAI gateway, in front of the session's real tritonserver (tests/conftest.py)."""

from __future__ import annotations

import pytest
from openai_gateway_process import start_gateway, stop_gateway


@pytest.fixture(scope="session")
def gateway(triton_server, tmp_path_factory):
    started = start_gateway(triton_server.grpc_url, tmp_path_factory.mktemp("openai") / "gateway.log")
    try:
        yield started
    finally:
        stop_gateway(started)
