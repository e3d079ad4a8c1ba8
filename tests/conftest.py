"""Shared fixtures. `triton_server`: one real tritonserver per test session, started by scripts/serve.py.

It serves the offline demo model (float32 on CPU) on free ports with small engine limits so the suite stays
fast, and is stopped by PID when the session ends. Any test that needs a live server asks for it:

    def test_something(triton_server):
        requests.post(f"{triton_server.http_url}/v2/models/qwen/generate", json={...})
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Triton picks interpreter or compiler when its modules are first imported, and torch itself imports
# triton from modules the engine uses (torch.nn.attention.bias, at the collection of tests/engine): so on a
# machine without CUDA the interpreter switch is set here, before any test module is collected. (The
# kernel tests' kernel_env.py sets the same switch; this keeps a whole-suite run from importing triton first.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO_ROOT / "models" / "smollm2-135m-instruct"
# Small limits: a short model length keeps the KV pool and the "too long" tests cheap.
TEST_ENGINE_PARAMS = {"max_model_len": "2048", "dtype": "float32", "device": "cpu"}
READY_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


@dataclass
class TritonServer:
    http_url: str  # http://127.0.0.1:<port>
    grpc_url: str  # 127.0.0.1:<port> (tritonclient.grpc form, no scheme)
    metrics_url: str  # http://127.0.0.1:<port>/metrics
    pid: int  # scripts/serve.py, which owns tritonserver
    log_path: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            return reply.read().decode()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out; held open together so the three differ."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_until_ready(process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"scripts/serve.py exited with {process.returncode}:\n{log_path.read_text()[-6000:]}")
        if "serve.py: READY" in log_path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"tritonserver not ready after {READY_TIMEOUT_S} s:\n{log_path.read_text()[-6000:]}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to serve.py, which forwards it to tritonserver; the process group only if that hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # serve.py leads its own session: only what it started
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory) -> TritonServer:
    if not (DEMO_MODEL / "config.json").exists():
        pytest.fail(f"demo model missing at {DEMO_MODEL}: run `make model`")
    http_port, grpc_port, metrics_port = free_ports(3)
    run_dir = tmp_path_factory.mktemp("triton")
    log_path = run_dir / "server.log"
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "serve.py"),
        "--model",
        str(DEMO_MODEL),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        "--instance-kind",
        "cpu",
        "--run-dir",
        str(run_dir),
        "--ready-timeout",
        str(READY_TIMEOUT_S),
    ]
    for key, value in TEST_ENGINE_PARAMS.items():
        command += ["--param", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )
    try:
        _wait_until_ready(process, log_path)
        yield TritonServer(
            http_url=f"http://127.0.0.1:{http_port}",
            grpc_url=f"127.0.0.1:{grpc_port}",
            metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
            pid=process.pid,
            log_path=log_path,
        )
    finally:
        _stop(process)
