"""Fail safe against the real server: deadlines, a bounded queue, a killed engine, and the drain on SIGTERM.

These need servers of their own (small engine limits; one gets its stub killed, one gets SIGTERM), each
started through scripts/serve.py exactly as `make serve` does, never the shared session server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from server_process import start_serve
from serving_helpers import GrpcStream

READY_TIMEOUT_S = 1200  # a loaded 2-core CI machine took 10 min to load the demo model
BASE_PARAMS = {"max_model_len": "1024"}  # the rest: server_process.TEST_ENGINE_PARAMS
# Each test here may start a server of its own (the drain test then streams 3,000 tokens): on a loaded
# 2-core machine a start alone took 10 minutes, beyond the suite's 900 s per-test default.
pytestmark = pytest.mark.timeout(2400)
# The engine refuses with Triton's UNAVAILABLE (HTTP 503); the Python backend of Triton 2.51 in the
# nvidia-pytriton wheel hands it to HTTP /generate as 400 (measured), so the retryable part is the
# message ("retry after N s"), which every client sees. 503 once a Triton release keeps the code.
RETRYABLE_HTTP_STATUS = (503, 400)


@dataclass
class PrivateServer:
    process: subprocess.Popen  # scripts/serve.py
    http_url: str
    grpc_url: str
    metrics_url: str
    run_dir: Path
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def metric(self, name: str) -> float:
        text = requests.get(self.metrics_url, timeout=10).text
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not exported")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # SIGINT: stop at once, no drain
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # serve.py leads its own session
                self.process.wait(timeout=10)


def start_server(tmp_path: Path, params: dict[str, str], drain_timeout: float = 30) -> PrivateServer:
    served = start_serve(
        tmp_path,
        [f"--drain-timeout={drain_timeout}"],
        params={**BASE_PARAMS, **params},
        ready_timeout_s=READY_TIMEOUT_S,
    )
    return PrivateServer(
        served.process, served.http_url, served.grpc_url, served.metrics_url, tmp_path, served.log_path
    )


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def long_stream(server: PrivateServer, text: str = "Tell me a long story.", max_tokens: int = 900) -> GrpcStream:
    stream = GrpcStream(server)
    stream.send(text_input=text, max_tokens=max_tokens, ignore_eos=True, stream=True, temperature=0.0)
    return stream


def generate(server: PrivateServer, body: dict, timeout: float = 300) -> requests.Response:
    return requests.post(f"{server.http_url}/v2/models/qwen/generate", json=body, timeout=timeout)


def grpc_error_of_one_request(server: PrivateServer):
    stream = GrpcStream(server)
    stream.send(text_input="Hi", max_tokens=4)
    try:
        _results, error = stream.collect()
        return error
    finally:
        stream.client.stop_stream(cancel_requests=True)


# ---------------------------------------------------------------- a small engine: 2 running, 2 waiting


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("failsafe-small"),
        {"max_num_seqs": "2", "max_waiting_requests": "2", "queue_timeout_s": "20"},
    )
    yield server
    server.stop()


def test_a_request_deadline_ends_it_with_finish_reason_timeout(small_server):
    started = time.monotonic()
    reply = generate(small_server, {"text_input": "Count:", "max_tokens": 900, "ignore_eos": True, "timeout": 1.5})
    assert reply.status_code == 200, reply.text
    assert reply.json()["finish_reason"] == "timeout"
    assert time.monotonic() - started < 30  # far less than 900 tokens take
    assert generate(small_server, {"text_input": "Hi", "timeout": -1}).status_code == 400


def test_a_full_queue_is_refused_retryably_and_the_waiting_gauge_shows_it(small_server):
    streams = [long_stream(small_server) for _ in range(4)]  # 2 run, 2 wait: the queue is full
    try:
        assert wait_for(lambda: small_server.metric("qwen_num_requests_waiting") == 2), small_server.log_tail()
        reply = generate(small_server, {"text_input": "Hi", "max_tokens": 4})
        assert reply.status_code in RETRYABLE_HTTP_STATUS, reply.text
        assert "max_waiting_requests" in reply.json()["error"] and "retry after" in reply.json()["error"]
        error = grpc_error_of_one_request(small_server)  # a stream's error carries the message (no status)
        assert error is not None and "max_waiting_requests" in str(error), error
    finally:
        for stream in streams:
            stream.client.stop_stream(cancel_requests=True)
    assert wait_for(lambda: small_server.metric("qwen_num_requests_running") == 0)


def test_a_request_left_waiting_past_the_queue_timeout_ends_with_queue_timeout(small_server):
    streams = [long_stream(small_server) for _ in range(2)]  # both running slots taken
    try:
        assert wait_for(lambda: small_server.metric("qwen_num_requests_running") == 2)
        reply = generate(small_server, {"text_input": "Hi", "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        assert reply.json()["finish_reason"] == "queue_timeout" and reply.json()["completion_tokens"] == 0
    finally:
        for stream in streams:
            stream.client.stop_stream(cancel_requests=True)


def test_the_heartbeat_age_is_exported_and_fresh_while_idle(small_server):
    assert wait_for(lambda: small_server.metric("qwen_num_requests_running") == 0)
    assert 0 <= small_server.metric("qwen_engine_heartbeat_age_seconds") < 5  # beats every second when idle


def test_a_killed_engine_fails_streams_at_once_and_takes_the_server_down(small_server):
    """Last test of small_server: it kills the stub (what an OOM kill does)."""
    stream = long_stream(small_server)
    assert stream.next(timeout=120)[1] is None  # the first delta: the stream is running
    (alive,) = (small_server.run_dir / "control").glob("*.alive")  # the one engine instance
    killed_at = time.monotonic()
    os.kill(json.loads(alive.read_text())["pid"], signal.SIGKILL)
    assert small_server.process.wait(timeout=30) == 3, small_server.log_tail()  # restart me
    assert "its stub process" in small_server.log_tail()  # seen by its pid, not only once its reports go stale
    assert time.monotonic() - killed_at < 30  # not a hang (it was 15+ minutes)
    try:
        while True:  # the stream ends with an error instead of hanging to its deadline
            _result, error = stream.next(timeout=10)
            if error is not None:
                break
    finally:
        stream.client.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{small_server.http_url}/v2/health/ready", timeout=5)


# ---------------------------------------------------------------- drain on SIGTERM


def test_sigterm_lets_admitted_streams_finish_and_refuses_new_requests(tmp_path):
    """10 streams of 300 tokens, 2 of them still queued (8 running slots), then SIGTERM: all 10 complete,
    a new request meanwhile is refused with a retryable error, and the server exits cleanly after."""
    server = start_server(tmp_path, {"max_num_seqs": "8"}, drain_timeout=600)
    outcomes: dict[int, tuple[int, str]] = {}
    first_deltas = threading.Semaphore(0)

    def stream(index: int) -> None:
        body = {"text_input": f"Story {index}:", "max_tokens": 300, "ignore_eos": True, "stream": True}
        tokens, reason = 0, "no final response"
        try:
            with requests.post(
                f"{server.http_url}/v2/models/qwen/generate_stream", json=body, stream=True, timeout=600
            ) as reply:
                for line in reply.iter_lines():
                    if not line.startswith(b"data: "):
                        continue
                    event = json.loads(line[len(b"data: ") :])
                    if "error" in event:
                        reason = "error: " + event["error"]
                        break
                    # completion_tokens: the tokens so far (a scalar, or one per choice)
                    count = event.get("completion_tokens", tokens)
                    count = count[0] if isinstance(count, list) else count
                    if not tokens and count > 0:
                        first_deltas.release()
                    tokens = count
                    if event.get("finish_reason"):
                        reason = event["finish_reason"]
        except requests.RequestException as error:
            reason = f"connection: {error!r}"
        outcomes[index] = (tokens, reason)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(10)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(8):  # the 8 running streams have produced; the other 2 wait in the engine's queue
            assert first_deltas.acquire(timeout=300), server.log_tail()
        server.process.send_signal(signal.SIGTERM)
        assert wait_for(lambda: "draining" in server.log_tail(), timeout=10)
        time.sleep(0.5)  # the watchdog has seen the drain request (it looks every 0.25 s)
        refused = generate(server, {"text_input": "Hi", "max_tokens": 4})
        assert refused.status_code in RETRYABLE_HTTP_STATUS, refused.text
        assert "shutting down" in refused.json()["error"] and "retry after" in refused.json()["error"]
        for thread in threads:
            thread.join(timeout=600)
        assert outcomes == {i: (300, "length") for i in range(10)}, outcomes
        # It exits once drained; its code is tritonserver's, which is 1 when a client's keep-alive connection
        # outlives Triton's own exit timeout (seen here), so the code itself is not asserted.
        server.process.wait(timeout=90)
        assert "drained after" in server.log_tail()
    finally:
        server.stop()
