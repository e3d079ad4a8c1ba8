"""What the tests that start their own scripts/serve.py (or the server image) share: free ports and the wait
for serve.py's ready line. A module with a name of its own, not conftest.py: with several test folders
collected, ``import conftest`` can name another folder's module. tests/ is on sys.path through
tests/conftest.py, which pytest loads first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_LINE = "serve.py: READY"


def free_ports(count: int) -> list[int]:
    """Ports the OS just handed out, held open together so that they differ."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_ready_line(process: subprocess.Popen, log_path: Path, timeout_s: float) -> bool:
    """True once serve.py has logged READY; False when ``timeout_s`` passes first. A serve.py that exits
    meanwhile raises, with the end of its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-6000:]
            raise RuntimeError(f"scripts/serve.py exited with {process.returncode}:\n{tail}")
        if READY_LINE in log_path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return False


REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO_ROOT / "models" / "smollm2-135m-instruct"
# Small limits: a short model length keeps the KV pool and the "too long" tests cheap.
TEST_ENGINE_PARAMS = {"max_model_len": "2048", "dtype": "float32", "device": "cpu"}
READY_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


@dataclass
class ServeProcess:
    """scripts/serve.py serving the demo model on free ports, its tritonserver ready."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:  # tritonclient.grpc form, no scheme
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_serve(
    run_dir: Path,
    extra_args: list[str] = (),
    params: dict[str, str] | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ServeProcess:
    """serve.py as a user runs it, with the test engine limits (``params`` override or add to them) and
    ``extra_args``; returns once it is ready (raises with the log's end, the server stopped, when it exits
    or is not ready within ``ready_timeout_s``)."""
    if not (DEMO_MODEL / "config.json").exists():
        raise RuntimeError(f"demo model missing at {DEMO_MODEL}: run `make model`")
    http_port, grpc_port, metrics_port = free_ports(3)
    log_path = run_dir / "server.log"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "serve.py"), "--model", str(DEMO_MODEL)]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    command += ["--instance-kind", "cpu", "--run-dir", str(run_dir), "--ready-timeout", str(ready_timeout_s)]
    command += list(extra_args)
    for key, value in {**TEST_ENGINE_PARAMS, **(params or {})}.items():
        command += ["--param", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )
    served = ServeProcess(process, http_port, grpc_port, metrics_port, log_path)
    try:
        ready = wait_for_ready_line(process, log_path, ready_timeout_s)
    except RuntimeError:
        stop_serve(process)
        raise
    if not ready:
        stop_serve(process)
        raise RuntimeError(f"tritonserver not ready after {ready_timeout_s} s:\n{served.log_tail(100)}")
    return served


def stop_serve(process: subprocess.Popen) -> None:
    """SIGTERM to serve.py, which forwards it to tritonserver; its process group only if that hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # serve.py leads its own session: only what it started
            process.wait(timeout=10)
