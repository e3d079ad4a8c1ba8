"""Time to first token of the synchronous QwenClient over gRPC and over HTTP, against a running server.

One request at a time; the protocols take turns request by request, so both see the same machine state.
TTFT = from the call until its first chunk arrives (QwenClient.stream_chunks), in the caller's thread.

  python benchmarks/sync_client_ttft.py --grpc-url localhost:8001 --http-url localhost:8000 --requests 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from qwen_client import QwenClient  # noqa: E402


def first_token_ms(client: QwenClient, prompt: list[int], max_tokens: int) -> float:
    start = time.perf_counter()
    chunks = client.stream_chunks(prompt, max_tokens=max_tokens, temperature=0.0)
    try:
        next(chunks)
        ttft = time.perf_counter() - start
        for _ in chunks:  # drain: the next request starts on an idle server
            pass
    finally:
        chunks.close()
    return 1e3 * ttft


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grpc-url", default="localhost:8001")
    parser.add_argument("--http-url", default="localhost:8000")
    parser.add_argument("--model", default="qwen")
    parser.add_argument("--requests", type=int, default=200, help="per protocol")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args()
    clients = {
        "grpc": QwenClient(args.grpc_url, protocol="grpc", model=args.model),
        "http": QwenClient(args.http_url, protocol="http", model=args.model),
    }
    prompt = [(7 * i + 11) % 30000 + 100 for i in range(args.prompt_tokens)]
    times = {name: [] for name in clients}
    for name, client in clients.items():  # warm-up: connections, the server's first requests
        for _ in range(3):
            first_token_ms(client, prompt, args.max_tokens)
    for _ in range(args.requests):
        for name, client in clients.items():
            times[name].append(first_token_ms(client, prompt, args.max_tokens))
    for client in clients.values():
        client.close()
    print("| protocol | requests | TTFT p50 ms | p90 ms | mean ms |\n|---|---|---|---|---|")
    for name, values in times.items():
        ordered = sorted(values)
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.2f} | {ordered[int(0.9 * len(values))]:.2f} | "
            f"{statistics.fmean(values):.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
