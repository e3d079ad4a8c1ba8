"""Starting and stopping the OpenAI gateway as `make serve` does: the `qwen-openai` console script, its own
process, on a free port, in front of a real tritonserver."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 180  # a loaded CI machine can take long to import the web stack
SERVED_MODEL_NAME = "smollm2-demo"
GATEWAY_SCRIPT = Path(sys.executable).parent / "qwen-openai"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:<port>
    process: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def metric_value(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text, summed over the series that carry `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{key}="{value}"' in (match.group(1) or "") for key, value in labels.items()):
            total += float(match.group(2))
    return total


def start_gateway(grpc_url: str, log_path: Path, *extra_args: str, env: dict | None = None) -> Gateway:
    port = free_port()
    command = [str(GATEWAY_SCRIPT), "--triton-grpc", grpc_url, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model-name", "qwen", "--served-model-name", SERVED_MODEL_NAME, *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env or dict(os.environ))
    gateway = Gateway(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"qwen-openai exited with {process.returncode}:\n{gateway.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{gateway.url}/health", timeout=2):
                return gateway  # 200: Triton's model is ready
        except urllib.error.HTTPError:  # 503: up, but Triton's model is not ready (a dead Triton)
            return gateway
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    stop_gateway(gateway)
    raise RuntimeError(f"qwen-openai not listening after {READY_TIMEOUT_S} s:\n{gateway.log()[-4000:]}")


def stop_gateway(gateway: Gateway) -> None:
    if gateway.process.poll() is None:
        gateway.process.send_signal(signal.SIGTERM)
        try:
            gateway.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
            gateway.process.wait(timeout=10)
