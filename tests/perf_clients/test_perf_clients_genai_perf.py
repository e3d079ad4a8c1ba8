"""genai-perf, as users run it, against the real tritonserver: `--backend vllm` on `qwen_vllm`,
`--backend tensorrtllm` on `qwen` (the TensorRT-LLM ensemble's names) and `--endpoint-type chat` on the OpenAI
gateway. Each must finish and report time to first token, inter-token latency and throughput.

Small load (8 requests, concurrency 2, 8 output tokens) and a hard timeout per run, whose expiry kills the
tool's whole process group (genai-perf and the perf_analyzer it spawned), so CI cannot hang here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from openai_gateway_process import SERVED_MODEL_NAME
from server_process import DEMO_MODEL

RUN_TIMEOUT_S = 240
REQUESTS = 8
CONCURRENCY = 2
LOAD = [
    "--tokenizer", str(DEMO_MODEL),
    "--synthetic-input-tokens-mean", "16", "--synthetic-input-tokens-stddev", "0",
    "--output-tokens-mean", "8",
    "--request-count", str(REQUESTS), "--concurrency", str(CONCURRENCY),
    "--streaming",
    # perf_analyzer's own output in the run's: under load on CI it once exited 0 with an empty export file
    "--verbose",
]  # fmt: skip


def run_tool(command: list[str], timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # genai-perf's table, not wrapped at a pipe's 80 columns
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: genai-perf and its perf_analyzer only
        output, _ = process.communicate()
        pytest.fail(f"{command[0]} did not finish in {timeout} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output)


def profile(genai_perf: Path, artifacts: Path, *args: str) -> dict:
    """Runs `genai-perf profile`, checks it finished, and returns its JSON export (metric -> statistics)."""
    done = run_tool([str(genai_perf), "profile", *args, *LOAD, "--artifact-dir", str(artifacts)])
    assert done.returncode == 0, done.stdout[-6000:]
    assert "Time To First Token" in done.stdout and "Output Token Throughput" in done.stdout, done.stdout[-3000:]
    (export,) = artifacts.glob("*/profile_export_genai_perf.json")
    return json.loads(export.read_text())


def assert_measured(metrics: dict) -> None:
    assert metrics["request_count"]["avg"] == REQUESTS
    for name in ("time_to_first_token", "inter_token_latency", "output_token_throughput", "request_throughput"):
        assert metrics[name]["avg"] > 0, (name, metrics[name])
    assert metrics["output_sequence_length"]["avg"] > 1


def test_genai_perf_vllm_backend_on_qwen_vllm(genai_perf, bench_server, tmp_path):
    before = bench_server.inference_count("qwen_vllm")
    metrics = profile(
        genai_perf,
        tmp_path,
        "-m", "qwen_vllm", "--backend", "vllm", "--endpoint-type", "kserve", "-u", bench_server.grpc_url,
        # A warm-up shorter than the concurrency never ends in perf_analyzer 2.51 (genai-perf-run refuses it).
        "--warmup-request-count", str(CONCURRENCY),
    )  # fmt: skip
    assert_measured(metrics)
    assert bench_server.inference_count("qwen_vllm") - before >= REQUESTS + CONCURRENCY


def test_genai_perf_tensorrtllm_backend_on_qwen(genai_perf, bench_server, tmp_path):
    before = bench_server.inference_count("qwen")
    metrics = profile(
        genai_perf,
        tmp_path,
        "-m", "qwen", "--backend", "tensorrtllm", "--endpoint-type", "kserve", "-u", bench_server.grpc_url,
    )  # fmt: skip
    assert_measured(metrics)
    assert bench_server.inference_count("qwen") - before >= REQUESTS


def test_genai_perf_chat_on_the_openai_gateway(genai_perf, bench_gateway, tmp_path):
    url = bench_gateway.url.removeprefix("http://")
    metrics = profile(genai_perf, tmp_path, "-m", SERVED_MODEL_NAME, "--endpoint-type", "chat", "-u", url)
    assert_measured(metrics)
    assert 'qwen_openai_requests_total{endpoint="chat",status="200"}' in bench_gateway.metrics()


def test_genai_perf_run_refuses_a_warmup_perf_analyzer_would_never_finish(genai_perf):
    done = run_tool([str(genai_perf), "profile", "-m", "qwen", "--warmup-request-count", "1", "--concurrency", "2"])
    assert done.returncode == 2 and "never ends" in done.stdout, done.stdout
