"""Shared fixtures. `triton_server`: one real tritonserver per test session, started by scripts/serve.py.

It serves the offline demo model (float32 on CPU) on free ports with small engine limits so the suite stays
fast, and is stopped by PID when the session ends. Any test that needs a live server asks for it:

    def test_something(triton_server):
        requests.post(f"{triton_server.http_url}/v2/models/qwen/generate", json={...})
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from server_process import start_serve, stop_serve

# Triton picks interpreter or compiler when its modules are first imported, and torch itself imports
# triton from modules the engine uses (torch.nn.attention.bias, at the collection of tests/engine): so on a
# machine without CUDA the interpreter switch is set here, before any test module is collected. (The
# kernel tests' kernel_env.py sets the same switch; this keeps a whole-suite run from importing triton first.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory) -> TritonServer:
    try:
        served = start_serve(tmp_path_factory.mktemp("triton"))
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield TritonServer(
            http_url=served.http_url,
            grpc_url=served.grpc_url,
            metrics_url=served.metrics_url,
            pid=served.process.pid,
            log_path=served.log_path,
        )
    finally:
        stop_serve(served.process)
