"""The gateway's Prometheus metrics (its own /metrics; the engine's are on tritonserver's metrics port).

One registry per app, so tests (and several apps in one process) never collide on global names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds; first tokens on CPU take tens of ms to seconds, on a GPU a few ms.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qwen_openai_requests",
            "OpenAI API requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "qwen_openai_errors",
            "OpenAI API requests answered with an error, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "qwen_openai_time_to_first_token_seconds",
            "From the request's arrival at the gateway to its first generated token",
            ["endpoint"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.cancelled = Counter(
            "qwen_openai_cancelled_requests",
            "Requests whose HTTP client went away before the answer was complete (cancelled in Triton)",
            ["endpoint"],
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "qwen_openai_generation_tokens", "Tokens generated for the gateway's clients", registry=self.registry
        )

    def answered(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
