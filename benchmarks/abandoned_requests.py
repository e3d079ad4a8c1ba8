"""Work the server does for clients that already left: N non-streaming /generate requests whose clients
time out after CLIENT_TIMEOUT s, sent without and then with the `timeout` input set to that same value.

It starts its own server through scripts/serve.py (the demo model on CPU) and prints, for each case, the
tokens generated after the clients left and how long the engine stayed busy for them. The bound: with a
deadline the engine stops within one step of it (0 tokens after the clients left, up to a step's worth).
Triton 2.51 does not tell a model that a non-streaming HTTP client disconnected, so `timeout` is the
client's way to say when it stops listening.

  OMP_NUM_THREADS=1 python benchmarks/abandoned_requests.py --requests 15 --max-tokens 1500 --client-timeout 5
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "server"))

from test_failsafe import start_server  # noqa: E402


def metric(server, name: str) -> float:
    text = requests.get(server.metrics_url, timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)", text, re.M))


def abandon(server, count: int, max_tokens: int, client_timeout: float, send_deadline: bool) -> tuple[float, float]:
    """(tokens generated after the clients left, seconds the engine kept running for them)."""
    body = {"text_input": "Tell me a long story.", "max_tokens": max_tokens, "ignore_eos": True}
    if send_deadline:
        body["timeout"] = client_timeout

    def client():
        try:
            requests.post(f"{server.http_url}/v2/models/qwen/generate", json=body, timeout=client_timeout)
        except requests.exceptions.Timeout:
            pass

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left_at, tokens_at_leave = time.monotonic(), metric(server, "qwen_generation_tokens_total")
    while metric(server, "qwen_num_requests_running") + metric(server, "qwen_num_requests_waiting") > 0:
        time.sleep(0.2)
    return metric(server, "qwen_generation_tokens_total") - tokens_at_leave, time.monotonic() - left_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--client-timeout", type=float, default=5.0)
    args = parser.parse_args()
    server = start_server(Path(tempfile.mkdtemp(prefix="abandoned-")), {"max_model_len": "2048"})
    try:
        print(
            f"{args.requests} non-streaming /generate, max_tokens {args.max_tokens}, clients leave after "
            f"{args.client_timeout:g} s"
        )
        print(f"{'case':<28} | {'tokens after clients left':>25} | {'engine busy after (s)':>21}")
        for label, send_deadline in (("no timeout input", False), ("timeout = client timeout", True)):
            tokens, seconds = abandon(server, args.requests, args.max_tokens, args.client_timeout, send_deadline)
            print(f"{label:<28} | {tokens:>25.0f} | {seconds:>21.1f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
