"""The gateway's SIGTERM as a pod's termination sends it (after the preStop sleep): it stops listening at once,
lets the streams already open finish, and then exits. A gateway of its own, in front of the session's
tritonserver, since this one is stopped."""

from __future__ import annotations

import json
import signal
import time

import requests
from openai_gateway_process import start_gateway

# Greedy counting runs to max_tokens (the demo model never ends the sequence).
COUNTING = {"text_input": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "temperature": 0.0, "max_tokens": 60}
REFUSAL_TIMEOUT_S = 15
EXIT_TIMEOUT_S = 60


def refuses_connections(url: str) -> bool:
    try:
        requests.get(f"{url}/health", timeout=2)
    except requests.ConnectionError:
        return True
    return False


def test_sigterm_finishes_open_streams_then_exits(triton_server, tmp_path):
    gateway = start_gateway(triton_server.grpc_url, tmp_path / "gateway.log")
    try:
        with requests.post(
            f"{gateway.url}/v2/models/qwen/generate_stream", json=COUNTING, stream=True, timeout=120
        ) as reply:
            assert reply.status_code == 200
            lines = (line for line in reply.iter_lines() if line.startswith(b"data: "))
            events = [json.loads(next(lines)[len(b"data: ") :])]
            gateway.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + REFUSAL_TIMEOUT_S
            while not refuses_connections(gateway.url):
                assert time.monotonic() < deadline, "the gateway still accepts connections after SIGTERM"
                time.sleep(0.2)
            events += [json.loads(line[len(b"data: ") :]) for line in lines]
        tokens = [token for event in events for token in event["output_ids"]]
        assert len(tokens) == COUNTING["max_tokens"], f"the stream ended after {len(tokens)} tokens"
        assert events[-1]["finish_reason"] == "length"
        # uvicorn re-raises the signal it handled once its graceful shutdown is done: the process ends by
        # SIGTERM, after the stream (a kill at once would have cut the stream above).
        assert gateway.process.wait(timeout=EXIT_TIMEOUT_S) in (0, -signal.SIGTERM), gateway.log()[-3000:]
        assert "Application shutdown complete" in gateway.log()
    finally:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait(timeout=10)
