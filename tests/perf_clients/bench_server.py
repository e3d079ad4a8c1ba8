"""A real tritonserver for the benchmark clients, started by scripts/serve.py as tests/conftest.py starts the
session's, with one difference: Triton's statistics API is open.

perf_analyzer (which genai-perf drives for `--service-kind triton`) reads the model statistics over gRPC
before and after each measurement, and it cannot send the admin header there (its `-H` is for HTTP only), so
against serve.py's default (statistics restricted) it exits 99 with "This protocol is restricted, expecting
header 'triton-grpc-protocol-triton-admin-key'". A server meant to be benchmarked opens statistics; the
session's server keeps the default, so this one is its own process.
"""

from __future__ import annotations

import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from server_process import start_serve, stop_serve

# Everything serve.py restricts by default except statistics.
RESTRICTED_APIS = "shared-memory,logging,trace"


@dataclass
class BenchServer:
    http_url: str  # http://127.0.0.1:<port>
    grpc_url: str  # 127.0.0.1:<port>
    metrics_url: str
    log_path: Path

    def inference_count(self, model: str) -> int:
        """Triton's own counter of requests `model` completed."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(f'nv_inference_count{{model="{model}"'):
                    return int(float(line.rsplit(" ", 1)[1]))
        raise AssertionError(f"no nv_inference_count for {model} at {self.metrics_url}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_bench_server(run_dir: Path) -> tuple[BenchServer, subprocess.Popen]:
    served = start_serve(run_dir, ["--restricted-apis", RESTRICTED_APIS])
    return BenchServer(served.http_url, served.grpc_url, served.metrics_url, served.log_path), served.process


def stop_bench_server(process: subprocess.Popen) -> None:
    stop_serve(process)
