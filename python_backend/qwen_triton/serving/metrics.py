"""The engine's Prometheus metrics, published on Triton's metrics port through `pb_utils.MetricFamily`.

Names and types are the contract in docs/CONTRACTS.md (dashboards, alerts and the autoscaler read them).
Two sources feed them:
  - `EngineMetrics.update(stats)` copies the engine's counters and gauges (a `MetricsReporter` thread calls
    it twice a second, so a scrape is never more than half a second stale);
  - the Triton adapter observes time to first token and inter-token latency per request, as they happen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

# Seconds. TTFT spans a fast GPU prefill to a long CPU prompt; inter-token latency is one decode step.
TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
INTER_TOKEN_BUCKETS = [0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5]

# metric name -> (kind, description, EngineStats field or None when observed per request)
METRICS = {
    "qwen_prompt_tokens_total": ("COUNTER", "Prompt tokens processed", "prompt_tokens_total"),
    "qwen_generation_tokens_total": ("COUNTER", "Tokens generated", "generation_tokens_total"),
    "qwen_time_to_first_token_seconds": ("HISTOGRAM", "Time from request arrival to its first token", None),
    "qwen_inter_token_latency_seconds": ("HISTOGRAM", "Time between two generated tokens of a request", None),
    "qwen_num_requests_running": ("GAUGE", "Sequences in the engine's running batch", "num_running"),
    "qwen_num_requests_waiting": (
        "GAUGE",
        "Requests admitted but not yet scheduled (autoscaling signal)",
        "num_waiting",
    ),
    "qwen_kv_cache_blocks_total": ("GAUGE", "KV-cache blocks in the pool", "kv_blocks_total"),
    "qwen_kv_cache_blocks_free": ("GAUGE", "KV-cache blocks free", "kv_blocks_free"),
    "qwen_kv_cache_usage_ratio": ("GAUGE", "Share of KV-cache blocks in use (0..1)", None),
    "qwen_prefix_cache_queries_total": ("COUNTER", "KV blocks looked up in the prefix cache", "prefix_cache_queries"),
    "qwen_prefix_cache_hits_total": ("COUNTER", "KV blocks reused from the prefix cache", "prefix_cache_hits"),
    "qwen_preemptions_total": ("COUNTER", "Sequences preempted for lack of KV blocks", "num_preemptions"),
    "qwen_engine_heartbeat_age_seconds": (
        "GAUGE",
        "Seconds since the engine thread last went round its loop (~1 s idle, one step busy; grows when stuck)",
        None,
    ),
}
# Gauges that describe the engine's load: zeroed when the engine fails, so that the autoscaler and the
# dashboards never read the last values of a dead engine as current.
LOAD_GAUGES = ("qwen_num_requests_running", "qwen_num_requests_waiting", "qwen_kv_cache_usage_ratio")
BUCKETS = {"qwen_time_to_first_token_seconds": TTFT_BUCKETS, "qwen_inter_token_latency_seconds": INTER_TOKEN_BUCKETS}


class EngineMetrics:
    """One labelled metric per name. `pb_utils` is passed in: it only exists inside Triton's Python stub."""

    def __init__(self, pb_utils, labels: dict[str, str]):
        # Families must outlive their metrics (Triton refuses operations otherwise): keep both.
        self._families = {}
        self._metrics = {}
        for name, (kind, description, _field) in METRICS.items():
            family = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            self._families[name] = family
            extra = {"buckets": BUCKETS[name]} if name in BUCKETS else {}
            self._metrics[name] = family.Metric(labels=labels, **extra)
        self._last_counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def update(self, stats) -> None:
        """Copy an EngineStats snapshot: gauges are set, counters advance by what changed since the last one."""
        with self._lock:
            for name, (kind, _description, field) in METRICS.items():
                if field is None:
                    continue
                value = getattr(stats, field)
                if kind == "GAUGE":
                    self._metrics[name].set(float(value))
                else:
                    delta = value - self._last_counts.get(name, 0)
                    if delta > 0:
                        self._metrics[name].increment(float(delta))
                    self._last_counts[name] = value
            total = stats.kv_blocks_total
            used_ratio = (total - stats.kv_blocks_free) / total if total else 0.0
            self._metrics["qwen_kv_cache_usage_ratio"].set(used_ratio)

    def set_heartbeat_age(self, seconds: float) -> None:
        self._metrics["qwen_engine_heartbeat_age_seconds"].set(seconds)

    def clear_load_gauges(self) -> None:
        with self._lock:
            for name in LOAD_GAUGES:
                self._metrics[name].set(0.0)

    def observe_first_token(self, seconds: float) -> None:
        self._metrics["qwen_time_to_first_token_seconds"].observe(seconds)

    def observe_inter_token(self, seconds: float, num_tokens: int) -> None:
        """A delta of n tokens after `seconds` is one sample of seconds / n: each observation is an IPC
        to the server, and deltas come merged exactly when the server is busiest, so one per delta."""
        self._metrics["qwen_inter_token_latency_seconds"].observe(seconds / max(num_tokens, 1))

    def close(self) -> None:
        self._metrics.clear()
        self._families.clear()


class MetricsReporter(threading.Thread):
    """Calls `update(read_stats())` every `interval` seconds until `stop()`."""

    def __init__(
        self,
        metrics: EngineMetrics,
        read_stats: Callable[[], object],
        interval: float = 0.5,
        read_heartbeat_age: Callable[[], float] | None = None,
    ):
        super().__init__(name="qwen-metrics", daemon=True)
        self._metrics = metrics
        self._read_stats = read_stats
        self._read_heartbeat_age = read_heartbeat_age
        self._interval = interval
        self._stopped = threading.Event()
        self._engine_failed = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if not self._engine_failed.is_set():
                    self._metrics.update(self._read_stats())
                if self._read_heartbeat_age is not None:
                    self._metrics.set_heartbeat_age(self._read_heartbeat_age())
            except Exception:  # a metrics hiccup must never take the model down
                log.exception("updating engine metrics failed")

    def engine_failed(self) -> None:
        """Stop copying the (now frozen) engine stats and zero the load gauges; the heartbeat age keeps
        growing, which is what an alert on it wants to see."""
        self._engine_failed.set()
        self._metrics.clear_load_gauges()

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=2 * self._interval + 1)
