#!/usr/bin/env python3
"""Does the 3-stage pipeline (tokenizer -> qwen -> detokenizer) help? Measure it against `qwen` with text.

Starts a real tritonserver through scripts/serve.py on free ports (or uses --url of a running one), then
for each model sends the same greedy chat requests over HTTP generate, first one at a time (latency), then
`--concurrency` at once (throughput), and prints a Markdown table for docs/benchmarks.md.

    .venv/bin/python benchmarks/pipeline_vs_direct.py --requests 24 --concurrency 8 --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
from conftest import free_ports  # noqa: E402  (the test fixture's helper: same way of picking ports)

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 times 12?",
    "Who wrote Hamlet?",
    "What does a bee make?",
    "Which planet is the largest?",
]


def one_request(url: str, model: str, index: int, max_tokens: int) -> float:
    messages = json.dumps([{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}])
    started = time.perf_counter()
    reply = requests.post(
        f"{url}/v2/models/{model}/generate",
        timeout=300,
        json={"messages": messages, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0},
    )
    reply.raise_for_status()
    return time.perf_counter() - started


def measure(url: str, model: str, count: int, concurrency: int, max_tokens: int) -> dict:
    one_request(url, model, 0, max_tokens)  # warm the path (tokenizer caches, first ensemble call)
    sequential = [one_request(url, model, i, max_tokens) for i in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda i: one_request(url, model, i, max_tokens), range(count)))
    wall = time.perf_counter() - started
    return {
        "p50_ms": 1000 * statistics.median(sequential),
        "mean_ms": 1000 * statistics.fmean(sequential),
        "tokens_per_s": count * max_tokens / wall,
    }


def start_server(ports: list[int]):
    import subprocess

    http, grpc, metrics = ports
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "serve.py"),
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--metrics-port",
        str(metrics),
        "--instance-kind",
        "cpu",
        "--param",
        "max_model_len=2048",
    ]
    log = Path("/tmp/pipeline_vs_direct.server.log")
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    while process.poll() is None:
        if "serve.py: READY" in log.read_text(errors="replace"):
            return process
        time.sleep(0.5)
    raise SystemExit(f"the server did not start; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's HTTP base URL (default: start one)")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    process = None
    url = args.url
    if url is None:
        ports = free_ports(3)
        process = start_server(ports)
        url = f"http://127.0.0.1:{ports[0]}"
    try:
        # Each model twice, interleaved, so a warming machine or a noisy neighbour shows up as spread.
        rows = [
            (model, measure(url, model, args.requests, args.concurrency, args.max_tokens))
            for model in ("qwen", "qwen_pipeline", "qwen", "qwen_pipeline")
        ]
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    print(f"| model | sequential p50 (ms) | sequential mean (ms) | {args.concurrency} concurrent (tokens/s) |")
    print("| --- | --- | --- | --- |")
    for model, row in rows:
        print(f"| {model} | {row['p50_ms']:.0f} | {row['mean_ms']:.0f} | {row['tokens_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
