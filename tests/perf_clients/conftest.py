"""Fixtures of the benchmark-client tests: genai-perf (installed by scripts/install_genai_perf.sh, which `make
test` runs), a tritonserver it can measure (bench_server.py says why it is not the session's) and the OpenAI
gateway in front of it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from bench_server import start_bench_server, stop_bench_server
from server_process import REPO_ROOT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "openai"))
from openai_gateway_process import start_gateway, stop_gateway  # noqa: E402

GENAI_PERF_RUNNER = REPO_ROOT / ".tools" / "genai-perf-venv" / "bin" / "genai-perf-run"
PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"


@pytest.fixture(scope="session")
def genai_perf() -> Path:
    """The wrapper that runs genai-perf with the engine virtualenv's perf_analyzer. Missing is a failure:
    `make test` installs it, so on CI a missing tool is a broken install step, not a reason to skip."""
    missing = [str(path) for path in (GENAI_PERF_RUNNER, PERF_ANALYZER) if not path.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install_genai_perf.sh (`make test` does)")
    return GENAI_PERF_RUNNER


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory):
    server, process = start_bench_server(tmp_path_factory.mktemp("bench-triton"))
    try:
        yield server
    finally:
        stop_bench_server(process)


@pytest.fixture(scope="module")
def bench_gateway(bench_server, tmp_path_factory):
    started = start_gateway(bench_server.grpc_url, tmp_path_factory.mktemp("bench-openai") / "gateway.log")
    try:
        yield started
    finally:
        stop_gateway(started)
